"""serve under load and hostile input: the event loop stays free while every worker is busy, a
full queue is a 503 with Retry-After, a slow request a 504, and malformed input never a 500.

The predictor is a stand-in whose ``predict_samples`` blocks until the test lets it go, so
saturation is exact and no model is trained."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import run_cli
from transferkit.deploy.serve_pool import ServeLimits
from transferkit.errors import TransferkitError
from transferkit.modalities import Sample

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")


@dataclass
class StubModality:
    name: str
    literal_inputs: bool

    def check_file(self, path: Path) -> str | None:
        return None if path.read_bytes().startswith(b"OK") else "not an OK file"


class BlockingPredictor:
    """Answers one label per sample, once ``release`` is set; counts calls and the most at once."""

    def __init__(self, literal_inputs: bool) -> None:
        self.modality = StubModality("text" if literal_inputs else "image", literal_inputs)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.calls = self.running = self.most_at_once = 0

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(10)
            return [{"path": str(s.path), "top": [{"label": "a", "probability": 1.0}]} for s in samples]
        finally:
            with self.lock:
                self.running -= 1

    def describe(self) -> dict[str, Any]:
        return {"format": "stub", "classes": ["a"]}


def _client(predictor: BlockingPredictor, limits: ServeLimits) -> tuple[Any, Any]:
    from transferkit.deploy.serve import create_app

    app = create_app(predictor, max_upload_bytes=10_000, limits=limits)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=10), app.state.pool


async def _until(condition: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def test_health_answers_at_once_while_the_pool_is_saturated_and_a_full_queue_is_503() -> None:
    predictor = BlockingPredictor(literal_inputs=False)
    client, pool = _client(predictor, ServeLimits(workers=2, queue=4, timeout_s=10, queue_per_client=4))

    async def scenario() -> None:
        async with client:
            upload = {"file": ("x.png", b"OK an image", "image/png")}
            tasks = [asyncio.create_task(client.post("/predict", files=upload)) for _ in range(20)]
            await _until(lambda: predictor.running == 2 and sum(t.done() for t in tasks) == 16)
            refused = [t.result() for t in tasks if t.done()]
            assert {r.status_code for r in refused} == {503}
            assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
            assert "busy" in refused[0].json()["detail"] and "--queue 4" in refused[0].json()["detail"]
            for path in ("/health", "/model", "/"):
                start = time.perf_counter()
                answer = await client.get(path)
                assert answer.status_code == 200 and time.perf_counter() - start < 0.5, path
            assert pool.admitted == 4
            predictor.release.set()
            served = await asyncio.gather(*[t for t in tasks if not t.done()])
            assert [r.status_code for r in served] == [200] * 4
            assert served[0].json()["predictions"][0]["path"] == "x.png"

    try:
        asyncio.run(scenario())
    finally:
        predictor.release.set()
        pool.shutdown()
    assert predictor.most_at_once == 2 and predictor.calls == 4 and pool.admitted == 0


def test_a_request_past_its_time_limit_is_504_and_keeps_its_place_until_its_work_ends() -> None:
    predictor = BlockingPredictor(literal_inputs=True)
    client, pool = _client(predictor, ServeLimits(workers=1, queue=3, timeout_s=0.3, queue_per_client=3))

    async def scenario() -> None:
        async with client:
            start = time.perf_counter()
            running, waiting = await asyncio.gather(
                client.post("/predict", json={"text": "slow"}), client.post("/predict", json={"text": "queued"})
            )
            assert time.perf_counter() - start < 6
            for answer in (running, waiting):
                assert answer.status_code == 504 and "--timeout" in answer.json()["detail"], answer.text
            # the job that never reached a worker was dropped; the running one still holds its place
            assert predictor.calls == 1 and pool.admitted == 1
            predictor.release.set()
            await _until(lambda: pool.admitted == 0)
            assert (await client.post("/predict", json={"text": "fast now"})).status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        predictor.release.set()
        pool.shutdown()


def _malformed() -> list[tuple[str, dict[str, Any]]]:
    json_type = {"content-type": "application/json"}
    no_boundary = {"content-type": "multipart/form-data"}
    form = {"content-type": "multipart/form-data; boundary=b"}

    def part(disposition: bytes, data: bytes) -> bytes:
        return b"--b\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + data + b"\r\n--b--\r\n"

    return [
        ("/predict", {"content": b'{"text": "\\ud800"}', "headers": json_type}),
        ("/predict", {"content": b'{"texts": ["fine", "a\\udfffb"]}', "headers": json_type}),
        ("/predict", {"content": b'{"text": "\xff\xfe bad utf-8"}', "headers": json_type}),
        ("/predict", {"content": b'{"text": "\xed\xa0\x80"}', "headers": json_type}),  # a surrogate as UTF-8
        ("/predict", {"content": b'{"texts": [1, 2]}', "headers": json_type}),
        ("/predict", {"content": b'{"texts": "not a list"}', "headers": json_type}),
        ("/predict", {"content": b'{"text": null}', "headers": json_type}),
        ("/predict", {"content": b'"a bare string"', "headers": json_type}),
        ("/predict", {"content": b'{"text": 1e999999}', "headers": json_type}),
        ("/predict", {"content": b'{"text": ' + b"9" * 5000 + b"}", "headers": json_type}),
        ("/predict", {"content": b"[" * 100 + b"]" * 100, "headers": json_type}),
        ("/predict", {"content": b"--x\r\n\r\n", "headers": no_boundary}),
        ("/predict", {"content": b"not a form at all", "headers": form}),
        ("/predict", {"content": part(b'name="other"; filename="a.txt"', b"hello"), "headers": form}),
        ("/predict", {"content": part(b'name="file"; filename="a.txt"', b"  \n "), "headers": form}),
        ("/predict?top_k=abc", {"json": {"text": "x"}}),
        ("/predict?top_k=99999999999999999999999", {"json": {"text": "x"}}),
    ]


@pytest.mark.parametrize(("path", "request_args"), _malformed())
def test_malformed_input_is_a_4xx_with_a_reason(path: str, request_args: dict[str, Any]) -> None:
    predictor = BlockingPredictor(literal_inputs=True)
    predictor.release.set()
    client, pool = _client(predictor, ServeLimits(workers=1, queue=2, timeout_s=5))

    async def scenario() -> Any:
        async with client:
            return await client.post(path, **request_args)

    answer = asyncio.run(scenario())
    pool.shutdown()
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["detail"]
    assert pool.admitted == 0


def test_odd_file_names_and_bytes_are_answered_not_a_500() -> None:
    """A file name with invalid UTF-8, a NUL or a suffix too long for a file name; a text upload
    in invalid UTF-8. (A header over python-multipart's limit is a 400, like any broken form.)"""
    form = {"content-type": "multipart/form-data; boundary=b"}
    names = [b"\xff\xfe.png", b"a\x00b.png", b"x." + b"p" * 300, b"../../etc/passwd"]

    def body(name: bytes, data: bytes) -> bytes:
        disposition = b'form-data; name="file"; filename="' + name + b'"'
        return b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n--b--\r\n"

    async def post_all(client: Any) -> list[Any]:
        async with client:
            data = b"OK \xff\xfe not UTF-8"
            return [await client.post("/predict", content=body(n, data), headers=form) for n in names]

    for literal in (False, True):
        predictor = BlockingPredictor(literal_inputs=literal)
        predictor.release.set()
        client, pool = _client(predictor, ServeLimits(workers=1, queue=2, timeout_s=5))
        answers = asyncio.run(post_all(client))
        pool.shutdown()
        assert [a.status_code for a in answers] == [200] * len(names), [a.text for a in answers]
        shown = [a.json()["predictions"][0]["path"] for a in answers]
        assert "/" not in shown[3] and all(len(s) <= 200 for s in shown if not literal)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--workers", "0"),
        ("--workers", "65"),
        ("--queue", "10001"),
        ("--timeout", "nan"),
        ("--timeout", "3601"),
        ("--timeout", "0"),
        ("--body-timeout", "0"),
        ("--body-timeout", "nan"),
        ("--body-timeout", "3601"),
    ],
)
def test_serve_options_are_bounded(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["serve", str(tmp_path), option, value], capsys, monkeypatch)
    assert code == 2 and option.strip("-") in err and "Traceback" not in err


