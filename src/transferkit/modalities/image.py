"""Images: class folders of image files, timm backbones, the offline ImageNet zoo.

Two layouts are read: ``DATA/train/<class>/…`` + ``DATA/val/<class>/…`` (optional
``DATA/test/``), or a flat ``DATA/<class>/…`` split by the one stratified, seeded split.
Every file is fully decoded once when scanned, so unusable files are skipped (one warning)
before training starts. Backbones: registered offline weights, or any timm model name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL

from transferkit.backbones import BackboneSpec, NameResolver, register_backbone, register_resolver
from transferkit.errors import DataError, TransferkitError
from transferkit.modalities.base import Modality
from transferkit.modalities.common import (
    DatasetSplits,
    Sample,
    Skipped,
    class_folders,
    content_key,
    count_suffixes,
    expand_paths,
    files_in_class_folders,
    png_img,
    warn_unscored,
)
from transferkit.modalities.dicom import INSTALL as DICOM_INSTALL
from transferkit.modalities.folders import load_folder_splits
from transferkit.modalities.image_io import (
    IMAGE_EXTENSIONS,
    SIDE,
    ImageDataset,
    ImagePreprocessing,
    ImageTransform,
    check_image,
    data_window,
    eval_transform,
    open_rgb,
    train_transform,
)
from transferkit.modalities.image_stats import (
    MIRRORED_CLASSES,
    SMALL_INPUT,
    SMALL_SOURCE,
    batchnorm_shift,
    mirror_asymmetry,
    source_side,
)
from transferkit.modalities.image_window import CENTER, WIDTH, is_window
from transferkit.modalities.image_zoo import OFFLINE_ZOO, WeightLoader
from transferkit.modalities.path_tables import (
    PATH_TABLE_CLAIM,
    PATH_TABLE_SUFFIXES,
    is_path_table,
    load_path_table_splits,
    path_table_eval_samples,
)
from transferkit.params import Check, Options, param
from transferkit.paths import VerdictStore
from transferkit.strategies import get_strategy

if TYPE_CHECKING:  # torch loads when a model or a batch is made: `--help` and `list` never need it
    from torch import nn
    from torch.utils.data import Dataset

    from transferkit.modalities.base import ExportSignature, RunOptions

DEFAULT_IMAGE_BACKBONE = "efficientnet_lite0.offline"


# --------------------------------------------------------------------------- scanning folders


def scan_class_folders(
    root: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[Sample], list[Skipped], dict[Path, str]]:
    """Images under ``root/<class>/`` (recursively), the files skipped, and content hashes."""
    found = [d.name for d in class_folders(root)]
    names = list(classes) if classes is not None else found
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has class folders not seen in training: {', '.join(extra)}")
    files = files_in_class_folders(root, names)
    candidates = [(p, label) for p, label in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    skipped = [Skipped(p, "not an image file type") for p, _ in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    checks = check_images([p for p, _ in candidates])
    samples: list[Sample] = []
    digests: dict[Path, str] = {}
    for (path, label), (reason, digest) in zip(candidates, checks, strict=True):
        if reason is None and digest is not None:  # a readable image always has its hash
            samples.append(Sample(path, label, digest=digest))
            digests[path] = digest
        else:
            skipped.append(Skipped(path, reason or "unreadable"))
    return names, samples, skipped, digests


def check_images(paths: Sequence[Path]) -> list[tuple[str | None, str | None]]:
    """Each file decoded once, in parallel (decoding releases the GIL): why it cannot be used
    (or None) and its content hash. Verdicts are kept, so the next scan decodes nothing known."""
    store = image_verdicts()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        checks = list(pool.map(lambda path: _checked_image(path, store), paths))
    # "install pydicom" is no verdict on the file: after the install it reads
    store.add({digest: reason or "" for reason, digest in checks if reason != DICOM_INSTALL and digest})
    return checks


def _checked_image(path: Path, store: VerdictStore) -> tuple[str | None, str | None]:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file type", None
    return check_image(path, store)


def load_image_splits(
    root: str | Path, val_fraction: float = 0.2, seed: int = 0, strict: bool = False, label_column: str = "label"
) -> DatasetSplits:
    """Classes and images under ``root`` in either layout, or in a table of paths; leakage,
    single-image classes and heavy imbalance are warned about
    (:func:`~transferkit.modalities.folders.load_folder_splits`)."""
    if Path(root).is_file() and Path(root).suffix.lower() in PATH_TABLE_SUFFIXES:
        return load_path_table_splits(
            Path(root), check_images, modality="image", item="image", unusable="unreadable or non-image",
            label_column=label_column, val_fraction=val_fraction, seed=seed, strict=strict,
        )  # fmt: skip
    return load_folder_splits(
        Path(root), lambda folder, classes: scan_class_folders(folder, classes)[:3], modality="image", item="image",
        unusable="unreadable or non-image", val_fraction=val_fraction, seed=seed, strict=strict,
    )  # fmt: skip


def load_image_eval_samples(root: str | Path, classes: Sequence[str], label_column: str = "label") -> list[Sample]:
    """Samples for evaluating a trained model: the test split, else val, else the whole folder
    (or table)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in PATH_TABLE_SUFFIXES:
        return path_table_eval_samples(root, classes, label_column, check_images)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {str(root)!r} {what}")
    for split in ("test", "val"):
        if (root / split).is_dir():
            root = root / split
            break
    _, samples, skipped, _ = scan_class_folders(root, classes)
    if not samples:
        raise DataError(f"no readable images under {root} in class folders {', '.join(classes)}")
    if skipped:  # refused by the scan, never scored as another image: said once
        warn_unscored([f"{s.path} ({s.reason})" for s in skipped], len(samples) + len(skipped), "images")
    return samples


