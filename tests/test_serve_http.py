"""serve's connections against a real uvicorn server on a loopback port: a request head must
arrive within --header-timeout or the connection is closed, and at most --max-connections are
open at once, so sockets that send half a request and then nothing hold the server for seconds,
not for ever (1,100 of them once kept every other client out for as long as they stayed)."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import run_cli
from tests.test_serve_load import BlockingPredictor
from transferkit.deploy.serve_pool import ServeLimits
from transferkit.errors import TransferkitError

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

HALF = b"GET /health HTTP/1.1\r\n"  # a request line, then nothing: the head never ends


@contextmanager
def running(limits: ServeLimits) -> Iterator[tuple[int, Any]]:
    """A real server (the configuration `serve` runs) in a thread: its port and uvicorn Server."""
    import uvicorn

    from transferkit.deploy.serve import create_app
    from transferkit.deploy.serve_http import server_config

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app = create_app(BlockingPredictor(literal_inputs=True), limits=limits)  # type: ignore[arg-type]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        yield port, server
    finally:
        server.should_exit = True
        thread.join(5)
        listener.close()


def _closed_by_server(sockets: list[socket.socket], seconds: float) -> int:
    """How many of ``sockets`` the server closed (EOF or reset) within ``seconds``."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + seconds
    while closed < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                data = ready.recv(4096)
            except ConnectionResetError:
                data = b""
            assert data == b"", data  # a half-sent head is never answered: only closed
            selector.unregister(ready)
            closed += 1
    selector.close()
    return closed


def test_half_sent_heads_are_closed_after_the_header_timeout_and_others_are_served() -> None:
    limits = ServeLimits(header_timeout_s=1.0, max_connections=50)
    with running(limits) as (port, server):
        started = time.monotonic()
        attackers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        for sock in attackers:
            sock.sendall(HALF)
        time.sleep(0.2)
        held = len(server.server_state.connections)  # the cap closed the rest as they were accepted
        assert held <= limits.max_connections, held
        closed = _closed_by_server(attackers, limits.header_timeout_s + 3)
        assert closed == len(attackers), f"{len(attackers) - closed} half-open sockets still open"
        assert len(server.server_state.connections) == 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as client:
            assert client.get("/health").json() == {"status": "ok"}
        elapsed = time.monotonic() - started
        assert elapsed < limits.header_timeout_s + 3, elapsed
        for sock in attackers:
            sock.close()
    print(f"200 half-open sockets: {held} held, all closed and /health served {elapsed:.2f} s after the first")


def test_a_prompt_client_keeps_its_connection_and_half_a_second_head_is_closed() -> None:
    with running(ServeLimits(header_timeout_s=1.0, max_connections=4)) as (port, server):
        # answered once, then half a head: its bytes cancel uvicorn's keep-alive timer, not ours
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(HALF)
        started = time.monotonic()
        assert _closed_by_server([kept], 3) == 1
        assert 0.8 < time.monotonic() - started < 2.5
        kept.close()
        # a silent connection (not a byte sent) is closed too
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _closed_by_server([silent], 3) == 1
        silent.close()
        assert len(server.server_state.connections) == 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as client:
            for _ in range(3):
                assert client.get("/health").status_code == 200
                time.sleep(0.4)  # under the deadline, which restarts after each answer
            assert client.get("/model").json()["classes"] == ["a"]


@pytest.mark.parametrize(
    "limits",
    [{"header_timeout_s": 0.05}, {"header_timeout_s": 301}, {"max_connections": 0}, {"max_connections": 2.0}],
    ids=str,
)
def test_connection_limits_are_bounded(limits: dict[str, Any]) -> None:
    with pytest.raises(TransferkitError, match="serve --"):
        ServeLimits(**limits)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--header-timeout", "0"),
        ("--header-timeout", "301"),
        ("--max-connections", "0"),
        ("--max-connections", "1e6"),
        ("--max-connections-per-client", "0"),
        ("--max-connections-per-client", "1e6"),
    ],
)
def test_serve_connection_options_are_bounded(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["serve", str(tmp_path), option, value], capsys, monkeypatch)
    assert code == 2 and option.strip("-") in err and "Traceback" not in err


def test_a_connection_cap_past_the_open_file_limit_is_warned_about() -> None:
    resource = pytest.importorskip("resource")
    from transferkit.deploy.serve_http import FD_RESERVE, descriptor_warning

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no limit on open files here")
    assert descriptor_warning(soft - FD_RESERVE) is None
    warning = descriptor_warning(soft)
    assert warning is not None and "ulimit -n" in warning and str(soft - FD_RESERVE) in warning