def test_limits_refuse_a_queue_shorter_than_the_pool() -> None:
    with pytest.raises(TransferkitError, match="--queue"):
        ServeLimits(workers=4, queue=2)
    with pytest.raises(TransferkitError, match="--workers"):
        ServeLimits(workers=True)


@pytest.mark.parametrize(
    "limits",
    [
        {"workers": 2.5},  # once passed, then a TypeError from the thread pool
        {"workers": 2.0},
        {"queue": 8.0},
        {"queue": "8"},
        {"workers": 65},
        {"queue": 10_001},
        {"timeout_s": True},
        {"timeout_s": float("inf")},
        {"body_timeout_s": float("nan")},
        {"body_timeout_s": 0.05},
        {"body_timeout_s": 3601},
    ],
    ids=str,
)
def test_limits_refuse_counts_that_are_not_whole_numbers_and_values_out_of_bounds(limits: dict[str, Any]) -> None:
    with pytest.raises(TransferkitError, match="serve --"):
        ServeLimits(**limits)


def test_limits_take_whole_seconds_and_cap_the_body_time_at_the_request_time() -> None:
    assert ServeLimits(timeout_s=5, body_timeout_s=1).body_s == 1
    assert ServeLimits(timeout_s=2).body_s == 2  # the default 10 s, never past --timeout
    assert ServeLimits().body_s == 10


