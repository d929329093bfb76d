"""The bounded worker pool behind ``transferkit serve``: inference never runs on the event loop.

A request's body is received first, outside the queue: it must arrive whole within
``body_timeout_s`` (408 past it), and the bytes of all bodies being received at once are bounded
by an :class:`Intake` budget (503 past it). A slow sender therefore holds the few bytes it has
sent for a few seconds, never a place in the queue (eight clients sending a byte a second once
kept every place for the whole ``--timeout``, and everyone else got 503).

A request is then *admitted* and holds its place until the work it handed to a worker has
really finished: a thread cannot be stopped, so a request that timed out while its prediction
runs still counts against the queue until that prediction returns. This keeps the pool's own
queue bounded by ``queue`` whatever clients do, and ``/health`` (answered on the loop) fast
while every worker is busy.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from transferkit.errors import TransferkitError

T = TypeVar("T")

# Upper bounds: a pool of threads sharing one model gains nothing past the cores, and a queue
# or a time limit past these only hides an overloaded server from its clients.
MAX_WORKERS = 64
MAX_QUEUE = 10_000
MAX_TIMEOUT_S = 3600.0
MIN_TIMEOUT_S = 0.1
MAX_HEADER_TIMEOUT_S = 300.0  # a request head is a few hundred bytes: minutes only hold a connection
MAX_CONNECTIONS = 100_000
MAX_PIXELS = 1 << 28  # Pillow's own hard limit (twice its warning)
MIN_PIXELS = 1 << 16
PER_CLIENT_SHARE = 4  # by default one client address holds at most 1/4 of --max-connections


def _count(name: str, value: object, low: int, high: int) -> None:
    # bool is an int (True would be one worker); a float count (2.5) fails later, in the pool
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TransferkitError(f"serve --{name} must be a whole number between {low} and {high}, not {value!r}")


def _seconds(name: str, value: object, low: float, high: float) -> None:
    # NaN passes every comparison's negation: `low <= value <= high` is False for it, as wanted
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise TransferkitError(f"serve --{name} must be between {low:g} and {high:g} seconds, not {value!r}")


@dataclass(frozen=True)
class ServeLimits:
    """``workers`` run predictions; at most ``queue`` requests are admitted (running plus waiting;
    503 past it); each must be answered within ``timeout_s`` of its arrival (504 past it), and its
    body must arrive whole within ``body_timeout_s`` of it (408 past it), outside the queue.
    Connections: at most ``max_connections`` open at once, and at most ``max_connections_per_client``
    of them from one client address (default a quarter of ``max_connections``: one address holding
    every place kept everyone else out), each closed unless a whole request head arrives within
    ``header_timeout_s`` of its opening or of its previous answer (``serve_http``)."""

    workers: int = 1  # torch and onnxruntime already use every core within one call
    queue: int = 8
    timeout_s: float = 60.0
    body_timeout_s: float = 10.0
    header_timeout_s: float = 5.0
    max_connections: int = 256  # well under the usual `ulimit -n` of 1024
    max_connections_per_client: int | None = None  # None: max_connections // 4 (at least 1)
    # Places of the queue one client address may hold: a connection cap does not bound what a
    # request costs (8 uploads from one address, each decoding to 350 MB, held every place and
    # everyone else got 503). None: half the queue (at least 1).
    queue_per_client: int | None = None
    # Pixels one uploaded image may decode to (checked from its header, before decoding): a 20 MiB
    # upload can declare hundreds of megapixels, and each worker decodes one at a time (413 past it).
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        _count("workers", self.workers, 1, MAX_WORKERS)
        _count("queue", self.queue, 1, MAX_QUEUE)
        _seconds("timeout", self.timeout_s, MIN_TIMEOUT_S, MAX_TIMEOUT_S)
        _seconds("body-timeout", self.body_timeout_s, MIN_TIMEOUT_S, MAX_TIMEOUT_S)
        _seconds("header-timeout", self.header_timeout_s, MIN_TIMEOUT_S, MAX_HEADER_TIMEOUT_S)
        _count("max-connections", self.max_connections, 1, MAX_CONNECTIONS)
        if self.max_connections_per_client is not None:
            _count("max-connections-per-client", self.max_connections_per_client, 1, self.max_connections)
        if self.queue_per_client is not None:
            _count("queue-per-client", self.queue_per_client, 1, self.queue)
        _count("max-pixels", self.max_pixels, MIN_PIXELS, MAX_PIXELS)
        if self.queue < self.workers:
            raise TransferkitError(f"serve --queue ({self.queue}) must be at least --workers ({self.workers})")

    @property
    def per_client(self) -> int:
        """Connections one client address may hold: as given, else a quarter of the cap."""
        given = self.max_connections_per_client
        return max(1, self.max_connections // PER_CLIENT_SHARE) if given is None else given

    @property
    def client_queue(self) -> int:
        """Places one client address may hold: as given, else half the queue."""
        given = self.queue_per_client
        return max(1, self.queue // 2) if given is None else given

    @property
    def body_s(self) -> float:
        """Seconds a body may take to arrive: ``body_timeout_s``, and never past ``timeout_s``."""
        return min(self.timeout_s, self.body_timeout_s)


class Busy(Exception):
    """The queue is full: answer 503 and ask the client to come back in ``retry_after`` s."""

    def __init__(self, admitted: int, retry_after: int, own: bool = False) -> None:
        super().__init__(f"{admitted} requests are running or waiting")
        self.admitted, self.retry_after = admitted, retry_after
        self.own = own  # this client's own share is taken (429), not the whole queue (503)


class Intake:
    """The bytes held by bodies being received, at most ``budget`` together. Bytes are counted
    as they arrive, not as declared: a slow sender holds only what it has sent."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes, or False (nothing counted) when they would pass the budget."""
        with self._lock:
            if self._held + size > self.budget:
                return False
            self._held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._held -= size


