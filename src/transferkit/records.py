"""What one run of a comparison is called and what it measured: typed, shared by compare,
the verdict and the report (and whatever searches over runs).

A record is written as ``result.json`` in its run folder and read back from there and from
``results.json``, both files a user may edit or replace: :meth:`RunRecord.from_dict` checks
every field the verdict and the report read, and a record that fails is run again, never
half-used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        return record if _well_formed(record) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _well_formed(r: RunRecord) -> bool:
    p = r.predictions
    lists = (p.items, p.y_true, p.y_pred, p.confidence)
    return (
        isinstance(r.backbone, str) and isinstance(r.strategy, str) and isinstance(r.seed, int)
        and isinstance(r.val, dict) and _number(r.val.get("accuracy")) and 0 <= r.val["accuracy"] <= 1
        and all(_number(n) for n in (r.train_seconds, r.images_per_second, r.peak_memory_bytes,
                                     r.trainable_params, r.frozen_params, r.memory_growth_bytes))
        and all(isinstance(x, list) for x in lists) and len(p.y_true) == len(p.y_pred) == len(p.confidence)
        # items are names (paths, texts) the report looks its stored thumbnails up by, one per score
        and all(isinstance(x, str) for x in p.items) and (not p.y_true or len(p.items) == len(p.y_true))
        and isinstance(r.history, list) and all(isinstance(h, dict) for h in r.history)
        and isinstance(r.phases, list) and all(isinstance(h, dict) for h in r.phases)
        and (r.test is None or isinstance(r.test, dict))
    )  # fmt: skip
