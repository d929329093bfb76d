"""What the training loop optimises and how it scores: the :class:`Objective` hook, and
:class:`Classification` (one label per item). Multi-task heads plug in their own objective
(:mod:`transferkit.workflows.multitask`) instead of a second loop."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from transferkit.metrics import Scores
from transferkit.modalities.common import MISSING
from transferkit.scoring import evaluate

__all__ = ["Classification", "Objective", "ValidationScores"]


class ValidationScores(Protocol):
    """What the loop reads of a validation pass (``Scores``, or per-task scores' means)."""

    @property
    def accuracy(self) -> float: ...

    @property
    def macro_f1(self) -> float: ...

    @property
    def loss(self) -> float: ...

    def summary(self) -> dict[str, float]: ...


class Objective(Protocol):
    """What the loop optimises and how it scores: the hook multi-task (several heads, masked
    labels) and any other task shape plug into, instead of a second loop."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the items' losses summed, their weights summed) over this batch; the loop divides
        one by the other across every rank (:func:`distributed.global_mean`). Items labelled
        ``MISSING`` (DDP's repeats, unlabelled multi-task rows) weigh nothing."""
        ...

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        """(right answers, answers counted) in one batch, for the training accuracy."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> ValidationScores: ...


class Classification:
    """One label per item: cross-entropy (optional class weights, label smoothing), accuracy."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.weight = weight
        # Summed, not averaged: the mean is taken over the whole (possibly sharded) batch.
        self.criterion = nn.CrossEntropyLoss(
            weight=weight, label_smoothing=label_smoothing, ignore_index=MISSING, reduction="sum"
        )

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labelled = labels[labels != MISSING]
        weight = self.weight[labelled].sum() if self.weight is not None else labelled.new_tensor(len(labelled))
        total: torch.Tensor = self.criterion(logits, labels)
        return total, weight.float()

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        labelled = labels != MISSING
        return int((logits.argmax(1) == labels)[labelled].sum()), int(labelled.sum())

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Scores:
        return evaluate(model, loader, self.num_classes, device)
