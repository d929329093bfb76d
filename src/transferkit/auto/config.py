"""What ``auto`` may spend and what it hands back: settings only, checked before any compute.

Kept apart from the workflow (torch, scikit-learn) so the command line builds its options from
these fields and answers ``--help`` and bad values at once, as ``rank_config`` does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from transferkit.backbones import check_backbone_name
from transferkit.config import DEVICES
from transferkit.errors import ConfigError
from transferkit.params import SEED, Check, Interval, Options, as_tuples, param, validate

DEPLOYS = ("onnx", "int8", "none")
_UNITS = {"s": 1, "m": 60, "h": 3600}
# At most 12 digits: a number the float and every later sum of seconds hold exactly, so a
# budget of 400 nines is refused here, not an OverflowError deep in the search.
_DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,6})?)\s*([smh]?)\s*$")
FEWEST_SECONDS = 30  # below this not even the first probe and its export fit
MOST_SECONDS = 7 * 24 * 3600  # a week: a budget is a deadline someone waits for, not "forever"


def seconds(budget: str) -> float:
    """``90s``, ``5m``, ``1.5h`` or a plain number of seconds → seconds (``ValueError`` when
    it is not a duration)."""
    found = _DURATION.match(budget) if isinstance(budget, str) and len(budget) <= 40 else None
    if found is None:
        raise ValueError(budget[:40] if isinstance(budget, str) else budget)
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def _duration(value: Any) -> bool:
    try:
        return isinstance(value, str) and FEWEST_SECONDS <= seconds(value) <= MOST_SECONDS
    except ValueError:
        return False


@dataclass(frozen=True)
class AutoConfig:
    """The whole search in five settings; every other choice is measured on the data."""

    budget: str = param(
        "10m", "Wall-clock budget for the whole command, start-up and export included: 90s, 5m, 1h",
        Check(_duration, "a duration from 30s to 168h (a week)",
              ("0m", "10", "five minutes", "1d", "169h", "604801", "9" * 400, "1e9s")),
        fix="must be a duration from 30s to 168h (a week), e.g. 90s, 5m or 1h",
    )  # fmt: skip
    target: str = param("auto", "Where the search trains and the model is meant to run", Options(DEVICES))
    deploy: str = param(
        "onnx", "What to ship beside the PyTorch model: onnx, int8 (ONNX int8 where it agrees), or none",
        Options(DEPLOYS),
    )  # fmt: skip
    seed: int = param(0, "Random seed of the held-out share, the splits and every run", SEED)
    backbones: tuple[str, ...] = param(
        (), "A backbone to rank beside the modality's offline zoo; repeat for several", cli="--backbone", repeat=True
    )
    zoo: bool = param(True, "Rank the modality's offline zoo (--no-zoo: only the --backbone ones)")
    holdout: float = param(
        0.2, "Share of the labelled items held out before the search (stratified) to score the final model; "
        "unused when the data has a test/ split",
        Interval(float, 0, 0.5, closed="neither"), fix="must be above 0 and below 0.5",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
        if not self.zoo and not self.backbones:
            raise ConfigError("zoo", self.zoo, "--no-zoo needs at least one --backbone to search")
        if len(set(self.backbones)) != len(self.backbones):
            raise ConfigError("backbones", self.backbones, "each name once")
        for backbone in self.backbones:
            check_backbone_name(backbone)

    @property
    def seconds(self) -> float:
        return seconds(self.budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AutoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                unknown[0], values[unknown[0]], f"not an auto option; options: {', '.join(sorted(known))}"
            )
        return cls(**as_tuples(cls, values))