def test_an_escaped_surrogate_pair_is_one_valid_character_and_is_served() -> None:
    predictor = BlockingPredictor(literal_inputs=True)
    predictor.release.set()
    client, pool = _client(predictor, ServeLimits())

    async def scenario() -> Any:
        async with client:
            json_type = {"content-type": "application/json"}
            return await client.post("/predict", content=b'{"text": "\\ud83d\\ude00 ok"}', headers=json_type)

    answer = asyncio.run(scenario())
    pool.shutdown()
    assert answer.status_code == 200, answer.text


def test_a_body_that_does_not_arrive_in_time_is_408_and_frees_its_place() -> None:
    predictor = BlockingPredictor(literal_inputs=True)
    predictor.release.set()
    client, pool = _client(predictor, ServeLimits(workers=1, queue=1, timeout_s=0.2))

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"text": '
        await asyncio.sleep(1)
        yield b'"late"}'

    async def scenario() -> Any:
        async with client:
            json_type = {"content-type": "application/json"}
            return await client.post("/predict", content=trickle(), headers=json_type)

    answer = asyncio.run(scenario())
    pool.shutdown()
    assert answer.status_code == 408 and "did not arrive" in answer.json()["detail"]
    assert predictor.calls == 0 and pool.admitted == 0


def _stalled(first: bytes, every: float = 0.05) -> AsyncIterator[bytes]:
    """A body that sends ``first``, then one byte every ``every`` seconds, never ending."""

    async def body() -> AsyncIterator[bytes]:
        yield first
        while True:
            await asyncio.sleep(every)
            yield b" "

    return body()


def test_slow_senders_never_hold_the_queue_and_others_are_served() -> None:
    """Slowloris: more clients than the queue has places, each sending a byte at a time. They
    used to take a place before their body arrived and keep it until --timeout, and everyone
    else got 503; now they hold none, and each is a 408 after --body-timeout."""
    predictor = BlockingPredictor(literal_inputs=False)
    predictor.release.set()
    client, pool = _client(
        predictor, ServeLimits(workers=1, queue=8, timeout_s=30, body_timeout_s=3, queue_per_client=8)
    )
    form = {"content-type": "multipart/form-data; boundary=b"}
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\nOK'

    async def scenario() -> None:
        async with client:
            slow = [
                asyncio.create_task(client.post("/predict", content=_stalled(part), headers=form)) for _ in range(12)
            ]
            await asyncio.sleep(0.2)  # every slow sender has begun
            assert pool.admitted == 0 and not any(t.done() for t in slow)
            start = time.perf_counter()
            upload = {"file": ("y.png", b"OK an image", "image/png")}
            served = await asyncio.gather(*[client.post("/predict", files=upload) for _ in range(5)])
            assert [r.status_code for r in served] == [200] * 5, [r.text for r in served]
            assert not any(t.done() for t in slow)  # served while every slow sender is still sending
            refused = await asyncio.gather(*slow)
            assert {r.status_code for r in refused} == {408}
            assert "--body-timeout" in refused[0].json()["detail"]
            assert time.perf_counter() - start < 6

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert predictor.calls == 5 and pool.admitted == 0


