"""What a run's options mean on its data, resolved once: the :class:`RunPlan`.

:class:`~transferkit.config.FitConfig` is what the user said; a ``RunPlan`` is what it means
here — the backbone the data decided, the :class:`~transferkit.strategies.Strategy` object and
its phases, the preprocessing (input side, flips, window, each with its reason), how batches
are drawn and cached, and how the loop optimises and stops. The pipeline makes it once
(:func:`make_plan`, timm's ``resolve_pretrained_cfg`` is the model) and each part below reads
its own piece: the loaders :class:`~transferkit.loaders.Batches`, the loop
:class:`~transferkit.training.LoopSettings`. None of them imports the config: an import-linter
contract in ``pyproject.toml`` ("below the pipeline, only the plan reads the user's options")
keeps it so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.config import FitConfig
from transferkit.freezing import bn_update
from transferkit.loaders import Batches
from transferkit.modalities import DatasetSplits, Modality, Preprocessing, get_modality
from transferkit.optim import stretch_to_min_steps
from transferkit.paths import default_cache_dir
from transferkit.runtime import loader_workers
from transferkit.strategies import Phase, Strategy
from transferkit.training import LoopSettings


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved: every part below the pipeline reads this, never the options."""

    config: FitConfig  # what the user said, fitted to the data: the model card and resume key record it
    modality: Modality
    strategy: Strategy
    phases: tuple[Phase, ...]  # after --min-steps stretched them to the data
    preprocessing: Preprocessing  # decided once, on the training items (image side, flips, window)
    device: torch.device
    batches: Batches
    loop: LoopSettings
    probe_init: bool  # LP-FT: the head starts where the probe on frozen features ends
    notes: tuple[str, ...] = ()  # what the data changed, said under the header ("phase head: 1 → 13 epochs …")

    @property
    def backbone(self) -> str:
        return self.batches.backbone

    @property
    def cached_features(self) -> bool:
        """Frozen layers run once per view: a frozen backbone maps the same input to the same
        features, unless every epoch draws fresh augmented views."""
        return not (self.batches.augmented and self.batches.views == 0)

    def describe(self) -> str:
        """The data line's second half: what was decided, and why where the data decided it."""
        return self.preprocessing.describe()


def batches(cfg: FitConfig, modality: Modality, pre: Preprocessing, device: torch.device) -> Batches:
    """What the loaders read of ``cfg``: its transforms built, its workers this device's."""
    augmented = cfg.augment and modality.augments
    return Batches(
        backbone=str(cfg.backbone),
        size=cfg.batch_size,
        seed=cfg.seed,
        workers=loader_workers(cfg.num_workers, device),
        train_transform=modality.transform(pre, is_training=True, cfg=cfg),
        eval_transform=modality.transform(pre, is_training=False),
        augmented=augmented,
        views=cfg.cache_views,
        cache=default_cache_dir() if cfg.cache else None,
        view_key={"seed": cfg.seed, **modality.augmentation(pre, cfg)} if augmented else {},
    )


def loop_settings(cfg: FitConfig, strategy: Strategy, *, probe_init: bool) -> LoopSettings:
    """How the loop optimises, stops and restores for ``cfg`` with ``strategy``."""
    return LoopSettings(
        cfg.weight_decay, cfg.warmup, cfg.patience, cfg.monitor, cfg.restore_best,
        bn_update(cfg.bn_stats, strategy.pretrained), score_start=probe_init,
        layer_decay=cfg.layer_decay if strategy.pretrained else 1.0,
    )  # fmt: skip


def make_plan(
    cfg: FitConfig,
    splits: DatasetSplits,
    strategy: Strategy,
    backbone: nn.Module,
    phases: Sequence[Phase],
    device: torch.device,
    *,
    probe_init: bool,
) -> RunPlan:
    """Resolve ``cfg`` (already fitted to the data) for ``splits`` with ``strategy`` (the one
    ``cfg`` names, looked up once by the caller) on the built ``backbone``:
    the preprocessing is decided here, once, from the training items; the phases are
    stretched to ``--min-steps`` optimiser steps (each stretch a note)."""
    modality = get_modality(splits.modality)
    pre = modality.preprocessing(backbone, cfg, splits.train)
    steps = math.ceil(len(splits.train) / cfg.batch_size)  # a loader's length, sharded or not
    stretched = stretch_to_min_steps(phases, steps, cfg.min_steps)
    notes = tuple(
        f"phase {after.name}: {before.epochs} → {after.epochs} epochs, for at least {cfg.min_steps} "
        f"optimiser steps ({steps} per epoch; --min-steps)"
        for before, after in zip(phases, stretched, strict=True)
        if after.epochs != before.epochs
    )
    return RunPlan(
        cfg, modality, strategy, stretched, pre, device, batches(cfg, modality, pre, device),
        loop_settings(cfg, strategy, probe_init=probe_init), probe_init, notes,
    )  # fmt: skip


__all__ = ["RunPlan", "batches", "loop_settings", "make_plan"]
