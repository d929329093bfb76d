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

    def run_config(self, backbone: str | None, strategy: str, seed_index: int) -> FitConfig:
        return self.base.replace(
            backbone=backbone, strategy=strategy, epochs=self.budget_epochs, seed=self.base.seed + seed_index
        )

    def plan(self) -> list[tuple[str, str, int]]:
        """Seed by seed, so an early stop still leaves every strategy measured once."""
        return [(b, s, k) for b in self.backbones for k in range(self.seeds) for s in self.strategies]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        return d
