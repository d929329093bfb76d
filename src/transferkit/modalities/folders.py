"""The folder layouts every file-based modality reads, once: ``DATA/<class>/…`` or
``DATA/train|val[|test]/<class>/…``, with the same checks for all of them — unusable files
reported (or refused with ``--strict``), classes too small to split, heavy imbalance, and
validation or test items byte-identical to training items (leakage)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from transferkit.errors import DataError
from transferkit.modalities.common import (
    SPLIT_NAMES,
    DatasetSplits,
    Sample,
    Skipped,
    check_classes,
    content_key,
    report_skipped,
    stratified_split,
    warn_about_balance,
)

# Reads ``root/<class>/…`` (with ``classes`` given: exactly those) → class names, usable samples, skipped files.
Scan = Callable[[Path, Sequence[str] | None], tuple[list[str], list[Sample], list[Skipped]]]


def load_folder_splits(
    root: Path, scan: Scan, *, modality: str, item: str, unusable: str, val_fraction: float, seed: int, strict: bool
) -> DatasetSplits:
    """Classes and items under ``root`` in either layout; ``item`` names one in messages
    ("image", "clip"), ``unusable`` what a skipped file was ("unreadable or non-image")."""
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is a file; give a folder with one sub-folder per class")
    if (root / "train").is_dir():
        classes, train, skipped = scan(root / "train", None)
        splits: dict[str, list[Sample]] = {"train": train}
        for split in SPLIT_NAMES[1:]:
            if (root / split).is_dir():
                _, splits[split], more = scan(root / split, classes)
                skipped += more
        if "val" not in splits:
            splits["train"], splits["val"] = stratified_split(train, val_fraction, seed)
    else:
        classes, samples, skipped = scan(root, None)
        splits = dict(zip(("train", "val"), stratified_split(samples, val_fraction, seed), strict=True))
    return checked_splits(
        root, classes, splits, skipped, modality=modality, item=item, unusable=unusable, strict=strict
    )


def checked_splits(
    where: Path,
    classes: Sequence[str],
    splits: dict[str, list[Sample]],
    skipped: Sequence[Skipped],
    *,
    modality: str,
    item: str,
    unusable: str,
    strict: bool,
) -> DatasetSplits:
    """The checks every file-based dataset gets, folder or table, then its splits: unusable
    files listed once (or refused with ``--strict``), classes too small to split, validation
    items byte-identical to training ones (leakage), heavy imbalance."""
    report_skipped(skipped, strict, unusable)
    check_classes(where, classes, splits["train"], item)
    duplicates = leaks(splits, item)
    warn_about_balance(classes, splits["train"], item)
    return DatasetSplits(
        classes=tuple(classes), train=tuple(splits["train"]), val=tuple(splits["val"]),
        test=tuple(splits.get("test", ())), skipped=tuple(skipped), duplicates=tuple(duplicates), modality=modality,
    )  # fmt: skip


def leaks(
    splits: dict[str, list[Sample]],
    item: str = "item",
    key: Callable[[Sample], bytes] = content_key,
    name: Callable[[Sample], str] = lambda s: str(s.path),
) -> list[tuple[Path, Path]]:
    """Validation/test items whose content (``key``: the file's bytes; a text's characters)
    equals a training item's: their scores are inflated. ``name`` shows one in the warning."""
    train_by_content = {key(s): s for s in splits["train"]}
    pairs = [
        (s, train_by_content[k]) for split in ("val", "test") for s in splits.get(split, [])
        if (k := key(s)) in train_by_content
    ]  # fmt: skip
    found = [(a.path, b.path) for a, b in pairs]
    if pairs:
        examples = "; ".join(f"{name(a)} = {name(b)}" for a, b in pairs[:5])
        warnings.warn(
            f"leakage: {len(found)} validation/test {item}(s) are byte-identical to training {item}s "
            f"({examples}{' …' if len(found) > 5 else ''}); their scores will be optimistic",
            stacklevel=4,
        )
    return found
