"""The training loop: plain PyTorch, one phase at a time, readable top to bottom.

Every workflow trains here — ``fit``, ``compare``, multi-task, federated clients, DDP.
What differs plugs in rather than a copy of the loop: an
:class:`~transferkit.objectives.Objective` (loss, training accuracy, validation scores), a
``penalty`` added to the loss, :class:`LoopSettings`, and callbacks that listen to the loop's
events (:mod:`transferkit.events`; console lines, checkpoints, early stopping, the NaN guard
and the loggers are callbacks). Freezing and the BatchNorm policy live in
:mod:`transferkit.freezing`, the optimizer and schedule in :mod:`transferkit.optim`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.callbacks import default_callbacks
from transferkit.checkpoint import (
    Checkpoint,
    LoopState,
    check_optimizer,
    check_phase_rows,
    check_position,
    check_scheduler,
    check_tensors,
    load_checkpoint,
    restore_rng,
)
from transferkit.errors import TransferkitError
from transferkit.events import Callback, Callbacks, EpochRecord, Loop, PhaseSummary, TrainResult
from transferkit.freezing import count_params, freeze_for_phase, set_train_mode
from transferkit.layers import LayerGroup
from transferkit.model import TransferModel
from transferkit.objectives import Objective, ValidationScores
from transferkit.optim import build_optimizer, warmup_cosine
from transferkit.runtime import Amp
from transferkit.schema import SchemaError
from transferkit.strategies import Phase

# --------------------------------------------------------------------------- one epoch


def batch_loss(
    net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, objective: Objective, amp: Amp, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(this rank's part of the global batch's mean loss, the batch's loss sum, its weight,
    the logits) for ``labels`` already on ``device``."""
    with amp.autocast():
        try:
            logits = net(inputs.to(device, non_blocking=True))
        except ValueError as exc:  # BatchNorm training on one value a channel: a last batch of one at 1x1
            if "more than 1 value per channel" not in str(exc):
                raise
            raise TransferkitError(
                f"a training batch of {len(labels)} item(s) reaches a BatchNorm layer as one value a channel, "
                "which cannot train; choose a --batch-size that leaves no single item over, or a larger --image-size"
            ) from None
        total, weight = objective.loss(logits.float(), labels)
        return distributed.global_mean(total, weight), total, weight, logits


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, amp: Amp, events: Callback | None = None,
    loop: Loop | None = None,
) -> None:  # fmt: skip
    """Backward and step, telling the callbacks after backward, before the step (gradients
    unscaled from AMP's loss scale: gradient clipping acts here) and after it (EMA)."""
    optimizer.zero_grad(set_to_none=True)
    amp.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    if events is not None and loop is not None:
        events.on_after_backward(loop)
        amp.scaler.unscale_(optimizer)  # a no-op without AMP; with it, the step skips what overflowed
        events.on_before_optimizer_step(loop, optimizer)
    amp.scaler.step(optimizer)
    amp.scaler.update()
    if events is not None and loop is not None:
        loop.step += 1
        events.on_after_optimizer_step(loop)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    amp: Amp,
    device: torch.device,
    progress: Progress | None,
    bn_update: bool = False,
    penalty: Callable[[], torch.Tensor] | None = None,
    events: Callback | None = None,
    loop: Loop | None = None,
) -> tuple[float, float]:
    set_train_mode(distributed.unwrap(model), bn_update)
    total_loss, weights, correct, seen = 0.0, 0.0, 0, 0
    task = progress.add_task("train", total=len(loader), status="") if progress else None
    for images, labels in loader:
        labels = labels.to(device, non_blocking=True)
        loss, total, weight, logits = batch_loss(model, images, labels, objective, amp, device)
        if penalty is not None:  # e.g. FedProx's pull towards the global weights
            loss = loss + penalty()
        if events is not None and loop is not None:
            events.on_before_backward(loop, loss)  # the NaN guard stops a diverged batch here
        optimizer_step(loss, optimizer, amp, events, loop)
        scheduler.step()
        if events is not None and loop is not None:
            events.on_batch_end(loop, loss)
        right, counted = objective.correct(logits, labels)
        batch_total, batch_weight = torch.stack([total.detach(), weight]).tolist()  # one sync, not two
        total_loss += batch_total
        weights += batch_weight
        correct += right
        seen += counted
        if progress is not None and task is not None:
            progress.update(task, advance=1, status=f"loss {total_loss / weights:.4f} acc {correct / max(seen, 1):.3f}")
    if progress is not None and task is not None:
        progress.remove_task(task)
    total_loss, weights, correct, seen = distributed.sum_across(total_loss, weights, correct, seen)  # type: ignore[assignment]
    return total_loss / max(weights, 1e-12), correct / max(seen, 1)


