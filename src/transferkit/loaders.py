"""The loaders a run trains and scores with: inputs (augmented and shuffled for training,
DDP-sharded under torchrun) and frozen-backbone features through the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.config import FitConfig
from transferkit.distributed import GlobalBatchShard, Padded, ShardSampler
from transferkit.features import (
    Features,
    ViewSampler,
    extract_features,
    feature_batches,
    feature_settings,
)
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
from transferkit.training import Loaders


def sample_loader(
    modality: Modality,
    samples: Sequence[Sample],
    transform: Any,
    cfg: FitConfig,
    device: torch.device,
    shuffle: bool = False,
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(cfg.seed)
    dataset = modality.dataset(samples, transform)
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
) -> Features:
    """Frozen-backbone features of ``samples``, one view per transform, through the cache."""
    # Random views depend on the seed and the augmentation; a clean view does not.
    settings = feature_settings(str(cfg.backbone), pre, {"seed": cfg.seed, "hflip": cfg.hflip} if augmented else None)
    return extract_features(
        model.backbone, modality, samples, transforms, batch_size=cfg.batch_size, device=device, seed=cfg.seed,
        cache_dir=default_cache_dir() if cfg.cache else None, settings=settings, console=console,
        num_workers=loader_workers(cfg.num_workers, device),
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
    clean = modality.transform(pre, is_training=False)
    views = [modality.transform(pre, is_training=True, cfg=cfg)] * cfg.cache_views if augmented else [clean]
    if clean_train is not None and not augmented:
        train_features = clean_train
    else:
        train_features = features(model, modality, splits.train, views, pre, cfg, device, console, augmented)
    val = features(model, modality, splits.val, [clean], pre, cfg, device, console, augmented=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = ViewSampler(len(splits.train), len(views), generator)
    return Loaders(feature_batches(train_features, cfg.batch_size, sampler), feature_batches(val, cfg.batch_size))
