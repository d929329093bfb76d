"""Image folders on disk → labelled samples, splits, transforms and PyTorch datasets.

Two layouts are accepted: ``DATA/train/<class>/…`` + ``DATA/val/<class>/…`` (with an
optional ``DATA/test/``), or a flat ``DATA/<class>/…`` that is split into train/val by a
stratified, seeded split.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from transferkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Preprocessing:
    """What the backbone's pretrained weights expect; saved with every model."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class DatasetSplits:
    """Samples per split, the class names (index = label) and the files that were skipped."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...] = ()
    skipped: tuple[Path, ...] = ()

    def counts(self, split: str) -> dict[str, int]:
        counter = Counter(s.label for s in getattr(self, split))
        return {c: counter.get(i, 0) for i, c in enumerate(self.classes)}


# --------------------------------------------------------------------------- scanning


def _is_readable_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()  # parses headers and, for PNG, checksums; cheap next to decoding
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folders(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Sample], list[Path]]:
    """Images under ``root/<class>/`` (recursively). Unknown classes in ``classes`` mode raise."""
    found = [d.name for d in _class_dirs(root)]
    names = list(classes) if classes is not None else found
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has class folders not seen in training: {', '.join(extra)}")
    samples: list[Sample] = []
    skipped: list[Path] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS and _is_readable_image(path):
                samples.append(Sample(path, label))
            else:
                skipped.append(path)
    return names, samples, skipped


def _stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        order = rng.permutation(len(members))
        # Every class keeps at least one training image; a single-image class has no val image.
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) > 1 else 0
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def load_splits(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Find classes and images under ``root`` in either supported layout."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is a file; give a folder with one sub-folder per class")
    if (root / "train").is_dir():
        classes, train, skipped = _scan_class_folders(root / "train")
        splits: dict[str, list[Sample]] = {"train": train}
        for split in ("val", "test"):
            if (root / split).is_dir():
                _, splits[split], more = _scan_class_folders(root / split, classes)
                skipped += more
        if "val" not in splits:
            splits["train"], splits["val"] = _stratified_split(train, val_fraction, seed)
    else:
        classes, samples, skipped = _scan_class_folders(root)
        tr, va = _stratified_split(samples, val_fraction, seed)
        splits = {"train": tr, "val": va}
    _check_classes(root, classes, splits["train"])
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable or non-image file(s): {shown}", stacklevel=2)
    return DatasetSplits(
        classes=tuple(classes),
        train=tuple(splits["train"]),
        val=tuple(splits["val"]),
        test=tuple(splits.get("test", ())),
        skipped=tuple(skipped),
    )


def load_eval_samples(root: str | Path, classes: Sequence[str]) -> list[Sample]:
    """Samples for evaluating a trained model: the test split, else val, else the whole folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist")
    for split in ("test", "val"):
        if (root / split).is_dir():
            root = root / split
            break
    _, samples, _ = _scan_class_folders(root, classes)
    if not samples:
        raise DataError(f"no readable images under {root} in class folders {', '.join(classes)}")
    return samples


def _check_classes(root: Path, classes: Sequence[str], train: Sequence[Sample]) -> None:
    if len(classes) < 2:
        found = f"found {len(classes)} ({', '.join(classes)})" if classes else "found none"
        raise DataError(f"{root} needs at least 2 class sub-folders (one per class, images inside); {found}")
    counts = Counter(s.label for s in train)
    empty = [c for i, c in enumerate(classes) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"class folder(s) with no readable image in {root}: {', '.join(empty)}")


# --------------------------------------------------------------------------- images and transforms


def open_rgb(path: str | Path) -> Image.Image:
    """Decode any image as RGB: EXIF rotation applied; grey, palette, RGBA and CMYK converted."""
    with Image.open(path) as raw:
        raw.seek(0)  # first frame of animated images
        im = ImageOps.exif_transpose(raw)
        if im.mode in ("P", "LA", "RGBA", "PA") or "transparency" in im.info:
            # Transparent pixels become white rather than the undefined colour under them.
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if im.mode.startswith("I"):  # 16-bit greyscale: scale to 8 bits instead of clipping
            arr = np.asarray(im, dtype=np.float32)
            arr = 255.0 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0)
            return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
        return im.convert("RGB")


def _interp(name: str) -> InterpolationMode:
    return {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BICUBIC
    )


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the short side to ``size / crop_pct`` and centre-crop, as timm evaluates."""
    resize = round(pre.image_size / pre.crop_pct)
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(resize, interpolation=_interp(pre.interpolation), antialias=True),
            T.CenterCrop(pre.image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(pre: Preprocessing, hflip: bool = True) -> T.Compose:
    """Random resized crop, flip, rotation, shift, zoom and colour jitter, then normalise."""
    steps: list[Any] = [
        T.ToImage(),
        T.RandomResizedCrop(pre.image_size, scale=(0.6, 1.0), interpolation=_interp(pre.interpolation), antialias=True),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [
        T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(pre.mean, pre.std),
    ]
    return T.Compose(steps)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decodes images lazily, in DataLoader workers, so memory stays flat as datasets grow."""

    def __init__(self, samples: Sequence[Sample], transform: T.Compose) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(open_rgb(sample.path)), sample.label


# --------------------------------------------------------------------------- demo data


def write_digits_demo(out: str | Path, size: int = 64, per_class: int | None = None) -> Path:
    """Write scikit-learn's handwritten digits (1,797 real 8×8 scans) as ``out/<digit>/*.png``.

    Upscaled with bicubic interpolation and drawn dark-on-white, so they look like ink on paper.
    ``per_class`` keeps only the first images of each digit (quick experiments and tests).
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    written: Counter[int] = Counter()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if per_class is not None and written[label] >= per_class:
            continue
        written[label] += 1
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        ink = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(ink, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return out
