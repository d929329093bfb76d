"""Where each strategy of a comparison looks, on the same few validation images.

For the recommended run's most confident errors and its most confident correct items, every
strategy's model (one run each, the recommended run's seed where it has one) draws its
Grad-CAM for the class *it* predicts. Side by side, one look shows whether fine-tuning moved
the attention away from where the frozen backbone looked. The overlays are PNG files in
``OUT/attention/`` named by position only (``r{row}-c{column}.png``), so nothing read back
from ``results.json`` ever names a file; ``attention`` in ``results.json`` holds the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferkit.errors import TransferkitError
from transferkit.explain.cam import class_activation_maps, overlay
from transferkit.explain.run import attribution_of, image_views, save_png
from transferkit.modalities import Sample, get_modality
from transferkit.model import load_model
from transferkit.records import RunKey, RunRecord

FOLDER = "attention"
ERRORS, CORRECT = 4, 2  # rows: the most confident errors, then the most confident correct items
MAX_COLUMNS = 8  # strategies (× backbones) drawn; a comparison of more shows the first eight
SIDE = 112  # px of each drawn cell
METHOD = "gradcam"
CELL = re.compile(r"r\d+-c\d+\.png")


def cell_name(row: int, column: int) -> str:
    """The file of one overlay, from its position alone."""
    return f"r{int(row)}-c{int(column)}.png"


def pick_items(best: RunRecord, errors: int = ERRORS, correct: int = CORRECT) -> list[tuple[int, str]]:
    """(validation index, 'error' | 'correct'): the best run's most confident of each."""
    pred = best.predictions
    order = sorted(range(len(pred.items)), key=lambda i: -pred.confidence[i])
    wrong = [i for i in order if pred.y_true[i] != pred.y_pred[i]][:errors]
    right = [i for i in order if pred.y_true[i] == pred.y_pred[i]][:correct]
    return [(i, "error") for i in wrong] + [(i, "correct") for i in right]


def one_run_per_key(records: Sequence[RunRecord], best: RunRecord) -> list[RunRecord]:
    """One run per (backbone, strategy), in the comparison's order: the best run's seed and
    fold where that key has one, else its best run."""
    chosen: dict[RunKey, RunRecord] = {}
    for record in records:
        held = chosen.get(record.key)
        same = (record.seed, record.fold) == (best.seed, best.fold)
        if held is None or (same and (held.seed, held.fold) != (best.seed, best.fold)):
            chosen[record.key] = record
    return list(chosen.values())[:MAX_COLUMNS]


def strategy_attention(records: Sequence[RunRecord], best: RunRecord, classes: list[str], out: Path,
                       modality: str) -> dict[str, Any] | None:  # fmt: skip
    """Draw the overlays into ``out/attention/``; what ``results.json`` keeps of them (None
    where the modality's models are not explained by activation maps)."""
    explainer = attribution_of(get_modality(modality))
    if explainer is None or not explainer.activation_maps:
        return None
    picked = [(i, kind) for i, kind in pick_items(best) if Path(best.predictions.items[i]).is_file()]
    columns = one_run_per_key(records, best)
    if not picked:
        return {"note": "no validation image to show"}
    _clear(out / FOLDER)
    try:
        cells = [_column(record, best, picked, out / FOLDER, c) for c, record in enumerate(columns)]
    except TransferkitError as exc:  # grad-cam not installed (extras.require), or a backbone without a spatial layer
        return {"note": str(exc)}
    pred = best.predictions
    rows = [
        {"item": pred.items[i], "truth": classes[pred.y_true[i]], "kind": kind,
         "cells": [column[r] for column in cells]}
        for r, (i, kind) in enumerate(picked)
    ]  # fmt: skip
    one_backbone = len({c.backbone for c in columns}) == 1
    labels = [r.strategy if one_backbone else f"{r.backbone} · {r.strategy}" for r in columns]
    return {"method": METHOD, "seed": best.seed, "columns": labels, "rows": rows}


def _clear(folder: Path) -> None:
    """An empty ``folder``: the previous comparison's overlays go, and only files named as ours."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if CELL.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()


def _column(record: RunRecord, best: RunRecord, picked: list[tuple[int, str]], folder: Path,
            column: int) -> list[dict[str, Any]]:  # fmt: skip
    """One strategy's overlays for the picked items, and what it predicted on each."""
    trained = load_model(record.run_dir)
    samples = [Sample(Path(best.predictions.items[i]), best.predictions.y_true[i]) for i, _ in picked]
    inputs, views = image_views(trained, samples)
    probs = trained.predict_proba(inputs)
    top = probs.max(dim=1)
    predicted, confidence = top.indices.tolist(), top.values.tolist()
    maps = class_activation_maps(trained.model, trained.model.backbone, inputs, predicted, METHOD)
    for row, (view, cam) in enumerate(zip(views, maps, strict=True)):
        image = Image.fromarray(np.asarray(overlay(view, cam))).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        save_png(image, folder / cell_name(row, column))
    return [
        {"predicted": trained.classes[p], "confidence": round(float(c), 4)}
        for p, c in zip(predicted, confidence, strict=True)
    ]


__all__ = ["FOLDER", "cell_name", "one_run_per_key", "pick_items", "strategy_attention"]