def image_verdicts() -> VerdictStore:
    """The scan verdicts of earlier runs, valid for this Pillow (a newer one may read more)."""
    return VerdictStore("image", f"pillow-{PIL.__version__}")


def expand_image_paths(items: Sequence[str | Path]) -> list[Path]:
    store = image_verdicts()  # images a scan already judged are not decoded again
    return expand_paths(items, IMAGE_EXTENSIONS, "image", check=lambda p: check_image(p, store)[0])


# --------------------------------------------------------------------------- backbones


def channels_last(model: nn.Module) -> nn.Module:
    """Store conv weights NHWC. Measured on 2 CPU cores with EfficientNet-Lite0 at 64 px:
    forward 10-25% and a training step 20-40% faster (oneDNN's native layout; on CUDA the
    tensor cores want it too). Inputs may stay NCHW: the first conv follows its weights'."""
    import torch

    return model.to(memory_format=torch.channels_last)


def _offline_spec(
    name: str, arch: str, load: WeightLoader, description: str, pre: dict[str, object], requires: tuple[str, str] | None
) -> BackboneSpec:
    def build(pretrained: bool) -> nn.Module:
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if pretrained:
            load(model)
        if pre:  # the preprocessing these weights were trained with, where it differs from timm's tag
            model.pretrained_cfg = {**model.pretrained_cfg, **pre}  # type: ignore[assignment,dict-item]
        return channels_last(model)

    return BackboneSpec(name, "image", build, description, architecture=arch, requires=requires)


def _timm_spec(name: str) -> BackboneSpec | None:
    """Any timm model name; ``pretrained`` downloads weights from the hub (needs internet)."""
    import timm

    # timm reads "arch.tag" as arch plus a weight tag, so "efficientnet_lite0.ofline" would pass
    # is_model and fail later at download time: a tagged name must be a real pretrained tag.
    if not timm.is_model(name) or ("." in name and not timm.list_pretrained(name)):
        return None

    def build(pretrained: bool) -> nn.Module:
        try:
            return channels_last(timm.create_model(name, pretrained=pretrained, num_classes=0))
        except (OSError, RuntimeError) as exc:  # hub download failures surface as these
            raise TransferkitError(
                f"could not load pretrained weights for {name!r} ({exc.__class__.__name__}: {exc}). "
                "Downloading timm weights needs internet; offline, use a registered backbone "
                f"such as {DEFAULT_IMAGE_BACKBONE!r} or train from scratch (--strategy scratch)."
            ) from exc

    return BackboneSpec(name, "image", build, "timm model (hub weights)", architecture=name)


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def register_image_backbones() -> None:
    for entry in OFFLINE_ZOO:
        register_backbone(_offline_spec(*entry))
    register_resolver(NameResolver("timm", _timm_spec, _timm_names))