class InferencePool:
    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(limits.workers, thread_name_prefix="transferkit-serve")
        self._lock = threading.Lock()  # released from worker threads as well as from the loop
        self._admitted = 0
        self._by_client: dict[str, int] = {}
        self._mean_s = 1.0  # a running mean of how long one job takes, for Retry-After

    @property
    def admitted(self) -> int:
        return self._admitted

    def _check(self, client: str | None) -> None:
        if self._admitted >= self.limits.queue:
            raise Busy(self._admitted, self.retry_after())
        held = self._by_client.get(client, 0) if client is not None else 0
        if held >= self.limits.client_queue:
            raise Busy(held, self.retry_after(), own=True)

    def refuse_if_full(self, client: str | None = None) -> None:
        """:class:`Busy` if :meth:`admit` would refuse now (checked before a body is received, so
        a busy server refuses at once rather than after the upload); takes nothing."""
        with self._lock:
            self._check(client)

    def admit(self, arrived: float | None = None, client: str | None = None) -> Admission:
        """A place in the queue, or :class:`Busy` when every place is taken or ``client`` holds
        its share already. The request's time limit runs from ``arrived`` (``time.monotonic()``)."""
        with self._lock:
            self._check(client)
            self._admitted += 1
            if client is not None:
                self._by_client[client] = self._by_client.get(client, 0) + 1
        return Admission(self, time.monotonic() if arrived is None else arrived, client)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue's work spread over the workers."""
        wait = self._mean_s * self._admitted / self.limits.workers
        return max(1, min(math.ceil(wait), math.ceil(self.limits.timeout_s)))

    def release(self, seconds: float | None = None, client: str | None = None) -> None:
        with self._lock:
            self._admitted -= 1
            if client is not None:
                left = self._by_client.get(client, 1) - 1
                if left > 0:
                    self._by_client[client] = left
                else:
                    self._by_client.pop(client, None)
            if seconds is not None:
                self._mean_s = 0.8 * self._mean_s + 0.2 * seconds

    def submit(self, work: Callable[[], T]) -> Future[T]:
        return self._executor.submit(work)

    def shutdown(self) -> None:
        """Jobs not started are dropped; running ones finish on their own (threads cannot be stopped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Admission:
    """One admitted request, used as ``with pool.admit() as place:``. Its place is given back on
    leaving the block, unless work was handed to a worker: then when that work is done."""

    def __init__(self, pool: InferencePool, arrived: float, client: str | None = None) -> None:
        self._pool = pool
        self._client = client
        self._handed_over = False
        self.deadline = arrived + pool.limits.timeout_s

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a worker thread; :class:`TimeoutError` once the deadline passes (a job
        still waiting for a worker is then dropped; a running one finishes unobserved)."""
        if self._handed_over:
            raise RuntimeError("an admission runs one job")
        started: list[float] = []

        def timed() -> T:
            started.append(time.monotonic())
            return work()

        future = self._pool.submit(timed)
        self._handed_over = True
        future.add_done_callback(
            lambda _: self._pool.release(time.monotonic() - started[0] if started else None, self._client)
        )
        # a cancelled wait cancels the job if no worker has taken it yet (wrap_future chains that)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.remaining())

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._handed_over:
            self._pool.release(client=self._client)
