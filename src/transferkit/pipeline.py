"""The engine behind the API: data → model → loaders → the training loop → scores.

``fit``, ``compare``, multi-task and federated runs all build their model, loaders and
feature cache here, and all train in :func:`transferkit.training.train`. What differs
between single-label and multi-task runs is a :class:`Task` (its head and its objective).
Nothing here knows which modality it runs: it asks the splits' modality.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from torch import nn

from transferkit import distributed
from transferkit.backbones import create_backbone, resolve_backbone
from transferkit.callbacks import variations
from transferkit.checkpoint import load_checkpoint
from transferkit.config import FitConfig
from transferkit.errors import ConfigError, DataError, TransferkitError
from transferkit.events import Callback, PhaseSummary, TrainResult
from transferkit.features import (
    Features,
    fit_linear_probe,
)
from transferkit.freezing import count_params
from transferkit.heads import ClassifierHead
from transferkit.layers import layer_groups, load_weights_file
from transferkit.loaders import feature_loaders, features, input_loaders, sample_loader, shortcuts
from transferkit.loggers import loggers
from transferkit.modalities import (
    MISSING,
    DatasetSplits,
    Preprocessing,
    detect_modality,
    get_modality,
)
from transferkit.modalities.common import item_identity
from transferkit.model import TransferModel
from transferkit.objectives import Classification, Objective, ValidationScores
from transferkit.plan import RunPlan, make_plan
from transferkit.runfolder import RunFolder
from transferkit.runtime import resolve_device, seed_everything
from transferkit.strategies import Phase, Strategy, get_strategy
from transferkit.training import FrozenInputs, Loaders, train

# The probe that starts a head is regularised 100× more than the linear-probe strategy's: one
# fitted to near-zero training loss leaves fine-tuning no gradient (digits, 64 px, 4 epochs,
# `full`: 0.955 from C=1, 0.986 from C=0.01, 0.982 from a random head; see docs/fit.md, LP-FT).
PROBE_INIT_C = 0.01

# --------------------------------------------------------------------------- data


def load_data(data: str | Path, cfg: FitConfig) -> DatasetSplits:
    """The splits of ``data``, read by ``cfg.modality`` or by the modality that claims it."""
    modality = detect_modality(data) if cfg.modality == "auto" else get_modality(cfg.modality)
    return modality.load_splits(Path(data), cfg)


def fit_to_data(cfg: FitConfig, splits: DatasetSplits) -> FitConfig:
    """What the data decides: the modality's default backbone when none was named, no
    augmentation where the modality has none. A backbone of another modality is an error."""
    modality = get_modality(splits.modality)
    changes: dict[str, Any] = {"modality": modality.name}
    if cfg.backbone is None:
        changes["backbone"] = modality.default_backbone
    elif resolve_backbone(cfg.backbone).modality != modality.name:
        kind = resolve_backbone(cfg.backbone).modality
        article = "an" if kind[:1] in "aeiou" else "a"
        raise ConfigError(
            "backbone", cfg.backbone,
            f"is {article} {kind} backbone but the data is {modality.name}; use e.g. {modality.default_backbone}",
        )  # fmt: skip
    if not modality.augments and cfg.augment:
        changes["augment"] = False
    require_validation(splits, modality.unit)
    return cfg.replace(**changes)


def require_validation(splits: DatasetSplits, unit: str = "items", tasks: Sequence[str] = ()) -> None:
    """Refuse data with nothing to validate on, before any compute: an empty validation split
    scores NaN, no epoch ever counts as best, and the *initial* weights would be saved."""
    if not splits.val:
        raise DataError(
            f"the validation split is empty (an empty val/ folder, or classes of a single {unit[:-1]}): "
            f"add {unit} to val/, or remove val/ so --val-fraction of the training {unit} is held out"
        )
    for i, task in enumerate(tasks):
        if all(s.label[i] == MISSING for s in splits.val):  # type: ignore[index]
            raise DataError(f"task {task!r} has no labelled validation rows: label some, or use another split seed")


def data_key(splits: DatasetSplits) -> dict[str, Any]:
    """What identifies the data a run trains on: its classes and a hash of every item (file, label,
    split; a text's content), so a checkpoint or a comparison is never continued on other data."""
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        for s in getattr(splits, split):
            digest.update(f"{split}\0{item_identity(s)}\0{s.label}\n".encode())
    return {"classes": list(splits.classes), "items": digest.hexdigest()[:32]}


def resume_key(cfg: FitConfig, splits: DatasetSplits | None = None) -> dict[str, Any]:
    """The settings (and data) a checkpoint is only valid for; compilation changes no result.
    The worker count does: each worker draws its own augmentation stream."""
    key = {k: v for k, v in cfg.to_dict().items() if k != "compile"}
    return key | ({"data": data_key(splits)} if splits is not None else {})


def check_resumable(checkpoint: Path | None, key: dict[str, Any]) -> None:
    if checkpoint is None:
        raise TransferkitError("resume needs the run directory (--out) of the interrupted run")
    if not checkpoint.is_file():
        if (checkpoint.parent / RunFolder.WEIGHTS).is_file():
            raise TransferkitError(f"{checkpoint.parent} holds a finished run; nothing to resume")
        return  # nothing saved yet: a resume is a fresh start
    saved = load_checkpoint(checkpoint).fit_config
    if "data" in key and saved.get("data") not in (None, key["data"]):
        change = _data_change(saved["data"], key["data"])
        raise TransferkitError(
            f"cannot resume: {checkpoint.parent} holds a run on other data ({change}); use the same data or a new --out"
        )
    changed = sorted(k for k, v in key.items() if k != "data" and json.loads(json.dumps(v)) != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {key.get(k)!r}" for k in changed)
        raise TransferkitError(f"cannot resume with other settings ({details}); use the same options or a new --out")


def _data_change(before: dict[str, Any], now: dict[str, Any]) -> str:
    if before.get("classes") != now["classes"]:
        return f"classes {', '.join(before.get('classes', []))} → {', '.join(now['classes'])}"
    return "the same classes, other items"


# --------------------------------------------------------------------------- what is learnt


class Task(Protocol):
    """What the head predicts and how it is scored: one label per item, or several tasks."""

    def head(self, in_features: int, cfg: FitConfig) -> nn.Module: ...

    def objective(self, head: nn.Module, splits: DatasetSplits, cfg: FitConfig, device: torch.device) -> Objective: ...


@dataclass(frozen=True)
class SingleLabel:
    num_classes: int

    def head(self, in_features: int, cfg: FitConfig) -> nn.Module:
        return ClassifierHead(in_features, self.num_classes, hidden=cfg.hidden, dropout=cfg.dropout)

    def objective(self, head: nn.Module, splits: DatasetSplits, cfg: FitConfig, device: torch.device) -> Objective:
        labels = [s.label for s in splits.train]
        weight = class_weights(labels, self.num_classes).to(device) if cfg.class_weights else None  # type: ignore[arg-type]
        return Classification(self.num_classes, weight, cfg.label_smoothing)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1), so rare classes count as much as common ones."""
    counts = Counter(labels)
    n = len(labels)
    return torch.tensor([n / (num_classes * max(counts[i], 1)) for i in range(num_classes)], dtype=torch.float32)


def prepare_model(cfg: FitConfig, strategy: Strategy, task: Task) -> tuple[TransferModel, tuple[Phase, ...]]:
    """Build backbone and head; check the plan against the backbone's groups before training."""
    assert cfg.backbone is not None  # set by fit_to_data
    backbone = create_backbone(cfg.backbone, pretrained=strategy.pretrained and cfg.init_weights is None)
    if cfg.init_weights is not None:
        load_weights_file(backbone, cfg.init_weights, trust_pickle=cfg.trust_pickle)
    if strategy.adapt is not None:  # LoRA: adapters beside the frozen weights
        backbone = strategy.adapt(backbone, cfg.to_dict())
    groups = layer_groups(backbone)
    phases = strategy.plan(cfg)
    for phase in phases:
        if phase.unfreeze is not None and phase.unfreeze > len(groups):
            raise ConfigError(
                "unfreeze", phase.unfreeze,
                f"{cfg.backbone} has {len(groups)} layer groups; choose 1..{len(groups)} "
                f"(see `transferkit layers {cfg.backbone}`)",
            )  # fmt: skip
    if strategy.uses_sklearn and cfg.hidden:
        raise ConfigError("hidden", cfg.hidden, f"{strategy.name} fits a linear classifier; use hidden=0")
    head = task.head(int(backbone.num_features), cfg)  # type: ignore[arg-type]
    return TransferModel(backbone, head), phases  # type: ignore[arg-type]


# --------------------------------------------------------------------------- one run


@dataclass
class Trained:
    """What :func:`run` hands back to the API and the workflows."""

    model: TransferModel
    config: FitConfig
    splits: DatasetSplits
    plan: RunPlan
    result: TrainResult
    val_scores: ValidationScores
    test_scores: ValidationScores | None
    seconds: float

    @property
    def preprocessing(self) -> Preprocessing:
        return self.plan.preprocessing

    @property
    def strategy(self) -> Strategy:
        return self.plan.strategy


@dataclass
class Prepared:
    """Everything a run trains with, built once from its plan: :func:`run` trains it, ``lr-find`` sweeps it."""

    model: TransferModel
    plan: RunPlan
    objective: Objective
    inputs: Loaders
    cached: Callable[[], Loaders] | None  # frozen-backbone feature loaders, built on first need
    frozen: FrozenInputs | None  # each phase's shortcut past its frozen layers (cached features or activations)
    console: Console | None  # None in every DDP rank but the first


def prepare(
    splits: DatasetSplits,
    cfg: FitConfig,
    task: Task,
    *,
    resume_from: Path | None = None,
    console: Console | None = None,
    header: Callable[[RunPlan], None] | None = None,
) -> Prepared:
    """The plan, then the model (probe-initialised where it applies), its loaders and shortcuts."""
    strategy = get_strategy(cfg.strategy)
    seed_everything(cfg.seed)
    device = distributed.setup(resolve_device(cfg.device))
    distributed.check_batch_size(cfg.batch_size)
    if not distributed.is_main():
        console, header = None, None  # rank 0 speaks for all
    model, phases = prepare_model(cfg, strategy, task)
    probe_init = not strategy.uses_sklearn and _probe_starts_head(cfg, strategy, task, resume_from)
    plan = make_plan(cfg, splits, strategy, model.backbone, phases, device, probe_init=probe_init)
    if header is not None:
        header(plan)
    model.to(device)
    if cfg.compile:
        model.compile()  # in place, so state_dict keys (checkpoints, saved models) stay the same
    objective = task.objective(model.head, splits, cfg, device)
    modality, pre, batches = plan.modality, plan.preprocessing, plan.batches
    inputs = input_loaders(modality, splits, batches, device)
    probed = _probe_into_head(model, plan, splits, console, "logistic", cfg.c * PROBE_INIT_C) if probe_init else None
    cached = (
        cache(partial(feature_loaders, model, splits, pre, batches, device, console, probed))
        if plan.cached_features
        else None
    )
    frozen = shortcuts(model, splits, pre, batches, device, console, cached) if cached is not None else None
    for note in plan.notes:
        if console:
            console.print(note)
    return Prepared(model, plan, objective, inputs, cached, frozen, console)


def run(
    splits: DatasetSplits,
    cfg: FitConfig,
    task: Task,
    *,
    out: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    header: Callable[[RunPlan], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Trained:
    """Train ``task`` on ``splits`` with ``cfg`` (already fitted to the data), checkpointing
    into ``out``; the scores on validation (and test) at the end. ``callbacks`` listen to the
    loop beside the loggers ``cfg.log`` names."""
    started = time.perf_counter()
    checkpoint = out / RunFolder.CHECKPOINT if out is not None else None
    if resume:
        check_resumable(checkpoint, resume_key(cfg, splits))
    ready = prepare(splits, cfg, task, resume_from=checkpoint if resume else None, console=console, header=header)
    console, plan, model, objective, inputs = ready.console, ready.plan, ready.model, ready.objective, ready.inputs
    device, cached = plan.device, ready.cached
    if plan.strategy.uses_sklearn:
        trained = _fit_linear_probe(model, plan, splits, console)
        cached = None
    else:
        trained = train(
            model, layer_groups(model.backbone), plan.phases, inputs, objective, plan.loop, device=device,
            frozen=ready.frozen, checkpoint=checkpoint, resume=resume, resume_key=resume_key(cfg, splits),
            console=console, callbacks=[
                *variations(cfg.clip_grad, cfg.ema, cfg.restore_best), *loggers(cfg.log, out, params=cfg.to_dict()),
                *callbacks,
            ],
        )  # fmt: skip
    if cached is not None and all(p.head_only for p in plan.phases):
        # The backbone never changed: score the head on the validation features already at hand.
        val_scores = objective.evaluate(model.head, cached().val, device)
    else:
        val_scores = objective.evaluate(model, inputs.val, device)
    test_scores = None
    if splits.test:
        test_loader = sample_loader(plan.modality, splits.test, plan.batches.eval_transform, plan.batches, device)
        test_scores = objective.evaluate(model, test_loader, device)
    seconds = time.perf_counter() - started
    return Trained(model, cfg, splits, plan, trained, val_scores, test_scores, seconds)


def _probe_starts_head(cfg: FitConfig, strategy: Strategy, task: Task, checkpoint: Path | None) -> bool:
    """LP-FT (Kumar et al., ICLR 2022): a head trained by SGD on a pre-trained backbone starts where
    the linear probe on the frozen features ends — fitted in seconds on the cached features —
    instead of at random, so short budgets polish a converged head instead of under-training
    one, and fine-tuning does not distort features to fit a random head. A linear head only
    (``hidden=0``), one label per item; a run that resumes takes its head from the checkpoint."""
    resuming = checkpoint is not None and checkpoint.is_file()
    return cfg.probe_init and strategy.pretrained and isinstance(task, SingleLabel) and not cfg.hidden and not resuming


def _fit_linear_probe(
    model: TransferModel, plan: RunPlan, splits: DatasetSplits, console: Console | None
) -> TrainResult:
    for param in model.backbone.parameters():
        param.requires_grad_(False)
    _probe_into_head(model, plan, splits, console, plan.strategy.classifier or "logistic", plan.config.c)
    head_params = count_params(model.head)
    return TrainResult(phases=[PhaseSummary("probe", 0, 0, head_params, count_params(model.backbone), False)])


def _probe_into_head(
    model: TransferModel, plan: RunPlan, splits: DatasetSplits, console: Console | None, classifier: str, c: float
) -> Features:
    """Fit a linear classifier on the clean frozen features of the training split into the head;
    the features, for the frozen phases to reuse."""
    batches = plan.batches
    found = features(
        model, plan.modality, splits.train, [batches.eval_transform], plan.preprocessing, batches, plan.device,
        console, augmented=False,
    )  # fmt: skip
    fit_linear_probe(
        model.head, np.asarray(found.values[0]), found.labels, classifier,
        c=c, seed=batches.seed, class_weights=plan.config.class_weights,
    )  # fmt: skip
    model.head.to(plan.device)
    return found
