"""Rank candidate backbones on the user's data before fine-tuning any of them.

Each backbone runs once over the training images (through the feature cache that ``fit`` and
``compare`` share, so a later feature-extraction fit of the winner starts from its features),
and three cheap predictors of transfer score the frozen features:

- LogME evidence (:mod:`transferkit.logme`): no training, no hyper-parameters;
- k-nearest-neighbour accuracy, cross-validated: do similar images land close together?
- linear-probe accuracy (logistic regression), cross-validated: the linear-probe strategy's
  own result, the costliest of the three.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from transferkit.backbones import create_backbone, registered_backbones
from transferkit.config import FitConfig
from transferkit.errors import TransferkitError
from transferkit.extras import installed, requirement_note
from transferkit.features import extract_features, feature_settings
from transferkit.logme import logme_evidence
from transferkit.modalities import DatasetSplits, get_modality
from transferkit.ownership import check_output_dir, claim_output_dir, seal
from transferkit.paths import atomic_write_text, default_cache_dir
from transferkit.pipeline import fit_to_data, load_data
from transferkit.runtime import resolve_device
from transferkit.workflows.rank_config import SCORES, RankConfig


def _zoo(modality: str) -> tuple[str, ...]:
    """The modality's registered backbones whose weights are installed; the others are named
    with their install line (a default should not fail on an optional package)."""
    found, missing = [], []
    for spec in registered_backbones():
        if spec.modality != modality:
            continue
        if spec.requires is not None and not installed(spec.requires[0]):
            missing.append(f"{spec.name} ({spec.requires[1]})")
        elif note := requirement_note(spec.needs):  # its library is an extra: transformers for text
            missing.append(f"{spec.name} ({note})")
        else:
            found.append(spec.name)
    if missing and not found:  # nothing left to rank: one line, not an empty table
        raise TransferkitError(f"no {modality} backbone to rank is installed: {'; '.join(missing)}")
    if missing:
        warnings.warn(f"not ranked, weights not installed: {'; '.join(missing)}", stacklevel=3)
    return tuple(found)


@dataclass
class BackboneScore:
    backbone: str
    images: int
    feature_dim: int
    logme: float
    knn_accuracy: float
    linear_accuracy: float
    seconds: dict[str, float] = field(default_factory=dict)  # features and each score attempted
    cached: bool = False  # features came from the cache
    notes: list[str] = field(default_factory=list)  # why a score is missing or was computed differently

    def value(self, score: str) -> float:
        return {"logme": self.logme, "knn": self.knn_accuracy, "linear": self.linear_accuracy}[score]

    def set_value(self, score: str, value: float) -> None:
        setattr(self, {"logme": "logme", "knn": "knn_accuracy", "linear": "linear_accuracy"}[score], value)


@dataclass
class Ranking:
    config: RankConfig
    scores: list[BackboneScore]  # best first by ``ordered_by``
    recommended: str
    reason: str
    ordered_by: str = "logme"  # ``config.score``, or the score that stood in for it
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "scores": [asdict(s) for s in self.scores],
            "recommended": self.recommended,
            "reason": self.reason,
            "ordered_by": self.ordered_by,
            "notes": self.notes,
        }


# The score that stands in when the chosen one cannot be computed for every backbone: the
# two cross-validated scores fail together (a class too small to split), so each falls back
# to the other first only when that other is more likely to succeed.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "logme": ("knn", "linear"),
    "knn": ("linear", "logme"),
    "linear": ("knn", "logme"),
}
LABELS = {"logme": "LogME", "knn": "kNN accuracy", "linear": "linear-probe accuracy"}


class Unscorable(Exception):
    """A score that cannot be computed on these features; the message says why, in one line."""


def rank(
    data: str | Path | DatasetSplits,
    config: RankConfig | None = None,
    *,
    out: str | Path | None = None,
    console: Console | None = None,
    measures: tuple[str, ...] = SCORES,
    **overrides: Any,
) -> Ranking:
    """Score every backbone in ``config.backbones`` on the training images of ``data``;
    ``measures``: the scores to compute (the others are NaN; ``auto`` needs LogME alone).

    A score that cannot be computed (a class with one training item cannot be
    cross-validated; features with NaN have no LogME) is NaN with a note, and the order falls
    back to the next score every backbone has: small or odd data ranks, it does not crash.
    """
    cfg = RankConfig.from_dict({**(asdict(config) if config else {}), **overrides})
    resolve_device(cfg.device)  # a wrong device is an error before any feature pass
    if out is not None:
        check_output_dir(Path(out), "ranking", "--out")
    base = FitConfig(val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size, batch_size=cfg.batch_size)
    splits = data if isinstance(data, DatasetSplits) else load_data(data, base)
    configs = [fit_to_data(base.replace(backbone=name), splits) for name in cfg.backbones or _zoo(splits.modality)]
    scored = [_score_backbone(run_cfg, splits, cfg, console, (*measures, cfg.score)) for run_cfg in configs]
    order, notes = _ordering(scored, cfg)
    scores = sorted((s for s, _, _ in scored), key=lambda s: _sort_key(s.value(order)), reverse=True)
    reason = " ".join([*notes, _reason(scores, order)])
    ranking = Ranking(cfg, scores, scores[0].backbone, reason, order, notes)
    if out is not None:
        claim_output_dir(Path(out), "ranking", "--out")
        atomic_write_text(Path(out) / "rank.json", json.dumps(ranking.to_dict(), indent=2))
        seal(Path(out), "ranking")
    return ranking


def _score_backbone(
    run_cfg: FitConfig, splits: DatasetSplits, cfg: RankConfig, console: Console | None, wanted: tuple[str, ...]
) -> tuple[BackboneScore, np.ndarray, np.ndarray]:
    """The backbone's scores, with its features and labels kept for a fallback score."""
    name, modality = str(run_cfg.backbone), get_modality(splits.modality)
    if console:
        console.print(f"[bold]{name}[/]: features of {len(splits.train)} training {modality.unit}", highlight=False)
    started = time.perf_counter()
    backbone = create_backbone(name).to(resolve_device(cfg.device)).eval()
    pre = modality.preprocessing(backbone, run_cfg, splits.train)
    features = extract_features(
        backbone, modality, splits.train, [modality.transform(pre, is_training=False)], batch_size=cfg.batch_size,
        device=resolve_device(cfg.device),
        cache_dir=default_cache_dir() if cfg.cache else None, settings=feature_settings(name, pre), console=console,
    )  # fmt: skip
    del backbone
    x, y = np.asarray(features.values[0]), np.asarray(features.labels)
    x = x.reshape(len(x), -1)
    seconds = {"features": time.perf_counter() - started}
    nan = float("nan")
    result = BackboneScore(name, len(y), x.shape[1], nan, nan, nan, seconds, features.reused)
    for key in SCORES:
        if key in wanted:
            _fill(result, key, x, y, cfg)
    return result, x, y


