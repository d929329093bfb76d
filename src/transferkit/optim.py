"""The optimizer and learning-rate schedule of a phase."""

from __future__ import annotations

import math
from typing import Any

import torch

from transferkit.model import TransferModel
from transferkit.strategies import Phase


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
