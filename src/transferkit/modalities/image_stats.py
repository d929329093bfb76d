"""What an image dataset's own pixels say about the defaults for it: the sources' size (the
input side), whether the classes survive a mirror (flips), and how far they sit from the
backbone's pre-training statistics (compare's prior between frozen and fine-tuned)."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image

from transferkit.backbones import resolve_backbone
from transferkit.errors import TransferkitError
from transferkit.modalities.common import Sample
from transferkit.modalities.image_io import ImageDataset, ImagePreprocessing, eval_transform, image_size_of, open_rgb

if TYPE_CHECKING:
    import torch
    from torch import nn


# BiT-HyperRule (Kolesnikov et al., ECCV 2020): sources under 96 px are trained at 128 px,
# larger ones at a high resolution — here the backbone's own, the ceiling. Digits (64 px
# sources): 128 px instead of Lite0's 224 trains 3x faster (docs/benchmarks.md, "input size").
SMALL_SOURCE, SMALL_INPUT = 96, 128


def source_side(samples: Sequence[Sample], limit: int = 256) -> int | None:
    """The median short side of the sources (headers only, at most ``limit`` spread over the list)."""
    step = max(1, len(samples) // limit)
    sides = []
    for sample in samples[::step][:limit]:
        try:
            sides.append(min(image_size_of(sample.path)))
        except (OSError, ValueError):
            continue  # unreadable now: the scan's verdict stands, the size is read from the others
    return int(statistics.median(sides)) if sides else None


# Flips help only where a mirrored image is still of its class. Measured as how far each
# class's mean image is from its mirror image, over what sampling noise alone gives (≤ 1 for
# a mirror-symmetric class): digits 1.5-40 (median 9.5), Tux Paint's object photos 0.1-0.3.
MIRRORED_CLASSES = 2.0


def mirror_asymmetry(samples: Sequence[Sample], limit: int = 400, side: int = 32) -> float | None:
    """The median over classes of ‖m − mirror(m)‖² / (4·tr Σ / n), m the class's mean image
    (grey, ``side`` px), Σ its pixel covariance, n its images (at most ``limit`` in all). A
    multi-task item's class is its tuple of labels."""
    by_class: dict[object, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    per_class = max(4, limit // max(len(by_class), 1))
    scores = []
    for members in by_class.values():
        picked = members[:: max(1, len(members) // per_class)][:per_class]
        pixels = []
        for sample in picked:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # palette transparency: the grey levels are all that count
                    grey = open_rgb(sample.path, side).convert("L").resize((side, side), PIL.Image.Resampling.BILINEAR)
                pixels.append(np.asarray(grey, np.float32).ravel() / 255)
            except (OSError, ValueError):
                continue
        if len(pixels) < 2:
            continue
        x = np.stack(pixels)
        mean = x.mean(axis=0)
        mirror = mean.reshape(side, side)[:, ::-1].ravel()
        noise = 4 * float(x.var(axis=0).sum()) / len(x)
        scores.append(float(((mean - mirror) ** 2).sum()) / max(noise, 1e-12))
    return statistics.median(scores) if scores else None


# --------------------------------------------------------------------------- domain shift


def batchnorm_shift(backbone: str, samples: Sequence[Sample], pre: ImagePreprocessing, limit: int = 64) -> float | None:
    """How far the images move the backbone's BatchNorm inputs from its pre-training
    statistics: the mean over layers and channels of |batch mean − running mean| / running sd.

    Measured with EfficientNet-Lite0: crops of natural photos 0.18–0.38, scanned digits
    0.43–0.61, random noise 0.44–0.49 (64–224 px). ``None`` without BatchNorm layers or
    without pre-trained weights at hand (e.g. hub weights and no internet).
    """
    import torch
    from torch import nn

    try:
        model = resolve_backbone(backbone).build(True).eval()
    except TransferkitError:
        return None
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    shifts: list[float] = []

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        running_mean, running_var = module.running_mean, module.running_var
        if not isinstance(running_mean, torch.Tensor) or not isinstance(running_var, torch.Tensor):
            return  # a BatchNorm without tracked statistics says nothing about pre-training
        sd = (running_var + 1e-5).sqrt()
        shifts.append(float(((inputs[0].mean(dim=(0, 2, 3)) - running_mean).abs() / sd).mean()))

    handles = [m.register_forward_hook(measure) for m in norms]
    try:
        step = max(1, len(samples) // limit)
        dataset = ImageDataset(samples[::step][:limit], eval_transform(pre))
        with torch.inference_mode():
            model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    finally:
        for h in handles:
            h.remove()
    return statistics.fmean(shifts)
