"""What one run of a comparison is called and what it measured: typed, shared by compare,
the verdict and the report (and whatever searches over runs).

A record is written as ``result.json`` in its run folder and read back from there and from
``results.json``, both files a user may edit or replace: :meth:`RunRecord.from_dict` checks
every field the verdict and the report read, and a record that fails is run again, never
half-used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.errors import shown
from transferkit.params import UNPRINTABLE, Interval

# A phase has at most --epochs (≤ WHOLE, 10,000) epochs, unless --min-steps (≤ 1,000,000 steps)
# stretches it, at one step per epoch on tiny data, to as many epochs as steps: no more.
MAX_PHASE_EPOCHS = 1_000_000
MAX_PHASES = 64  # a strategy's plan is a handful of phases
MAX_PARAMS = 10**15  # parameters of one model: far past any that fits a machine
# The loop's rows as it writes them (events.EpochRecord, events.PhaseSummary; the layers put
# records below events, and tests/test_hostile3_stored.py holds the two spellings together).
HISTORY_KEYS = ("epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                "seconds")  # fmt: skip
PHASE_KEYS = ("name", "epochs_planned", "epochs_run", "trainable_params", "frozen_params", "stopped_early")
_SCORES = ("train_accuracy", "val_accuracy", "val_macro_f1")  # fractions in [0, 1]


class RowError(ValueError):
    """A stored row's field out of its bounds. The reader that knows the file names it (as a
    ``schema.SchemaError``: records sits beside schema in the layers, so it cannot raise one)."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(f"{field}={shown(value)} is invalid: {expected}")
        self.field, self.value, self.expected = field, value, expected


@dataclass(frozen=True, order=True)
class RunKey:
    """Which (backbone, strategy) a run measures; its ``id`` keys estimates and learning rates."""

    backbone: str
    strategy: str

    @property
    def id(self) -> str:
        return f"{self.backbone}__{self.strategy}"

    def run_name(self, seed_index: int, fold: int | None = None) -> str:
        """The run's folder name: one per seed (and fold, with ``--folds``)."""
        name = f"{self.id}__seed{seed_index}"
        return name if fold is None else f"{name}__fold{fold}"


