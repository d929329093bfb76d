"""Classification metrics shared by training, evaluation and comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score


@dataclass
class Scores:
    accuracy: float
    macro_f1: float
    loss: float = float("nan")
    y_true: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int), repr=False)
    y_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int), repr=False)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # top softmax probability

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss}


def score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    loss: float = float("nan"),
    confidence: np.ndarray | None = None,
) -> Scores:
    labels = list(range(num_classes))
    accuracy = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
    f1 = (
        float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
        if len(y_true)
        else float("nan")
    )
    return Scores(accuracy, f1, loss, y_true, y_pred, np.zeros(0) if confidence is None else confidence)


def detailed_report(scores: Scores, classes: Sequence[str], unit: str = "items") -> dict[str, Any]:
    """Per-class precision/recall/F1, the confusion matrix (rows: true, columns: predicted) and how
    many items were scored, named by the modality's ``unit`` ("images", "texts", "clips").

    ``num_images`` is kept beside ``num_items`` for image runs only: scripts written before texts
    and clips read it, and it was never true of a text."""
    labels = list(range(len(classes)))
    per_class = classification_report(
        scores.y_true, scores.y_pred, labels=labels, target_names=list(classes), output_dict=True, zero_division=0
    )
    matrix = confusion_matrix(scores.y_true, scores.y_pred, labels=labels)
    return {
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "per_class": {c: per_class[c] for c in classes},
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
        "num_items": len(scores.y_true),
        "unit": unit,
    } | ({"num_images": len(scores.y_true)} if unit == "images" else {})


def accuracy_text(r: dict[str, Any], interval: bool = True) -> str:
    """'0.953 ± 0.004' over seeds, or '0.953 (1 seed)'; with the 95% interval when known."""
    spread = f" ± {r['val_accuracy_std']:.3f}" if r.get("seeds", 2) > 1 else " (1 seed)"
    known = interval and "val_accuracy_low" in r
    interval_text = f", 95% CI {r['val_accuracy_low']:.3f}–{r['val_accuracy_high']:.3f}" if known else ""
    return f"{r['val_accuracy_mean']:.3f}{spread}{interval_text}"


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of an accuracy (95% by default); (0, 1) with no items."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
