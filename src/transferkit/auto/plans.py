"""Candidates of the search, and what each costs on this machine.

A :class:`Plan` is a transfer choice — backbone, strategy, how many top layer groups train,
input size — trained for a number of optimiser steps. Its cost is predicted from a few timed
steps of that very depth on a real batch (:func:`measure`), as
``fixed + steps × step``: the fixed part is the frozen feature passes (the probe that starts
the head, the cached views, validation), the rest the steps. The search books each run's
actual time beside its prediction and scales the next predictions of that plan by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from transferkit.backbones import create_backbone
from transferkit.config import FitConfig
from transferkit.freezing import freeze_for_phase
from transferkit.heads import ClassifierHead
from transferkit.layers import layer_groups
from transferkit.loaders import sample_loader
from transferkit.modalities import DatasetSplits, get_modality
from transferkit.model import TransferModel
from transferkit.plan import batches
from transferkit.strategies import Phase, get_strategy, registered_strategies, usable

MODEL_SECONDS = 1.5  # building a backbone and its loaders, before the first batch (measured: 1–2 s)


@dataclass(frozen=True)
class Plan:
    """One transfer choice; ``unfreeze`` only for strategies that take a depth."""

    backbone: str
    strategy: str
    unfreeze: int | None = None
    image_size: int | str | None = "auto"

    @property
    def closed_form(self) -> bool:
        """Fitted in one go on frozen features (no steps, nothing to promote)."""
        return get_strategy(self.strategy).uses_sklearn

    @property
    def label(self) -> str:
        depth = f" (top {self.unfreeze})" if self.unfreeze is not None else ""
        size = f" · {self.image_size} px" if isinstance(self.image_size, int) else ""
        return f"{self.backbone} · {self.strategy}{depth}{size}"

    def name(self, steps: int) -> str:
        """The run folder: one per plan and step budget."""
        depth = f"-top{self.unfreeze}" if self.unfreeze is not None else ""
        size = f"-{self.image_size}px" if isinstance(self.image_size, int) else ""
        budget = "" if self.closed_form else f"-{steps}steps"
        return f"{self.backbone}-{self.strategy}{depth}{size}{budget}"

    def config(self, base: FitConfig, steps: int, steps_per_epoch: int) -> FitConfig:
        """The run's config: as many epochs as ``steps`` needs, and no step floor (the search
        sets the steps itself)."""
        epochs = max(1, math.ceil(steps / max(steps_per_epoch, 1)))
        epochs = max(get_strategy(self.strategy).min_epochs, epochs)
        changes: dict[str, Any] = {"backbone": self.backbone, "strategy": self.strategy, "epochs": epochs}
        if self.unfreeze is not None:
            changes["unfreeze"] = self.unfreeze
        if self.image_size is not None:  # a modality with an input side
            changes["image_size"] = self.image_size
        return base.replace(**changes, min_steps=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def searched() -> list[str]:
    """Every strategy :func:`candidates` plans (its ``searched`` depths); one whose optional
    package is missing is left out."""
    return [s.name for s in registered_strategies() if s.searched]


def candidates(backbone: str, groups: int, size: int | None) -> list[Plan]:
    """A backbone's plans, most promising first (the order the schedule drops them in, last
    first), from each strategy's ``searched`` depths — with the built-ins: top 2 groups, head
    then all, everything, the frozen head, the top group alone, the frozen-feature probe at the
    backbone's own size (``size``: the fine-tuning input side, None for a modality without
    one), LoRA adapters."""
    found = [(depth, strategy) for strategy in registered_strategies() for depth in strategy.searched]
    plans = []
    for depth, strategy in sorted(found, key=lambda pair: pair[0].rank):  # ties: in registration order
        if groups <= depth.min_groups or (depth.own_size and size is None):
            continue
        unfreeze = None if depth.unfreeze is None else min(depth.unfreeze, groups)
        plans.append(Plan(backbone, strategy.name, unfreeze, "auto" if depth.own_size else size))
    kept, _ = usable(dict.fromkeys(p.strategy for p in plans))  # the search says what it left out (left_out)
    return [p for p in plans if p.strategy in kept]


def left_out() -> str | None:
    """One line naming the searched strategies this install cannot run (LoRA without peft)."""
    return usable(searched())[1]


def interleave(per_backbone: Sequence[Sequence[Plan]]) -> list[Plan]:
    """Every backbone's first plan, then every second one, and so on: the schedule drops plans
    from the end, so each backbone keeps its most promising ones."""
    depth = max((len(p) for p in per_backbone), default=0)
    return [plans[k] for k in range(depth) for plans in per_backbone if k < len(plans)]


@dataclass(frozen=True)
class Cost:
    """Predicted seconds of a plan: ``fixed + steps × step``."""

    fixed: float
    step: float

    def seconds(self, steps: int) -> float:
        return self.fixed + steps * self.step


def steps_per_epoch(splits: DatasetSplits, base: FitConfig) -> int:
    return max(1, math.ceil(len(splits.train) / base.batch_size))


def measure(
    plans: Sequence[Plan], splits: DatasetSplits, base: FitConfig, device: torch.device,
    may_time: Callable[[Plan], bool] = lambda plan: True,
) -> dict[Plan, Cost]:  # fmt: skip
    """Time a forward pass per (backbone, input size) and one training step per depth it
    trains at, on a real batch; each network is built once. Timing costs time too: it stops at
    the first plan ``may_time`` refuses (the budget has no room left for timing it)."""
    costs: dict[Plan, Cost] = {}
    modality = get_modality(splits.modality)
    n_train, n_val = len(splits.train), len(splits.val)
    per_epoch = steps_per_epoch(splits, base)
    views = 1 + (base.cache_views if base.augment and modality.augments else 0)
    built: dict[tuple[str, Any, bool], tuple[TransferModel, Any, Any, float]] = {}
    timed: dict[tuple[str, Any, bool, int | None], float] = {}
    for plan in plans:
        if not may_time(plan):
            break
        cfg = plan.config(base, per_epoch, per_epoch)
        key = (plan.backbone, plan.image_size, get_strategy(plan.strategy).adapters)
        if key not in built:
            built[key] = _built(cfg, splits, device)
        model, inputs, labels, per_item = built[key]
        phases = get_strategy(plan.strategy).plan(cfg)
        fixed = MODEL_SECONDS + per_item * n_train  # the probe that starts the head (or the probe itself)
        if not phases:
            fixed += per_item * n_val  # a closed-form probe scores validation once
        step = 0.0
        for phase in phases:
            share = phase.epochs / max(sum(p.epochs for p in phases), 1)
            if phase.head_only:
                fixed += per_item * n_train * (views - 1)  # the augmented views, computed once
                step += share * 0.002  # a linear layer on cached features
                continue
            depth = (*key, phase.unfreeze)
            if depth not in timed:
                timed[depth] = _step_seconds(model, phase, inputs, labels)
            step += share * timed[depth]
            fixed += per_item * n_val * phase.epochs  # validation after every epoch
        costs[plan] = Cost(fixed, step)
    return costs


def _built(cfg: FitConfig, splits: DatasetSplits, device: torch.device) -> tuple[TransferModel, Any, Any, float]:
    """The plan's network on ``device``, a real training batch, and its forward seconds per item."""
    modality = get_modality(splits.modality)
    model, pre = _model(cfg, splits)
    drawn = batches(cfg, modality, pre, device)
    loader = sample_loader(modality, splits.train, drawn.eval_transform, drawn, device)
    inputs, labels = next(iter(loader))
    inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs
    model.to(device)
    per_item = _forward_seconds(model, inputs) / max(len(labels), 1)
    return model, inputs, labels.to(device), per_item


