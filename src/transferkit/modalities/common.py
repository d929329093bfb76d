"""What every modality shares: samples, splits, the one stratified split, the skip report.

A :class:`Sample` is one labelled item on disk (an image file, an audio clip, a text's file
with the text itself); ``label`` is a class index, or one index per task in multi-task data
(``MISSING`` where a task has no label). :class:`DatasetSplits` carries the name of the
modality that read it, so shared code asks that modality, never tests the name.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit.errors import DataError, TransferkitError
from transferkit.modalities.tables import column_cells, first_table_row, read_table, table_cell
from transferkit.schema import SchemaError, check_names

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset as MapDataset
else:

    class MapDataset:
        """At run time a plain base class, so that importing a modality needs no torch; type
        checkers see torch's ``Dataset`` (a DataLoader only needs ``__len__``/``__getitem__``)."""

        def __class_getitem__(cls, item: object) -> type:
            return cls


__all__ = [
    "MISSING",
    "SPLIT_NAMES",
    "DatasetSplits",
    "FileDataset",
    "Label",
    "MapDataset",
    "Prediction",
    "Sample",
    "Skipped",
    "check_classes",
    "class_digest",
    "class_folders",
    "column_cells",
    "content_key",
    "count_suffixes",
    "expand_paths",
    "files_in_class_folders",
    "first_label",
    "first_table_row",
    "inside_only",
    "item_identity",
    "png_img",
    "read_table",
    "report_skipped",
    "shown",
    "stratified_folds",
    "stratified_split",
    "table_cell",
    "warn_about_balance",
]

SPLIT_NAMES = ("train", "val", "test")
MISSING = -1  # label of an (item, task) pair that is not labelled

Label = int | tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    path: Path  # the file (for text rows: the table it is a row of)
    label: Label
    text: str | None = None  # the content itself, for modalities held in memory (text)
    digest: str | None = field(default=None, compare=False)  # content hash, when the scan computed one


def item_identity(sample: Sample) -> str:
    """Which item a sample is, independent of its split or label: its file, and for a row of a
    table its text too (every row of a CSV shares the path)."""
    if not sample.text:
        return str(sample.path)
    return f"{sample.path}\0{hashlib.sha1(sample.text.encode(), usedforsecurity=False).hexdigest()}"


def content_key(sample: Sample) -> bytes:
    """What identifies a file's content in the feature cache: its hash (the scan's, else read
    now), never its name, size or time stamp — a file replaced with the same size and mtime
    (``cp -p``, ``rsync -t``, tar) must not be served stale features."""
    if sample.digest is None:
        return hashlib.sha1(sample.path.read_bytes(), usedforsecurity=False).hexdigest().encode()
    return sample.digest.encode()


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetSplits:
    """Samples per split, the class names (index = label), the modality that read them and
    what was found wrong on disk."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    duplicates: tuple[tuple[Path, Path], ...] = ()  # (val or test item, identical train item)
    modality: str = "image"

    def __post_init__(self) -> None:
        # The door where every reader's classes meet, checked as a saved run's are: a class name
        # fit accepts must be one evaluate, predict and serve can read back (a folder named ' ',
        # 'a\tb' or with a byte that is not UTF-8 trained a model nothing could load)
        try:
            check_names("the data", "classes", list(self.classes), at_least=1)
        except SchemaError as exc:
            raise DataError(f"{exc}; rename that class folder or label") from None

    def counts(self, split: str) -> dict[str, int]:
        counter = Counter(s.label for s in getattr(self, split))
        return {c: counter.get(i, 0) for i, c in enumerate(self.classes)}


def class_digest(classes: Sequence[str] | Mapping[str, Sequence[str]]) -> str:
    """A fingerprint of the ordered class list (or of each task's, in task order): what output
    ``i`` of a head means. Saved with the weights (and in an export), so a class list edited
    or reordered in ``config.json`` is refused instead of naming every prediction wrongly."""
    listed = {str(t): list(c) for t, c in classes.items()} if isinstance(classes, Mapping) else list(classes)
    return hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()


def first_label(sample: Sample) -> int:
    """The label a split stratifies on: the class, or the first task's class."""
    return sample.label if isinstance(sample.label, int) else sample.label[0]


def _strata(samples: Sequence[Sample], key: Callable[[Sample], Any]) -> list[list[Sample]]:
    """The samples of each stratum, strata in sorted order and each in its given order: one pass,
    so a label column of IDs (200,000 strata) costs no more than two classes (a scan per stratum
    did; the order, and so every seeded split, is the same as that scan's)."""
    grouped: dict[Any, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(key(sample), []).append(sample)
    return [grouped[stratum] for stratum in sorted(grouped)]


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, seed: int, key: Callable[[Sample], Any] = first_label
) -> tuple[list[Sample], list[Sample]]:
    """The one train/val split of every command: per stratum (``key``), a seeded share to val.

    Every stratum keeps at least one training item; a single-item stratum has none in val.
    """
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for members in _strata(samples, key):
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) > 1 else 0
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def stratified_folds(
    samples: Sequence[Sample], folds: int, seed: int, key: Callable[[Sample], Any] = first_label
) -> list[list[Sample]]:
    """``folds`` disjoint validation folds covering every item once: each stratum (``key``) is
    shuffled with ``seed`` and dealt round-robin, so every fold holds about 1/``folds`` of it."""
    rng = np.random.default_rng(seed)
    dealt: list[list[Sample]] = [[] for _ in range(folds)]
    start = 0  # strata smaller than `folds` start where the last one stopped, so folds stay even
    for members in _strata(samples, key):
        for j, i in enumerate(rng.permutation(len(members))):
            dealt[(start + j) % folds].append(members[i])
        start = (start + len(members)) % folds
    return dealt


