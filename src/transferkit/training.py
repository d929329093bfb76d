"""The training loop: plain PyTorch, one phase at a time, readable top to bottom.

BatchNorm policy, the same in every phase:
- a BatchNorm layer whose parameters are frozen runs in eval mode, so its running
  statistics never change while it is frozen; with the whole backbone frozen, the whole
  backbone runs in eval mode;
- an unfrozen BatchNorm layer trains its scale and shift, and by default (``bn_update=False``)
  still normalises with the pre-trained statistics. Re-estimating them from a small,
  different dataset shifts every feature the head was trained on (Keras' fine-tuning guide
  gives the same advice); ``bn_update=True`` lets them update, as fastai does.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.backbones import LayerGroup, is_adapter
from transferkit.checkpoint import LoopState, load_checkpoint, restore_rng, save_checkpoint
from transferkit.errors import TransferkitError
from transferkit.metrics import Scores, score
from transferkit.model import TransferModel
from transferkit.strategies import Phase


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TransferkitError("device='cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- freezing


def freeze_for_phase(model: TransferModel, groups: Sequence[LayerGroup], phase: Phase) -> None:
    """Make exactly the head and the phase's top backbone groups trainable."""
    trainable = {name for i in phase.trainable_groups(len(groups)) for name in groups[i].param_names}
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(name in trainable or (phase.adapters and is_adapter(name)))
    for param in model.head.parameters():
        param.requires_grad_(True)


def set_train_mode(model: nn.Module, bn_update: bool = False) -> None:
    """``model.train()``, except BatchNorm as the module docstring says."""
    model.train()
    if not isinstance(model, TransferModel):  # a head alone, trained on cached features
        return
    if not any(p.requires_grad for p in model.backbone.parameters()):
        model.backbone.eval()
        return
    for module in model.backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            frozen = not any(p.requires_grad for p in own)
            if frozen or not bn_update:
                module.eval()


def count_params(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: TransferModel, phase: Phase, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the head and backbone at their own LRs; no decay on biases and norms."""
    groups: list[dict[str, Any]] = []
    for part, lr in ((model.head, phase.head_lr), (model.backbone, phase.backbone_lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float, decay: bool = True
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero (``decay=False``: hold the LR after warm-up)."""
    warmup_steps = int(total_steps * warmup)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not decay:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- one epoch


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


class _Amp:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); off on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device_type = device.type
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    amp: _Amp,
    device: torch.device,
    progress: Progress | None,
    bn_update: bool = False,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> tuple[float, float]:
    set_train_mode(distributed.unwrap(model), bn_update)
    total_loss, correct, seen = 0.0, 0, 0
    task = progress.add_task("train", total=len(loader), status="") if progress else None
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with amp.autocast():
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        if penalty is not None:  # e.g. FedProx's pull towards the global weights
            loss = loss + penalty()
        if not torch.isfinite(loss):
            raise TransferkitError(
                f"the loss became {loss.item()} (diverged); try a lower learning rate (--lr / --backbone-lr)"
            )
        optimizer.zero_grad(set_to_none=True)
        amp.scaler.scale(loss).backward()
        amp.scaler.step(optimizer)
        amp.scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if progress is not None and task is not None:
            progress.update(task, advance=1, status=f"loss {total_loss / seen:.4f} acc {correct / seen:.3f}")
    if progress is not None and task is not None:
        progress.remove_task(task)
    total_loss, correct, seen = distributed.sum_across(total_loss, correct, seen)  # type: ignore[assignment]
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader[Any], num_classes: int, device: torch.device) -> Scores:
    model.eval()
    amp = _Amp(device)
    losses, preds, confidences, targets = [], [], [], []
    for images, labels in loader:
        with amp.autocast():
            logits = model(images.to(device, non_blocking=True)).float()
        losses.append(nn.functional.cross_entropy(logits, labels.to(device), reduction="sum").item())
        top = logits.softmax(1).max(1)
        preds.append(top.indices.cpu())
        confidences.append(top.values.cpu())
        targets.append(labels)
    if isinstance(loader.sampler, distributed.ShardSampler):  # each rank scored its shard: put them together
        n = loader.sampler.n
        columns = [_cat(targets, torch.long), _cat(preds, torch.long), _cat(confidences, torch.float32)]
        targets, preds, confidences = ([torch.from_numpy(distributed.gather_rows(c, n))] for c in columns)
        losses = [distributed.sum_across(sum(losses))[0]]
    if not targets or not len(targets[0]):
        return score(np.zeros(0, dtype=int), np.zeros(0, dtype=int), num_classes)
    y_true = torch.cat(targets).numpy()
    return score(
        y_true, torch.cat(preds).numpy(), num_classes,
        loss=sum(losses) / max(len(y_true), 1), confidence=torch.cat(confidences).numpy(),
    )  # fmt: skip


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)).numpy()