def image_preprocessing(model: nn.Module, image_size: int | None = None) -> ImagePreprocessing:
    """The model's own pretrained preprocessing (timm's data config); ``image_size`` overrides the side."""
    from timm.data.config import resolve_data_config

    cfg = resolve_data_config({}, model=model)  # type: ignore[no-untyped-call]
    return ImagePreprocessing(
        image_size=image_size or int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg["interpolation"]),
        crop_pct=float(cfg["crop_pct"]),
    )


@dataclass(frozen=True)
class ImageOptions:
    """The options images own; the run config composes them (``transferkit.params.owned``)."""

    image_size: int | str | None = param(
        "auto",
        "Images: input side in pixels, or auto: 128 for sources under 96 px where a pre-trained backbone "
        "fine-tunes (BiT-HyperRule), else the backbone's own",
        Options(("auto",)), SIDE, fix=f"must be auto or a whole number of pixels from {SIDE.low:g} to {SIDE.high:g}",
    )  # fmt: skip
    hflip: bool | str = param(
        "auto", "Images: horizontal flips in augmentation; auto: only where the classes look alike mirrored",
        Options((True, False, "auto")), fix="choose auto, true or false",
    )  # fmt: skip
    window: str | None = param(
        None,
        "Images: display window C,W (centre, width in the pixels' own units, e.g. 40,400 for CT soft tissue) "
        "for DICOM and 16-bit images [default: a DICOM file's own, else one fitted on the training images]",
        Check(is_window, f"C,W with C {CENTER.describe()} and W {WIDTH.describe()}",
              ("40", "40,0", "a,b", "1e300,1e300", "40,1e-9")),
        fix=f"must be centre,width with the centre {CENTER.describe()} and the width {WIDTH.describe()}, e.g. 40,400",
    )  # fmt: skip


def auto_preprocessing(model: nn.Module, samples: Sequence[Sample], cfg: RunOptions) -> ImagePreprocessing:
    """What the data decides: the input side (``--image-size auto``) and whether training
    flips mirror images (``--hflip auto``), each with its reason for the data line."""
    pre = image_preprocessing(model, cfg.image_size if cfg.image_size != "auto" else None)  # type: ignore[arg-type]
    reasons = []
    side = source_side(samples) if cfg.image_size == "auto" else None
    keep = _keeps_own_size(cfg)
    if side is not None and side < SMALL_SOURCE and keep:
        reasons.append(f"the backbone's own: {keep}; sources {side} px")
    elif side is not None and side < SMALL_SOURCE and pre.image_size > SMALL_INPUT:
        reasons.append(f"sources {side} px; --image-size {pre.image_size} for the backbone's own")
        pre = replace(pre, image_size=SMALL_INPUT)
    elif side is not None:
        reasons.append(f"the backbone's own; sources {side} px")
    if cfg.hflip == "auto" and cfg.augment:
        asymmetry = mirror_asymmetry(samples)
        if asymmetry is not None and asymmetry > MIRRORED_CLASSES:
            pre = replace(pre, flip=False)
            reasons.append(f"no flips: the classes are not mirror-symmetric ({asymmetry:.1f}); --hflip to flip")
    return replace(pre, reason="; ".join(reasons))


def _flips(pre: ImagePreprocessing, cfg: RunOptions) -> bool:
    """--hflip as given, else what ``auto`` decided from the data."""
    return cfg.hflip if isinstance(cfg.hflip, bool) else pre.flip


def _keeps_own_size(cfg: RunOptions) -> str | None:
    """Why small sources keep the backbone's own input size for this strategy, if they do.

    - A frozen backbone: its features cannot adapt to a smaller input (FixRes, Touvron et al.
      2019): few-shot digits' feature-extraction 0.933 at 128 px, 0.975 at Lite0's 224 — and
      the frozen pass runs once per view, so the size costs little.
    - Random weights: BiT-HyperRule is a rule for fine-tuning pre-trained ones; MNIST-1,500
      ``scratch`` 0.703 at 128 px, 0.907 at 224 (seed 0; docs/benchmarks.md).
    """
    strategy = get_strategy(cfg.strategy)
    if not strategy.fine_tunes:
        return "a frozen backbone sees best at the size it learned"
    if not strategy.pretrained:
        return "from random weights the rule for pre-trained ones does not hold"
    return None


