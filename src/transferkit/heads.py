"""Classification heads placed on top of a backbone's pooled features."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Dropout → optional hidden layer (Linear, GELU, dropout) → Linear to class logits.

    The backbone already applies global average pooling, so the head sees a flat vector.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        # Dropout modules exist even at p=0 so the weight names never depend on its value.
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout)]
            in_features = hidden
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(features)
        return logits

    @property
    def output(self) -> nn.Linear:
        last = self.layers[-1]
        assert isinstance(last, nn.Linear)  # internal invariant, not user input
        return last


def load_linear_model(
    head: ClassifierHead,
    coef: np.ndarray,
    intercept: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
) -> None:
    """Copy a scikit-learn linear model fitted on standardised features into ``head``.

    Folding the scaler into the weights (w/σ, b − w·μ/σ) lets a linear probe be saved and
    served exactly like any other model: safetensors, no pickled estimator. A binary
    scikit-learn model has one row of weights; logits [0, w·x + b] give the same softmax.
    """
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1), np.atleast_1d(intercept)])
    weight = coef / scale
    bias = intercept - weight @ mean
    linear = head.output
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