def test_bodies_being_received_are_bounded_in_bytes_not_in_senders() -> None:
    """Bytes count as they arrive: a stalled body holds what it sent, and past the budget (the
    queue's worth of uploads) a new body is a 503 with Retry-After, until the stalled one ends."""
    predictor = BlockingPredictor(literal_inputs=True)
    predictor.release.set()
    client, pool = _client(predictor, ServeLimits(workers=1, queue=1, timeout_s=30, body_timeout_s=1))
    json_type = {"content-type": "application/json"}
    budget = 10_000  # queue 1 x the test app's 10,000-byte upload limit

    async def scenario() -> None:
        async with client:
            stalled = asyncio.create_task(
                client.post(
                    "/predict", content=_stalled(b'{"text": "' + b"a" * (budget - 1500), 0.5), headers=json_type
                )
            )
            await asyncio.sleep(0.2)
            small = await client.post("/predict", json={"text": "fits"})
            assert small.status_code == 200, small.text  # a few bytes still fit
            big = await client.post("/predict", json={"text": "b" * 2000})
            assert big.status_code == 503 and int(big.headers["retry-after"]) >= 1, big.text
            assert "receiving" in big.json()["detail"]
            assert (await stalled).status_code == 408
            assert (await client.post("/predict", json={"text": "b" * 2000})).status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert pool.admitted == 0


def test_the_serve_extra_names_python_multipart_by_its_module_and_pins_the_version_that_has_it() -> None:
    """python-multipart's module is ``python_multipart`` from 0.0.13 on (before: only ``multipart``,
    which the server does not import); the extra checks that name and pins that version."""
    import tomllib

    from transferkit.extras import EXTRAS, extra_of, require

    assert "python_multipart" in EXTRAS["serve"] and "multipart" not in EXTRAS["serve"]
    assert extra_of("python_multipart.multipart") == "serve"
    assert require("python_multipart.multipart", "a test").create_form_parser
    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    optional = declared["project"]["optional-dependencies"]
    for extra in ("serve", "test"):
        assert "python-multipart>=0.0.13" in optional[extra], extra


def test_serve_without_python_multipart_says_which_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "python_multipart", None)
    code, _, err = run_cli(["serve", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and "'python_multipart'" in err and "transferkit[serve]" in err, err


def test_one_address_holds_at_most_its_share_of_the_queue_and_another_is_served() -> None:
    """The fourth hostile round: 8 uploads from one address, each costly to decode, held every
    place and another client got 503 on 38 of 38 requests. One address holds at most half the
    queue by default (429 past it); another address is still admitted."""
    from transferkit.deploy.serve import create_app

    predictor = BlockingPredictor(literal_inputs=False)
    limits = ServeLimits(workers=1, queue=4, timeout_s=10)
    app = create_app(predictor, max_upload_bytes=10_000, limits=limits)  # type: ignore[arg-type]
    hostile = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.9", 1)), base_url="http://s")
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.7", 2)), base_url="http://s")
    upload = {"file": ("x.png", b"OK an image", "image/png")}

    async def scenario() -> None:
        async with hostile, other:
            flood = [asyncio.create_task(hostile.post("/predict", files=upload)) for _ in range(8)]
            await _until(lambda: sum(t.done() for t in flood) == 6)
            refused = [t.result() for t in flood if t.done()]
            assert {r.status_code for r in refused} == {429} and "--queue-per-client 2" in refused[0].json()["detail"]
            mine = asyncio.create_task(other.post("/predict", files=upload))
            await _until(lambda: app.state.pool.admitted == 3)  # admitted beside the flood
            waiting = [t for t in flood if not t.done()]
            predictor.release.set()
            assert (await mine).status_code == 200
            assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200]

    try:
        asyncio.run(scenario())
    finally:
        predictor.release.set()
        app.state.pool.shutdown()
    assert app.state.pool.admitted == 0