@dataclass(frozen=True)
class Predictions:
    """Per validation item: what it was (a path, a text), its label, the prediction, its confidence."""

    items: list[str] = field(default_factory=list)
    y_true: list[int] = field(default_factory=list)
    y_pred: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)

    def correct(self) -> list[int]:
        """1/0 per item (paired with another run's by position: the same validation items)."""
        return [int(a == b) for a, b in zip(self.y_true, self.y_pred, strict=True)]


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a comparison."""

    backbone: str
    strategy: str
    seed: int
    pretrained: bool
    val: dict[str, float]  # accuracy, macro_f1, loss
    train_seconds: float
    images_per_second: float
    trainable_params: int
    frozen_params: int
    peak_memory_bytes: float
    predictions: Predictions
    run_dir: str
    fold: int | None = None
    test: dict[str, float] | None = None
    memory_growth_bytes: float = 0.0
    memory_kind: str = "rss"
    phases: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> RunKey:
        return RunKey(self.backbone, self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> RunRecord | None:
        """The record in ``values`` if every field the verdict and the report read is there with
        its type; ``None`` for anything else (edited, truncated, from another version)."""
        try:
            predictions = dict(values["predictions"])
            if "paths" in predictions and "items" not in predictions:  # comparisons from before 0.2
                predictions["items"] = predictions.pop("paths")
            record = cls(**{**values, "predictions": Predictions(**predictions)})
        except (KeyError, TypeError, ValueError):  # ValueError: predictions that are no mapping ("x")
            return None
        try:  # the rows the report draws and a finished run reports: the loop's own shapes and bounds
            check_history("history", record.history)
            check_phases("phases", record.phases)
        except RowError:
            return None
        return record if _well_formed(record) else None


def _bounded(field: str, value: Any, kind: type, low: float, high: float) -> Any:
    bound = Interval(kind, low, high)
    if not bound.ok(value):  # never a bool, a string, an infinity or a NaN
        raise RowError(field, value, f"expected {'a whole number' if kind is int else 'a number'} {bound.describe()}")
    return value


def _figure(field: str, value: Any, low: float, high: float) -> None:
    """A measured number in [low, high], or NaN: an empty validation split scores NaN (and the
    loop records it) rather than a made-up figure."""
    if not (isinstance(value, float) and math.isnan(value)):
        _bounded(field, value, float, low, high)


def _row(field: str, row: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(row, dict) or set(row) != set(keys):
        shown_keys = sorted(map(str, row))[:20] if isinstance(row, dict) else type(row).__name__
        raise RowError(field, shown_keys, f"expected an object with the keys {', '.join(keys)}")
    return row


def _name(field: str, value: Any) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 100 or UNPRINTABLE.search(value):
        raise RowError(field, value, "expected a phase name (printable, at most 100 characters)")


def check_history(field: str, rows: Any, most: int = MAX_PHASES * MAX_PHASE_EPOCHS) -> list[dict[str, Any]]:
    """A training history read back (a checkpoint's, a run record's): at most ``most`` rows, each
    an epoch row with exactly the loop's keys, epochs numbered 1, 2, … and finite figures (NaN
    where the validation split was empty), so nothing else is copied into history.csv or drawn."""
    if not isinstance(rows, list) or len(rows) > most:
        raise RowError(field, type(rows).__name__, f"expected a list of at most {most:,} epoch rows")
    for i, row in enumerate(rows):
        at = f"{field}[{i}]"
        _row(at, row, HISTORY_KEYS)
        if _bounded(f"{at}.epoch", row["epoch"], int, 1, most) != i + 1:
            raise RowError(f"{at}.epoch", row["epoch"], f"expected {i + 1}: rows are one per epoch, in order")
        _name(f"{at}.phase", row["phase"])
        for key in HISTORY_KEYS[2:]:
            low, high = (0.0, 1.0) if key in _SCORES else (-1e15, 1e15)
            _figure(f"{at}.{key}", row[key], low, high)
    return rows


def check_phases(field: str, rows: Any) -> list[dict[str, Any]]:
    """A run's phase rows read back: at most :data:`MAX_PHASES`, each with exactly the loop's
    keys, its epochs within the bound of the options that plan them, never more run than planned."""
    if not isinstance(rows, list) or len(rows) > MAX_PHASES:
        raise RowError(field, type(rows).__name__, f"expected a list of at most {MAX_PHASES} phase rows")
    for i, row in enumerate(rows):
        at = f"{field}[{i}]"
        _row(at, row, PHASE_KEYS)
        _name(f"{at}.name", row["name"])
        planned = _bounded(f"{at}.epochs_planned", row["epochs_planned"], int, 0, MAX_PHASE_EPOCHS)
        _bounded(f"{at}.epochs_run", row["epochs_run"], int, 0, planned)
        for key in ("trainable_params", "frozen_params"):
            _bounded(f"{at}.{key}", row[key], int, 0, MAX_PARAMS)
        if not isinstance(row["stopped_early"], bool):
            raise RowError(f"{at}.stopped_early", row["stopped_early"], "expected true or false")
    return rows


def _number(value: Any) -> bool:
    """A finite figure ≥ 0 (an int compares exactly, however large; a float must be finite)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and (not isinstance(value, float) or math.isfinite(value)) and 0 <= value <= 1e15


def _labels(values: list[Any]) -> bool:
    """Class indices: whole numbers ≥ 0 (the report checks them against the classes it names)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _well_formed(r: RunRecord) -> bool:
    p = r.predictions
    lists = (p.items, p.y_true, p.y_pred, p.confidence)
    return (
        isinstance(r.backbone, str) and isinstance(r.strategy, str) and isinstance(r.seed, int)
        and isinstance(r.val, dict) and _number(r.val.get("accuracy")) and 0 <= r.val["accuracy"] <= 1
        and all(_number(n) for n in (r.train_seconds, r.images_per_second, r.peak_memory_bytes,
                                     r.trainable_params, r.frozen_params, r.memory_growth_bytes))
        and all(isinstance(x, list) for x in lists) and len(p.y_true) == len(p.y_pred) == len(p.confidence)
        and _labels(p.y_true) and _labels(p.y_pred) and all(_number(c) and c <= 1 for c in p.confidence)
        # items are names (paths, texts) the report looks its stored thumbnails up by, one per score
        and all(isinstance(x, str) for x in p.items) and (not p.y_true or len(p.items) == len(p.y_true))
        and isinstance(r.history, list) and all(isinstance(h, dict) for h in r.history)
        and isinstance(r.phases, list) and all(isinstance(h, dict) for h in r.phases)
        and (r.test is None or isinstance(r.test, dict))
    )  # fmt: skip
