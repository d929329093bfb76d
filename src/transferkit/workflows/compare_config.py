"""What ``compare`` runs and under which shared budget: settings only, checked before any compute.

Kept apart from the workflow so the command line can build and validate it (and show its
defaults in ``--help``) without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from transferkit.backbones import check_backbone_name
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.extras import ensure
from transferkit.params import WHOLE, Interval, Options, param, validate, whole
from transferkit.records import RunKey
from transferkit.strategies import get_strategy, registered_strategies, usable


def default_strategies() -> tuple[str, ...]:
    """Every registered strategy that says it belongs in a comparison (`Strategy.compared`), in
    registration order: asked when a comparison is configured, so a strategy registered later counts."""
    return tuple(s.name for s in registered_strategies() if s.compared)


DOMAINS = ("auto", "similar", "different")


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and under which shared budget; ``base`` holds every other fit option."""

    backbones: tuple[str, ...] = param(
        (), "Backbone to compare; repeat for several [default: the data's default]", cli="--backbone", repeat=True
    )
    strategies: tuple[str, ...] = param(
        (), "Comma-separated strategy names [default: every strategy compared by default, see `transferkit list`]"
    )  # empty: the strategies that are compared by default, resolved in __post_init__
    budget_epochs: int = param(4, "Epoch budget every strategy gets", WHOLE)
    seeds: int = param(2, "Seeds per strategy; the spread over them decides ties", whole(100))
    folds: int = param(
        1, "K-fold cross-validation: every item validated once (small data); 1: one held-out split",
        Interval(int, 1, 20), fix="must be a whole number from 2 to 20 (1: one held-out split)",
    )  # fmt: skip
    # --lr auto: the LR range test per (backbone, strategy) first, its rates used
    lr_auto: bool = param(False, "Run `lr-find` per strategy first and use its rates", command_line=False)
    time_budget: float | None = param(
        None, "Seconds per run the recommendation may cost", Interval(float, 0, 1e7, closed="right"),
        fix="must be a positive number of seconds, up to 1e7",
    )  # fmt: skip
    domain: str = param(
        "auto", "auto, similar or different (to the pre-training data), for the prior", Options(DOMAINS)
    )
    base: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        validate(self)
        if not self.strategies:
            object.__setattr__(self, "strategies", default_strategies())
        for name in ("backbones", "strategies"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(name, values, "each name once")
        for backbone in self.backbones:
            check_backbone_name(backbone)
        for strategy in self.strategies:
            get_strategy(strategy)
        candidates: tuple[str | None, ...] = self.backbones or (None,)
        for candidate in candidates:  # every run's config must be valid before the first runs
            for strategy in self.strategies:
                try:
                    self.run_config(candidate, strategy, 0)
                except ConfigError as exc:
                    raise ConfigError(
                        "budget_epochs" if exc.field == "epochs" else exc.field, exc.value, f"{strategy}: {exc}"
                    ) from exc

    def installed(self) -> tuple[CompareConfig, str | None]:
        """The config this install can run: the default strategies less those whose optional
        package is missing, with one line saying which (none is today; a default must not fail
        on an extra). A strategy the user named is refused with its install line instead."""
        if self.strategies != default_strategies():
            for strategy in self.strategies:
                ensure(get_strategy(strategy).requires, f"the {strategy} strategy")
            return self, None
        kept, note = usable(self.strategies)
        return replace(self, strategies=tuple(kept)), note

    def run_config(self, backbone: str | None, strategy: str, run_index: int) -> FitConfig:
        """Run ``k`` of a strategy: seed ``k // folds``, validated on fold ``k % folds``."""
        seed = (self.base.seed + run_index // self.folds) % 2**32  # within the seed's bound, whatever the base
        return self.base.replace(backbone=backbone, strategy=strategy, epochs=self.budget_epochs, seed=seed)

    def plan(self) -> list[tuple[str, str, int]]:
        """Seed by seed (fold by fold), so an early stop still leaves every strategy measured once."""
        return [(b, s, k) for b in self.backbones for k in range(self.seeds * self.folds) for s in self.strategies]

    def run_name(self, backbone: str, strategy: str, run_index: int) -> str:
        """Run ``k``'s folder: its seed, and with ``folds`` > 1 its fold."""
        fold = run_index % self.folds if self.folds > 1 else None
        return RunKey(backbone, strategy).run_name(run_index // self.folds, fold)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        return d
