"""The one configuration object of a training run, validated before any compute."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from transferkit.backbones import DEFAULT_BACKBONE, check_backbone_name, modality_of
from transferkit.errors import ConfigError, TransferkitError, close_matches
from transferkit.strategies import get_strategy

MONITORS = ("accuracy", "macro_f1", "loss")
MODALITIES = ("auto", "image", "text")
DEVICES = ("auto", "cpu", "cuda")
BN_STATS = ("frozen", "update")


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a run. Every field is checked in ``__post_init__``."""

    backbone: str = DEFAULT_BACKBONE
    strategy: str = "two-phase"
    epochs: int = 10
    head_epochs: int | None = None  # two-phase: epochs of phase 1 (default: half of epochs)
    unfreeze: int | None = None  # partial / two-phase: top groups to unfreeze (strategy default)
    lr: float = 1e-3  # head learning rate
    backbone_lr: float = 1e-4  # backbone learning rate when fine-tuning
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of each phase's steps spent warming the LR up
    batch_size: int = 32
    image_size: int | None = None  # None: the backbone's pretrained input size
    augment: bool = True
    hflip: bool = True
    hidden: int = 0  # width of an optional hidden layer in the head
    dropout: float = 0.2
    label_smoothing: float = 0.0
    class_weights: bool = False
    patience: int | None = None  # early stopping: epochs without improvement, per phase
    monitor: str = "accuracy"
    restore_best: bool = True  # end with the best validation epoch's weights, not the last
    bn_stats: str = "frozen"  # unfrozen BatchNorm: keep the pre-trained statistics, or "update"
    c: float = 1.0  # inverse regularisation of the linear-probe classifiers
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    compile: bool = False  # torch.compile the model: ~40 s to compile lite0 on 2 CPU cores, pays only on long runs
    cache: bool = True  # keep frozen-backbone features on disk and reuse them across runs
    cache_views: int = 0  # with augment: augmented views per image to cache (0: run the backbone every epoch)
    strict: bool = False  # any unusable file is an error before training, not a skip
    modality: str = "auto"  # image or text; auto reads it from the data
    text_column: str = "text"  # text tables: the column holding the text
    label_column: str = "label"  # text tables: the column holding the label
    max_length: int | None = None  # text: tokens per text (None: the encoder's own)
    lora_r: int = 8  # lora: rank of the adapters
    lora_alpha: float = 16.0  # lora: scale of the adapters' update (alpha / r)
    init_weights: str | None = None  # backbone weights from a file (.safetensors, or a pickle: see trust_pickle)
    trust_pickle: bool = False  # allow a .pt/.pth/.ckpt pickle to run code while loading: only for files you trust

    def __post_init__(self) -> None:
        _check_types(self)
        check_backbone_name(self.backbone)
        get_strategy(self.strategy)
        for name in ("epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("lr", "backbone_lr", "c"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(name, value, "must be a positive number, e.g. 1e-3")
        for name in ("unfreeze", "image_size", "patience", "head_epochs", "max_length", "lora_r"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError("image_size", self.image_size, "must be at least 16 pixels")
        for name, low, high in (
            ("val_fraction", 0.0, 1.0),
            ("dropout", 0.0, 1.0),
            ("label_smoothing", 0.0, 1.0),
            ("warmup", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or not (low <= value < high)
                or (name == "val_fraction" and value == 0)
            ):
                raise ConfigError(
                    name, value, f"must be in [{low}, {high})" + (" and above 0" if name == "val_fraction" else "")
                )
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", self.weight_decay, "must be 0 or more")
        if self.hidden < 0:
            raise ConfigError("hidden", self.hidden, "must be 0 (no hidden layer) or a positive width")
        if self.cache_views < 0:
            raise ConfigError("cache_views", self.cache_views, "must be 0 (no cached views) or more")
        if self.cache_views and not self.augment:
            raise ConfigError(
                "cache_views", self.cache_views, "only applies with augment; without it one view is cached"
            )
        if self.num_workers < 0:
            raise ConfigError("num_workers", self.num_workers, "must be 0 or more")
        if self.modality not in MODALITIES:
            raise ConfigError("modality", self.modality, f"choose one of {', '.join(MODALITIES)}")
        if self.max_length is not None and self.max_length < 4:
            raise ConfigError("max_length", self.max_length, "must be at least 4 tokens")
        if self.lora_alpha <= 0:
            raise ConfigError("lora_alpha", self.lora_alpha, "must be a positive number, e.g. 16")
        if (
            self.modality != "auto"
            and modality_of(self.backbone) != self.modality
            and self.backbone != DEFAULT_BACKBONE
        ):
            wanted = (
                "a text encoder, e.g. all-minilm-l6-v2.offline or hf:<hub id>" if self.modality == "text" else "timm"
            )
            raise ConfigError("backbone", self.backbone, f"is not for {self.modality}; use {wanted}")
        if self.monitor not in MONITORS:
            raise ConfigError("monitor", self.monitor, f"choose one of {', '.join(MONITORS)}")
        if self.bn_stats not in BN_STATS:
            raise ConfigError("bn_stats", self.bn_stats, f"choose one of {', '.join(BN_STATS)}")
        if self.device not in DEVICES:
            raise ConfigError("device", self.device, f"choose one of {', '.join(DEVICES)}")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ConfigError("init_weights", self.init_weights, "no such file")
        if self.init_weights is not None and self.strategy == "scratch":
            raise ConfigError("init_weights", self.init_weights, "scratch means random initial weights; drop it")
        if self.strategy == "two-phase" and self.epochs < 2:
            raise ConfigError("epochs", self.epochs, "two-phase needs at least 2 epochs (head, then fine-tune)")
        if self.strategy == "two-phase" and self.head_epochs is not None and self.head_epochs >= self.epochs:
            raise ConfigError(
                "head_epochs",
                self.head_epochs,
                f"must be below epochs={self.epochs} so the fine-tune phase gets epochs",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> FitConfig:
        return from_dict({**self.to_dict(), **changes})


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


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(name, value, "must be a positive whole number")


FIELD_NAMES = tuple(f.name for f in fields(FitConfig))


def from_dict(values: dict[str, Any]) -> FitConfig:
    """Build a config from a mapping; unknown keys are errors, with close matches."""
    normalised = {k.replace("-", "_"): v for k, v in values.items()}
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
