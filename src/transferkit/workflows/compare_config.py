"""What ``compare`` runs and under which shared budget: settings only, checked before any compute.

Kept apart from the workflow so the command line can build and validate it (and show its
defaults in ``--help``) without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.backbones import check_backbone_name
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.strategies import get_strategy

DEFAULT_STRATEGIES = ("linear-probe", "feature-extraction", "partial", "full", "two-phase", "scratch")
DOMAINS = ("auto", "similar", "different")


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and under which shared budget; ``base`` holds every other fit option."""

    backbones: tuple[str, ...] = ()  # none: the data's modality's default backbone
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    budget_epochs: int = 4
    seeds: int = 2
    folds: int = 1  # K ≥ 2: K-fold cross-validation, every labelled item validated once per seed
    lr_auto: bool = False  # run the LR range test per (backbone, strategy) first and use its rates
    time_budget: float | None = None  # seconds per run a recommendation may cost
    domain: str = "auto"
    base: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        for name in ("backbones", "strategies"):
            values = getattr(self, name)
            if not values and name == "strategies":
                raise ConfigError(name, values, "name at least one")
            if len(set(values)) != len(values):
                raise ConfigError(name, values, "each name once")
        for backbone in self.backbones:
            check_backbone_name(backbone)
        for strategy in self.strategies:
            get_strategy(strategy)
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError("seeds", self.seeds, "must be a positive whole number")
        if not isinstance(self.folds, int) or not 1 <= self.folds <= 20:
            raise ConfigError("folds", self.folds, "must be a whole number from 2 to 20 (1: one held-out split)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("time_budget", self.time_budget, "must be a positive number of seconds")
        if self.domain not in DOMAINS:
            raise ConfigError("domain", self.domain, f"choose one of {', '.join(DOMAINS)}")
        if not isinstance(self.budget_epochs, int) or self.budget_epochs < 1:
            raise ConfigError("budget_epochs", self.budget_epochs, "must be a positive whole number")
        candidates: tuple[str | None, ...] = self.backbones or (None,)
        for candidate in candidates:  # every run's config must be valid before the first runs
            for strategy in self.strategies:
                try:
                    self.run_config(candidate, strategy, 0)
                except ConfigError as exc:
                    raise ConfigError(
                        "budget_epochs" if exc.field == "epochs" else exc.field, exc.value, f"{strategy}: {exc}"
                    ) from exc

    def run_config(self, backbone: str | None, strategy: str, run_index: int) -> FitConfig:
        """Run ``k`` of a strategy: seed ``k // folds``, validated on fold ``k % folds``."""
        seed = self.base.seed + run_index // self.folds
        return self.base.replace(backbone=backbone, strategy=strategy, epochs=self.budget_epochs, seed=seed)

    def plan(self) -> list[tuple[str, str, int]]:
        """Seed by seed (fold by fold), so an early stop still leaves every strategy measured once."""
        return [(b, s, k) for b in self.backbones for k in range(self.seeds * self.folds) for s in self.strategies]

    def run_name(self, backbone: str, strategy: str, run_index: int) -> str:
        name = f"{backbone}__{strategy}__seed{run_index // self.folds}"
        return name if self.folds == 1 else f"{name}__fold{run_index % self.folds}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        return d
