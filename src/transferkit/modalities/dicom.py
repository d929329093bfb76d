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

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class DicomTooLarge(DicomError):
    """A DICOM file whose header declares more than any bound allows, or that cannot be bounded."""


# Deflated Explicit VR Little Endian: pydicom inflates the whole dataset in memory before a single
# tag can be read (a 125 KB file declaring 8000² pixels took a server to 3.4 GB): refused unread.
DEFLATED = "1.2.840.10008.1.2.1.99"


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def read_dataset(path: str | Path, pixels: bool = True) -> Dataset:
    """The file's dataset (``pixels=False``: the header alone, for its size), its header held
    to the bounds below before any pixel is decoded."""
    # a ValueError, not the extra's own error: a folder skips the files it cannot read, naming why
    if not installed("pydicom"):
        raise DicomError(INSTALL)
    pydicom = require("pydicom", PURPOSE)
    errors = require("pydicom.errors", PURPOSE)
    try:
        meta = pydicom.filereader.read_file_meta_info(path)  # the part never compressed: a few hundred bytes
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
            raise DicomTooLarge("a deflated DICOM file (not bounded before it is inflated): save it uncompressed")
        ds: Dataset = pydicom.dcmread(path, stop_before_pixels=not pixels)
        _check_header(ds, pixels)
    except DicomError:
        raise
    except errors.InvalidDicomError:
        raise DicomError("not a DICOM file (no DICM preamble)") from None
    except MemoryError:  # an element length read from random bytes, under an address-space limit
        raise DicomError("a corrupt DICOM file (an element larger than memory)") from None
    except Exception as exc:  # a fuzzed header raises whatever pydicom's parsers do (struct, ValueError,
        # OverflowError, UnicodeDecodeError…): every one is this file's verdict, not the run's end
        raise DicomError(f"a corrupt or truncated DICOM file ({type(exc).__name__})") from None
    return ds


def _number(ds: Dataset, keyword: str, default: float) -> Any:
    """A numeric tag's value, ``default`` only when absent or empty (a slope of 0 is a value)."""
    value = ds.get(keyword, default)
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


def _whole(ds: Dataset, keyword: str, default: int) -> int:
    return int(_number(ds, keyword, default))


def _check_header(ds: Dataset, pixels: bool) -> None:
    """What decoding would allocate, bounded from the header: rows × columns × samples by the
    limit Pillow holds every other image to (a 65535² header is 32 GiB once decoded, and 8 bytes
    a pixel more as modality values), and bits a pixel among those DICOM defines."""
    if pixels and "PixelData" not in ds:
        raise DicomError("a DICOM file without pixel data (a report or structure set, not an image)")
    frames = _whole(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise DicomError(f"a multi-frame DICOM file ({frames} frames): save the frames you mean as separate files")
    if _declared_size(ds) > max_pixels():
        raise DicomTooLarge(f"larger than the decompression-bomb limit of {max_pixels():,} pixels")
    allocated = _whole(ds, "BitsAllocated", 16)
    if pixels and (allocated not in (1, 8, 16, 32, 64) or not 1 <= _whole(ds, "BitsStored", allocated) <= allocated):
        raise DicomError("an unsupported number of bits a pixel (DICOM allows 1, 8, 16, 32 or 64, all stored)")


def declared_pixels(path: str | Path) -> int:
    """Rows × columns × samples its header declares, read without the pixels (serve's
    ``--max-pixels`` holds a DICOM upload to it as to any image); past every bound when the
    header alone is refused as too large, 0 when the file is not a DICOM it reads."""
    try:
        ds = read_dataset(path, pixels=False)
    except DicomTooLarge:
        return 2 * max_pixels() + 1
    except DicomError:
        return 0
    return _declared_size(ds)


def _declared_size(ds: Dataset) -> int:
    """Rows × columns × samples a pixel, as the header says (what decoding would allocate)."""
    return _whole(ds, "Rows", 0) * _whole(ds, "Columns", 0) * max(1, _whole(ds, "SamplesPerPixel", 1))


def max_pixels() -> int:
    """Pillow's decompression-bomb limit (a user who raised it for images raised it here too)."""
    return int(Image.MAX_IMAGE_PIXELS or 2**28)


def _pixels(ds: Dataset) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise DicomError("its pixels need more memory than there is to decode") from None
    except Exception as exc:  # each decoder plugin raises its own types for a corrupt stream
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "an unknown transfer syntax")
        raise DicomError(f"its pixels ({name}) cannot be decoded ({type(exc).__name__}); {install_line('medical')} "
                         "installs the JPEG, JPEG-LS and JPEG 2000 handlers") from None  # fmt: skip


def _monochrome(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")


# A rescale slope and intercept no modality writes (CT: 1 and -1024; PET: about 1e-4 to 1e2): past
# these, values overflow to inf or collapse to one level, and the image is noise, not the scan.
SLOPE = (1e-6, 1e6)
MAX_INTERCEPT = 1e9


def _check_rescale(ds: Dataset) -> None:
    try:
        slope, intercept = float(_number(ds, "RescaleSlope", 1)), float(_number(ds, "RescaleIntercept", 0))
    except (TypeError, ValueError):  # a multi-valued or non-numeric DS
        raise DicomError("its rescale slope or intercept is not a number") from None
    if not (math.isfinite(slope) and SLOPE[0] <= abs(slope) <= SLOPE[1]):
        raise DicomError(f"its rescale slope is not a finite number of size {SLOPE[0]:g} to {SLOPE[1]:g}")
    if not (math.isfinite(intercept) and abs(intercept) <= MAX_INTERCEPT):
        raise DicomError(f"its rescale intercept is not a finite number within ±{MAX_INTERCEPT:g}")


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    """Values made from the header's numbers (a LUT, a window) must be numbers: NaN cast to
    uint8 is an arbitrary grey level, predicted on as if it were the scan."""
    if not np.isfinite(values).all():
        raise DicomError(f"its {what} gives values that are not finite numbers")
    return values


def modality_values(ds: Dataset) -> np.ndarray:
    """A monochrome file's pixels in its modality's units (rescale slope/intercept or modality LUT)."""
    apply_modality_lut = require("pydicom.pixels.processing", PURPOSE).apply_modality_lut

    if "ModalityLUTSequence" not in ds:  # pydicom uses the LUT over slope/intercept when both are there
        _check_rescale(ds)
    return _finite(np.asarray(apply_modality_lut(_pixels(ds), ds), dtype=np.float64), "rescale (modality LUT)")


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
    voi = _finite(np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64), "window (VOI LUT)")
    probe = np.asarray(apply_voi_lut(np.array([-_PROBE, _PROBE]), ds, index=0), dtype=np.float64)
    low, high = _finite(probe, "window (VOI LUT)")
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
    except MemoryError:
        raise DicomError("its pixels need more memory than there is") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, ZeroDivisionError) as exc:
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
