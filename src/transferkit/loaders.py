"""The loaders a run trains and scores with: inputs (augmented and shuffled for training,
DDP-sharded under torchrun) and frozen-backbone features through the cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit import cutpoint, distributed
from transferkit.config import FitConfig
from transferkit.cutpoint import Cut, CutModel, split
from transferkit.distributed import GlobalBatchShard, Padded, ShardSampler
from transferkit.features import (
    Features,
    ViewSampler,
    extract_features,
    feature_batches,
    feature_settings,
)
from transferkit.layers import layer_groups
from transferkit.modalities import (
    MISSING,
    DatasetSplits,
    Modality,
    Preprocessing,
    Sample,
    get_modality,
)
from transferkit.model import TransferModel
from transferkit.paths import default_cache_dir
from transferkit.runtime import loader_workers
from transferkit.strategies import Phase
from transferkit.training import FrozenInputs, Loaders, Shortcut


def sample_loader(
    modality: Modality,
    samples: Sequence[Sample],
    transform: Any,
    cfg: FitConfig,
    device: torch.device,
    shuffle: bool = False,
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(cfg.seed)
    # only the shuffled training loader may stand another item in for one that breaks mid-run
    dataset = modality.dataset(samples, transform, training=shuffle)
    common: dict[str, Any] = {
        "num_workers": loader_workers(cfg.num_workers, device),
        "pin_memory": device.type == "cuda",
        # Workers start anew each epoch, seeded from the loader's generator (checkpointed): kept
        # alive, their random streams would run on from epochs a resumed run never replays.
        "persistent_workers": False,
        "generator": generator,
    }
    if distributed.world_size() == 1:
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, **common)
    if shuffle:  # this rank's share of every global batch; its top-up repeats carry no label
        batches = GlobalBatchShard(len(samples), cfg.batch_size, generator)
        return DataLoader(Padded(dataset, MISSING), batch_sampler=batches, **common)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=ShardSampler(len(dataset)), **common)  # type: ignore[arg-type]


def input_loaders(
    modality: Modality, splits: DatasetSplits, pre: Preprocessing, cfg: FitConfig, device: torch.device
) -> Loaders:
    """Loaders of the inputs themselves: augmented training inputs (shuffled), clean validation."""
    train_tf = modality.transform(pre, is_training=True, cfg=cfg)
    val_tf = modality.transform(pre, is_training=False)
    return Loaders(
        sample_loader(modality, splits.train, train_tf, cfg, device, shuffle=True),
        sample_loader(modality, splits.val, val_tf, cfg, device),
    )


def features(
    model: TransferModel,
    modality: Modality,
    samples: Sequence[Sample],
    transforms: list[Any],
    pre: Preprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
    augmented: bool,
    cut: Cut | None = None,
) -> Features:
    """Frozen-backbone features of ``samples`` (or, with ``cut``, the activations at the cut),
    one view per transform, through the cache."""
    # Random views depend on the seed and the augmentation; a clean view does not.
    views = {"seed": cfg.seed, **modality.augmentation(pre, cfg)} if augmented else None
    settings = feature_settings(str(cfg.backbone), pre, views)
    extra: dict[str, Any] = {}
    if cut is not None:
        settings["cut"] = list(cut.paths)
        extra = {"item_shape": cut.shape, "dtype": np.float16}
    return extract_features(
        cut.bottom if cut is not None else model.backbone, modality, samples, transforms, batch_size=cfg.batch_size,
        device=device, seed=cfg.seed, cache_dir=default_cache_dir() if cfg.cache else None, settings=settings,
        console=console, num_workers=loader_workers(cfg.num_workers, device), **extra,
    )  # fmt: skip


def feature_loaders(
    model: TransferModel,
    splits: DatasetSplits,
    pre: Preprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
    clean_train: Features | None = None,
) -> Loaders:
    """Loaders of backbone features: ``cache_views`` augmented views per training item when
    augmenting, else one clean view (``clean_train`` when the probe already extracted it);
    validation always clean."""
    modality = get_modality(splits.modality)
    augmented = cfg.augment
    views = _views(modality, pre, cfg)
    if clean_train is not None and not augmented:
        train_features = clean_train
    else:
        train_features = features(model, modality, splits.train, views, pre, cfg, device, console, augmented)
    val = features(model, modality, splits.val, _views(modality, pre), pre, cfg, device, console, augmented=False)
    return _cached_loaders(train_features, val, len(views), cfg)


def _views(modality: Modality, pre: Preprocessing, cfg: FitConfig | None = None) -> list[Any]:
    """``cache_views`` augmented views when ``cfg`` augments, else the one clean view."""
    if cfg is not None and cfg.augment:
        return [modality.transform(pre, is_training=True, cfg=cfg)] * cfg.cache_views
    return [modality.transform(pre, is_training=False)]


def _cached_loaders(train: Features, val: Features, views: int, cfg: FitConfig) -> Loaders:
    sampler = ViewSampler(len(train.labels), views, torch.Generator().manual_seed(cfg.seed))
    return Loaders(feature_batches(train, cfg.batch_size, sampler), feature_batches(val, cfg.batch_size))


def activation_loaders(
    model: TransferModel,
    cut: Cut,
    splits: DatasetSplits,
    pre: Preprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
) -> Loaders | None:
    """Loaders of the activations at ``cut`` (views as :func:`feature_loaders`); ``None``, said,
    when they would take more than :data:`transferkit.cutpoint.CUT_CACHE_LIMIT`."""
    modality = get_modality(splits.modality)
    views = _views(modality, pre, cfg)
    per_item = 2 * math.prod(cut.shape)
    size = per_item * (len(views) * len(splits.train) + len(splits.val))
    limit = cutpoint.CUT_CACHE_LIMIT  # read at each call: benchmarks set it to 0 to measure without
    if size > limit:
        if console:
            console.print(f"  frozen layers recomputed every step: their activations would take {size / 2**30:.2f} "
                          f"GiB (limit {limit / 2**30:.0f} GiB)")  # fmt: skip
        return None
    if console:
        console.print(f"  frozen layers ({', '.join(cut.paths[:1])} … {cut.paths[-1]}) run once per view; "
                      f"the phase trains on their activations", highlight=False)  # fmt: skip
    train = features(model, modality, splits.train, views, pre, cfg, device, console, cfg.augment, cut)
    val = features(model, modality, splits.val, _views(modality, pre), pre, cfg, device, console, False, cut)
    return _cached_loaders(train, val, len(views), cfg)


def shortcuts(
    model: TransferModel,
    splits: DatasetSplits,
    pre: Preprocessing,
    cfg: FitConfig,
    device: torch.device,
    console: Console | None,
    feature_loaders: Callable[[], Loaders],
) -> FrozenInputs:
    """Each phase's way past its frozen layers: a head-only phase trains the head on cached
    features, a phase with its bottom groups frozen trains the top on cached activations at
    the cut (when the backbone cuts exactly), any other phase runs the whole network."""
    groups = layer_groups(model.backbone)

    def for_phase(phase: Phase) -> Shortcut | None:
        if phase.head_only:
            return Shortcut(model.head, feature_loaders())
        if phase.adapters or phase.unfreeze is None or phase.unfreeze >= len(groups):
            return None
        cut = split(model.backbone, groups, len(groups) - phase.unfreeze, pre.example())
        if cut is None:
            if console:
                console.print(f"  frozen layers recomputed every step: {cfg.backbone} does not cut into a chain")
            return None
        loaders = activation_loaders(model, cut, splits, pre, cfg, device, console)
        return Shortcut(CutModel(cut.top, model.head), loaders, "activations") if loaders is not None else None

    return for_phase
