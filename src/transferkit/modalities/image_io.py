"""Image files: decoding any image as RGB, checking files, transforms and the dataset.

Transforms work on the PIL image and convert to a tensor once at the end: Pillow's C resize
is several times faster than resizing float tensors (benchmarks/speed.py, pipeline overhead).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit import params
from transferkit.modalities.common import FileDataset, Sample
from transferkit.modalities.dicom import DICOM_EXTENSIONS, check_dicom, is_dicom, open_dicom, raw_values
from transferkit.modalities.dicom import declared_pixels as dicom_declared_pixels
from transferkit.modalities.image_window import Window, apply_window, fit_on, parse_window, stretch
from transferkit.paths import VerdictStore
from transferkit.schema import Interval, OneOf, check_fields, check_floats

if TYPE_CHECKING:  # torch and torchvision load when a transform is built, not at import
    import torch
    from torchvision.transforms import InterpolationMode

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", *DICOM_EXTENSIONS})


# The input side's one declaration: --image-size, YAML, a saved run, ONNX metadata and a federated
# server's message all check against it (a side of 20,000 px is a 4.8 GB batch of one).
SIDE = params.Interval(int, 16, 1024)


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the backbone's pretrained weights expect; saved with every model."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    window: Window | None = None  # how pixels beyond 8 bits become grey levels (image_window)
    # What the data decided (--image-size / --hflip auto) and why; training only, not saved.
    reason: str = field(default="", compare=False)
    flip: bool = field(default=True, compare=False)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["reason"], values["flip"]
        if self.window is None:  # cards without a window read as before windows existed
            del values["window"]
        else:
            values["window"] = self.window.to_dict()
        return {"kind": "image", **values}

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocessing") -> ImagePreprocessing:
        """Read back what :meth:`to_dict` wrote, checked: a run file may have been edited."""
        values = check_fields(where, d, {
            "image_size": SIDE, "crop_pct": Interval(float, 0.05, 1.5),
            "interpolation": OneOf(("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")),
        })  # fmt: skip
        return cls(
            image_size=values["image_size"],
            mean=check_floats(where, "mean", d.get("mean"), 3, -10, 10),  # type: ignore[arg-type]
            std=check_floats(where, "std", d.get("std"), 3, 1e-6, 100),  # type: ignore[arg-type]
            interpolation=values["interpolation"],
            crop_pct=values["crop_pct"],
            window=Window.from_dict(d["window"], f"{where}.window") if d.get("window") is not None else None,
        )

    def example(self) -> torch.Tensor:
        """One input of the right shape (memory estimates hook a forward pass on it)."""
        import torch

        return torch.zeros(1, 3, self.image_size, self.image_size)

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        window = f", {self.window.describe()}" if self.window else ""
        return f"input {self.image_size} px{why}, mean {self.mean}, std {self.std}, {self.interpolation}{window}"


def check_image(path: Path, known: VerdictStore | None = None) -> tuple[str | None, str]:
    """(why the file cannot be used, or None; its content hash).

    Decodes the whole file, because headers can be intact while the data is truncated;
    JPEGs decode at 1/8 scale, which reads every byte at a fraction of the cost. Content
    already judged (``known``, from earlier scans) is not decoded again.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})", ""
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if not data:
        return "empty file", digest
    verdict = known.get(digest) if known is not None else None
    if verdict is not None:
        return verdict or None, digest
    if is_dicom(path):
        return check_dicom(path), digest
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


