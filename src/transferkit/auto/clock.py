"""The budget as wall-clock time, across interruptions.

Every second a heartbeat writes the seconds spent so far (this session's, from ``started``,
plus every earlier session's) to ``OUT/clock.json``. A command killed at any moment has
therefore booked all but its last second, and a rerun with the same ``--out`` gets only what is
left of the budget.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from transferkit.paths import atomic_write_text

CLOCK_FILE = "clock.json"
BEAT_SECONDS = 1.0


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


class Clock:
    """Seconds spent and left of ``budget``; :meth:`start` books them to disk every second."""

    def __init__(self, budget: float, folder: Path | None = None, started: float | None = None) -> None:
        self.budget, self.folder = budget, folder
        self.before = spent_before(folder) if folder is not None else 0.0
        self.started = time.time() if started is None else started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spent(self) -> float:
        return self.before + (time.time() - self.started)

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
