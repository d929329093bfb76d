"""The loaders a run trains and scores with: inputs (augmented and shuffled for training,
DDP-sharded under torchrun) and frozen-backbone features through the cache.

They read :class:`Batches`, which :mod:`transferkit.plan` resolves once from the run's options;
nothing here reads the options themselves (import-linter: "below the pipeline, only the plan
reads the user's options")."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit import cutpoint, distributed
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
from transferkit.strategies import Phase
from transferkit.training import FrozenInputs, Loaders, Shortcut


@dataclass(frozen=True)
class Batches:
    """How a run draws its batches and caches its frozen features, resolved once
    (:func:`transferkit.plan.batches`): the transforms are built, the worker count is this
    device's, the cache is a folder or none."""

    backbone: str  # names the cached features
    size: int
    seed: int
    workers: int
    train_transform: Any  # augmented when the run augments, else the clean one
    eval_transform: Any
    augmented: bool  # training inputs are augmented
    views: int  # augmented views cached per training item (0: fresh ones every epoch)
    cache: Path | None  # the feature cache's folder; None: nothing is kept on disk
    view_key: Mapping[str, Any]  # what makes the augmented views these: the seed, the flips

    def train_views(self) -> list[Any]:
        """``views`` augmented views when augmenting, else the one clean view."""
        return [self.train_transform] * self.views if self.augmented else [self.eval_transform]


def sample_loader(
    modality: Modality,
    samples: Sequence[Sample],
    transform: Any,
    batches: Batches,
    device: torch.device,
    shuffle: bool = False,
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(batches.seed)
    # only the shuffled training loader may stand another item in for one that breaks mid-run
    dataset = modality.dataset(samples, transform, training=shuffle)
    common: dict[str, Any] = {
        "num_workers": batches.workers,
        "pin_memory": device.type == "cuda",
        # Workers start anew each epoch, seeded from the loader's generator (checkpointed): kept
        # alive, their random streams would run on from epochs a resumed run never replays.
        "persistent_workers": False,
        "generator": generator,
    }
    if distributed.world_size() == 1:
        return DataLoader(dataset, batch_size=batches.size, shuffle=shuffle, **common)
    if shuffle:  # this rank's share of every global batch; its top-up repeats carry no label
        shard = GlobalBatchShard(len(samples), batches.size, generator)
        return DataLoader(Padded(dataset, MISSING), batch_sampler=shard, **common)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batches.size, sampler=ShardSampler(len(dataset)), **common)  # type: ignore[arg-type]


def input_loaders(modality: Modality, splits: DatasetSplits, batches: Batches, device: torch.device) -> Loaders:
    """Loaders of the inputs themselves: augmented training inputs (shuffled), clean validation."""
    return Loaders(
        sample_loader(modality, splits.train, batches.train_transform, batches, device, shuffle=True),
        sample_loader(modality, splits.val, batches.eval_transform, batches, device),
    )


def features(
    model: TransferModel,
    modality: Modality,
    samples: Sequence[Sample],
    transforms: list[Any],
    pre: Preprocessing,
    batches: Batches,
    device: torch.device,
    console: Console | None,
    augmented: bool,
    cut: Cut | None = None,
) -> Features:
    """Frozen-backbone features of ``samples`` (or, with ``cut``, the activations at the cut),
    one view per transform, through the cache."""
    # Random views depend on the seed and the augmentation; a clean view does not.
    settings = feature_settings(batches.backbone, pre, dict(batches.view_key) if augmented else None)
    extra: dict[str, Any] = {}
    if cut is not None:
        settings["cut"] = list(cut.paths)
        extra = {"item_shape": cut.shape, "dtype": np.float16}
    return extract_features(
        cut.bottom if cut is not None else model.backbone, modality, samples, transforms, batch_size=batches.size,
        device=device, seed=batches.seed, cache_dir=batches.cache, settings=settings,
        console=console, num_workers=batches.workers, **extra,
    )  # fmt: skip


def feature_loaders(
    model: TransferModel,
    splits: DatasetSplits,
    pre: Preprocessing,
    batches: Batches,
    device: torch.device,
    console: Console | None,
    clean_train: Features | None = None,
) -> Loaders:
    """Loaders of backbone features: ``views`` augmented views per training item when
    augmenting, else one clean view (``clean_train`` when the probe already extracted it);
    validation always clean."""
    modality = get_modality(splits.modality)
    augmented = batches.augmented
    views = batches.train_views()
    if clean_train is not None and not augmented:
        train_features = clean_train
    else:
        train_features = features(model, modality, splits.train, views, pre, batches, device, console, augmented)
    clean = [batches.eval_transform]
    val = features(model, modality, splits.val, clean, pre, batches, device, console, augmented=False)
    return _cached_loaders(train_features, val, len(views), batches)


def _cached_loaders(train: Features, val: Features, views: int, batches: Batches) -> Loaders:
    sampler = ViewSampler(len(train.labels), views, torch.Generator().manual_seed(batches.seed))
    return Loaders(feature_batches(train, batches.size, sampler), feature_batches(val, batches.size))


def activation_loaders(
    model: TransferModel,
    cut: Cut,
    splits: DatasetSplits,
    pre: Preprocessing,
    batches: Batches,
    device: torch.device,
    console: Console | None,
) -> Loaders | None:
    """Loaders of the activations at ``cut`` (views as :func:`feature_loaders`); ``None``, said,
    when they would take more than :data:`transferkit.cutpoint.CUT_CACHE_LIMIT`."""
    modality = get_modality(splits.modality)
    views = batches.train_views()
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
    train = features(model, modality, splits.train, views, pre, batches, device, console, batches.augmented, cut)
    val = features(model, modality, splits.val, [batches.eval_transform], pre, batches, device, console, False, cut)
    return _cached_loaders(train, val, len(views), batches)


def shortcuts(
    model: TransferModel,
    splits: DatasetSplits,
    pre: Preprocessing,
    batches: Batches,
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
                console.print(f"  frozen layers recomputed every step: {batches.backbone} does not cut into a chain")
            return None
        loaders = activation_loaders(model, cut, splits, pre, batches, device, console)
        return Shortcut(CutModel(cut.top, model.head), loaders, "activations") if loaders is not None else None

    return for_phase
