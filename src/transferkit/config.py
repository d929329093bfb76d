"""The one configuration object of a training run, validated before any compute.

Each field carries its help text (``metadata["help"]``); the CLI builds its options from
them, so an option's default and description live here and nowhere else. Constraints are a
table checked by one validator (as scikit-learn's ``_param_validation``); every message
names the field, the value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from transferkit.backbones import resolve_backbone
from transferkit.errors import ConfigError, TransferkitError, close_matches
from transferkit.modalities import get_modality, modality_names
from transferkit.strategies import get_strategy

MONITORS = ("accuracy", "macro_f1", "loss")
DEVICES = ("auto", "cpu", "cuda")
BN_STATS = ("frozen", "update")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a run. Every field is checked in ``__post_init__``."""

    backbone: str | None = _f(
        None,
        "Registered backbone, any timm model name, or hf:<hub id> "
        "[default: the data's: efficientnet_lite0.offline for images, all-minilm-l6-v2.offline for text]",
    )
    strategy: str = _f("two-phase", "Strategy name (see `transferkit list`)")
    epochs: int = _f(10, "Total epoch budget")
    head_epochs: int | None = _f(None, "two-phase: epochs of the head-only phase [default: half of epochs]")
    unfreeze: int | None = _f(None, "partial / two-phase: top layer groups that train [default: the strategy's]")
    lr: float = _f(1e-3, "Head learning rate")
    backbone_lr: float = _f(1e-4, "Backbone learning rate when fine-tuning")
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases and norms)")
    warmup: float = _f(0.1, "Share of each phase's optimiser steps spent warming the learning rate up")
    min_steps: int = _f(50, "Fewest optimiser steps per training phase: small data trains more epochs than --epochs")
    layer_decay: float = _f(
        0.7,
        "Fine-tuning: each backbone layer group trains at this times the LR of the group above it "
        "(layer-wise LR decay); 1 turns it off",
    )
    batch_size: int = _f(32, "Batch size (the global batch under --nproc)")
    image_size: int | str | None = _f(
        "auto",
        "Images: input side in pixels, or auto: 128 for sources under 96 px (BiT-HyperRule), else the backbone's own",
    )
    augment: bool = _f(True, "Training augmentation (modalities without one ignore it)")
    hflip: bool | str = _f(
        "auto", "Images: horizontal flips in augmentation; auto: only where the classes look alike mirrored"
    )
    hidden: int = _f(0, "Head: hidden layer width; 0 for none")
    dropout: float = _f(0.2, "Head dropout")
    label_smoothing: float = _f(0.0, "Label smoothing")
    class_weights: bool = _f(False, "Weight the loss by inverse class frequency")
    patience: int | None = _f(None, "Early stopping: epochs without improvement, per phase [default: off]")
    monitor: str = _f("accuracy", "What early stopping and best-epoch restore watch: accuracy, macro_f1 or loss")
    restore_best: bool = _f(True, "End with the best validation epoch's weights, not the last")
    bn_stats: str = _f("frozen", "Unfrozen BatchNorm: keep pre-trained statistics ('frozen') or 'update' them")
    c: float = _f(1.0, "Inverse regularisation of the linear-probe classifiers")
    probe_init: bool = _f(
        True,
        "Start a new head at the linear probe's solution on the frozen features, then train (LP-FT, "
        "Kumar et al. 2022); --no-probe-init starts it at random",
    )
    val_fraction: float = _f(0.2, "Validation share when the data has no val split")
    seed: int = _f(0, "Random seed; also seeds the train/val split")
    device: str = _f("auto", "auto, cpu or cuda")
    num_workers: int | None = _f(
        None, "DataLoader worker processes [default: 0 on CPU (decoding competes with training), up to 8 on a GPU]"
    )
    compile: bool = _f(False, "torch.compile the model (slow start; pays only on long runs)")
    cache: bool = _f(True, "Keep frozen-backbone features on disk and reuse them")
    cache_views: int = _f(
        4,
        "With augmentation: augmented views per item that frozen layers compute once (head-only phases, the "
        "frozen groups below a partial fine-tune); 0 recomputes them every epoch",
    )
    strict: bool = _f(False, "Stop before training if any file is unusable")
    modality: str = _f("auto", "The data's modality: auto (read from the data), image or text")
    text_column: str = _f("text", "Text tables: the column holding the text")
    label_column: str = _f("label", "Text tables: the column holding the label")
    max_length: int | None = _f(None, "Text: tokens per text [default: the encoder's own]")
    clip_seconds: float | None = _f(None, "Audio: seconds per clip, cropped or padded [default: the encoder's own]")
    lora_r: int = _f(8, "lora: rank of the adapters")
    lora_alpha: float = _f(16.0, "lora: adapter scale alpha (update × alpha/r)")
    init_weights: str | None = _f(
        None, "Backbone weights from a .safetensors (or, with --trust-pickle, .pt/.pth/.ckpt) file"
    )
    trust_pickle: bool = _f(False, "Allow --init-weights to unpickle code. Only for files you trust")

    def __post_init__(self) -> None:
        _check_types(self)
        for name, check in _CONSTRAINTS:
            value = getattr(self, name)
            if value is not None:
                problem = check(value)
                if problem:
                    raise ConfigError(name, value, problem)
        for name, broken, fix in _RULES:
            if broken(self):
                raise ConfigError(name, getattr(self, name), fix(self) if callable(fix) else fix)
        if self.backbone is not None:
            spec = resolve_backbone(self.backbone)
            if self.modality != "auto" and spec.modality != self.modality:
                wanted = get_modality(self.modality).default_backbone
                raise ConfigError("backbone", self.backbone, f"is not for {self.modality}; use e.g. {wanted}")
        get_strategy(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> FitConfig:
        return from_dict({**self.to_dict(), **changes})


def help_of(name: str) -> str:
    """An option's help text with its default, as the CLI shows it."""
    f = _FIELDS[name]
    text = str(f.metadata["help"])
    if "[default:" in text or isinstance(f.default, bool):
        return text + "."
    return f"{text} [default: {f.default}]."


def _positive_int(value: Any) -> str | None:
    return (
        None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0
        else "must be a positive whole number"
    )


def _positive_number(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return None if ok else "must be a positive number, e.g. 1e-3"


def _at_least(low: float, what: str) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be {what}"


def _in_range(low: float, high: float, above_low: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = (low < value < high) if above_low else (low <= value < high)
        return None if ok else f"must be in [{low}, {high})" + (" and above 0" if above_low else "")

    return check


def _one_of(choices: Callable[[], tuple[str, ...]]) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices() else f"choose one of {', '.join(choices())}"


# field → check returning the fix, or None when the value is fine (None values are skipped).
_CONSTRAINTS: list[tuple[str, Callable[[Any], str | None]]] = [
    *((name, _positive_int) for name in ("epochs", "batch_size", "unfreeze", "patience",
                                          "head_epochs", "max_length", "lora_r")),
    ("image_size", lambda v: None if v == "auto" or not _positive_int(v) else "must be auto or pixels, e.g. 128"),
    *((name, _positive_number) for name in ("lr", "backbone_lr", "c", "lora_alpha", "clip_seconds")),
    ("image_size", lambda v: None if v == "auto" or v >= 16 else "must be auto or at least 16 pixels"),
    ("max_length", _at_least(4, "at least 4 tokens")),
    ("val_fraction", _in_range(0.0, 1.0, above_low=True)),
    *((name, _in_range(0.0, 1.0)) for name in ("dropout", "label_smoothing", "warmup")),
    ("weight_decay", _at_least(0, "0 or more")),
    ("hidden", _at_least(0, "0 (no hidden layer) or a positive width")),
    ("cache_views", _at_least(0, "0 (no cached views) or more")),
    ("num_workers", _at_least(0, "0 or more")),
    ("min_steps", _at_least(0, "0 (epochs alone decide) or more")),
    ("layer_decay", lambda v: None if 0 < v <= 1 else "must be in (0, 1]; 1 turns layer-wise decay off"),
    ("modality", _one_of(lambda: ("auto", *modality_names()))),
    ("hflip", lambda v: None if v in (True, False, "auto") else "choose auto, true or false"),
    ("monitor", _one_of(lambda: MONITORS)),
    ("bn_stats", _one_of(lambda: BN_STATS)),
    ("device", _one_of(lambda: DEVICES)),
    ("init_weights", lambda v: None if Path(v).is_file() else "no such file"),
]  # fmt: skip

# Rules between fields: (field named in the message, broken when, the fix).
_RULES: list[tuple[str, Callable[[FitConfig], bool], Any]] = [
    ("init_weights", lambda c: c.init_weights is not None and c.strategy == "scratch",
     "scratch means random initial weights; drop it"),
    ("epochs", lambda c: c.strategy == "two-phase" and c.epochs < 2,
     "two-phase needs at least 2 epochs (head, then fine-tune)"),
    ("head_epochs", lambda c: c.strategy == "two-phase" and c.head_epochs is not None and c.head_epochs >= c.epochs,
     lambda c: f"must be below epochs={c.epochs} so the fine-tune phase gets epochs"),
]  # fmt: skip

_TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_types(cfg: FitConfig) -> None:
    """Every field against its annotation (``int | None`` etc.), before any value check."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        checks = [_TYPE_CHECKS[k] for k in kinds if k in _TYPE_CHECKS]
        if not any(check(value) for _, check in checks):
            wanted = " or ".join(name for name, _ in checks) + (" or null" if "None" in kinds else "")
            raise ConfigError(f.name, value, f"must be {wanted}")


_FIELDS = {f.name: f for f in fields(FitConfig)}
FIELD_NAMES = tuple(_FIELDS)


def image_side(value: Any) -> Any:
    """``--image-size 128`` arrives as text (the option may be ``auto``): digits become a number."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def from_dict(values: dict[str, Any]) -> FitConfig:
    """Build a config from a mapping; unknown keys are errors, with close matches."""
    normalised = {k.replace("-", "_"): v for k, v in values.items()}
    if "image_size" in normalised:
        normalised["image_size"] = image_side(normalised["image_size"])
    for key in normalised:
        if key not in FIELD_NAMES:
            hint = close_matches(key, FIELD_NAMES)
            suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise TransferkitError(f"unknown config key {key!r}{suggestion}")
    try:
        return FitConfig(**normalised)
    except TypeError as exc:  # e.g. a list where a number belongs
        raise TransferkitError(f"invalid config: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TransferkitError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TransferkitError(f"{path} must be a mapping of option: value")
    return data


def resolve(config_file: str | Path | None = None, **overrides: Any) -> FitConfig:
    """YAML file values, then every override that is not ``None`` (CLI options), then defaults."""
    values = load_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values)
