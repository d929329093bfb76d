"""What ``rank`` scores and how: settings only, checked before any compute.

Kept apart from the workflow (which needs torch and scikit-learn) so the command line builds
its options from these fields and answers ``--help`` and bad values at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from transferkit.backbones import check_backbone_name
from transferkit.config import DEVICES, image_side
from transferkit.errors import ConfigError
from transferkit.modalities.image_io import SIDE
from transferkit.params import BATCH, POSITIVE, SEED, Interval, Options, as_tuples, param, validate, whole

SCORES = ("logme", "knn", "linear")


@dataclass(frozen=True)
class RankConfig:
    """Which backbones to score, and how; ``score`` orders the table and picks the winner."""

    backbones: tuple[str, ...] = param(
        (), "Comma-separated backbone names to score [default: every registered backbone of the data's modality: "
        "the offline zoo]",
    )  # fmt: skip
    score: str = param("logme", "Score that orders the table", Options(SCORES))
    image_size: int | str | None = param(
        "auto", "Images: input side in pixels, or auto: as `fit --image-size auto` chooses it",
        Options(("auto",)), SIDE, fix=f"must be auto or a whole number of pixels from {SIDE.low:g} to {SIDE.high:g}",
    )  # fmt: skip
    batch_size: int = param(32, "Batch size of the feature pass", BATCH)
    folds: int = param(
        5, "Cross-validation folds for the kNN and linear-probe scores", Interval(int, 2, 100),
        fix="cross-validation needs from 2 to 100 folds",
    )  # fmt: skip
    neighbours: int = param(5, "kNN score: neighbours per vote", whole(1_000))
    c: float = param(1.0, "Linear-probe score: inverse regularisation", POSITIVE)  # fmt: skip
    val_fraction: float = param(
        0.2, "Validation share held out (never scored) when the data has no val split",
        Interval(float, 0, 1, closed="neither"), fix="must be in [0.0, 1.0) and above 0",
    )  # fmt: skip
    seed: int = param(0, "Random seed of the split and the folds", SEED)
    device: str = param("auto", "Where the features are computed", Options(DEVICES))
    cache: bool = param(True, "Reuse and keep features on disk")

    def __post_init__(self) -> None:
        validate(self)
        if len(set(self.backbones)) != len(self.backbones):
            raise ConfigError("backbones", self.backbones, "each name once")
        for backbone in self.backbones:
            check_backbone_name(backbone)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RankConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"not a rank option; options: {', '.join(sorted(known))}")
        values = as_tuples(cls, values)
        if "image_size" in values:
            values = {**values, "image_size": image_side(values["image_size"])}
        return cls(**values)