# --------------------------------------------------------------------------- the loop


def _monitor_value(scores: ValidationScores, monitor: str) -> float:
    return -scores.loss if monitor == "loss" else float(getattr(scores, monitor))


def _progress(console: Console | None) -> Progress | None:
    """A live bar on a terminal; none in a log or pipe, where each redraw would leave a line."""
    if console is None or not console.is_terminal:
        return None
    return Progress(
        TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"), console=console, transient=True,
    )  # fmt: skip


@dataclass
class Loaders:
    train: DataLoader[Any]
    val: DataLoader[Any]


@dataclass(frozen=True)
class LoopSettings:
    """How the loop optimises, stops and restores; the same for every workflow.

    ``decay=False`` holds the LR after warm-up (federated clients, whose LR the server
    schedules across rounds); ``bn_update`` lets unfrozen BatchNorm re-estimate statistics.
    """

    weight_decay: float = 0.01
    warmup: float = 0.1
    patience: int | None = None
    monitor: str = "accuracy"
    restore_best: bool = True
    bn_update: bool = False
    decay: bool = True
    # The weights the loop starts from compete with every epoch for "best" (as epoch 0): set
    # when they are already a solution (a probe-initialised head), so that training can only
    # keep or improve on it by the validation score, never end below it.
    score_start: bool = False
    layer_decay: float = 1.0  # see optim.build_optimizer; 1 for networks that start from random


@dataclass
class Shortcut:
    """A phase's way past its frozen layers: the net it steps and the cached inputs it reads."""

    net: nn.Module
    loaders: Loaders
    kind: str = "features"  # what its loader shuffles: its stream is checkpointed under this name


FrozenInputs = Callable[[Phase], Shortcut | None]


@dataclass
class PhaseRun:
    """What one phase trains with: the network it steps, its data, optimizer and schedule."""

    net: nn.Module
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generators: dict[str, torch.Generator]