def report_skipped(skipped: Sequence[Skipped], strict: bool, what: str = "unreadable") -> None:
    """One warning listing every skipped file with its reason; under ``strict`` an error."""
    if not skipped:
        return
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
    if strict:
        raise DataError(f"--strict: {len(skipped)} file(s) cannot be used: {shown}")
    warnings.warn(f"skipped {len(skipped)} {what} file(s): {shown}", stacklevel=3)


def check_classes(root: Path, classes: Sequence[str], train: Sequence[Sample], item: str = "file") -> None:
    """At least two classes, each with a readable training ``item`` ("image", "clip", …)."""
    if len(classes) < 2:
        found = f"found {len(classes)} ({', '.join(classes)})" if classes else "found none"
        raise DataError(f"{root} needs at least 2 class sub-folders (one per class, {item}s inside); {found}")
    counts = Counter(s.label for s in train)
    empty = [c for i, c in enumerate(classes) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"class folder(s) with no readable {item} in {root}: {', '.join(empty)}")


def warn_about_balance(classes: Sequence[str], train: Sequence[Sample], item: str = "item") -> None:
    counts = Counter(s.label for s in train)
    per_class = {c: counts.get(i, 0) for i, c in enumerate(classes)}
    single = [c for c, n in per_class.items() if n == 1]
    if single:
        # counted in the training split: with --val-fraction near 1 a class of ten keeps one to train on;
        # the first ten named, so a warning about thousands of classes stays one line
        more = f" and {len(single) - 10:,} more" if len(single) > 10 else ""
        warnings.warn(f"class(es) with a single training {item}: {', '.join(single[:10])}{more}", stacklevel=3)
    most, least = max(per_class.values()), min(per_class.values())
    if least and most / least >= 10:
        ranked = sorted(per_class.items(), key=lambda kv: -kv[1])
        more = f", … ({len(ranked):,} classes)" if len(ranked) > 10 else ""
        listing = ", ".join(f"{c}: {n}" for c, n in ranked[:10]) + more
        warnings.warn(
            f"heavy class imbalance ({most / least:.0f}:1; {listing}); consider --class-weights", stacklevel=3
        )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links resolved, lies under ``root`` (resolved by the caller, once): a
    link inside the data that leads to a system folder is not data."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def _warn_outside(root: Path, outside: list[Path]) -> None:
    if outside:
        shown = ", ".join(str(p) for p in outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        warnings.warn(
            f"skipped {len(outside)} link(s) under {root} that lead outside it ({shown}); copy the files in, "
            "or point DATA at the folder that holds them",
            stacklevel=3,
        )


def inside_only(root: Path, paths: Sequence[Path]) -> list[Path]:
    """``paths`` without those a link leads outside ``root`` (one warning names them)."""
    real_root = root.resolve()
    kept: list[Path] = []
    outside: list[Path] = []
    for path in paths:
        (kept if _inside(path, real_root) else outside).append(path)
    _warn_outside(root, outside)
    return kept


def class_folders(root: Path) -> list[Path]:
    return inside_only(root, sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))


def files_in_class_folders(root: Path, names: Sequence[str]) -> list[tuple[Path, int]]:
    """(file, class index) under ``root/<class>/`` recursively; hidden files and folders
    skipped, and so is anything a link leads to outside ``root``."""
    files: list[tuple[Path, int]] = []
    outside: list[Path] = []
    real_root = root.resolve()
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        if not _inside(folder, real_root):
            outside.append(folder)
            continue
        for path in sorted(folder.rglob("*")):  # rglob does not follow directory symlinks: no loops
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                if _inside(path, real_root):
                    files.append((path, label))
                else:
                    outside.append(path)
    _warn_outside(root, outside)
    return files


