"""The Python API the CLI mirrors: ``fit``, ``evaluate``, ``predict`` and ``load``."""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from transferkit import __version__, distributed
from transferkit.backbones import (
    DEFAULT_BACKBONE,
    DEFAULT_TEXT_BACKBONE,
    add_lora,
    create_backbone,
    layer_groups,
    load_weights_file,
    modality_of,
    preprocessing_for,
    timm_name,
)
from transferkit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from transferkit.config import FitConfig, from_dict
from transferkit.data import (
    IMAGE_EXTENSIONS,
    DatasetSplits,
    Preprocessing,
    Sample,
    TextPreprocessing,
    dataset_for,
    eval_transform,
    load_eval_samples,
    load_splits,
    train_transform,
)
from transferkit.distributed import GlobalBatchShard, ShardSampler
from transferkit.errors import ConfigError, TransferkitError
from transferkit.features import (
    Features,
    FeatureViews,
    ViewSampler,
    default_cache_dir,
    extract_features,
    feature_settings,
    fit_linear_probe,
)
from transferkit.heads import ClassifierHead
from transferkit.metrics import Scores, detailed_report
from transferkit.model import Prediction, TrainedModel, TransferModel, atomic_write_text, load_model, save_model
from transferkit.strategies import Phase, Strategy, get_strategy
from transferkit.training import (
    Loaders,
    PhaseSummary,
    TrainResult,
    count_params,
    resolve_device,
    seed_everything,
    train,
)
from transferkit.training import evaluate as evaluate_model


@dataclass
class FitResult:
    """What ``fit`` hands back: the trained model, its scores and how it got there."""

    model: TrainedModel
    config: FitConfig
    metrics: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    phases: list[dict[str, Any]]
    seconds: float
    run_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)
    val_scores: Scores | None = None  # per-image predictions on the validation split


