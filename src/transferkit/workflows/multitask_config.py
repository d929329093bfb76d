"""What ``fit-multitask`` trains: its task columns and their loss weighting — options like every
other command's (:func:`transferkit.params.param`: help, bounds; the command line, YAML and
``--help`` generated from them), checked before any compute. Kept apart from the workflow so
the command line builds and validates it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.params import Options, param, validate
from transferkit.strategies import get_strategy, registered_strategies

WEIGHTINGS = ("fixed", "uncertainty")


@dataclass(frozen=True)
class MultiTaskConfig:
    """Tasks and their loss weighting; ``base`` holds every shared `fit` option."""

    tasks: tuple[str, ...] = param((), "Comma-separated task columns; an empty cell means unlabelled")
    image_column: str = param("image", "Column holding the file paths")
    weighting: str = param(
        "fixed", "Loss weighting: fixed or uncertainty (learned, Kendall et al. 2018)", Options(WEIGHTINGS)
    )
    task_weights: tuple[float, ...] | None = param(
        None, "With fixed weighting: one positive weight per task, e.g. 1,0.5 [default: 1 each]"
    )
    base: FitConfig = field(default_factory=lambda: FitConfig(augment=False))

    def __post_init__(self) -> None:
        validate(self)  # each option against its declaration, as every config is
        if not self.tasks:
            raise ConfigError("tasks", self.tasks, "name at least one task column, e.g. --tasks digit,parity")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("tasks", self.tasks, "each task once")
        if self.image_column in self.tasks:
            raise ConfigError("image_column", self.image_column, "must not also be a task")
        if self.task_weights is not None:
            if self.weighting != "fixed":
                raise ConfigError("task_weights", self.task_weights, "only applies with weighting='fixed'")
            if len(self.task_weights) != len(self.tasks) or any(not 0 < w <= 1e6 for w in self.task_weights):
                raise ConfigError(
                    "task_weights", self.task_weights, f"give {len(self.tasks)} positive numbers, one per task"
                )
        if get_strategy(self.base.strategy).uses_sklearn:
            raise ConfigError(
                "strategy", self.base.strategy,
                "multi-task heads are trained by gradient: use one of "
                + ", ".join(s.name for s in registered_strategies() if not s.uses_sklearn),
            )  # fmt: skip

    def weights(self) -> tuple[float, ...]:
        return self.task_weights or tuple(1.0 for _ in self.tasks)

    @classmethod
    def from_values(cls, values: dict[str, Any], base: FitConfig) -> MultiTaskConfig:
        """From the command line's and YAML's values: names split at commas, weights read as numbers."""
        weights = values.get("task_weights")
        if isinstance(weights, str):
            values = {**values, "task_weights": _numbers(weights)}
        elif isinstance(weights, list):
            values = {**values, "task_weights": tuple(weights)}
        tasks = values.get("tasks")
        if isinstance(tasks, str | list):
            names = tasks.split(",") if isinstance(tasks, str) else tasks
            values = {**values, "tasks": tuple(str(t).strip() for t in names if str(t).strip())}
        return cls(**values, base=base)


def _numbers(text: str) -> tuple[float, ...] | str:
    try:
        return tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        return text  # the declaration refuses it, naming the option
