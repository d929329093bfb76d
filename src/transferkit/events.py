"""The loop's events and the callbacks that listen, as fastai's ``Callback`` and Lightning's hooks.

The loop (:func:`transferkit.training.train`) says what happens — the fit starts, a phase
starts; per batch: the loss is known (before backward), the gradients are (after backward),
the optimizer is about to step (gradients unscaled: clip them here), it has stepped (average
the weights here), the batch ends; an epoch ends, a checkpoint is due, a phase ends, the fit
ends — and each :class:`Callback` acts on the events it cares about. Console lines, checkpoints, early
stopping, the NaN guard, the history files and the TensorBoard / MLflow loggers are callbacks
(:mod:`transferkit.callbacks`); a variation (gradient clipping, EMA, a tracker) is one more,
never a copy of the loop.

Every hook receives the :class:`Loop`: what a callback may read (the model, the phase, the
records so far) and what it may ask for: ``should_stop`` ends the phase after this epoch
(reset when the next phase starts), as Lightning's ``trainer.should_stop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from transferkit.checkpoint import LoopState
    from transferkit.strategies import Phase


@dataclass
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float


@dataclass
class PhaseSummary:
    name: str
    epochs_planned: int
    epochs_run: int
    trainable_params: int
    frozen_params: int
    stopped_early: bool


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    phases: list[PhaseSummary] = field(default_factory=list)
    best_epoch: int = 0

    def history_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.history]


@dataclass
class Loop:
    """The loop as its callbacks see it. ``run`` is the phase's :class:`~transferkit.training.PhaseRun`."""

    model: nn.Module
    state: LoopState
    total_epochs: int
    console: Console | None
    phase: Phase | None = None
    phase_index: int = 0
    run: Any = None
    summary: dict[str, Any] = field(default_factory=dict)  # the phase's row in state.phases
    step: int = 0  # optimiser steps so far in this process (resumed runs count from the resume)
    should_stop: bool = False  # a callback ends the phase after this epoch (early stopping); reset per phase
    best: bool = False  # the epoch just ended is the best so far (set by the loop before on_epoch_end)
    best_state: dict[str, Any] = field(default_factory=dict)  # the best epoch's weights (restore-best)
    amp: Any = None  # the loss scaler lives here (checkpointed with the loop)
    start_scores: Any = None  # the starting weights' validation scores, when they compete (score_start)
    # Tensors a callback keeps across a resume (an EMA's averaged weights): saved in the checkpoint
    # and put back here before on_fit_start.
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return float(self.run.optimizer.param_groups[0]["lr"]) if self.run is not None else 0.0

    def learning_rates(self) -> dict[str, float]:
        """The head's rate and the backbone's top rate (its lower groups decay from it)."""
        if self.run is None:
            return {}
        rates = [float(g["lr"]) for g in self.run.optimizer.param_groups]  # the head's groups come first
        return {"head": rates[0], **({"backbone": max(rates[2:])} if len(rates) > 2 else {})}


class Callback:
    """One listener; every hook does nothing unless overridden. ``order``: lower runs first."""

    order = 0

    def on_fit_start(self, loop: Loop) -> None: ...

    def on_phase_start(self, loop: Loop) -> None: ...

    def on_before_backward(self, loop: Loop, loss: torch.Tensor) -> None: ...

    def on_after_backward(self, loop: Loop) -> None: ...

    def on_before_optimizer_step(self, loop: Loop, optimizer: torch.optim.Optimizer) -> None: ...

    def on_after_optimizer_step(self, loop: Loop) -> None: ...

    def on_batch_end(self, loop: Loop, loss: torch.Tensor) -> None: ...

    def on_validation_start(self, loop: Loop) -> None: ...

    def on_validation_end(self, loop: Loop) -> None: ...  # scores booked, the best epoch's weights kept

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None: ...

    def on_checkpoint(self, loop: Loop, boundary: bool) -> None: ...

    def on_phase_end(self, loop: Loop) -> None: ...

    def on_fit_end(self, loop: Loop, result: TrainResult) -> None: ...

    def close(self) -> None:
        """Release files and connections; called once, also when the fit fails."""


HOOKS = (
    "on_fit_start", "on_phase_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_after_optimizer_step", "on_batch_end", "on_validation_start", "on_validation_end", "on_epoch_end",
    "on_checkpoint", "on_phase_end", "on_fit_end",
)  # fmt: skip


def _fan_out(hook: str) -> Any:
    def call(self: Callbacks, *args: Any) -> None:
        for c in self.callbacks:
            getattr(c, hook)(*args)

    call.__name__ = hook
    return call


class Callbacks(Callback):
    """Many callbacks as one, in ``order``: each hook of :data:`HOOKS` calls every callback's in
    turn (one dispatcher, not a hand-written fan-out per hook); ``close`` reaches every one even
    if one fails."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = sorted(callbacks, key=lambda c: c.order)

    def close(self) -> None:
        errors = []
        for c in self.callbacks:
            try:
                c.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


for _hook in HOOKS:
    setattr(Callbacks, _hook, _fan_out(_hook))
