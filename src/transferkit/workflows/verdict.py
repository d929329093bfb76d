"""What a comparison concludes: per-strategy summaries, the recommendation, the warnings
and the textbook prior they are set against."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferkit.metrics import accuracy_text, wilson
from transferkit.records import RunRecord
from transferkit.strategies import DEFAULT as DEFAULT_STRATEGY
from transferkit.strategies import closed_form, get_strategy, plays, registered_strategies

SMALL_DATASET = 1000  # items per class below which a dataset counts as small for the rule of thumb
ALPHA = 0.05  # two strategies differ when the paired test's p-value is below this


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (backbone, strategy): means and seed spreads of every measurement."""
    rows: list[dict[str, Any]] = []
    for key in dict.fromkeys(r.key for r in records):
        runs = [r for r in records if r.key == key]
        row: dict[str, Any] = {"backbone": key.backbone, "strategy": key.strategy, "pretrained": runs[0].pretrained}
        row["seeds"] = len(runs)
        for split in ("val", "test"):
            for metric in ("accuracy", "macro_f1"):
                values = [scores[metric] for r in runs if (scores := getattr(r, split)) and metric in scores]
                if values:
                    row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"] = _mean_std(values)
        row["train_seconds"] = statistics.fmean(r.train_seconds for r in runs)
        row["images_per_second"] = statistics.fmean(r.images_per_second for r in runs)
        row["trainable_params"] = runs[0].trainable_params
        row["frozen_params"] = runs[0].frozen_params
        row["peak_memory_bytes"] = max(r.peak_memory_bytes for r in runs)
        row["memory_growth_bytes"] = max(r.memory_growth_bytes for r in runs)
        row["memory_kind"] = runs[0].memory_kind
        correct = [c for r in runs for c in r.predictions.correct()]  # paired by seed, then by validation item
        if correct:
            row["val_correct"] = correct
            row["val_accuracy_low"], row["val_accuracy_high"] = wilson(sum(correct), len(correct))
        rows.append(row)
    return rows


def mcnemar(a: Sequence[int], b: Sequence[int]) -> float:
    """Exact McNemar p-value that two strategies are right equally often on the same items
    (paired by seed and validation item): a two-sided binomial test on the discordant pairs."""
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = float(sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))) / float(2**n)
    return min(1.0, 2.0 * tail)


def _differ(a: dict[str, Any], b: dict[str, Any], floor: float) -> bool:
    """Whether ``a`` and ``b`` differ beyond chance: the paired test on the same items when
    both rows carry per-item results, else more than the larger seed spread (or ``floor``)."""
    if a.get("val_correct") and len(a["val_correct"]) == len(b.get("val_correct") or []):
        return mcnemar(a["val_correct"], b["val_correct"]) < ALPHA
    spread = max(float(a["val_accuracy_std"]), float(b["val_accuracy_std"]), floor)
    return abs(float(a["val_accuracy_mean"]) - float(b["val_accuracy_mean"])) > spread


@dataclass(frozen=True)
class Recommendation:
    backbone: str
    strategy: str
    reason: str


def recommend(rows: Sequence[dict[str, Any]], time_budget: float | None = None, floor: float = 0.0) -> Recommendation:
    """The most accurate row within the time budget; among rows that do not differ from it
    beyond chance (the paired test on the same validation items, else the seed spread), the
    fastest. ``floor`` is the smallest difference that counts (e.g. one validation item)."""
    eligible = [r for r in rows if time_budget is None or r["train_seconds"] <= time_budget]
    note = ""
    if not eligible:
        eligible, note = list(rows), f" (no run fitted the {time_budget:.0f}s budget, so all were considered)"
    best = max(eligible, key=lambda r: r["val_accuracy_mean"])
    close = [r for r in eligible if r is best or not _differ(best, r, floor)]
    choice = min(close, key=lambda r: r["train_seconds"])
    paired = bool(best.get("val_correct"))
    tie = "the paired test on the same validation items" if paired else "within the seed spread"
    if choice is best:
        others = "" if len(close) == 1 else f", and no run that ties with it ({tie}) is faster"
        reason = (
            f"{choice['strategy']} has the best validation accuracy ({accuracy_text(choice)}) "
            f"in {choice['train_seconds']:.0f}s{others}"
        )
    else:
        speedup = best["train_seconds"] / max(choice["train_seconds"], 1e-9)
        how = "by the paired test on the same validation items" if paired else "within the seed spread"
        reason = (
            f"{choice['strategy']} ({accuracy_text(choice)}) ties with the most accurate, {best['strategy']} "
            f"({accuracy_text(best)}), {how}, and trains {speedup:.1f}× faster"
        )
    if len({r["backbone"] for r in rows}) > 1:
        reason += f" with {choice['backbone']}"
    return Recommendation(choice["backbone"], choice["strategy"], reason + note + ".")


