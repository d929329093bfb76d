"""Validation scores of a single-label classifier, gathered across DDP ranks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.metrics import Scores, score
from transferkit.runtime import Amp


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader[Any], num_classes: int, device: torch.device) -> Scores:
    model.eval()
    amp = Amp(device)
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
