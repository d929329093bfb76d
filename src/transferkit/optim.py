"""The optimizer and learning-rate schedule of a phase."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from transferkit.layers import LayerGroup
from transferkit.model import TransferModel
from transferkit.strategies import Phase


def build_optimizer(
    model: TransferModel,
    phase: Phase,
    weight_decay: float,
    groups: Sequence[LayerGroup] = (),
    layer_decay: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW with the head and backbone at their own LRs; no decay on biases and norms.

    ``layer_decay`` < 1 (layer-wise LR decay, as timm's ``param_groups_layer_decay`` and
    fastai's ``slice(lr/100, lr)``): backbone group ``g`` of ``groups`` trains at
    ``backbone_lr × layer_decay^(top − g)``, so the generic early layers move least. LoRA
    phases keep one LR: their adapters start at zero and have nothing to protect.
    """
    parts: list[tuple[list[nn.Parameter], float]] = [(list(model.head.parameters()), phase.head_lr)]
    named = dict(model.backbone.named_parameters())
    if groups and layer_decay != 1.0 and not phase.adapters:
        top = max(g.index for g in groups)
        for group in groups:
            lr = phase.backbone_lr * layer_decay ** (top - group.index)
            parts.append(([named[n] for n in group.param_names if n in named], lr))
        grouped = {n for g in groups for n in g.param_names}
        parts.append(([p for n, p in named.items() if n not in grouped], phase.backbone_lr))
    else:
        parts.append((list(named.values()), phase.backbone_lr))
    param_groups: list[dict[str, Any]] = []
    for params, lr in parts:
        params = [p for p in params if p.requires_grad]
        param_groups += [
            {"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in param_groups if g["params"]])


def stretch_to_min_steps(phases: Sequence[Phase], steps_per_epoch: int, min_steps: int) -> tuple[Phase, ...]:
    """Each training phase with at least ``min_steps`` optimiser steps: on small data an epoch is
    a handful of steps, and a budget in epochs alone leaves the optimiser mid-warm-up (160
    images, batch 32, 4 epochs: 20 steps). Big data is untouched."""
    needed = math.ceil(min_steps / max(steps_per_epoch, 1))
    return tuple(dataclasses.replace(p, epochs=max(p.epochs, needed)) if p.epochs > 0 else p for p in phases)


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