def declared_pixels(path: Path) -> int:
    """Width × height (× frames) an image's header declares, read without decoding it (DICOM:
    its rows × columns); 0 for a file that is not an image (a clip, a text)."""
    if is_dicom(path):
        return dicom_declared_pixels(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the bomb warning: the size is what is asked here
            with Image.open(path) as image:
                return int(image.width) * int(image.height) * max(1, int(getattr(image, "n_frames", 1)))
    except Image.DecompressionBombError:  # past Pillow's hard limit: more than any limit allows
        return 2 * int(Image.MAX_IMAGE_PIXELS or 1 << 28) + 1
    except (OSError, ValueError, SyntaxError, EOFError):
        return 0


def open_rgb(path: str | Path, draft_size: int | None = None, window: Window | None = None) -> Image.Image:
    """Decode any image as RGB: EXIF rotation applied; grey, palette, RGBA and CMYK converted;
    DICOM and 16-bit greyscale through ``window`` (:mod:`.image_window`).

    With ``draft_size``, a JPEG is decoded at the smallest DCT scale whose sides stay at least
    that large, which is what makes big camera photos cheap to feed to a 224 px network.
    """
    if is_dicom(path):
        return open_dicom(path, window).convert("RGB")
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
        if im.mode.startswith("I") or im.mode == "F":  # 16-bit (or float) greyscale: a window, not clipping
            arr = np.asarray(im, dtype=np.float64)
            # no window: a model saved before windows existed keeps each image's own range
            grey = apply_window(arr, window) if window is not None else stretch(arr, arr.min(), arr.max())
            return Image.fromarray(grey, mode="L").convert("RGB")
        return im.convert("RGB")


def high_bit_values(path: str | Path) -> np.ndarray | None:
    """A file's grey values when they have more than 8 bits and no window of their own (what a
    window is fitted on); None for 8-bit and colour images."""
    if is_dicom(path):
        return raw_values(path)
    with Image.open(path) as im:
        if not (im.mode.startswith("I") or im.mode == "F"):
            return None
        return np.asarray(im, dtype=np.float64)


def data_window(samples: Iterable[Any], window: str | None) -> Window | None:
    """``--window`` as given, else one fitted on the training samples' images beyond 8 bits
    (None when every image has 8 bits or its own DICOM window)."""
    if window is not None:
        return parse_window(window)

    def values(path: Any) -> np.ndarray | None:
        try:
            return high_bit_values(path)
        except (OSError, ValueError):
            return None  # the scan's verdict stands; the window is fitted on the others

    return fit_on((s.path for s in samples if s.path is not None), values)


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header (DICOM's rows and columns)."""
    if is_dicom(path):
        from transferkit.modalities.dicom import dicom_size

        return dicom_size(path)
    with Image.open(path) as image:
        return image.size


def _interp(name: str) -> InterpolationMode:
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BICUBIC
    )


class ToNormalizedTensor:
    """PIL RGB image → float CHW tensor normalised with the backbone's mean and std.

    One multiply-subtract instead of v2's ToImage + ToDtype + Normalize, which cost more per
    image than the resize itself (benchmarks/speed.py, pipeline overhead).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(3, 1, 1)
        self.shift = np.array([m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(3, 1, 1)

    def array(self, image: Image.Image) -> np.ndarray:
        """The normalised CHW float32 array (NumPy only: ONNX inference uses it without torch)."""
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        return np.ascontiguousarray(array * self.scale - self.shift, dtype=np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.array(image))


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

    def __init__(self, steps: Sequence[Any], pre: ImagePreprocessing, draft_size: int) -> None:
        self.steps = list(steps)
        self.to_tensor = ToNormalizedTensor(pre.mean, pre.std)
        self.draft_size = draft_size
        self.window = pre.window

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return self.to_tensor(image)

    def array(self, path: str | Path) -> np.ndarray:
        """The file at ``path`` through the steps, as a NumPy array (ONNX inference, no torch)."""
        image = open_rgb(path, self.draft_size, self.window)
        for step in self.steps:
            image = step(image)
        return self.to_tensor.array(image)

    def __repr__(self) -> str:
        return f"ImageTransform({self.steps!r}, draft_size={self.draft_size})"


def eval_transform(pre: ImagePreprocessing) -> ImageTransform:
    """Resize the short side to ``size / crop_pct`` and centre-crop, as timm evaluates."""
    resize = round(pre.image_size / pre.crop_pct)
    return ImageTransform([ResizeCenterCrop(resize, pre.image_size, pre.interpolation)], pre, draft_size=resize)


def train_transform(pre: ImagePreprocessing, hflip: bool = True) -> ImageTransform:
    """Random resized crop, flip, rotation, shift, zoom and colour jitter (on the PIL image)."""
    from torchvision.transforms import v2 as T

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


class ImageDataset(FileDataset):
    """Decodes images lazily as RGB; JPEGs at the smallest DCT scale the transform needs."""

    item = "image"
    errors = (OSError, ValueError, SyntaxError)

    def read(self, sample: Sample) -> torch.Tensor:
        transform = self.transform
        assert isinstance(transform, ImageTransform)  # made by the image modality
        return transform(open_rgb(sample.path, transform.draft_size, transform.window))