def _model(cfg: FitConfig, splits: DatasetSplits) -> tuple[TransferModel, Any]:
    strategy = get_strategy(cfg.strategy)
    assert cfg.backbone is not None
    backbone = create_backbone(cfg.backbone, pretrained=False)
    if strategy.adapt is not None:
        backbone = strategy.adapt(backbone, cfg.to_dict())
    head = ClassifierHead(int(backbone.num_features), len(splits.classes))  # type: ignore[arg-type]
    pre = get_modality(splits.modality).preprocessing(backbone, cfg, splits.train)
    return TransferModel(backbone, head), pre


def _forward_seconds(model: nn.Module, inputs: Any) -> float:
    model.eval()
    with torch.inference_mode():
        model(inputs)  # warm-up: the first pass allocates
        start = time.perf_counter()
        model(inputs)
    return time.perf_counter() - start


def _step_seconds(model: TransferModel, phase: Phase, inputs: Any, labels: torch.Tensor, steps: int = 1) -> float:
    """Forward and backward of the groups the phase trains, as a training step runs them."""
    freeze_for_phase(model, layer_groups(model.backbone), phase)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(inputs), labels).backward()  # warm-up: the first backward allocates
    start = time.perf_counter()
    for _ in range(steps):
        loss_fn(model(inputs), labels).backward()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


__all__ = ["Cost", "Plan", "candidates", "interleave", "left_out", "measure", "searched", "steps_per_epoch"]
