"""Tables of files — a labelling tool's CSV export, a dataset's ``path,label`` list — for
every file-based modality (images, DICOM, clips), with the checks a folder gets.

A row names its file in a ``path`` column, relative to the table's folder, and its class in
the label column (``--label-column``); an optional ``split`` column puts it in ``train``,
``val`` or ``test``. A path that leads outside the table's folder (``../``, an absolute path,
a link) is skipped and said, as a link out of a class folder is. Rows are put in the order a
folder scan gives (class, then path), so the same files as folders and as a table give the
same split, the same run, the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from transferkit.errors import DataError
from transferkit.modalities.common import (
    SPLIT_NAMES,
    DatasetSplits,
    Sample,
    Skipped,
    stratified_split,
    warn_unscored,
)
from transferkit.modalities.folders import checked_splits
from transferkit.modalities.tables import check_label_column, first_table_row, read_table

PATH_TABLE_SUFFIXES = (".csv", ".tsv")
PATH_TABLE_CLAIM = 2_000_000  # a table of files outranks the text modality's claim on every table
PATH_COLUMN = "path"
SPLIT_COLUMN = "split"

# (files) → for each, (why it cannot be used, or None; its content hash, or None): the modality's
# own check, given every file at once so that it can decode them in parallel and keep its verdicts
Check = Callable[[Sequence[Path]], list[tuple[str | None, str | None]]]


def is_path_table(path: Path, extensions: Collection[str]) -> bool:
    """Whether ``path`` is a table whose first row names a file with one of ``extensions``."""
    if not (path.is_file() and path.suffix.lower() in PATH_TABLE_SUFFIXES):
        return False
    return Path(str(first_table_row(path).get(PATH_COLUMN) or "")).suffix.lower() in extensions


def _located(table: Path, cell: str) -> tuple[Path, str | None]:
    """The file a ``path`` cell names (relative to the table) and why it is refused, if it is."""
    file = table.parent / cell
    if not cell:
        return file, "no path"
    if Path(cell).is_absolute():
        return Path(cell), "an absolute path: name files relative to the table's folder"
    try:
        inside = file.resolve().is_relative_to(table.parent.resolve())
    except (OSError, RuntimeError):  # a link loop, a name too long
        inside = False
    except ValueError:  # a NUL in the cell: no file has that name
        return file, "not a file name (a NUL character)"
    if not inside:
        return file, "leads outside the table's folder"
    return file, None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system
        return False


def read_path_table(
    table: Path, label_column: str, check: Check, classes: Sequence[str] | None = None
) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """Classes (sorted; or exactly ``classes``), samples by split (``""`` where the table has no
    split column) and skipped rows of a path table."""
    rows = read_table(table)
    columns = set(rows[0]) if rows else set()
    if PATH_COLUMN not in columns or label_column not in columns:
        found = ", ".join(sorted(columns)[:10]) or "none"
        raise DataError(
            f"{table} needs a {PATH_COLUMN!r} column (files relative to the table) and a label column "
            f"{label_column!r} (--label-column); its columns: {found}"
        )
    cells = [
        ((r.get(PATH_COLUMN) or "").strip(), (r.get(label_column) or "").strip(), _split(r, table, n))
        for n, r in enumerate(rows, start=2)
    ]
    check_label_column([label for _, label, _ in cells if label], table, label_column)  # before a file is read
    names = sorted({label for _, label, _ in cells if label}) if classes is None else list(classes)
    index = {label: i for i, label in enumerate(names)}
    skipped: list[Skipped] = []
    candidates: list[tuple[Path, int, str]] = []
    for cell, label, split in cells:
        file, reason = _located(table, cell)
        if reason is None and not label:
            reason = "no label"
        if reason is None and label not in index:
            raise DataError(f"{table}: class {label[:100]!r} was not seen in training ({', '.join(names[:10])})")
        if reason is None and not _is_file(file):
            reason = "missing or unreadable"
        if reason is None:
            candidates.append((file, index[label], split))
        else:
            skipped.append(Skipped(file, reason))
    _refuse_conflicts(table, candidates, names)
    by_split: dict[str, list[Sample]] = {}
    for (file, label_index, split), (reason, digest) in zip(
        candidates, check([f for f, _, _ in candidates]), strict=True
    ):
        if reason is None:
            by_split.setdefault(split, []).append(Sample(file, label_index, digest=digest))
        else:
            skipped.append(Skipped(file, reason))
    for samples in by_split.values():
        samples.sort(key=lambda s: (s.label, s.path.parts))  # a folder scan's order: the table's does not matter
    return names, by_split, skipped


def _refuse_conflicts(table: Path, candidates: Sequence[tuple[Path, int, str]], names: Sequence[str]) -> None:
    """One file under two labels is a labelling error, not two items: trained on both, and
    scored against one of them, it makes every score wrong in a direction nobody can tell."""
    labels: dict[Path, set[int]] = {}
    for file, label, _ in candidates:
        labels.setdefault(file, set()).add(label)
    conflicts = [(f, sorted(ls)) for f, ls in labels.items() if len(ls) > 1]
    if conflicts:
        shown = "; ".join(f"{f.name}: {', '.join(names[i][:40] for i in ls)}" for f, ls in conflicts[:3])
        more = " …" if len(conflicts) > 3 else ""
        raise DataError(
            f"{table} gives {len(conflicts)} file(s) more than one label ({shown}{more}); keep one row per file"
        )


def _split(row: dict[str, str], table: Path, line: int) -> str:
    value = (row.get(SPLIT_COLUMN) or "").strip().lower()
    if SPLIT_COLUMN in row and value not in SPLIT_NAMES:
        raise DataError(
            f"{table}, line {line}: split {value[:100]!r} is not one of {', '.join(SPLIT_NAMES)} "
            f"(the {SPLIT_COLUMN!r} column)"
        )
    return value if SPLIT_COLUMN in row else ""


def load_path_table_splits(
    table: Path,
    check: Check,
    *,
    modality: str,
    item: str,
    unusable: str,
    label_column: str,
    val_fraction: float,
    seed: int,
    strict: bool,
) -> DatasetSplits:
    """A path table's splits, checked as :func:`~transferkit.modalities.folders.load_folder_splits`
    checks a folder's: unusable files listed once (or refused with ``--strict``), classes too
    small to split, validation items byte-identical to training ones, heavy imbalance."""
    classes, by_split, skipped = read_path_table(table, label_column, check)
    if len(classes) < 2:
        raise DataError(f"{table} needs at least 2 classes in its label column {label_column!r}; found {len(classes)}")
    if "" in by_split:  # no split column: the one split every command makes
        train, val = stratified_split(by_split.pop(""), val_fraction, seed)
        splits = {"train": train, "val": val}
    else:
        splits = {name: by_split.get(name, []) for name in SPLIT_NAMES if name in by_split or name != "test"}
        if not splits["val"]:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    return checked_splits(
        table, classes, splits, skipped, modality=modality, item=item, unusable=unusable, strict=strict
    )


def path_table_eval_samples(table: Path, classes: Sequence[str], label_column: str, check: Check) -> list[Sample]:
    """What ``evaluate`` scores in a path table: its test rows, else its val rows, else every row."""
    _, by_split, skipped = read_path_table(table, label_column, check, classes)
    chosen = next((by_split[s] for s in ("test", "val", "", "train") if by_split.get(s)), None)
    if chosen is None:
        raise DataError(f"no readable files in {table} in classes {', '.join(classes[:10])}")
    if skipped:  # refused by the check, never scored as another file: said once
        warn_unscored([f"{s.path} ({s.reason})" for s in skipped], len(chosen) + len(skipped), "files")
    return chosen