def train(
    model: TransferModel,
    groups: Sequence[LayerGroup],
    phases: Sequence[Phase],
    images: Loaders,
    objective: Objective,
    settings: LoopSettings,
    *,
    device: torch.device,
    frozen: FrozenInputs | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    resume_key: dict[str, Any] | None = None,
    console: Console | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Run each phase in turn; epochs are numbered on from one phase to the next.

    - ``objective``: the loss, the training accuracy and the validation scores (single-label
      classification, multi-task heads, …).
    - ``frozen``: for a phase, a shortcut past the layers it keeps frozen (or ``None``): the
      head alone on cached features when the whole backbone is frozen, the top groups on
      cached activations at a cut (:mod:`transferkit.cutpoint`). Same result as running the
      eval-mode frozen layers every step, in a fraction of the time.
    - ``checkpoint``: written after every epoch and at every phase boundary; with ``resume``
      the loop continues from it with the same phase, freeze state, optimizer, schedule and
      random streams, so it ends with the weights an uninterrupted run ends with.
    - ``penalty``: a term added to every batch's loss (FedProx's pull to the global weights).
    - ``callbacks``: listeners to the loop's events beside the built-in ones (console lines,
      NaN guard, early stopping, checkpoints): loggers, or a variation of the loop.
    """
    events = Callbacks([*default_callbacks(settings.patience, settings.monitor, checkpoint, resume_key), *callbacks])
    with contextlib.closing(events):  # every callback closes its files, also when the run fails
        amp = Amp(device)
        state, best_state, saved = _resume(model, checkpoint if resume else None, console)
        if saved is not None:
            check_position(state, [p.epochs for p in phases], checkpoint)
            check_phase_rows(state, [(p.name, p.epochs) for p in phases], checkpoint)
        loop = Loop(model, state, sum(p.epochs for p in phases), console, best_state=best_state, amp=amp)
        if saved is not None:
            loop.extra = dict(saved.extra)  # callbacks' tensors (an EMA's average), checked by their owner
        events.on_fit_start(loop)
        for index, phase in enumerate(phases):
            if index < state.phase_index:
                continue
            loop.run = run = start_phase(model, groups, phase, images, frozen, settings, device)
            if saved is not None:  # the first phase after a resume: put every moving part back
                _restore(saved, run, state, amp, phase.epochs * len(run.loaders.train))
                saved = None
            loop.phase, loop.phase_index, loop.summary = phase, index, _phase_summary(state, model, phase)
            if settings.score_start and state.epoch == 0 and state.best_val is None:  # a fresh run
                loop.start_scores = _score_start(state, objective.evaluate(run.net, run.loaders.val, device), settings)
            loop.should_stop = False  # a stop asked for in an earlier phase ended that phase only
            events.on_phase_start(loop)
            loop.start_scores = None
            while state.epoch_in_phase < phase.epochs and not loop.should_stop:  # the flag callbacks set
                _epoch(loop, events, objective, settings, penalty, device)
            state.phase_index, state.epoch_in_phase, state.since_best = index + 1, 0, 0
            events.on_checkpoint(loop, True)  # phase boundary: the next phase starts with a fresh optimizer
            events.on_phase_end(loop)
        if settings.restore_best:
            model.load_state_dict(loop.best_state)
        result = TrainResult(
            history=[EpochRecord(**h) for h in state.history],
            phases=[PhaseSummary(**p) for p in state.phases],
            best_epoch=state.best_epoch,
        )
        events.on_fit_end(loop, result)
        return result


def _epoch(
    loop: Loop,
    events: Callback,
    objective: Objective,
    settings: LoopSettings,
    penalty: Callable[[], torch.Tensor] | None,
    device: torch.device,
) -> None:
    """One epoch of the phase: train, validate, book it, tell the callbacks, checkpoint."""
    run, state, phase = loop.run, loop.state, loop.phase
    assert phase is not None
    start = time.perf_counter()
    with _progress(loop.console) or contextlib.nullcontext() as progress:
        train_loss, train_acc = train_one_epoch(
            run.net, run.loaders.train, objective, run.optimizer, run.scheduler, loop.amp, device, progress,
            settings.bn_update, penalty, events, loop,
        )  # fmt: skip
    events.on_validation_start(loop)
    val = objective.evaluate(run.net, run.loaders.val, device)
    record = EpochRecord(
        state.epoch + 1, phase.name, train_loss, train_acc, val.loss, val.accuracy, val.macro_f1,
        run.optimizer.param_groups[0]["lr"], time.perf_counter() - start,
    )  # fmt: skip
    loop.best = _record(state, loop.summary, record, val, settings)
    if loop.best:
        loop.best_state = copy.deepcopy(loop.model.state_dict())
    events.on_validation_end(loop)
    events.on_epoch_end(loop, record)  # console line, early stopping, loggers
    events.on_checkpoint(loop, False)


def _resume(
    model: nn.Module, checkpoint: Path | None, console: Console | None
) -> tuple[LoopState, dict[str, torch.Tensor], Checkpoint | None]:
    """The loop's state: fresh, or the checkpoint's (model weights put back already)."""
    if checkpoint is None or not checkpoint.is_file():
        return LoopState(), copy.deepcopy(model.state_dict()), None
    saved = load_checkpoint(checkpoint)
    check_tensors(saved.model, model.state_dict(), checkpoint)
    check_tensors(saved.best, model.state_dict(), checkpoint)
    # its history and phase rows were held to the loop's shapes and bounds as they were read
    # (checkpoint.loop_state), and are held to this run's plan once the plan is known (train)
    model.load_state_dict(saved.model)
    if console:
        console.print(f"resuming from {checkpoint} after epoch {saved.loop.epoch}")
    return saved.loop, saved.best, saved


def start_phase(
    model: TransferModel,
    groups: Sequence[LayerGroup],
    phase: Phase,
    images: Loaders,
    frozen: FrozenInputs | None,
    settings: LoopSettings,
    device: torch.device,
) -> PhaseRun:
    """Freeze for the phase and build what it trains with."""
    freeze_for_phase(model, groups, phase)
    shortcut = frozen(phase) if frozen is not None else None
    # DDP records the trainable set when it wraps, so each phase wraps anew. A shortcut (the
    # head on features, the top on activations) reads inputs gathered on every rank: it
    # trains alike in every rank and needs no wrapper.
    net: nn.Module = shortcut.net if shortcut is not None else distributed.wrap(model, device)
    loaders = shortcut.loaders if shortcut is not None else images
    optimizer = build_optimizer(model, phase, settings.weight_decay, groups, settings.layer_decay)
    scheduler = warmup_cosine(optimizer, phase.epochs * len(loaders.train), settings.warmup, settings.decay)
    return PhaseRun(net, loaders, optimizer, scheduler, _generators(images, shortcut))


def _restore(saved: Checkpoint, run: PhaseRun, state: LoopState, amp: Amp, steps: int) -> None:
    """Put the optimizer, schedule, loss scale and random streams back; a checkpoint whose
    states do not fit this run (edited, or from another version) is refused, not half-used.
    ``steps``: the phase's optimiser steps, the farthest its schedule can have gone."""
    try:
        _restore_states(saved, run, state, amp, steps)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError, SchemaError) as exc:
        raise TransferkitError(
            f"the checkpoint's training state does not fit this run ({type(exc).__name__}: {exc}); "
            "delete checkpoint.safetensors to start over"
        ) from None


