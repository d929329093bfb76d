"""DICOM files as images: pixels only, through the modality LUT and a display window.

Read with pydicom (``pip install 'transferkit[medical]'``; its pylibjpeg handlers decode the
compressed transfer syntaxes: JPEG, JPEG-LS, JPEG 2000, RLE). Only the pixel module is used:
no patient or study field is read into a label, a log line, an error or a report, and an
error names the file and what is wrong with its pixels, never a tag's value.

Per file: rescale slope/intercept (or the modality LUT) to the modality's units, then the
window (:mod:`.image_window`: ``--window``, else the file's VOI LUT or window centre/width,
else the one fitted on the training images), MONOCHROME1 inverted so that bright is dense
everywhere. Colour files (RGB, YBR, palette) are read as colour. A multi-frame file (a CT
series in one file, a cine loop) is refused: which frame is the labelled one is the user's
call, so they save the frames they mean as files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from transferkit.extras import MissingExtraError, install_line, installed, require
from transferkit.modalities.image_window import Window, apply_window, stretch

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
PURPOSE = "reading DICOM"
INSTALL = str(MissingExtraError("pydicom", "medical", PURPOSE))
_PROBE = 1e12  # a value beyond every window: the VOI's output range is what it maps the extremes to


class DicomError(ValueError):
    """A DICOM file transferkit cannot use (a ValueError: datasets skip such files as unreadable)."""


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def read_dataset(path: str | Path, pixels: bool = True) -> Dataset:
    """The file's dataset (``pixels=False``: the header alone, for its size)."""
    # a ValueError, not the extra's own error: a folder skips the files it cannot read, naming why
    if not installed("pydicom"):
        raise DicomError(INSTALL)
    pydicom = require("pydicom", PURPOSE)
    errors = require("pydicom.errors", PURPOSE)
    try:
        ds: Dataset = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except errors.InvalidDicomError:
        raise DicomError("not a DICOM file (no DICM preamble)") from None
    except (OSError, EOFError, KeyError, AttributeError, TypeError) as exc:
        raise DicomError(f"a corrupt or truncated DICOM file ({type(exc).__name__})") from None
    if pixels and "PixelData" not in ds:
        raise DicomError("a DICOM file without pixel data (a report or structure set, not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"a multi-frame DICOM file ({frames} frames): save the frames you mean as separate files")
    return ds


def _pixels(ds: Dataset) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, TypeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "an unknown transfer syntax")
        raise DicomError(f"its pixels ({name}) cannot be decoded ({type(exc).__name__}); {install_line('medical')} "
                         "installs the JPEG, JPEG-LS and JPEG 2000 handlers") from None  # fmt: skip


def _monochrome(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")


def modality_values(ds: Dataset) -> np.ndarray:
    """A monochrome file's pixels in its modality's units (rescale slope/intercept or modality LUT)."""
    apply_modality_lut = require("pydicom.pixels.processing", PURPOSE).apply_modality_lut

    return np.asarray(apply_modality_lut(_pixels(ds), ds), dtype=np.float64)


def raw_values(path: str | Path) -> np.ndarray | None:
    """What a window is fitted on: a monochrome file's modality values, unless it carries its own window."""
    ds = read_dataset(path)
    if not _monochrome(ds) or "VOILUTSequence" in ds or "WindowCenter" in ds:
        return None
    return modality_values(ds)


def own_window(ds: Dataset, values: np.ndarray) -> np.ndarray | None:
    """The file's VOI LUT or window centre/width applied (pydicom's ``apply_voi_lut``) onto
    0–255; None when the file has neither."""
    apply_voi_lut = require("pydicom.pixels.processing", PURPOSE).apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    voi = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    low, high = np.asarray(apply_voi_lut(np.array([-_PROBE, _PROBE]), ds, index=0), dtype=np.float64)
    return stretch(voi, min(low, high), max(low, high))


def grey_levels(ds: Dataset, window: Window | None) -> np.ndarray:
    """A monochrome file as uint8: ``window`` if the user gave it, else the file's own, else
    ``window`` fitted on the data, else this image's own range (a model saved before windows)."""
    values = modality_values(ds)
    out = apply_window(values, window) if window is not None and window.source == "user" else None
    if out is None:
        out = own_window(ds, values)
    if out is None:
        out = apply_window(values, window) if window is not None else stretch(values, values.min(), values.max())
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # stored with high values dark
        out = 255 - out
    return out


def colour(ds: Dataset) -> np.ndarray:
    """RGB, YBR (pydicom converts to RGB) and palette-colour files as uint8 RGB."""
    apply_color_lut = require("pydicom.pixels.processing", PURPOSE).apply_color_lut

    arr = _pixels(ds)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = np.asarray(apply_color_lut(arr, ds))
    if arr.dtype != np.uint8:  # 16-bit colour: the top byte
        bits = int(ds.get("BitsStored", 16) or 16)
        arr = stretch(arr, 0, 2**bits - 1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomError(f"colour pixels of shape {arr.shape}, not rows × columns × 3")
    return arr


def open_dicom(path: str | Path, window: Window | None = None) -> Image.Image:
    """The file's image: greyscale ("L") or RGB."""
    ds = read_dataset(path)
    try:
        if _monochrome(ds):
            arr = grey_levels(ds, window)
            if arr.ndim != 2:
                raise DicomError(f"monochrome pixels of shape {arr.shape}, not rows × columns")
            return Image.fromarray(arr, mode="L")
        return Image.fromarray(colour(ds), mode="RGB")
    except DicomError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise DicomError(f"its pixel module is inconsistent ({type(exc).__name__})") from None


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone."""
    ds = read_dataset(path, pixels=False)
    return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)


def check_dicom(path: str | Path) -> str | None:
    """Why the file cannot be used as an image, or None (decodes its pixels once)."""
    try:
        open_dicom(path)
    except DicomError as exc:
        return str(exc)
    return None


__all__ = [
    "DICOM_EXTENSIONS", "DicomError", "check_dicom", "dicom_size", "grey_levels", "is_dicom", "open_dicom",
    "own_window", "raw_values", "read_dataset",
]  # fmt: skip
