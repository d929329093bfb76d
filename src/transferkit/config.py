"""The one configuration object of a training run, validated before any compute.

Each field is a :func:`transferkit.params.param`: help text, constraint objects (intervals,
choices) and the fix an error names. The CLI builds its options from them, so an option's
default, description and bounds live here and nowhere else; one validator checks them all
(as scikit-learn's ``_param_validation``), and every message names the field, the value and
the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from transferkit.backbones import resolve_backbone
from transferkit.errors import ConfigError, TransferkitError, close_matches, shown
from transferkit.modalities import get_modality, modality_names
from transferkit.modalities.audio import AudioOptions
from transferkit.modalities.image import ImageOptions
from transferkit.modalities.text import TextOptions
from transferkit.params import (
    BATCH,
    SEED,
    WHOLE,
    Check,
    Interval,
    Options,
    as_tuples,
    help_text,
    owned,
    param,
    positive,
    validate,
    whole,
)
from transferkit.strategies import DEFAULT as DEFAULT_STRATEGY
from transferkit.strategies import Depth, HeadPhase, LoraOptions, ProbeOptions, get_strategy

MONITORS = ("accuracy", "macro_f1", "loss")
DEVICES = ("auto", "cpu", "cuda")
BN_STATS = ("frozen", "update")
LOGGERS = ("tensorboard", "mlflow")  # transferkit.loggers makes them

SHARE = Interval(float, 0, 1, closed="left")
LR = Interval(float, 0, 10, closed="right", fix="must be a positive number up to 10, e.g. 1e-3")
HIDDEN = whole(65_536, low=0)  # a head's width: a saved run and a federated server are held to it too


def _share(default: float, help: str) -> Any:
    return param(default, help, SHARE, fix="must be in [0.0, 1.0)")


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a run. Every field is checked in ``__post_init__``."""

    backbone: str | None = param(
        None,
        "Registered backbone, any timm model name, or hf:<hub id> "
        "[default: the data's: efficientnet_lite0.offline for images, all-minilm-l6-v2.offline for text]",
    )
    strategy: str = param(DEFAULT_STRATEGY, "Strategy name (see `transferkit list`)")
    epochs: int = param(10, "Total epoch budget", WHOLE)
    head_epochs: int | None = owned(HeadPhase, "head_epochs")
    unfreeze: int | None = owned(Depth, "unfreeze")
    lr: float = param(1e-3, "Head learning rate", LR)
    backbone_lr: float = param(1e-4, "Backbone learning rate when fine-tuning", LR)
    weight_decay: float = param(0.01, "AdamW weight decay (not on biases and norms)", Interval(float, 0, 100))
    clip_grad: float | None = param(
        None, "Clip the gradients' global norm to this before each optimiser step, e.g. 1.0 [default: no clipping]",
        positive(1e6),
    )  # fmt: skip
    ema: float | None = param(
        None, "Average the weights after each optimiser step with this decay, e.g. 0.999; validation and the saved "
        "model use the average [default: no averaging]", Interval(float, 0, 1, closed="left"),
        fix="must be a decay in [0, 1), e.g. 0.999",
    )  # fmt: skip
    warmup: float = _share(0.1, "Share of each phase's optimiser steps spent warming the learning rate up")
    min_steps: int = param(
        50, "Fewest optimiser steps per training phase: small data trains more epochs than --epochs",
        whole(1_000_000, low=0), fix="must be 0 (epochs alone decide) or more, up to 1,000,000",
    )  # fmt: skip
    layer_decay: float = param(
        0.7,
        "Fine-tuning: each backbone layer group trains at this times the LR of the group above it "
        "(layer-wise LR decay); 1 turns it off",
        Interval(float, 0, 1, closed="right"), fix="must be in (0, 1]; 1 turns layer-wise decay off",
    )  # fmt: skip
    batch_size: int = param(32, "Batch size (the global batch under --nproc)", BATCH)
    image_size: int | str | None = owned(ImageOptions, "image_size")
    augment: bool = param(True, "Training augmentation (modalities without one ignore it)")
    hflip: bool | str = owned(ImageOptions, "hflip")
    window: str | None = owned(ImageOptions, "window")
    hidden: int = param(0, "Head: hidden layer width; 0 for none", HIDDEN,
                        fix=f"must be 0 (no hidden layer) or a width up to {HIDDEN.high:,}")  # fmt: skip
    dropout: float = _share(0.2, "Head dropout")
    label_smoothing: float = _share(0.0, "Label smoothing")
    class_weights: bool = param(False, "Weight the loss by inverse class frequency")
    patience: int | None = param(None, "Early stopping: epochs without improvement, per phase [default: off]", WHOLE)
    monitor: str = param("accuracy", "What early stopping and best-epoch restore watch", Options(MONITORS))
    restore_best: bool = param(True, "End with the best validation epoch's weights, not the last")
    bn_stats: str = param(
        "frozen", "Unfrozen BatchNorm: keep pre-trained statistics ('frozen') or 'update' them", Options(BN_STATS)
    )
    c: float = owned(ProbeOptions, "c")
    probe_init: bool = param(
        True,
        "Start a new head at the linear probe's solution on the frozen features, then train (LP-FT, "
        "Kumar et al. 2022); --no-probe-init starts it at random",
    )
    val_fraction: float = param(
        0.2, "Validation share when the data has no val split", Interval(float, 0, 1, closed="neither"),
        fix="must be in [0.0, 1.0) and above 0",
    )  # fmt: skip
    seed: int = param(0, "Random seed; also seeds the train/val split", SEED)
    device: str = param("auto", "Where to train", Options(DEVICES))
    num_workers: int | None = param(
        None, "DataLoader worker processes [default: 0 on CPU (decoding competes with training), up to 8 on a GPU]",
        whole(256, low=0), fix="must be from 0 to 256",
    )  # fmt: skip
    compile: bool = param(False, "torch.compile the model (slow start; pays only on long runs)")
    cache: bool = param(True, "Keep frozen-backbone features on disk and reuse them")
    cache_views: int = param(
        4,
        "With augmentation: augmented views per item that frozen layers compute once (head-only phases, the "
        "frozen groups below a partial fine-tune); 0 recomputes them every epoch",
        whole(64, low=0), fix="must be 0 (no cached views) or up to 64",
    )  # fmt: skip
    strict: bool = param(False, "Stop before training if any file is unusable", cli="--strict")
    modality: str = param(
        "auto", "The data's modality (auto: read from the data)", Options(lambda: ("auto", *modality_names()))
    )
    text_column: str = owned(TextOptions, "text_column")
    label_column: str = param("label", "Tables (texts, or paths of images and clips): the column holding the label")
    max_length: int | None = owned(TextOptions, "max_length")
    clip_seconds: float | None = owned(AudioOptions, "clip_seconds")
    lora_r: int = owned(LoraOptions, "lora_r")
    lora_alpha: float = owned(LoraOptions, "lora_alpha")
    init_weights: str | None = param(
        None, "Backbone weights from a .safetensors (or, with --trust-pickle, .pt/.pth/.ckpt) file",
        Check(lambda v: Path(v).is_file(), "a file that exists", ("no-such-file.safetensors",), local=True),
        fix="no such file",
    )  # fmt: skip
    trust_pickle: bool = param(
        False, "Allow --init-weights to unpickle code. Only for files you trust", cli="--trust-pickle"
    )
    log: tuple[str, ...] = param(
        (), "Send the run's scalars and learning rates to: tensorboard (OUT/tensorboard), mlflow; comma-separated",
        Check(lambda v: set(v) <= set(LOGGERS), "tensorboard, mlflow", (("wandb",),)),
        fix="choose from tensorboard, mlflow (comma-separated)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
        strategy = get_strategy(self.strategy)  # an unknown name: one line with the close matches
        for name, broken, fix in _RULES:
            if broken(self):
                raise ConfigError(name, getattr(self, name), fix(self) if callable(fix) else fix)
        for name, value, fix in strategy.problems(self):  # the strategy's own rules
            raise ConfigError(name, value, fix)
        if self.backbone is not None:
            spec = resolve_backbone(self.backbone)
            if self.modality != "auto" and spec.modality != self.modality:
                wanted = get_modality(self.modality).default_backbone
                raise ConfigError("backbone", self.backbone, f"is not for {self.modality}; use e.g. {wanted}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> FitConfig:
        return from_dict({**self.to_dict(), **changes})


def help_of(name: str) -> str:
    """An option's help text with its default and bounds, as the CLI shows it."""
    f = _FIELDS[name]
    return help_text(f, f.metadata["param"])


# Rules between fields that hold for every strategy, each asking the strategy (field named in the
# message, broken when, the fix); a strategy's own rules are its `rules`.
_RULES: list[tuple[str, Callable[[FitConfig], bool], Any]] = [
    ("init_weights", lambda c: c.init_weights is not None and not get_strategy(c.strategy).pretrained,
     lambda c: f"{c.strategy} means random initial weights; drop it"),
    ("clip_grad", lambda c: c.clip_grad is not None and get_strategy(c.strategy).uses_sklearn,
     lambda c: f"{c.strategy} is fitted in closed form, with no gradient steps to clip; drop it"),
    ("ema", lambda c: c.ema is not None and get_strategy(c.strategy).uses_sklearn,
     lambda c: f"{c.strategy} is fitted in closed form, with no steps to average; drop it"),
    ("epochs", lambda c: c.epochs < get_strategy(c.strategy).min_epochs,
     lambda c: f"{c.strategy} needs at least {get_strategy(c.strategy).min_epochs} epochs (one per phase)"),
]  # fmt: skip

_FIELDS = {f.name: f for f in fields(FitConfig)}
FIELD_NAMES = tuple(_FIELDS)

# The options a saved run is built again with (``export --quantize static`` reads its data as the
# run did): what builds the model and reads its inputs. Every stored option is checked on load.
READ_BACK = (
    "backbone", "strategy", "modality", "image_size", "hflip", "window", "hidden", "text_column", "label_column",
    "max_length", "clip_seconds", "lora_r", "lora_alpha",
)  # fmt: skip


def read_back(fit_config: Any) -> dict[str, Any]:
    """The :data:`READ_BACK` options of a stored ``fit_config`` (anything else is left out)."""
    return {k: v for k, v in fit_config.items() if k in READ_BACK} if isinstance(fit_config, dict) else fit_config


def image_side(value: Any) -> Any:
    """``--image-size 128`` arrives as text (the option may be ``auto``): digits become a number."""
    # ASCII digits only, and few: str.isdigit() also takes "²" and "٣", which int() refuses
    return int(value) if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value.strip()) else value


def from_dict(values: dict[str, Any]) -> FitConfig:
    """Build a config from a mapping; unknown keys are errors, with close matches."""
    for key in values:  # a YAML file, a Python dict or a server's message: names are words first
        if not isinstance(key, str):
            raise TransferkitError(f"unknown config key {shown(str(key))} ({type(key).__name__}, not a name)")
    normalised = {k.replace("-", "_"): v for k, v in values.items()}
    if "image_size" in normalised:
        normalised["image_size"] = image_side(normalised["image_size"])
    normalised = as_tuples(FitConfig, normalised)
    for key in normalised:
        if key not in FIELD_NAMES:
            hint = close_matches(key, FIELD_NAMES) if len(key) <= 100 else []
            suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise TransferkitError(f"unknown config key {shown(key)}{suggestion}")
    try:
        return FitConfig(**normalised)
    except TypeError as exc:  # e.g. a list where a number belongs
        raise TransferkitError(f"invalid config: {exc}") from exc


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """PyYAML's safe loader with YAML 1.2's floats: YAML 1.1 reads ``1e-3`` (no dot) as a string,
    and ``lr: 1e-3`` is what everyone writes."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise TransferkitError(f"config file {str(path)!r} does not exist")
    if not path.is_file():  # a folder, /dev/zero, a FIFO: never read (a FIFO would block, /dev/zero never end)
        raise TransferkitError(f"config file {str(path)!r} is not a regular file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except RecursionError:  # `epochs: [[[[…]]]]` a thousand deep
        raise TransferkitError(f"{path} is nested too deeply to be a config file") from None
    except UnicodeDecodeError:
        raise TransferkitError(f"{path} is not UTF-8 text; save the config file as UTF-8") from None
    except yaml.YAMLError as exc:  # one line: where, and what (PyYAML's own text quotes the line)
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise TransferkitError(
            f"{path} is not valid YAML: {getattr(exc, 'problem', None) or 'unreadable'}{where}"
        ) from None
    if not isinstance(data, dict):
        raise TransferkitError(f"{path} must be a mapping of option: value")
    named = [k for k in data if not isinstance(k, str)]  # `1: 2`, `null: x`, a !!binary key
    if named:
        raise TransferkitError(
            f"{path}: option names are words; {str(named[0])[:40]!r} ({type(named[0]).__name__}) is not one"
        )
    return data


def split_yaml(config_file: str | Path | None, cls: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``--config`` file's values for ``cls`` (a workflow's own config: ``seeds``,
    ``budget_epochs``…), lists made tuples, and the rest (the run's options)."""
    values = load_yaml(config_file) if config_file else {}
    own_names = {f.name for f in fields(cls)} - {"base"}
    own = {k: v for k, v in values.items() if k.replace("-", "_") in own_names}
    rest = {k: v for k, v in values.items() if k not in own}
    return as_tuples(cls, {k.replace("-", "_"): v for k, v in own.items()}), rest


def resolve(
    config_file: str | Path | None = None, defaults: dict[str, Any] | None = None, **overrides: Any
) -> FitConfig:
    """Every override that is not ``None`` (CLI options), then the YAML file's values, then
    ``defaults`` (a command's own starting point), then the config's defaults."""
    values = {**(defaults or {}), **(load_yaml(config_file) if config_file else {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values)
