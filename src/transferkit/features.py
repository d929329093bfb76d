"""Frozen-backbone features and the scikit-learn heads fitted on them (linear probes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import DataLoader

from transferkit.heads import ClassifierHead, load_linear_model


@torch.inference_mode()
def extract_features(
    backbone: nn.Module, loader: DataLoader[Any], device: torch.device, console: Console | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels for every image the loader yields, backbone in eval mode."""
    backbone.eval()
    feats, labels = [], []
    for i, (images, y) in enumerate(loader, start=1):
        feats.append(backbone(images.to(device, non_blocking=True)).float().cpu().numpy())
        labels.append(y.numpy())
        if console is not None and (i % 20 == 0 or i == len(loader)):
            console.print(f"  features: batch {i}/{len(loader)}", highlight=False)
    return np.concatenate(feats), np.concatenate(labels)


def fit_linear_probe(
    head: ClassifierHead,
    features: np.ndarray,
    labels: np.ndarray,
    classifier: str,
    c: float = 1.0,
    seed: int = 0,
    class_weights: bool = False,
) -> None:
    """Fit logistic regression or a linear SVM on standardised features, into ``head``."""
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features)
    weight = "balanced" if class_weights else None
    model: LogisticRegression | LinearSVC
    if classifier == "svm":
        model = LinearSVC(C=c, class_weight=weight, random_state=seed, max_iter=5000)
    else:
        model = LogisticRegression(C=c, class_weight=weight, random_state=seed, max_iter=2000)
    model.fit(x, labels)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    load_linear_model(head, np.asarray(model.coef_), np.asarray(model.intercept_), scaler.mean_, scale)