def negative_transfer(rows: Sequence[dict[str, Any]], floor: float = 0.0) -> list[str]:
    """Plain-language diagnoses: pre-training that does not help (its best strategy below
    ``scratch`` beyond chance), and heads trained too little (an SGD strategy below the linear
    probe on the very same frozen features) — which is no fault of the features."""
    warnings: list[str] = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        mine = [r for r in rows if r["backbone"] == backbone]
        pretrained = [r for r in mine if r["pretrained"]]
        scratch = next((r for r in mine if plays(r["strategy"], "baseline")), None)
        if scratch is not None and pretrained:
            best = max(pretrained, key=lambda r: r["val_accuracy_mean"])
            if best["val_accuracy_mean"] < scratch["val_accuracy_mean"] and _differ(best, scratch, floor):
                warnings.append(
                    f"Negative transfer with {backbone}: training from scratch ({accuracy_text(scratch)}) beats the "
                    f"best pre-trained strategy, {best['strategy']} ({accuracy_text(best)}), beyond chance: "
                    "pre-training does not help on this data."
                )
        probe = next((r for r in mine if plays(r["strategy"], "probe")), None)
        if probe is not None:
            warnings += _under_trained(backbone, probe, pretrained, floor)
    return warnings


def _under_trained(
    backbone: str, probe: dict[str, Any], pretrained: Sequence[dict[str, Any]], floor: float
) -> list[str]:
    below = [
        r for r in pretrained
        if not closed_form(r["strategy"]) and r["val_accuracy_mean"] < probe["val_accuracy_mean"]
        and _differ(r, probe, floor)
    ]  # fmt: skip
    return [
        f"{r['strategy']} ({accuracy_text(r)}) is below {probe['strategy']} ({accuracy_text(probe)}) on the same "
        f"frozen features of {backbone}: an under-trained head, not features that hurt. More steps "
        "(--epochs / --budget-epochs) or a higher head learning rate (--lr) fix it; heads start from "
        "the linear probe unless --no-probe-init."
        for r in below
    ]


def resolution(rows: Sequence[dict[str, Any]], items: int, unit: str = "items", folds: int = 1) -> list[str]:
    """A warning when the validation set is too small to separate strategies (±5 points)."""
    if not rows or not items:
        return []
    best = max(rows, key=lambda r: r["val_accuracy_mean"])
    low, high = wilson(round(best["val_accuracy_mean"] * items), items)
    if (high - low) / 2 <= 0.05:
        return []
    more = "More data or more seeds (--seeds)" if folds > 1 else "More data, more seeds (--seeds) or --folds 5"
    return [
        f"The validation set ({items} {unit}) is too small to separate the strategies: the 95% interval on an "
        f"accuracy of {best['val_accuracy_mean']:.3f} is about ±{(high - low) / 2 * 100:.0f} points. {more} narrow it."
    ]


def rule_of_thumb(images_per_class: float, domain: str, unit: str = "images") -> tuple[str, str]:
    """The textbook prior (size × similarity to ImageNet) that the measurements are set against."""
    size = "small" if images_per_class < SMALL_DATASET else "large"
    # each strategy names the cells it answers (`Strategy.prior`); elsewhere the default's advice
    table = {(cell_size, cell_domain): (s.name, advice) for s in registered_strategies()
             for cell_size, cell_domain, advice in s.prior}  # fmt: skip
    default = get_strategy(DEFAULT_STRATEGY)
    strategy, advice = table.get((size, domain), (default.name, default.prior[0][2] if default.prior else "fine-tune"))
    what = {"similar": "similar to ImageNet", "different": "unlike ImageNet"}.get(domain, "unknown similarity")
    return strategy, f"{size} dataset ({images_per_class:.0f} {unit} per class), {what}: {advice}"
