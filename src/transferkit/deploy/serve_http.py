"""The HTTP side of ``transferkit serve``: uvicorn, with limits on connections it does not have.

uvicorn keeps a connection open for as long as its client likes until a request head has
arrived whole: no timer runs on a new connection, and bytes arriving after an answer cancel
the keep-alive timer. Nor does it bound connections: ``limit_concurrency`` answers 503 to
requests that do arrive, but every accepted socket still holds a file descriptor. 1,100 sockets
that each sent ``GET /health HTTP/1.1\\r\\n`` and then nothing exhausted ``ulimit -n 1024``, and
every other client was refused for as long as they stayed. :class:`GuardedH11Protocol` adds:

* a head deadline: a connection must deliver a whole request head within ``--header-timeout``
  seconds of opening, or of the previous answer, or it is closed (an idle kept-alive connection
  closes after :data:`KEEP_ALIVE_S` or that, whichever is sooner);
* a connection cap: a connection accepted while ``--max-connections`` are open is closed at
  once, before anything is read, so descriptors run out only if the cap is set past the limit;
* a cap per client address, ``--max-connections-per-client`` (default a quarter of the cap): one
  client reopening half-sent heads as they timed out held every place, and 8 of 10 ``/health``
  calls from others were reset. An IPv6 client is counted by its /64, which one host is usually
  given whole (any address in it is its own).

Many addresses can still take every place for a few seconds each, again and again: that is a
reverse proxy's job, not one process's (behind one, every connection comes from the proxy's
address: set ``--max-connections-per-client`` to ``--max-connections`` there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter
from typing import Any, ClassVar

from transferkit.deploy.serve_pool import ServeLimits
from transferkit.errors import TransferkitError, shown
from transferkit.extras import require

# uvicorn is the serve extra's: on the core install, importing this module is the install line
require("uvicorn", "transferkit serve")
import uvicorn  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402

KEEP_ALIVE_S = 5  # uvicorn's default: an idle kept-alive connection closes after it
MAX_HOST = 253  # the longest DNS name
FD_RESERVE = 64  # descriptors the process needs besides connections (model files, threads, pipes)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline, a connection cap and a cap per client
    address (see the module). :func:`protocol_for` makes one subclass per server, with its own
    count of connections per address (the event loop's thread alone touches it: no lock)."""

    header_timeout_s: ClassVar[float] = 5.0
    max_connections: ClassVar[int] = 256
    per_client: ClassVar[int] = 64
    held: ClassVar[Counter[str]] = Counter()  # open connections per client_key

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted_as: str | None = None  # the key this connection holds a place under

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        key = client_key(transport.get_extra_info("peername"))
        if len(self.connections) > self.max_connections or self.held[key] >= self.per_client:
            self.transport.close()  # connection_lost removes it from the set
            return
        self.held[key] += 1
        self._counted_as = key
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a head arrived whole and its request began
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # may begin a pipelined request already received
        if self.cycle is cycle and not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        key, self._counted_as = self._counted_as, None
        if key is not None:
            self.held[key] -= 1
            if self.held[key] <= 0:
                del self.held[key]  # the count holds addresses now connected, not every one ever seen
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def client_key(peer: object) -> str:
    """What one client's connections are counted under, from a socket's peer address: an IPv4
    address (also one written as IPv4-mapped IPv6); an IPv6 one's /64 network; anything else (no
    address, a Unix socket) as the one client ``""``."""
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if not isinstance(host, str):
        return ""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # less a zone (fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def protocol_for(limits: ServeLimits) -> type[GuardedH11Protocol]:
    """:class:`GuardedH11Protocol` with ``limits``' head deadline and caps, counting per address
    on its own (two servers in one process share nothing)."""

    class Guarded(GuardedH11Protocol):
        header_timeout_s = limits.header_timeout_s
        max_connections = limits.max_connections
        per_client = limits.per_client
        held: ClassVar[Counter[str]] = Counter()

    return Guarded


def server_config(app: Any, host: str, port: int, limits: ServeLimits) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs (the h11 protocol, guarded: never httptools)."""
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", http=protocol_for(limits), timeout_keep_alive=KEEP_ALIVE_S
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket ``serve`` listens on, bound here before uvicorn runs: a host that is no name
    (300 characters, spaces) or a port in use is one line and exit 2 — uvicorn would log it and
    exit 1 itself, or raise from its name encoder."""
    if not host or len(host) > MAX_HOST:
        raise TransferkitError(f"--host {shown(host)} is not a host name or address")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError, ValueError) as exc:
        raise TransferkitError(f"--host {shown(host)} is not a host name or address here ({exc})") from None
    sock = None
    try:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise TransferkitError(
            f"serve cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from None
    return sock


def descriptor_warning(max_connections: int) -> str | None:
    """A line to print when ``max_connections`` leaves fewer than :data:`FD_RESERVE` descriptors
    under the process's limit (``ulimit -n``), else None."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to read
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections + FD_RESERVE <= soft:
        return None
    return (
        f"warning: --max-connections {max_connections} is close to this process's limit of {soft} open files "
        f"(ulimit -n): raise the limit or lower --max-connections to at most {max(1, soft - FD_RESERVE)}"
    )
