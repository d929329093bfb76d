"""``OUT/auto.json``: the settings, the ranking, the schedule and the decision trail of a search.

Written atomically after every decision, so a killed search is continued from it: finished
stages are not done again, and a rerun on other settings or other data is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import TransferkitError
from transferkit.paths import atomic_write_text

AUTO_FILE = "auto.json"
KIND = "transferkit auto"


@dataclass
class Entry:
    """One row of the decision trail: a run (or a step of the finish) and what became of it.
    ``start``/``end``: seconds of the budget spent when it began and ended."""

    key: str
    label: str
    stage: str  # rank, anytime, rung 1…, wise-ft, export
    status: str  # running, finished, promoted, dropped, stopped by the budget, skipped, final
    reason: str = ""
    steps: int = 0
    predicted: float | None = None
    actual: float | None = None
    start: float = 0.0
    end: float | None = None
    accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    run_dir: str | None = None


@dataclass
class Trail:
    """Everything ``auto.json`` holds; ``entries`` keyed by run and stage."""

    settings: dict[str, Any]
    data: dict[str, Any]
    ranking: list[dict[str, Any]] | None = None
    schedule: dict[str, Any] | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    path: Path | None = None

    def add(self, entry: Entry) -> Entry:
        self.entries[entry.key] = entry
        self.save()
        return entry

    def update(self, key: str, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.entries[key], name, value)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.to_dict(), indent=1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND, "settings": self.settings, "data": self.data, "ranking": self.ranking,
            "schedule": self.schedule, "trail": [asdict(e) for e in self.entries.values()], "result": self.result,
        }  # fmt: skip

    @classmethod
    def open(cls, out: Path, settings: dict[str, Any], data: dict[str, Any]) -> Trail:
        """The trail in ``out`` (settings and data must match), or a new one."""
        path = out / AUTO_FILE
        if not path.is_file():
            trail = cls(settings, data, path=path)
            trail.save()
            return trail
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("kind") != KIND:
                raise ValueError("not an auto search")
            entries = {e["key"]: Entry(**e) for e in saved["trail"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransferkitError(f"{path} is unreadable ({exc}); use a new --out") from None
        # The budget may change between sessions (to give a search more time); nothing else may.
        changed = sorted(
            k for k, v in settings.items() if k != "budget" and saved["settings"].get(k) != json.loads(json.dumps(v))
        )
        if changed:
            raise TransferkitError(
                f"{out} holds a search with other settings ({', '.join(changed)}); use the same options or a new --out"
            )
        if saved.get("data") != data:
            raise TransferkitError(f"{out} holds a search on other data; use the same data or a new --out")
        ranking, schedule = saved.get("ranking"), saved.get("schedule")
        return cls(settings, data, ranking, schedule, entries, saved.get("result"), path)
