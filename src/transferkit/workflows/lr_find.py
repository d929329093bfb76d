"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
2017; fastai's ``lr_find``): `transferkit lr-find`.

For each training phase of the strategy's plan, from the run's own starting point (the
probe-initialised head where that applies), the learning rate grows exponentially over
``steps`` optimiser steps while the smoothed training loss is recorded; the sweep stops once
the loss has blown up. Every parameter group keeps its ratio to the head's LR (backbone LR,
layer-wise decay), so the sweep probes the phase as it will train. The suggestion is the
LR a tenth of the one where the smoothed loss is lowest (fastai's ``minimum`` rule): the
steepest useful LR, backed off to where the loss still falls. Weights are put back after
each phase's sweep; nothing is saved.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from transferkit import distributed
from transferkit.config import FitConfig
from transferkit.errors import ConfigError, TransferkitError
from transferkit.freezing import set_train_mode
from transferkit.layers import layer_groups
from transferkit.params import check_stored
from transferkit.pipeline import Prepared, SingleLabel, fit_to_data, load_data, prepare
from transferkit.runtime import Amp
from transferkit.schema import SchemaError, check_mapping, read_json_object
from transferkit.strategies import Phase
from transferkit.training import batch_loss, optimizer_step, start_phase

__all__ = ["Sweep", "lr_find"]

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (as fastai)
BLOW_UP = 4.0  # stop once the smoothed loss exceeds this times its best


@dataclass
class Sweep:
    """One phase's sweep: the head LR at each step (other groups scaled alike) and the loss."""

    phase: str
    head_lr: float  # as configured
    backbone_lr: float
    lrs: list[float]
    losses: list[float]
    suggestion: float | None  # head LR; None when the loss never fell

    @property
    def factor(self) -> float | None:
        """The suggestion as a multiple of the configured rates."""
        return None if self.suggestion is None else self.suggestion / self.head_lr

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factor": self.factor}


def lr_find(
    data: str | Path, cfg: FitConfig, *, steps: int = 100, low: float = 1e-7, high: float = 10.0,
    console: Console | None = None,
) -> list[Sweep]:  # fmt: skip
    """Sweep each training phase of ``cfg.strategy`` on ``data``."""
    splits = load_data(data, cfg)
    cfg = fit_to_data(cfg, splits)
    ready = prepare(splits, cfg, SingleLabel(len(splits.classes)), console=console)
    if not ready.plan.phases:
        raise TransferkitError(f"{cfg.strategy} trains no network by gradient descent: it has no learning rate")
    sweeps = []
    for phase in ready.plan.phases:
        if console:
            console.print(f"sweeping phase {phase.name}: head LR {low:g} → {high:g} over {steps} steps")
        sweeps.append(_sweep(ready, phase, steps, low, high))
    return sweeps


RATES = ("lr", "backbone_lr")  # the options a suggestion sets, and all a stored one may


def stored_rates(path: Path) -> dict[str, dict[str, float]] | None:
    """``lr-auto.json`` as a comparison kept it: run key → {lr, backbone_lr}, each held to the
    options' own bounds. A received or edited file may set nothing else (it is applied to every
    run's options: ``trust_pickle`` there would unpickle a file it names); ``None`` when it is
    unusable, so the rates are measured again."""
    try:
        stored = read_json_object(path)
        rates = {str(k): dict(check_mapping(str(path), str(k), v)) for k, v in stored.items()}
        for key, values in rates.items():
            if set(values) - set(RATES):
                return None
            check_stored(FitConfig, values, f"{path} {key}")
    except (SchemaError, ConfigError):
        return None
    return rates


def suggested_options(sweeps: list[Sweep], cfg: FitConfig) -> dict[str, float]:
    """The `fit` options the suggestions mean: each phase scales the rates it was given."""
    options: dict[str, float] = {}
    for sweep in sweeps:
        if sweep.factor is None:
            continue
        if sweep.head_lr == cfg.lr:
            options["lr"] = cfg.lr * sweep.factor
        if sweep.backbone_lr == cfg.backbone_lr and sweep.backbone_lr > 0:
            options["backbone_lr"] = cfg.backbone_lr * sweep.factor
    return options


def _sweep(ready: Prepared, phase: Phase, steps: int, low: float, high: float) -> Sweep:
    model, device = ready.model, ready.plan.device
    start = copy.deepcopy(model.state_dict())
    run = start_phase(model, layer_groups(model.backbone), phase, ready.inputs, ready.frozen, ready.plan.loop, device)
    ratios = [group["lr"] / phase.head_lr for group in run.optimizer.param_groups]
    amp, lrs, losses = Amp(device), [], []
    average, best = 0.0, math.inf
    batches = _forever(run.loaders.train)
    set_train_mode(distributed.unwrap(run.net), ready.plan.loop.bn_update)
    for step in range(steps):
        lr = low * (high / low) ** (step / max(steps - 1, 1))
        for group, ratio in zip(run.optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        inputs, labels = next(batches)
        loss, *_ = batch_loss(run.net, inputs, labels.to(device), ready.objective, amp, device)
        optimizer_step(loss, run.optimizer, amp)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > BLOW_UP * best:
            break
    model.load_state_dict(start)
    lowest = min(range(len(losses)), key=losses.__getitem__) if losses else None
    fell = lowest is not None and losses[lowest] < losses[0]
    suggestion = lrs[lowest] / 10 if fell and lowest is not None else None
    return Sweep(phase.name, phase.head_lr, phase.backbone_lr, lrs, losses, suggestion)


def _forever(loader: Any) -> Any:
    while True:
        yield from loader