# --------------------------------------------------------------------------- the modality


class ImageModality(Modality):
    name = "image"
    unit = "images"
    input_options = ("image_size",)
    options = ImageOptions
    default_backbone = DEFAULT_IMAGE_BACKBONE
    augments = True
    literal_inputs = False
    attribution = "cam"

    def claim(self, path: Path) -> int:
        if is_path_table(path, IMAGE_EXTENSIONS):
            return PATH_TABLE_CLAIM
        return count_suffixes(path, IMAGE_EXTENSIONS) if path.is_dir() else int(path.suffix.lower() in IMAGE_EXTENSIONS)

    def load_splits(self, path: Path, cfg: RunOptions) -> DatasetSplits:
        return load_image_splits(path, cfg.val_fraction, cfg.seed, cfg.strict, cfg.label_column)

    def load_eval_samples(self, path: Path, classes: Sequence[str], fit_config: Mapping[str, Any]) -> list[Sample]:
        return load_image_eval_samples(path, classes, str(fit_config.get("label_column", "label")))

    def check_file(self, path: Path) -> str | None:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            return "not an image file type"
        return check_image(path)[0]

    def read_inputs(self, items: Sequence[str | Path]) -> list[Sample]:
        return [Sample(p, 0) for p in expand_image_paths(items)]

    def preprocessing(self, backbone: nn.Module, cfg: RunOptions, samples: Sequence[Sample] = ()) -> ImagePreprocessing:
        if samples and (cfg.image_size == "auto" or cfg.hflip == "auto"):
            pre = auto_preprocessing(backbone, samples, cfg)
        else:
            pre = image_preprocessing(backbone, None if cfg.image_size == "auto" else cfg.image_size)  # type: ignore[arg-type]
        return replace(pre, window=data_window(samples, cfg.window))

    def preprocessing_from_dict(self, values: Mapping[str, Any]) -> ImagePreprocessing:
        return ImagePreprocessing.from_dict(values)

    def transform(self, pre: Any, is_training: bool, cfg: RunOptions | None = None) -> Callable[[Any], Any]:
        if is_training and cfg is not None and cfg.augment:
            return train_transform(pre, hflip=_flips(pre, cfg))
        return eval_transform(pre)

    def input_side(
        self, backbone: Callable[[], nn.Module], cfg: RunOptions, samples: Sequence[Sample] = ()
    ) -> int | None:
        return int(self.preprocessing(backbone(), cfg, samples).image_size)

    def augmentation(self, pre: Any, cfg: RunOptions) -> dict[str, Any]:
        return {"hflip": _flips(pre, cfg)}

    def dataset(
        self, samples: Sequence[Sample], transform: Callable[[Any], Any], training: bool = False
    ) -> Dataset[Any]:
        assert isinstance(transform, ImageTransform)  # made by self.transform
        return ImageDataset(samples, transform, training)

    def sample_key(self, sample: Sample) -> bytes:
        return content_key(sample)

    def preview(self, path: str) -> str | None:
        try:
            image = open_rgb(path)
        except (OSError, ValueError):
            return None
        image.thumbnail((96, 96))
        return png_img(image, path)

    def register_backbones(self) -> None:
        register_image_backbones()

    def domain_shift(self, backbone: str, splits: DatasetSplits, pre: Any) -> float | None:
        return batchnorm_shift(backbone, splits.train, pre)

    def export_signature(self, model: nn.Module, pre: Any) -> ExportSignature:
        return model, (pre.example().repeat(2, 1, 1, 1),), ["images"], [(0,)]

    def export_assets(self, pre: Any, folder: Path) -> None:
        return None

    def onnx_inputs(self, pre: Any, samples: Sequence[Sample], assets: Path) -> dict[str, np.ndarray]:
        transform = eval_transform(pre)
        return {"images": np.stack([transform.array(s.path) for s in samples])}