def _fill(result: BackboneScore, key: str, x: np.ndarray, y: np.ndarray, cfg: RankConfig) -> None:
    """Compute one score into ``result``; NaN and a note where it cannot be computed."""
    start = time.perf_counter()
    try:
        value, note = _measure(key, np.asarray(x, dtype=np.float64), y, cfg)
    except (Unscorable, ValueError, ArithmeticError) as exc:  # LinAlgError is a ValueError
        value, note = float("nan"), f"{LABELS[key]} not computed: {_one_line(exc)}"
    result.seconds[key] = time.perf_counter() - start
    result.set_value(key, value)
    if note:
        result.notes.append(note)


def _measure(key: str, x: np.ndarray, y: np.ndarray, cfg: RankConfig) -> tuple[float, str]:
    """(score, note) of one measure; raises where the data cannot give it."""
    if key == "logme":
        evidence = logme_evidence(x, y)
        return evidence.value, evidence.note
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        raise Unscorable("cross-validation needs at least 2 classes")
    if counts.min() < 2:
        raise Unscorable(f"cross-validation needs 2 training items in every class; {int(counts.min())} in the smallest")
    folds = list(
        StratifiedKFold(n_splits=min(cfg.folds, int(counts.min())), shuffle=True, random_state=cfg.seed).split(x, y)
    )
    if key == "knn":
        # Never more neighbours than a training fold holds (sklearn refuses that outright).
        k = min(cfg.neighbours, min(len(train) for train, _ in folds))
        note = f"kNN accuracy with k = {k}: a training fold holds only {k} items" if k < cfg.neighbours else ""
        # Cosine distance on L2-normalised features: the usual kNN probe of representation quality.
        return _cv(make_pipeline(Normalizer(), KNeighborsClassifier(k)), x, y, folds), note
    linear = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.c, max_iter=2000, random_state=cfg.seed))
    return _cv(linear, x, y, folds), ""


