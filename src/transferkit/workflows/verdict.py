"""What a comparison concludes: per-strategy summaries, the recommendation, the warnings
and the textbook prior they are set against."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SMALL_DATASET = 1000  # items per class below which a dataset counts as small for the rule of thumb


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backbone, strategy): means and seed spreads of every measurement."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["backbone"], r["strategy"]) for r in records))
    for backbone, strategy in keys:
        runs = [r for r in records if (r["backbone"], r["strategy"]) == (backbone, strategy)]
        row: dict[str, Any] = {"backbone": backbone, "strategy": strategy, "pretrained": runs[0]["pretrained"]}
        row["seeds"] = len(runs)
        for split in ("val", "test"):
            for metric in ("accuracy", "macro_f1"):
                values = [r[split][metric] for r in runs if r.get(split)]
                if values:
                    row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"] = _mean_std(values)
        row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in runs)
        row["images_per_second"] = statistics.fmean(r["images_per_second"] for r in runs)
        row["trainable_params"] = runs[0]["trainable_params"]
        row["frozen_params"] = runs[0]["frozen_params"]
        row["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
        row["memory_growth_bytes"] = max(r["memory_growth_bytes"] for r in runs)
        row["memory_kind"] = runs[0]["memory_kind"]
        rows.append(row)
    return rows


def _spread(a: dict[str, Any], b: dict[str, Any], floor: float) -> float:
    return max(float(a["val_accuracy_std"]), float(b["val_accuracy_std"]), floor)


@dataclass(frozen=True)
class Recommendation:
    backbone: str
    strategy: str
    reason: str


def recommend(rows: Sequence[dict[str, Any]], time_budget: float | None = None, floor: float = 0.0) -> Recommendation:
    """The most accurate row within the time budget; among rows within the seed spread of it,
    the fastest. ``floor`` is the smallest difference that counts (e.g. one validation image)."""
    eligible = [r for r in rows if time_budget is None or r["train_seconds"] <= time_budget]
    note = ""
    if not eligible:
        eligible, note = list(rows), f" (no run fitted the {time_budget:.0f}s budget, so all were considered)"
    best = max(eligible, key=lambda r: r["val_accuracy_mean"])
    close = [r for r in eligible if r["val_accuracy_mean"] >= best["val_accuracy_mean"] - _spread(best, r, floor)]
    choice = min(close, key=lambda r: r["train_seconds"])

    def acc(r: dict[str, Any]) -> str:
        return f"{r['val_accuracy_mean']:.3f} ± {r['val_accuracy_std']:.3f}"

    if choice is best:
        others = "" if len(close) == 1 else ", and no run within its seed spread is faster"
        reason = (
            f"{choice['strategy']} has the best validation accuracy ({acc(choice)}) "
            f"in {choice['train_seconds']:.0f}s{others}"
        )
    else:
        speedup = best["train_seconds"] / max(choice["train_seconds"], 1e-9)
        reason = (
            f"{choice['strategy']} ({acc(choice)}) is within the seed spread of the most accurate, "
            f"{best['strategy']} ({acc(best)}), and trains {speedup:.1f}× faster"
        )
    if len({r["backbone"] for r in rows}) > 1:
        reason += f" with {choice['backbone']}"
    return Recommendation(choice["backbone"], choice["strategy"], reason + note + ".")


def negative_transfer(rows: Sequence[dict[str, Any]], floor: float = 0.0) -> list[str]:
    """Plain-language warnings where pre-training did not help, judged against ``scratch``."""
    warnings: list[str] = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        scratch = next((r for r in rows if r["backbone"] == backbone and r["strategy"] == "scratch"), None)
        pretrained = [r for r in rows if r["backbone"] == backbone and r["pretrained"]]
        if scratch is None or not pretrained:
            continue
        s = scratch["val_accuracy_mean"]
        if all(s >= r["val_accuracy_mean"] for r in pretrained):
            warnings.append(
                f"Negative transfer with {backbone}: training from scratch ({s:.3f}) matches or beats every "
                "pretrained strategy, so ImageNet pre-training does not help on this data."
            )
        for r in pretrained:
            if r["val_accuracy_mean"] < s - _spread(r, scratch, floor):
                warnings.append(
                    f"{r['strategy']} ({r['val_accuracy_mean']:.3f}) is worse than scratch ({s:.3f}) "
                    f"beyond the seed spread with {backbone}: its pre-trained features hurt here."
                )
    return warnings


def rule_of_thumb(images_per_class: float, domain: str, unit: str = "images") -> tuple[str, str]:
    """The textbook prior (size × similarity to ImageNet) that the measurements are set against."""
    size = "small" if images_per_class < SMALL_DATASET else "large"
    table = {
        ("small", "similar"): ("feature-extraction", "train only a new head on frozen features"),
        ("small", "different"): ("partial", "re-train the top blocks and keep the generic lower ones"),
        ("large", "similar"): ("two-phase", "fine-tune after warming the head up"),
        ("large", "different"): ("full", "fine-tune every layer"),
    }
    strategy, advice = table.get((size, domain), ("two-phase", "fine-tune after warming the head up"))
    what = {"similar": "similar to ImageNet", "different": "unlike ImageNet"}.get(domain, "unknown similarity")
    return strategy, f"{size} dataset ({images_per_class:.0f} {unit} per class), {what}: {advice}"
