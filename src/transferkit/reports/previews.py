"""The thumbnails a report shows, stored in the comparison's own folder when the comparison ran.

A report is rebuilt from ``results.json``, a file the folder's sender may have edited: were the
items it names opened at report time, ``transferkit report`` on a folder received from someone
else would embed the recipient's own pictures. So ``compare`` renders each previewed item once,
while it runs on the data the user gave it (items checked against that data's validation split),
into ``OUT/previews/<hash of the item>.png``; the report reads only those files, through
:func:`transferkit.schema.inside`, and only PNG bytes. Modalities whose items are the inputs
themselves (texts) preview from ``results.json`` alone and open no file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from transferkit.modalities import Modality
from transferkit.paths import atomic_write
from transferkit.records import Predictions
from transferkit.schema import SchemaError, inside

FOLDER = "previews"
PNG = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 1 << 20  # a 96 px thumbnail is a few KiB; a bigger file is no preview of ours
_NAME = re.compile(r"[0-9a-f]{32}\.png")
_DATA = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def preview_name(item: str) -> str:
    """The stored thumbnail of ``item``, relative to the comparison folder: made from a hash, so
    no value read back can name another file."""
    digest = hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{FOLDER}/{digest}.png"


def confused(pred: Predictions, n: int) -> list[int]:
    """Positions of the misclassified items the model was most sure about, most sure first."""
    wrong = [i for i, (t, p) in enumerate(zip(pred.y_true, pred.y_pred, strict=True)) if t != p]
    return sorted(wrong, key=lambda i: -pred.confidence[i])[:n]


def store_previews(out: Path, items: Iterable[str], modality: Modality, allowed: set[str]) -> None:
    """Render each of ``items`` that is one of ``allowed`` (the validation items of the data
    this comparison runs on) into ``out/previews/``; the folder's old thumbnails go."""
    if modality.literal_inputs:
        return
    folder = out / FOLDER
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):  # never written through
        warnings.warn(f"{folder} is not a folder transferkit made: the report shows no previews", stacklevel=2)
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # only names of ours; a link is removed as itself, never its target
        if _NAME.fullmatch(old.name) and (old.is_symlink() or old.is_file()):
            old.unlink()
    for item in dict.fromkeys(items):
        png = _png_of(modality.preview(item)) if item in allowed else None
        if png is not None:
            _write_bytes(out / preview_name(item), png)


def stored_preview(folder: Path | None, item: str, modality: Modality) -> str:
    """The ``<img>`` (or a text's start) that shows ``item``, or a note saying why there is none."""
    if modality.literal_inputs:
        return modality.preview(item) or ""
    name = html.escape(Path(item).name)
    if folder is None:
        return f"({name}: no preview)"
    try:
        path = inside(folder, preview_name(item), where=f"{folder} (its {FOLDER}/)")
    except SchemaError:  # previews/ or the file is a link out of the folder: someone else's file
        return f"({name}: left out, its preview leads outside the comparison folder)"
    data = _read_png(path)
    if data is None:
        return f"({name}: no preview stored with the comparison; rerun `transferkit compare` to store it)"
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{name}" src="data:image/png;base64,{encoded}">'


def _png_of(snippet: str | None) -> bytes | None:
    """The PNG inside a modality's preview snippet (``<img src="data:image/png;base64,…">``)."""
    found = _DATA.search(snippet or "")
    if found is None:
        return None
    try:
        data = base64.b64decode(found.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(PNG) and len(data) <= MAX_BYTES else None


def _read_png(path: Path) -> bytes | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG) else None  # whatever else it is, it is not shown


def _write_bytes(path: Path, data: bytes) -> None:
    """Through a temporary sibling, renamed over ``path``: a link planted there is replaced, not followed."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), sync=False)


__all__ = ["FOLDER", "confused", "preview_name", "store_previews", "stored_preview"]