def load(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a saved run (``model.safetensors`` + ``config.json``); nothing is unpickled."""
    return load_model(run_dir, device=device)


def fit(
    data: str | Path | DatasetSplits,
    config: FitConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    **overrides: Any,
) -> FitResult:
    """Train one strategy on an image folder and, with ``out``, save the run there.

    ``overrides`` are :class:`FitConfig` fields, e.g. ``fit("data", strategy="partial", unfreeze=2)``.
    ``data`` may also be splits loaded once with :func:`transferkit.data.load_splits`, so that
    several runs share them whatever their seeds. With ``out``, a checkpoint is written after
    every epoch; ``resume=True`` continues from it (same config required).
    """
    cfg = config.replace(**overrides) if config is not None else from_dict(overrides)
    strategy = get_strategy(cfg.strategy)
    checkpoint = Path(out) / CHECKPOINT_FILE if out is not None else None
    if resume:
        _check_resumable(checkpoint, cfg)
    started = time.perf_counter()
    splits = data if isinstance(data, DatasetSplits) else load_data(data, cfg)
    cfg = fit_to_data(cfg, splits)
    seed_everything(cfg.seed)
    device = distributed.setup(resolve_device(cfg.device))
    distributed.check_batch_size(cfg.batch_size)
    if not distributed.is_main():
        console = None  # rank 0 speaks for all
    model, phases = prepare_model(cfg, strategy, len(splits.classes))
    pre = preprocessing_for(model.backbone, cfg.image_size, cfg.max_length, cfg.backbone)
    if console:
        _print_header(console, cfg, splits, pre, device)
    model.to(device)
    if cfg.compile:
        model.compile()  # in place, so state_dict keys (checkpoints, saved models) stay the same
    val_loader = image_loader(splits.val, eval_transform(pre), cfg, device)
    features = None
    if strategy.uses_sklearn:
        trained = _fit_linear_probe(model, strategy, splits, pre, cfg, device, console)
    else:
        train_tf = train_transform(pre, hflip=cfg.hflip) if cfg.augment else eval_transform(pre)
        images = Loaders(image_loader(splits.train, train_tf, cfg, device, shuffle=True), val_loader)
        # A frozen backbone maps the same pixels to the same features: run it once per view.
        exact_augmentation = cfg.augment and cfg.cache_views == 0
        features = (
            None if exact_augmentation else cache(partial(feature_loaders, model, splits, pre, cfg, device, console))
        )
        trained = train(
            model, layer_groups(model.backbone), phases, images,
            nn.CrossEntropyLoss(weight=_class_weights(splits, cfg, device), label_smoothing=cfg.label_smoothing),
            num_classes=len(splits.classes), device=device, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
            patience=cfg.patience, monitor=cfg.monitor, restore_best=cfg.restore_best,
            # Random-init statistics mean nothing: a from-scratch network must estimate its own.
            bn_update=cfg.bn_stats == "update" or not strategy.pretrained,
            frozen_features=features, checkpoint=checkpoint, resume=resume,
            fit_config=_resume_key(cfg), console=console,
        )  # fmt: skip
    if features is not None and all(p.head_only for p in phases):
        # The backbone never changed: score the head on the validation features already at hand.
        val_scores = evaluate_model(model.head, features().val, len(splits.classes), device)
    else:
        val_scores = evaluate_model(model, val_loader, len(splits.classes), device)
    metrics = {"val": val_scores.summary()}
    if splits.test:
        test_loader = image_loader(splits.test, eval_transform(pre), cfg, device)
        metrics["test"] = evaluate_model(model, test_loader, len(splits.classes), device).summary()
    seconds = time.perf_counter() - started
    card = _model_card(cfg, strategy, splits, pre, metrics, trained, seconds)
    result = FitResult(
        TrainedModel(model, splits.classes, pre, card), cfg, metrics, trained.history_dicts(),
        [asdict(p) for p in trained.phases], seconds, skipped=[f"{s.path}: {s.reason}" for s in splits.skipped],
        val_scores=val_scores,
    )  # fmt: skip
    if out is not None and distributed.is_main():
        result.run_dir = save_run(out, result)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)  # the finished model supersedes it
    distributed.barrier()  # no rank returns before the model is on disk
    if console:
        _print_footer(console, result)
    return result


def load_data(data: str | Path, cfg: FitConfig) -> DatasetSplits:
    """Image folders or text (tables, .txt folders): ``cfg.modality``, or read from the data."""
    from transferkit.text import is_text_data, load_text_splits

    text = cfg.modality == "text" or (cfg.modality == "auto" and is_text_data(data))
    if text:
        return load_text_splits(data, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.seed)
    return load_splits(data, cfg.val_fraction, cfg.seed, cfg.strict)


def is_text(splits: DatasetSplits) -> bool:
    return bool(splits.train) and splits.train[0].text is not None


def fit_to_data(cfg: FitConfig, splits: DatasetSplits) -> FitConfig:
    """What the data decides. Text: the (image) default backbone becomes the offline text
    encoder, and there is no augmentation, so frozen phases can use cached features. Any other
    mismatch between data and backbone is an error before anything is built."""
    data_kind = "text" if is_text(splits) else "image"
    if data_kind == "text" and cfg.augment:
        cfg = cfg.replace(augment=False)
    if modality_of(cfg.backbone) == data_kind:
        return cfg
    if data_kind == "text" and cfg.backbone == DEFAULT_BACKBONE:
        return cfg.replace(backbone=DEFAULT_TEXT_BACKBONE)
    wanted = f"a text encoder such as {DEFAULT_TEXT_BACKBONE} or hf:<hub id>" if data_kind == "text" else "a timm model"
    raise ConfigError(
        "backbone",
        cfg.backbone,
        f"is {'an image' if data_kind == 'text' else 'a text'} backbone but the data is {data_kind}; use {wanted}",
    )


def _resume_key(cfg: FitConfig) -> dict[str, Any]:
    """The settings a checkpoint is only valid for (worker count and compilation change no result)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("num_workers", "compile")}