def _restore_states(saved: Checkpoint, run: PhaseRun, state: LoopState, amp: Amp, steps: int) -> None:
    if state.epoch_in_phase > 0 and saved.optimizer is not None and saved.scheduler is not None:
        # every value read back within what this run's own optimizer and schedule can hold
        check_scheduler(saved.scheduler, run.scheduler.state_dict(), steps)
        check_optimizer(saved.optimizer, run.optimizer)
        run.optimizer.load_state_dict(saved.optimizer)
        run.scheduler.load_state_dict(saved.scheduler)
    if saved.scaler and amp.scaler.is_enabled():
        amp.scaler.load_state_dict(saved.scaler)
    restore_rng(saved.rng["meta"], saved.rng["torch"])
    for name, generator in run.generators.items():
        if name in saved.generators:
            generator.set_state(saved.generators[name])


def _phase_summary(state: LoopState, model: TransferModel, phase: Phase) -> dict[str, Any]:
    """The phase's row in ``state.phases``: added when the phase starts, reused on resume."""
    if state.epoch_in_phase == 0:
        trainable, frozen = count_params(model, True), count_params(model, False)
        state.phases.append(asdict(PhaseSummary(phase.name, phase.epochs, 0, trainable, frozen, False)))
    return state.phases[-1]


def _score_start(state: LoopState, val: ValidationScores, settings: LoopSettings) -> ValidationScores:
    """The starting weights as epoch 0 of the race for best (a NaN score never counts)."""
    value = _monitor_value(val, settings.monitor)
    if value == value:
        state.best_value, state.best_epoch, state.best_val = value, 0, val.summary()
    return val


def _record(
    state: LoopState, summary: dict[str, Any], record: EpochRecord, val: ValidationScores, settings: LoopSettings
) -> bool:
    """Book the epoch; whether it is the best so far. A NaN score never counts as best."""
    state.epoch += 1
    state.epoch_in_phase += 1
    summary["epochs_run"] += 1
    state.history.append(asdict(record))
    value = _monitor_value(val, settings.monitor)
    improved = value > state.best_value
    if improved:
        state.best_value, state.best_epoch, state.best_val = value, state.epoch, val.summary()
        state.since_best = 0
    else:
        state.since_best += 1
    return improved


def _generators(images: Loaders, shortcut: Shortcut | None) -> dict[str, torch.Generator]:
    """The shuffling streams of the training loaders, saved so a resume reshuffles alike."""
    found = {"images": images.train.generator}
    if shortcut is not None:
        found[shortcut.kind] = shortcut.loaders.train.generator
    return {name: g for name, g in found.items() if g is not None}