def expand_paths(
    items: Sequence[str | Path], suffixes: frozenset[str], item: str, check: Callable[[Path], str | None] | None = None
) -> list[Path]:
    """``predict``'s inputs: files as given, folders searched for files with ``suffixes``.

    In folders, hidden files (macOS's ``._x.jpg``) and directories named like files are passed
    over; with ``check``, a file that cannot be read is skipped with one warning, as ``fit``
    skips it, instead of ending the whole prediction."""
    paths: list[Path] = []
    for given in map(Path, items):
        if given.is_dir():
            found = (p for p in given.rglob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))
            paths += sorted(p for p in found if p.is_file())
        elif given.is_file():
            paths.append(given)
        else:
            raise TransferkitError(f"no such {item} or folder: {given}")
    if check is not None:
        problems = {p: check(p) for p in paths}
        skipped = [f"{p} ({why})" for p, why in problems.items() if why is not None]
        if skipped:
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            warnings.warn(f"skipped {len(skipped)} unreadable file(s): {'; '.join(skipped[:5])}{more}", stacklevel=2)
        paths = [p for p in paths if problems[p] is None]
    if not paths:
        raise TransferkitError(f"no readable {item}s to predict")
    return paths


def skip_unreadable(
    samples: Sequence[Sample], verdicts: Mapping[Path, str | None], unit: str = "items"
) -> tuple[list[Sample], int]:
    """``samples`` less those whose file ``verdicts`` says cannot be read, and how many those
    are: one warning names them; none left is a one-line error."""
    kept = [s for s in samples if s.text is not None or verdicts.get(s.path) is None]
    skipped = len(samples) - len(kept)
    if not samples:
        return kept, 0
    bad = [f"{p} ({why})" for p, why in verdicts.items() if why is not None]
    shown = "; ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if not kept:
        raise DataError(f"none of the {len(samples)} {unit} to score can be read ({shown}); nothing scored")
    if skipped:
        warn_unscored(bad, len(samples), unit)
    return kept, skipped


def warn_unscored(bad: Sequence[str], total: int, unit: str = "items") -> None:
    """The one warning naming the ``bad`` items (``"path (why)"``) of ``total`` left unscored."""
    shown = "; ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    warnings.warn(
        f"skipped {len(bad)} of {total} {unit} that cannot be read ({shown}); "
        f"scored the other {total - len(bad)}, none replaced by another",
        stacklevel=4,
    )


def count_suffixes(root: Path, suffixes: frozenset[str]) -> int:
    """Files with one of ``suffixes`` in ``root``'s class folders (two levels): how strongly a
    modality claims a folder."""
    if not root.is_dir():
        return 0
    return sum(f.suffix.lower() in suffixes for pattern in ("*/*", "*/*/*") for f in root.glob(pattern))


class FileDataset(MapDataset[tuple["torch.Tensor", "torch.Tensor"]]):
    """Reads samples from disk lazily (in DataLoader workers), so memory stays flat as data grow.

    A map-style dataset (``__len__`` and ``__getitem__``: all a DataLoader needs), so this
    module loads without torch. In ``training`` only, a file that breaks after the scan (deleted,
    rewritten) must not end an hours-long run mid-epoch: it is replaced by the next sample, with
    one warning per file. A dataset that is scored never substitutes: another item's prediction
    under this item's label is a wrong result, so an unreadable item is an error there (scoring
    paths check items first: ``Modality.scorable``). Subclasses say how a sample is read
    (``read``), what goes wrong (``errors``) and what an item is called.
    """

    item = "file"
    errors: tuple[type[Exception], ...] = (OSError, ValueError)

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor], training: bool = False
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.training = training
        self.failed: set[Path] = set()

    def read(self, sample: Sample) -> torch.Tensor:
        return self.transform(sample.path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        for step in range(len(self.samples)):
            sample = self.samples[(index + step) % len(self.samples)]
            try:
                return self.read(sample), torch.as_tensor(sample.label)
            except self.errors as exc:
                if not self.training:
                    raise DataError(
                        f"could not read {sample.path} ({exc}); it changed after it was checked, "
                        f"and a scored {self.item} is never replaced by another"
                    ) from None
                if sample.path not in self.failed:
                    self.failed.add(sample.path)
                    warnings.warn(
                        f"could not read {sample.path} during training ({exc}); using another {self.item}", stacklevel=2
                    )
        raise DataError(f"no {self.item} in this split can be read any more")


@dataclass
class Prediction:
    """The top-k labels of one input, best first, with their probabilities."""

    path: str
    labels: list[str]
    probabilities: list[float]

    def row(self) -> dict[str, Any]:
        """The JSON shape ``predict --json`` and ``serve`` answer with."""
        top = [{"label": lab, "probability": p} for lab, p in zip(self.labels, self.probabilities, strict=True)]
        return {"path": self.path, "top": top}


def shown(sample: Sample) -> str:
    """A prediction's name: the file, or the start of a text given literally."""
    if sample.text is not None and not Path(sample.path).is_file():
        return " ".join(sample.text.split())[:60]
    return str(sample.path)


def png_img(image: Any, alt: str) -> str:
    """An ``<img>`` holding a PIL image as an inline PNG: report previews stay one offline file."""
    import base64
    import html
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
