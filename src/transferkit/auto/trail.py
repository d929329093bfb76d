"""``OUT/auto.json``: the settings, the ranking, the schedule and the decision trail of a search.

Written atomically after every decision, so a killed search is continued from it: finished
stages are not done again, and a rerun on other settings or other data is refused. Read back,
it is untrusted like every run file: :mod:`.stored` checks every field before it is used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.auto.stored import MAX_TEXT, check_entry, check_ranking, check_result, check_schedule, migrated
from transferkit.errors import TransferkitError
from transferkit.paths import atomic_write_text
from transferkit.schema import SchemaError, check_mapping

AUTO_FILE = "auto.json"
KIND = "transferkit auto"
MAX_BYTES = 512 * 2**20  # the held-out predictions of a million items fit; a larger file is not ours


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
        # a reason is cut to what a trail row may hold when read back (rank's may name 256 backbones)
        rows = [{**asdict(e), "reason": shortened(e.reason)} for e in self.entries.values()]
        return {
            "kind": KIND, "settings": self.settings, "data": self.data, "ranking": self.ranking,
            "schedule": self.schedule, "trail": rows, "result": self.result,
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
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES // 2**20} MiB")
            saved = check_mapping(str(path), "(the whole)", json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError) as exc:
            raise TransferkitError(f"{path} is unreadable ({str(exc)[:100]}); use a new --out") from None
        if saved.get("kind") != KIND:
            raise TransferkitError(f"{path} is not an auto search's file; use a new --out")
        return cls._checked(saved, settings, data, path)

    @classmethod
    def _checked(cls, saved: Any, settings: dict[str, Any], data: dict[str, Any], path: Path) -> Trail:
        where, out = str(path), path.parent
        before = check_mapping(where, "settings", saved.get("settings"))
        # The budget may change between sessions (to give a search more time); nothing else may.
        changed = sorted(k for k, v in settings.items() if k != "budget" and before.get(k) != json.loads(json.dumps(v)))
        if changed:
            raise TransferkitError(
                f"{out} holds a search with other settings ({', '.join(changed)}); use the same options or a new --out"
            )
        if saved.get("data") != data:
            raise TransferkitError(f"{out} holds a search on other data; use the same data or a new --out")
        rows = saved.get("trail")
        if not isinstance(rows, list):
            raise SchemaError(where, "trail", type(rows).__name__, "expected a JSON list")
        entries = {e.key: e for e in (Entry(**check_entry(where, row)) for row in rows)}
        for entry in entries.values():  # an older transferkit's run folder, as its name inside OUT
            if entry.run_dir is not None:
                entry.run_dir = migrated(out, entry.run_dir)
        ranking, schedule = check_ranking(where, saved.get("ranking")), check_schedule(where, saved.get("schedule"))
        result = check_result(out, where, saved.get("result"))
        return cls(settings, data, ranking, schedule, entries, result, path)


def shortened(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` in at most ``limit`` characters: its start, and how much was cut."""
    if len(text) <= limit:
        return text
    note = f" … (cut; {len(text):,} characters in all)"
    return text[: limit - len(note)] + note
