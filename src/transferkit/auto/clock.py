"""The budget as wall-clock time, across interruptions.

Every second a heartbeat writes the seconds spent so far (this session's, from ``started``,
plus every earlier session's) to ``OUT/clock.json``. A command killed at any moment has
therefore booked all but its last second, and a rerun with the same ``--out`` gets only what is
left of the budget.

What a step of the search costs on this machine (an export, timing one plan) is remembered in
the cache (:func:`remembered`), so the next search budgets it before it starts instead of
learning it by overrunning.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from transferkit.paths import atomic_write_text, default_cache_dir

CLOCK_FILE = "clock.json"
BEAT_SECONDS = 1.0
COSTS_FILE = "auto-costs.json"  # beside the feature folders, as the verdicts


def wall_time() -> float:
    """The clock every search reads; one name, so a test can make it jump (a slow machine)."""
    return time.time()


def process_started() -> float:
    """When this process began (``time.time()`` scale): the command line counts its start-up
    against the budget; a notebook calling :func:`transferkit.auto.auto` counts from the call."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or the platform will not say: count from now
        return time.time()


def spent_before(folder: Path) -> float:
    """Seconds earlier sessions booked in ``folder`` (0 for a new one, or an unreadable file)."""
    try:
        value = json.loads((folder / CLOCK_FILE).read_text(encoding="utf-8")).get("spent", 0.0)
    except (OSError, ValueError, AttributeError):
        return 0.0
    return float(value) if isinstance(value, int | float) and 0 <= value < 1e9 else 0.0


def remembered() -> dict[str, float]:
    """Seconds measured by earlier searches on this machine, by ``backbone:what``."""
    try:
        values = json.loads((default_cache_dir() / COSTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    # an edited file may say anything: only plausible seconds count, the rest is a first guess
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and 0 <= v < 1e6}


def remember(key: str, seconds: float) -> None:
    path = default_cache_dir() / COSTS_FILE
    values = {**remembered(), key: round(seconds, 1)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(values, indent=1))
    except OSError:  # a read-only cache only costs the next search its first guess
        pass


class Clock:
    """Seconds spent and left of ``budget``; :meth:`start` books them to disk every second.
    ``now`` is the wall clock (``time.time``); tests give a clock that jumps."""

    def __init__(
        self, budget: float, folder: Path | None = None, started: float | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        self.budget, self.folder = budget, folder
        self.now = now or wall_time
        self.before = spent_before(folder) if folder is not None else 0.0
        self.started = self.now() if started is None else started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spent(self) -> float:
        return self.before + (self.now() - self.started)

    def left(self) -> float:
        return self.budget - self.spent()

    def book(self) -> None:
        if self.folder is not None:
            atomic_write_text(self.folder / CLOCK_FILE, json.dumps({"spent": round(self.spent(), 2)}))

    def start(self) -> Clock:
        self.book()
        self._thread = threading.Thread(target=self._beat, name="transferkit-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.book()

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            with contextlib.suppress(OSError):  # a full disk must not kill the search; the next beat tries
                self.book()