def _check_resumable(checkpoint: Path | None, cfg: FitConfig) -> None:
    if checkpoint is None:
        raise TransferkitError("resume needs the run directory (--out) of the interrupted run")
    if not checkpoint.is_file():
        if (checkpoint.parent / "model.safetensors").is_file():
            raise TransferkitError(f"{checkpoint.parent} holds a finished run; nothing to resume")
        return  # nothing saved yet: a resume is a fresh start
    saved = load_checkpoint(checkpoint).fit_config
    changed = sorted(k for k, v in _resume_key(cfg).items() if json.loads(json.dumps(v)) != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {getattr(cfg, k)!r}" for k in changed)
        raise TransferkitError(f"cannot resume with other settings ({details}); use the same options or a new --out")


def prepare_model(cfg: FitConfig, strategy: Strategy, num_classes: int) -> tuple[TransferModel, tuple[Phase, ...]]:
    """Build backbone and head; check the plan against the backbone's groups before training."""
    backbone = create_backbone(cfg.backbone, pretrained=strategy.pretrained and cfg.init_weights is None)
    if cfg.init_weights is not None:
        load_weights_file(backbone, cfg.init_weights, trust_pickle=cfg.trust_pickle)
    if strategy.adapters == "lora":
        backbone = add_lora(backbone, cfg.lora_r, cfg.lora_alpha)
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
    head = ClassifierHead(int(backbone.num_features), num_classes, hidden=cfg.hidden, dropout=cfg.dropout)  # type: ignore[arg-type]
    return TransferModel(backbone, head), phases


def _fit_linear_probe(
    model: TransferModel,
    strategy: Strategy,
    splits: DatasetSplits,
    pre: Preprocessing | TextPreprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
) -> TrainResult:
    for param in model.backbone.parameters():
        param.requires_grad_(False)
    features = _features(model, splits.train, [eval_transform(pre)], pre, cfg, device, console, augmented=False)
    fit_linear_probe(
        model.head, np.asarray(features.values[0]), features.labels, strategy.classifier or "logistic",
        c=cfg.c, seed=cfg.seed, class_weights=cfg.class_weights,
    )  # fmt: skip
    model.head.to(device)
    head_params = count_params(model.head)
    return TrainResult(phases=[PhaseSummary("probe", 0, 0, head_params, count_params(model.backbone), False)])


def _features(
    model: TransferModel,
    samples: Sequence[Sample],
    transforms: list[Any],
    pre: Preprocessing | TextPreprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
    augmented: bool,
) -> Features:
    # Random views depend on the seed and the augmentation; a clean view does not.
    settings = feature_settings(cfg.backbone, pre, {"seed": cfg.seed, "hflip": cfg.hflip} if augmented else None)
    return extract_features(
        model.backbone, samples, transforms, batch_size=cfg.batch_size, device=device, seed=cfg.seed,
        cache_dir=default_cache_dir() if cfg.cache else None, settings=settings, console=console,
        num_workers=cfg.num_workers,
    )  # fmt: skip


def feature_loaders(
    model: TransferModel,
    splits: DatasetSplits,
    pre: Preprocessing | TextPreprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
) -> Loaders:
    """Loaders of backbone features: ``cache_views`` augmented views per training image when
    augmenting, else one clean view; validation always clean."""
    augmented = cfg.augment
    views = [train_transform(pre, hflip=cfg.hflip)] * cfg.cache_views if augmented else [eval_transform(pre)]
    train = _features(model, splits.train, views, pre, cfg, device, console, augmented)
    val = _features(model, splits.val, [eval_transform(pre)], pre, cfg, device, console, augmented=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = ViewSampler(len(splits.train), len(views), generator)
    return Loaders(
        DataLoader(FeatureViews(train), batch_size=cfg.batch_size, sampler=sampler, generator=generator),
        DataLoader(FeatureViews(val), batch_size=cfg.batch_size),
    )


def image_loader(
    samples: Sequence[Sample], transform: Any, cfg: FitConfig, device: torch.device, shuffle: bool = False
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(cfg.seed)
    dataset = dataset_for(samples, transform)
    common: dict[str, Any] = {
        "num_workers": cfg.num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.num_workers > 0,
        "generator": generator,
    }
    if distributed.world_size() == 1:
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, **common)
    if shuffle:  # this rank's share of every global batch
        return DataLoader(dataset, batch_sampler=GlobalBatchShard(len(dataset), cfg.batch_size, generator), **common)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=ShardSampler(len(dataset)), **common)


def _class_weights(splits: DatasetSplits, cfg: FitConfig, device: torch.device) -> torch.Tensor | None:
    """Inverse-frequency weights (mean 1), so rare classes count as much as common ones."""
    if not cfg.class_weights:
        return None
    counts = Counter(s.label for s in splits.train)
    n, k = len(splits.train), len(splits.classes)
    return torch.tensor([n / (k * counts[i]) for i in range(k)], dtype=torch.float32, device=device)


# --------------------------------------------------------------------------- saving a run


def _model_card(
    cfg: FitConfig,
    strategy: Strategy,
    splits: DatasetSplits,
    pre: Preprocessing | TextPreprocessing,
    metrics: dict[str, dict[str, float]],
    trained: TrainResult,
    seconds: float,
) -> dict[str, Any]:
    return {
        "backbone": cfg.backbone,
        "timm_model": timm_name(cfg.backbone),
        "strategy": strategy.name,
        "pretrained": strategy.pretrained,
        "classes": list(splits.classes),
        "preprocessing": pre.to_dict(),
        "head": {"hidden": cfg.hidden, "dropout": cfg.dropout},
        "metrics": metrics,
        "best_epoch": trained.best_epoch,
        "phases": [asdict(p) for p in trained.phases],
        "data": {split: splits.counts(split) for split in ("train", "val", "test") if getattr(splits, split)},
        "fit_config": cfg.to_dict(),
        "train_seconds": seconds,
        "versions": {
            "transferkit": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
    }


def save_run(out: str | Path, result: FitResult) -> Path:
    """Model, config and the metrics history (JSON and CSV) in one directory."""
    out = Path(out)
    save_model(out, result.model.model, result.model.config)
    atomic_write_text(out / "history.json", json.dumps(result.history, indent=2))
    if result.history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
        atomic_write_text(out / "history.csv", buffer.getvalue())
    return out


# --------------------------------------------------------------------------- evaluate / predict


def evaluate(run_dir: str | Path, data: str | Path, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion matrix of a saved model on ``data``.

    ``data`` may be a full dataset (its ``test/`` split is used, else ``val/``) or a plain
    folder of class sub-folders.
    """
    trained = load(run_dir)
    if trained.is_text:
        from transferkit.text import load_text_eval_samples

        fit_config = trained.config.get("fit_config", {})
        columns = fit_config.get("text_column", "text"), fit_config.get("label_column", "label")
        samples = load_text_eval_samples(data, trained.classes, *columns)
    else:
        samples = load_eval_samples(data, trained.classes)
    loader: DataLoader[Any] = DataLoader(
        dataset_for(samples, eval_transform(trained.preprocessing)), batch_size=batch_size
    )
    scores: Scores = evaluate_model(trained.model, loader, len(trained.classes), torch.device("cpu"))
    report = detailed_report(scores, trained.classes)
    report["num_images"] = len(samples)
    return report


def predict(run_dir: str | Path, images: Sequence[str | Path], top_k: int = 3) -> list[Prediction]:
    """Top-k labels and probabilities for image files, or every image inside given folders.

    A text model reads each argument as a ``.txt`` file, a folder of them, or the text itself.
    """
    trained = load(run_dir)
    if trained.is_text:
        return trained.predict_texts(expand_texts(images), top_k=top_k)
    return trained.predict(expand_image_paths(images), top_k=top_k)


def expand_texts(items: Sequence[str | Path]) -> list[str]:
    texts: list[str] = []
    for item in items:
        path = Path(item)
        if len(str(item)) < 4096 and path.is_dir():
            texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.rglob("*.txt"))]
        elif len(str(item)) < 4096 and path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        else:
            texts.append(str(item))
    if not texts:
        raise TransferkitError("no texts to predict")
    return texts


def expand_image_paths(images: Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, images):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise TransferkitError(f"no such image or folder: {item}")
    if not paths:
        raise TransferkitError("no images to predict")
    return paths


# --------------------------------------------------------------------------- console output


def _print_header(
    console: Console,
    cfg: FitConfig,
    splits: DatasetSplits,
    pre: Preprocessing | TextPreprocessing,
    device: torch.device,
) -> None:
    console.print(
        f"[bold]transferkit fit[/] backbone={cfg.backbone} strategy={cfg.strategy} device={device}\n"
        f"  data: {len(splits.classes)} classes, {len(splits.train)} train / {len(splits.val)} val"
        + (f" / {len(splits.test)} test" if splits.test else "")
        + (
            f" texts; up to {pre.max_length} tokens each"
            if isinstance(pre, TextPreprocessing)
            else f" images; input {pre.image_size}px, mean {pre.mean}, std {pre.std}, {pre.interpolation}"
        ),
        soft_wrap=True,
    )
    if splits.skipped:
        console.print(f"  [yellow]skipped {len(splits.skipped)} unreadable or non-image file(s)[/]")


def _print_footer(console: Console, result: FitResult) -> None:
    val = result.metrics["val"]
    line = f"[bold green]final validation accuracy {val['accuracy']:.4f}[/] (macro-F1 {val['macro_f1']:.4f})"
    if "test" in result.metrics:
        line += f", test accuracy {result.metrics['test']['accuracy']:.4f}"
    console.print(line + f" in {result.seconds:.1f}s")
    if result.run_dir:
        console.print(f"  saved to {result.run_dir}")
