"""The loop's built-in callbacks: console lines, the NaN guard, early stopping, history files, checkpoints.

Each listens to :mod:`transferkit.events`; :func:`default_callbacks` is what every run gets.
The loggers users watch runs in (TensorBoard, MLflow) are in :mod:`transferkit.loggers`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from transferkit import distributed
from transferkit.checkpoint import save_checkpoint
from transferkit.errors import TransferkitError
from transferkit.events import Callback, EpochRecord, Loop
from transferkit.paths import atomic_write_text
from transferkit.runfolder import RunFolder


class NanGuard(Callback):
    """Stop at the first batch whose loss is not finite: the run diverged, say how to fix it."""

    order = -10  # before anything records the batch

    def on_before_backward(self, loop: Loop, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TransferkitError(
                f"the loss became {loss.item()} (diverged); try a lower learning rate (--lr / --backbone-lr)"
            )


class EarlyStopping(Callback):
    """End a phase after ``patience`` epochs without a gain in the monitored score."""

    def __init__(self, patience: int | None, monitor: str) -> None:
        self.patience, self.monitor = patience, monitor

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        if self.patience is not None and loop.state.since_best >= self.patience:
            loop.summary["stopped_early"] = True
            loop.should_stop = True


class ConsoleLines(Callback):
    """One line per phase and per epoch (``*`` marks the best), in a terminal and in a log alike."""

    order = 10  # after early stopping has decided, so its line follows the epoch's

    def __init__(self, monitor: str, patience: int | None) -> None:
        self.monitor, self.patience = monitor, patience

    def on_phase_start(self, loop: Loop) -> None:
        if loop.console is None or loop.phase is None or loop.state.epoch_in_phase > 0:
            return
        row = loop.summary
        loop.console.print(
            f"[bold]phase {loop.phase.name}[/]: {loop.phase.epochs} epoch(s), {row['trainable_params']:,} trainable / "
            f"{row['frozen_params']:,} frozen parameters"
        )
        if loop.start_scores is not None:
            val = loop.start_scores
            loop.console.print(
                f"  start (epoch 0): val loss {val.loss:.3f} acc {val.accuracy:.3f} f1 {val.macro_f1:.3f}"
            )

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        if loop.console is None:
            return
        loop.console.print(
            f"epoch {record.epoch:>3}/{loop.total_epochs} \\[{record.phase}] "
            f"loss {record.train_loss:.3f} acc {record.train_accuracy:.3f} | "
            f"val loss {record.val_loss:.3f} acc {record.val_accuracy:.3f} f1 {record.val_macro_f1:.3f} | "
            f"{record.seconds:.0f}s{' *' if loop.best else ''}",
            highlight=False,
            soft_wrap=True,  # one line per epoch, also in logs and narrow terminals
        )
        if loop.should_stop:
            loop.console.print(
                f"  early stop: no {self.monitor} gain for {self.patience} epoch(s) in phase {record.phase}"
            )


class Checkpointer(Callback):
    """The loop's state after every epoch and at every phase boundary (main process only); at a
    boundary without optimizer and schedule, which the next phase makes afresh."""

    order = 20  # last: the epoch is fully booked

    def __init__(self, path: Path | None, resume_key: dict[str, Any] | None) -> None:
        self.path, self.resume_key = path, resume_key or {}

    def on_checkpoint(self, loop: Loop, boundary: bool) -> None:
        if self.path is None or not distributed.is_main():
            return
        run, amp = loop.run, loop.amp
        save_checkpoint(
            self.path,
            {
                "loop": loop.state, "model": loop.model.state_dict(), "best": loop.best_state,
                "optimizer": None if boundary else run.optimizer, "scheduler": None if boundary else run.scheduler,
                "generators": run.generators, "resume_key": self.resume_key,
                "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None, "extra": loop.extra,
            },
        )  # fmt: skip


def write_history(folder: Path, history: Sequence[dict[str, Any]]) -> None:
    """``history.json`` and ``history.csv``: one row per epoch (each file replaced whole)."""
    atomic_write_text(folder / RunFolder.HISTORY, json.dumps(list(history), indent=2))
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(folder / RunFolder.HISTORY_CSV, buffer.getvalue())


class HistoryFiles(Callback):
    """The run's history in its folder after every epoch, as Keras' ``CSVLogger``: an interrupted
    or still-running fit shows how far it got (the finished run writes the same files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        if distributed.is_main():
            write_history(self.folder, loop.state.history)


class ClipGradNorm(Callback):
    """``--clip-grad``: the trainable gradients' global L2 norm capped at ``max_norm`` before
    each optimiser step (after AMP's unscale), as Lightning's ``gradient_clip_val``. It keeps
    no state, so a resumed run clips exactly as an uninterrupted one."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, loop: Loop, optimizer: torch.optim.Optimizer) -> None:
        grads = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(grads, self.max_norm)


class WeightAverage(Callback):
    """``--ema D``: an exponential moving average of the weights (Polyak averaging, timm's
    ``ModelEmaV3``), updated after every optimiser step as ``avg = D·avg + (1−D)·weights``.
    Validation scores the averaged weights, so early stopping and the best epoch follow them, and
    the saved model is the average (the best epoch's, with restore-best). Training goes on from
    the raw weights. The average is checkpointed, so a resumed run ends bit-identically."""

    PREFIX = "ema."

    def __init__(self, decay: float, restore_best: bool) -> None:
        self.decay, self.restore_best = decay, restore_best
        self.raw: dict[str, torch.Tensor] = {}

    def _average(self, loop: Loop) -> dict[str, torch.Tensor]:
        """The averaged weights, by the model's own names (kept in ``loop.extra`` for the checkpoint)."""
        return {k[len(self.PREFIX) :]: v for k, v in loop.extra.items() if k.startswith(self.PREFIX)}

    def _tracked(self, loop: Loop) -> dict[str, torch.Tensor]:
        return {k: v for k, v in loop.model.state_dict().items() if v.is_floating_point()}

    def on_fit_start(self, loop: Loop) -> None:
        tracked = self._tracked(loop)
        saved = self._average(loop)
        if set(saved) != set(tracked) or any(saved[k].shape != v.shape for k, v in tracked.items()):
            saved = {k: v.detach().clone() for k, v in tracked.items()}  # a fresh run (or another model): start here
        loop.extra.update({self.PREFIX + k: v.to(tracked[k].device) for k, v in saved.items()})

    @torch.no_grad()
    def on_after_optimizer_step(self, loop: Loop) -> None:
        for name, value in self._tracked(loop).items():
            loop.extra[self.PREFIX + name].lerp_(value, 1.0 - self.decay)

    def _swap(self, loop: Loop, weights: dict[str, torch.Tensor]) -> None:
        loop.model.load_state_dict(weights, strict=False)

    def on_validation_start(self, loop: Loop) -> None:
        self.raw = {k: v.detach().clone() for k, v in self._tracked(loop).items()}
        self._swap(loop, self._average(loop))

    def on_validation_end(self, loop: Loop) -> None:
        self._swap(loop, self.raw)  # training continues from its own weights
        self.raw = {}

    def on_fit_end(self, loop: Loop, result: Any) -> None:
        if not self.restore_best:  # with restore-best the model is already the best epoch's average
            self._swap(loop, self._average(loop))


def variations(clip_grad: float | None, ema: float | None = None, restore_best: bool = True) -> list[Callback]:
    """The loop variations a run's options ask for, as callbacks (never a copy of the loop)."""
    found: list[Callback] = [ClipGradNorm(clip_grad)] if clip_grad is not None else []
    return found + ([WeightAverage(ema, restore_best)] if ema is not None else [])


def default_callbacks(
    patience: int | None, monitor: str, checkpoint: Path | None, resume_key: dict[str, Any] | None
) -> list[Callback]:
    """What every run listens with; a workflow adds its own (loggers) beside them."""
    history = [HistoryFiles(checkpoint.parent)] if checkpoint is not None else []  # the run's own folder
    return [
        NanGuard(),
        EarlyStopping(patience, monitor),
        ConsoleLines(monitor, patience),
        *history,
        Checkpointer(checkpoint, resume_key),
    ]
