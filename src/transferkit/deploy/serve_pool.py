"""The bounded worker pool behind ``transferkit serve``: inference never runs on the event loop.

A request is *admitted* before its body is read and holds its place until the work it handed
to a worker has really finished: a thread cannot be stopped, so a request that timed out while
its prediction runs still counts against the queue until that prediction returns. This keeps
the pool's own queue bounded by ``queue`` whatever clients do, and ``/health`` (answered on the
loop) fast while every worker is busy.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
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


@dataclass(frozen=True)
class ServeLimits:
    """``workers`` run predictions; at most ``queue`` requests are admitted (running plus waiting;
    503 past it); each must be answered within ``timeout_s`` of its admission (504 past it)."""

    workers: int = 1  # torch and onnxruntime already use every core within one call
    queue: int = 8
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("workers", self.workers, 1, MAX_WORKERS),
            ("queue", self.queue, 1, MAX_QUEUE),
            ("timeout", self.timeout_s, 0.1, MAX_TIMEOUT_S),
        ):
            # bool is an int, and NaN passes every comparison: refuse both explicitly
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise TransferkitError(f"serve --{name} must be between {low:g} and {high:g}, not {value!r}")
        if self.queue < self.workers:
            raise TransferkitError(f"serve --queue ({self.queue}) must be at least --workers ({self.workers})")


class Busy(Exception):
    """The queue is full: answer 503 and ask the client to come back in ``retry_after`` s."""

    def __init__(self, admitted: int, retry_after: int) -> None:
        super().__init__(f"{admitted} requests are running or waiting")
        self.admitted, self.retry_after = admitted, retry_after


class InferencePool:
    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(limits.workers, thread_name_prefix="transferkit-serve")
        self._lock = threading.Lock()  # released from worker threads as well as from the loop
        self._admitted = 0
        self._mean_s = 1.0  # a running mean of how long one job takes, for Retry-After

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> Admission:
        """A place in the queue, or :class:`Busy` when every place is taken."""
        with self._lock:
            if self._admitted >= self.limits.queue:
                raise Busy(self._admitted, self.retry_after())
            self._admitted += 1
        return Admission(self)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue's work spread over the workers."""
        wait = self._mean_s * self._admitted / self.limits.workers
        return max(1, min(math.ceil(wait), math.ceil(self.limits.timeout_s)))

    def release(self, seconds: float | None = None) -> None:
        with self._lock:
            self._admitted -= 1
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

    def __init__(self, pool: InferencePool) -> None:
        self._pool = pool
        self._handed_over = False
        self.deadline = time.monotonic() + pool.limits.timeout_s

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def within_deadline(self, step: Awaitable[T]) -> T:
        """``step`` (reading the body), or :class:`TimeoutError` once the deadline passes."""
        return await asyncio.wait_for(step, self.remaining())

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
        future.add_done_callback(lambda _: self._pool.release(time.monotonic() - started[0] if started else None))
        # a cancelled wait cancels the job if no worker has taken it yet (wrap_future chains that)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.remaining())

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._handed_over:
            self._pool.release()