# --------------------------------------------------------------------------- the loop


def _monitor_value(scores: Scores, monitor: str) -> float:
    return -scores.loss if monitor == "loss" else getattr(scores, monitor)


def _progress(console: Console | None) -> Progress | None:
    if console is None:
        return None
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


@dataclass
class Loaders:
    train: DataLoader[Any]
    val: DataLoader[Any]


def train(
    model: TransferModel,
    groups: Sequence[LayerGroup],
    phases: Sequence[Phase],
    images: Loaders,
    loss_fn: nn.Module,
    *,
    num_classes: int,
    device: torch.device,
    weight_decay: float,
    warmup: float,
    patience: int | None,
    monitor: str,
    restore_best: bool = True,
    bn_update: bool = False,
    frozen_features: Callable[[], Loaders] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    fit_config: dict[str, Any] | None = None,
    console: Console | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    decay: bool = True,
) -> TrainResult:
    """Run each phase in turn; epochs are numbered on from one phase to the next.

    - ``restore_best``: end with the weights of the best validation epoch over all phases.
    - ``frozen_features``: yields loaders of backbone features (computed once, on first
      need); phases with a frozen backbone then train the head alone on them, which gives
      the same result as running the eval-mode backbone every epoch, in a fraction of the time.
    - ``checkpoint``: written after every epoch and at every phase boundary; with ``resume``
      the loop continues from it with the same phase, freeze state, optimizer, schedule and
      random streams, so it ends with the weights an uninterrupted run ends with.
    - ``penalty``: a term added to every batch's loss; ``decay=False`` holds the LR after
      warm-up (federated clients, whose LR the server schedules across rounds).
    """
    amp = _Amp(device)
    state, best_state = LoopState(), copy.deepcopy(model.state_dict())
    saved = load_checkpoint(checkpoint) if resume and checkpoint is not None and checkpoint.is_file() else None
    if saved is not None:
        state, best_state = saved.loop, saved.best
        model.load_state_dict(saved.model)
        if console:
            console.print(f"resuming from {checkpoint} after epoch {state.epoch}")
    total_epochs = sum(p.epochs for p in phases)
    cached: Loaders | None = None
    for index, phase in enumerate(phases):
        if index < state.phase_index:
            continue
        freeze_for_phase(model, groups, phase)
        head_only = phase.head_only and frozen_features is not None
        if head_only and cached is None:
            cached = frozen_features()  # type: ignore[misc]
        # DDP records the trainable set when it wraps, so each phase wraps anew; the tiny head on
        # gathered features trains alike in every rank and needs no wrapper.
        net: nn.Module = model.head if head_only else distributed.wrap(model, device)
        loaders = cached if head_only and cached is not None else images
        optimizer = build_optimizer(model, phase, weight_decay)
        scheduler = warmup_cosine(optimizer, phase.epochs * len(loaders.train), warmup, decay)
        generators = _generators(images, cached)
        if saved is not None:  # the first phase after a resume: put every moving part back
            if state.epoch_in_phase > 0 and saved.optimizer is not None and saved.scheduler is not None:
                optimizer.load_state_dict(saved.optimizer)
                scheduler.load_state_dict(saved.scheduler)
            restore_rng(saved.rng["meta"], saved.rng["torch"])
            for name, generator in generators.items():
                if name in saved.generators:
                    generator.set_state(saved.generators[name])
            saved = None
        if state.epoch_in_phase == 0:
            state.phases.append(
                asdict(
                    PhaseSummary(
                        phase.name, phase.epochs, 0, count_params(model, True), count_params(model, False), False
                    )
                )
            )
            if console:
                console.print(
                    f"[bold]phase {phase.name}[/]: {phase.epochs} epoch(s), {state.phases[-1]['trainable_params']:,} "
                    f"trainable / {state.phases[-1]['frozen_params']:,} frozen parameters"
                )
        summary = state.phases[-1]
        while state.epoch_in_phase < phase.epochs and not summary["stopped_early"]:
            start = time.perf_counter()
            with _progress(console) or _Null() as progress:
                train_loss, train_acc = train_one_epoch(
                    net, loaders.train, loss_fn, optimizer, scheduler, amp, device, progress, bn_update, penalty
                )
            val = evaluate(net, loaders.val, num_classes, device)
            state.epoch += 1
            state.epoch_in_phase += 1
            summary["epochs_run"] += 1
            record = EpochRecord(
                state.epoch, phase.name, train_loss, train_acc, val.loss, val.accuracy, val.macro_f1,
                optimizer.param_groups[0]["lr"], time.perf_counter() - start,
            )  # fmt: skip
            state.history.append(asdict(record))
            value = _monitor_value(val, monitor)
            improved = value > state.best_value
            if improved:
                best_state = copy.deepcopy(model.state_dict())
                state.best_value, state.best_epoch, state.best_val = value, state.epoch, val.summary()
                state.since_best = 0
            else:
                state.since_best += 1
            if console:
                console.print(
                    f"epoch {state.epoch:>3}/{total_epochs} \\[{phase.name}] "
                    f"loss {train_loss:.3f} acc {train_acc:.3f} | "
                    f"val loss {val.loss:.3f} acc {val.accuracy:.3f} f1 {val.macro_f1:.3f} | "
                    f"{record.seconds:.0f}s{' *' if improved else ''}",
                    highlight=False,
                    soft_wrap=True,  # one line per epoch, also in logs and narrow terminals
                )
            if patience is not None and state.since_best >= patience:
                summary["stopped_early"] = True
                if console:
                    console.print(f"  early stop: no {monitor} gain for {patience} epoch(s) in phase {phase.name}")
            if checkpoint is not None and distributed.is_main():
                save_checkpoint(
                    checkpoint,
                    state,
                    model.state_dict(),
                    best_state,
                    optimizer,
                    scheduler,
                    generators,
                    fit_config or {},
                )
        state.phase_index, state.epoch_in_phase, state.since_best = index + 1, 0, 0
        if (
            checkpoint is not None and distributed.is_main()
        ):  # phase boundary: the next phase starts with a fresh optimizer
            save_checkpoint(checkpoint, state, model.state_dict(), best_state, None, None, generators, fit_config or {})
    if restore_best:
        model.load_state_dict(best_state)
    return TrainResult(
        history=[EpochRecord(**h) for h in state.history],
        phases=[PhaseSummary(**p) for p in state.phases],
        best_epoch=state.best_epoch,
    )


def _generators(images: Loaders, cached: Loaders | None) -> dict[str, torch.Generator]:
    """The shuffling streams of the training loaders, saved so a resume reshuffles alike."""
    found = {"images": images.train.generator}
    if cached is not None:
        found["features"] = cached.train.generator
    return {name: g for name, g in found.items() if g is not None}


class _Null:
    """Stands in for a Progress display when running silently."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
