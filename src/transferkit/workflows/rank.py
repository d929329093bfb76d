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
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from transferkit.backbones import create_backbone, registered_backbones
from transferkit.config import FitConfig
from transferkit.errors import DataError, TransferkitError
from transferkit.extras import installed, requirement_note
from transferkit.features import extract_features, feature_settings
from transferkit.logme import logme
from transferkit.modalities import DatasetSplits, get_modality
from transferkit.ownership import check_output_dir, claim_output_dir
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
    seconds: dict[str, float] = field(default_factory=dict)  # features, logme, knn, linear
    cached: bool = False  # features came from the cache

    def value(self, score: str) -> float:
        return {"logme": self.logme, "knn": self.knn_accuracy, "linear": self.linear_accuracy}[score]


@dataclass
class Ranking:
    config: RankConfig
    scores: list[BackboneScore]  # best first by ``config.score``
    recommended: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "scores": [asdict(s) for s in self.scores],
            "recommended": self.recommended,
            "reason": self.reason,
        }


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
    ``measures``: the scores to compute (the others are NaN; ``auto`` needs LogME alone)."""
    cfg = RankConfig.from_dict({**(asdict(config) if config else {}), **overrides})
    resolve_device(cfg.device)  # a wrong device is an error before any feature pass
    if out is not None:
        check_output_dir(Path(out), "ranking", "--out", legacy=_is_legacy_ranking)
    base = FitConfig(val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size, batch_size=cfg.batch_size)
    splits = data if isinstance(data, DatasetSplits) else load_data(data, base)
    configs = [fit_to_data(base.replace(backbone=name), splits) for name in cfg.backbones or _zoo(splits.modality)]
    labels = np.array([s.label for s in splits.train])
    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise DataError("every class needs at least 2 training images to cross-validate the ranking scores")
    scores = [_score_backbone(run_cfg, splits, cfg, console, (*measures, cfg.score)) for run_cfg in configs]
    scores.sort(key=lambda s: s.value(cfg.score), reverse=True)
    ranking = Ranking(cfg, scores, scores[0].backbone, _reason(scores, cfg.score))
    if out is not None:
        claim_output_dir(Path(out), "ranking", "--out", legacy=_is_legacy_ranking)
        atomic_write_text(Path(out) / "rank.json", json.dumps(ranking.to_dict(), indent=2))
    return ranking


def _score_backbone(
    run_cfg: FitConfig, splits: DatasetSplits, cfg: RankConfig, console: Console | None, wanted: tuple[str, ...]
) -> BackboneScore:
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
    x, y = np.asarray(features.values[0], dtype=np.float64), features.labels
    seconds = {"features": time.perf_counter() - started}
    folds = StratifiedKFold(n_splits=min(cfg.folds, int(np.bincount(y).min())), shuffle=True, random_state=cfg.seed)
    measures: dict[str, Callable[[], float]] = {
        "logme": lambda: logme(x, y),
        # Cosine distance on L2-normalised features: the usual kNN probe of representation quality.
        "knn": lambda: _cv(make_pipeline(Normalizer(), KNeighborsClassifier(cfg.neighbours)), x, y, folds),
        "linear": lambda: _cv(
            make_pipeline(StandardScaler(), LogisticRegression(C=cfg.c, max_iter=2000, random_state=cfg.seed)),
            x, y, folds,
        ),
    }  # fmt: skip
    values: dict[str, float] = dict.fromkeys(SCORES, float("nan"))
    for key, measure in measures.items():
        if key not in wanted:
            continue
        start = time.perf_counter()
        values[key] = measure()
        seconds[key] = time.perf_counter() - start
    del backbone
    return BackboneScore(
        name, len(y), x.shape[1], values["logme"], values["knn"], values["linear"], seconds, features.reused
    )


def _cv(model: Any, x: np.ndarray, y: np.ndarray, folds: StratifiedKFold) -> float:
    with torch.inference_mode():  # sklearn only; keeps torch from holding autograd state meanwhile
        return float(np.mean(cross_val_score(model, x, y, cv=folds)))


def _reason(scores: list[BackboneScore], score: str) -> str:
    best = scores[0]
    label = {"logme": "LogME", "knn": "kNN accuracy", "linear": "linear-probe accuracy"}[score]
    text = f"{best.backbone} has the highest {label} ({best.value(score):.3f})"
    if len(scores) > 1:
        runner = scores[1]
        text += f"; next {runner.backbone} ({runner.value(score):.3f})"
    others = [s for s in SCORES if s != score]
    agree = [s for s in others if max(scores, key=lambda r: r.value(s)).backbone == best.backbone]
    if len(scores) > 1:
        text += f". {len(agree)} of the {len(others)} other scores agree"
    return text + "."


def print_ranking(console: Console, ranking: Ranking) -> None:
    order = ranking.config.score
    table = Table("rank", "backbone", "LogME", "kNN acc", "linear acc", "dim", "features", "LogME", "kNN", "linear")
    for col, name in zip(table.columns[2:5], SCORES, strict=True):
        if name == order:
            col.header = f"{col.header} ▼"
    for i, s in enumerate(ranking.scores, start=1):
        t = s.seconds
        table.add_row(
            str(i), s.backbone, f"{s.logme:.3f}", f"{s.knn_accuracy:.3f}", f"{s.linear_accuracy:.3f}",
            str(s.feature_dim), f"{t['features']:.1f}s" + (" (cached)" if s.cached else ""),
            f"{t['logme']:.2f}s", f"{t['knn']:.2f}s", f"{t['linear']:.1f}s",
        )  # fmt: skip
    table.title = "scores (higher is better) · time each took"
    console.print(table)
    console.print(f"[bold green]Recommendation:[/] {ranking.recommended} — {ranking.reason}", soft_wrap=True)


def _is_legacy_ranking(path: Path) -> bool:
    return {f.name for f in path.iterdir()} <= {"rank.json"}
