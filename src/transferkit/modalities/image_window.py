"""Pixels beyond 8 bits (DICOM, 16-bit PNG/TIFF) shown to a network through a display window.

A radiologist reads a CT or an X-ray through a window: a centre and a width in the image's
own units (Hounsfield units for CT), everything below black, everything above white. One
window for the whole dataset keeps the same tissue the same grey in every image; stretching
each image's own minimum–maximum to 8 bits (what transferkit did before) does not.

Where the window comes from, first that applies:

1. ``--window C,W`` (source ``user``): every high-bit-depth image, DICOM included;
2. a DICOM file's own VOI LUT or window centre/width (what its modality chose);
3. one fitted on the training images (source ``data``): the 0.5–99.5 percentiles of their
   pooled values, saved with the model so ``predict``, ``export`` and ``serve`` use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.schema import Interval, OneOf, SchemaError, check_fields

# One declaration of a window's bounds: --window, YAML, a run file and ONNX metadata all read it.
CENTER = Interval(float, -1e9, 1e9)
WIDTH = Interval(float, 1e-6, 1e9)

FIT_PERCENTILES = (0.5, 99.5)  # a few hot or dead pixels must not set the window
FIT_PIXELS = 20_000  # values sampled per image for the fit


@dataclass(frozen=True)
class Window:
    """A linear display window (DICOM's LINEAR VOI function) and where it came from."""

    center: float
    width: float
    source: str = "user"  # "user" (--window) overrides a DICOM file's own; "data" does not

    def to_dict(self) -> dict[str, Any]:
        return {"center": self.center, "width": self.width, "source": self.source}

    @classmethod
    def from_dict(cls, values: Any, where: str = "preprocessing.window") -> Window:
        checked = check_fields(where, values, {
            "center": CENTER, "width": WIDTH,
            "source": OneOf(("user", "data")),
        })  # fmt: skip
        return cls(float(checked["center"]), float(checked["width"]), checked["source"])

    def describe(self) -> str:
        where = "--window" if self.source == "user" else "fitted on the training images"
        return f"window centre {self.center:g}, width {self.width:g} ({where})"


def parse_window(text: str) -> Window:
    """``"40,400"`` → Window(40, 400); raises ValueError for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise ValueError(f"expected centre,width, got {text!r}")
    center, width = float(parts[0]), float(parts[1])
    try:  # the bounds a saved run is read back with, so a window fit accepts is one predict accepts
        return Window.from_dict({"center": center, "width": width, "source": "user"}, "--window")
    except SchemaError as exc:
        raise ValueError(str(exc)) from None


def is_window(text: Any) -> bool:
    """For the option's constraint: a string that :func:`parse_window` reads."""
    try:
        parse_window(text)
    except (TypeError, ValueError):
        return False
    return True


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """DICOM's LINEAR function (PS3.3 C.11.2.1.2.1) onto 0–255, as uint8."""
    center, width = window.center - 0.5, max(window.width - 1.0, 1e-6)
    scaled = ((values.astype(np.float64) - center) / width + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low``..``high`` linearly onto 0–255 (a LUT's output range, or one image's own range)."""
    scaled = 255.0 * (values.astype(np.float64) - low) / max(high - low, 1e-12)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def fit_window(arrays: Iterable[np.ndarray | None]) -> Window | None:
    """One window over many images' values (None when none of them has more than 8 bits)."""
    pooled = []
    rng = np.random.default_rng(0)
    for values in arrays:
        if values is None:
            continue
        flat = values.ravel()
        if flat.size > FIT_PIXELS:
            flat = flat[rng.choice(flat.size, FIT_PIXELS, replace=False)]
        pooled.append(flat.astype(np.float64))
    if not pooled:
        return None
    low, high = np.percentile(np.concatenate(pooled), FIT_PERCENTILES)
    width = max(float(high - low), 1.0)
    return Window(round(float(low + high) / 2, 3), round(width, 3), "data")


def fit_on(paths: Iterable[Any], raw_values: Callable[[Any], np.ndarray | None], limit: int = 64) -> Window | None:
    """:func:`fit_window` over at most ``limit`` of ``paths`` spread over the list."""
    listed = list(paths)
    step = max(1, len(listed) // limit)
    return fit_window(raw_values(p) for p in listed[::step][:limit])


__all__ = [
    "Window", "apply_window", "fit_on", "fit_window", "is_window", "parse_window", "stretch",
]  # fmt: skip