def _cv(model: Any, x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    with torch.inference_mode(), warnings.catch_warnings():  # sklearn only; torch keeps no autograd state
        # A fold that does not converge is still a score; the note-worthy failures raise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # error_score="raise": a failed fold is a note here, not a silent NaN mean
        value = float(np.mean(cross_val_score(model, x, y, cv=folds, error_score="raise")))
    if not math.isfinite(value):
        raise Unscorable("the cross-validated accuracy is not finite")
    return value


def _ordering(scored: list[tuple[BackboneScore, np.ndarray, np.ndarray]], cfg: RankConfig) -> tuple[str, list[str]]:
    """The score that orders the ranking: ``cfg.score`` where every backbone has it, else the
    first fallback every backbone has (computed now if it was not), with a note saying so."""
    for key in (cfg.score, *FALLBACKS[cfg.score]):
        for result, x, y in scored:
            if key not in result.seconds:
                _fill(result, key, x, y, cfg)
        if all(math.isfinite(r.value(key)) for r, _, _ in scored):
            if key == cfg.score:
                return key, []
            missing = [r.backbone for r, _, _ in scored if not math.isfinite(r.value(cfg.score))]
            return key, [
                f"Ordered by {LABELS[key]}: {LABELS[cfg.score]} could not be computed for {', '.join(missing)}."
            ]
    return cfg.score, ["No score could be computed for every backbone; those without one come last."]


def _sort_key(value: float) -> tuple[bool, float]:
    """Finite values first, highest first; NaN never compares, so it cannot sort by itself."""
    return (math.isfinite(value), value if math.isfinite(value) else 0.0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 100 else text[:99] + "…"


def _reason(scores: list[BackboneScore], score: str) -> str:
    best = scores[0]
    text = f"{best.backbone} has the highest {LABELS[score]} ({best.value(score):.3f})"
    if len(scores) > 1:
        runner = scores[1]
        text += f"; next {runner.backbone} ({runner.value(score):.3f})"
    # only scores every backbone has can agree or disagree
    others = [s for s in SCORES if s != score and all(math.isfinite(r.value(s)) for r in scores)]
    agree = [s for s in others if max(scores, key=lambda r: r.value(s)).backbone == best.backbone]
    if len(scores) > 1 and others:
        text += f". {len(agree)} of the {len(others)} other scores agree"
    return text + "."


def print_ranking(console: Console, ranking: Ranking) -> None:
    order = ranking.ordered_by
    table = Table("rank", "backbone", "LogME", "kNN acc", "linear acc", "dim", "features", "LogME", "kNN", "linear")
    for col, name in zip(table.columns[2:5], SCORES, strict=True):
        if name == order:
            col.header = f"{col.header} ▼"
    for i, s in enumerate(ranking.scores, start=1):
        t = s.seconds
        table.add_row(
            str(i), s.backbone, *(_number(s.value(k), "{:.3f}") for k in SCORES),
            str(s.feature_dim), f"{t['features']:.1f}s" + (" (cached)" if s.cached else ""),
            *(_number(t.get(k, float("nan")), "{:.2f}s") for k in SCORES),
        )  # fmt: skip
    table.title = "scores (higher is better) · time each took"
    console.print(table)
    for s in ranking.scores:
        for note in s.notes:
            console.print(f"[yellow]note[/] {s.backbone}: {note}", highlight=False, markup=True, soft_wrap=True)
    console.print(f"[bold green]Recommendation:[/] {ranking.recommended} — {ranking.reason}", soft_wrap=True)


def _number(value: float, form: str) -> str:
    return form.format(value) if math.isfinite(value) else "—"
