"""The trained model (backbone + head) and its on-disk format.

A run directory holds ``model.safetensors`` (all weights, including BatchNorm statistics)
and ``config.json`` (backbone, strategy, classes, preprocessing, metrics). Loading rebuilds
the architecture from the JSON and fills it from safetensors: nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from transferkit.backbones import create_backbone, registered_names
from transferkit.checkpoint import check_finite, write_safetensors
from transferkit.config import HIDDEN, SHARE, FitConfig
from transferkit.errors import ConfigError, TransferkitError
from transferkit.errors import shown as bounded
from transferkit.heads import ClassifierHead
from transferkit.modalities import Modality, Preprocessing, get_modality, modality_names
from transferkit.modalities.common import Prediction, Sample, class_digest, shown
from transferkit.params import check_stored, params_of
from transferkit.runfolder import FORMAT_VERSION, RunFolder, check_format_version
from transferkit.schema import (
    Interval,
    OneOf,
    SchemaError,
    check_fields,
    check_names,
    check_numbers,
    check_stored_name,
    read_json_object,
)
from transferkit.strategies import Strategy, get_strategy, registered_strategies

CLASSES_KEY = "transferkit_classes"  # model.safetensors metadata: the digest of the ordered class list


class TransferModel(nn.Module):
    """A backbone returning pooled features, followed by a classification head."""

    def __init__(self, backbone: nn.Module, head: ClassifierHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.backbone(images))
        return logits


def build_model(
    backbone: str,
    num_classes: int,
    pretrained: bool,
    hidden: int = 0,
    dropout: float = 0.0,
    strategy: Strategy | None = None,
    options: Mapping[str, Any] | None = None,
) -> TransferModel:
    """The architecture a run saved; a ``strategy`` that adapts the backbone (LoRA) adds its
    adapters again from the run's ``options``."""
    body = create_backbone(backbone, pretrained=pretrained)
    if strategy is not None and strategy.adapt is not None:
        body = strategy.adapt(body, options or {})
    head = ClassifierHead(int(body.num_features), num_classes, hidden=hidden, dropout=dropout)  # type: ignore[arg-type]
    return TransferModel(body, head)


def save_model(run_dir: str | Path, model: TransferModel, config: dict[str, Any]) -> Path:
    """Write weights and config into ``run_dir``; ``config`` must describe the architecture."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "transferkit_format": str(FORMAT_VERSION)}
    classes = config.get("classes", config.get("tasks"))  # a multi-task card lists each task's
    if classes is not None:  # the weights say which class each output is: config.json is checked against it
        metadata[CLASSES_KEY] = class_digest(classes)
    write_safetensors(state, run_dir / RunFolder.WEIGHTS, metadata)
    RunFolder(run_dir).write_json(RunFolder.CONFIG, {"format_version": FORMAT_VERSION, **config}, indent=2)
    return run_dir


class TrainedModel:
    """A loaded run: the network, its classes, modality and preprocessing, ready to predict."""

    def __init__(
        self,
        model: TransferModel,
        classes: Sequence[str],
        preprocessing: Preprocessing,
        config: dict[str, Any],
        modality: Modality,
    ) -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.config = config
        self.modality = modality

    @torch.inference_mode()
    def predict_proba(self, inputs: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        logits: torch.Tensor = self.model(inputs.to(device))
        return logits.float().softmax(dim=1).cpu()

    def predict(self, items: Sequence[str | Path], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        """Top-k labels for files, folders of them, or (text) the texts themselves."""
        return self.predict_samples(self.modality.read_inputs(items), top_k, batch_size)

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        """Top-k labels for samples already read (``serve`` passes texts that must not be paths)."""
        dataset = self.modality.dataset(samples, self.modality.transform(self.preprocessing, is_training=False))
        k = min(top_k, len(self.classes))
        out: list[Prediction] = []
        for start in range(0, len(samples), batch_size):
            batch = [dataset[i][0] for i in range(start, min(start + batch_size, len(samples)))]
            top = self.predict_proba(torch.stack(batch)).topk(k, dim=1)
            for sample, values, indices in zip(
                samples[start : start + batch_size], top.values, top.indices, strict=True
            ):
                out.append(Prediction(shown(sample), [self.classes[i] for i in indices.tolist()], values.tolist()))
        return out


def preprocessing_from_dict(values: dict[str, Any], where: str = RunFolder.CONFIG) -> tuple[Modality, Preprocessing]:
    """The modality and preprocessing a run saved (runs from before ``kind`` are images)."""
    modality = get_modality(OneOf(modality_names()).check(where, "preprocessing.kind", values.get("kind", "image")))
    try:
        return modality, modality.preprocessing_from_dict(values)
    except SchemaError as exc:
        raise TransferkitError(f"{where}: {exc}") from None


_REQUIRED_KEYS = {"format_version": int, "backbone": str, "classes": list, "preprocessing": dict, "head": dict}


_KNOWN_KEYS = {
    "format_version", "backbone", "timm_model", "strategy", "pretrained", "classes", "preprocessing", "head",
    "metrics", "best_epoch", "phases", "data", "fit_config", "train_seconds", "versions", "federated",
    "weights",  # how the weights were made when not by one run's training (auto's WiSE-FT mix)
}  # fmt: skip


def _validate_config(cfg: Any, where: Path) -> None:
    if not isinstance(cfg, dict):
        raise TransferkitError(f"{where} must hold a JSON object")
    if cfg.get("kind") == "multitask":
        raise TransferkitError(f"{where} describes a multi-task model: `transferkit predict` reads it")
    unknown = sorted(set(cfg) - _KNOWN_KEYS)
    if unknown:
        raise TransferkitError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; was it edited by hand?")
    for key, kind in _REQUIRED_KEYS.items():
        if key not in cfg:
            raise TransferkitError(f"{where} lacks the key {key!r}; is this a transferkit run directory?")
        if not isinstance(cfg[key], kind):
            raise TransferkitError(f"{where}: {key!r} should be a {kind.__name__}, got {type(cfg[key]).__name__}")
    check_format_version(cfg["format_version"], str(where))
    check_run_card(cfg, str(where))


def check_run_card(cfg: dict[str, Any], where: str) -> None:
    """The fields that build tensors or name things to open, checked before anything is built."""
    check_stored_name(where, "backbone", cfg["backbone"], registered_names(), hub_ids=True)
    check_names(where, "classes", cfg["classes"], at_least=2)
    check_fields(where + " head", cfg["head"], {"hidden": HIDDEN})
    if "dropout" in cfg["head"]:
        check_fields(where + " head", cfg["head"], {"dropout": SHARE})
    check_numbers(where, "metrics", cfg.get("metrics", {}))  # shown by evaluate and serve's /model as stored
    if "weights" in cfg:
        check_fields(where + " weights", cfg["weights"], {
            "method": OneOf(("wise-ft",)), "alpha": Interval(float, 0.0, 1.0),
        })  # fmt: skip
    strategy = cfg.get("strategy")
    if strategy is not None:
        OneOf(tuple(s.name for s in registered_strategies())).check(where, "strategy", strategy)
    if "fit_config" in cfg:  # against the options' own declarations, as the command line is
        try:
            check_stored(FitConfig, cfg["fit_config"], where + " fit_config")
        except ConfigError as exc:
            raise SchemaError(where, exc.field, exc.value, exc.fix) from None
    if strategy is not None and get_strategy(strategy).adapters:  # what rebuilding its adapters reads
        owned = [(f.name, p.constraints) for opts in get_strategy(strategy).options for f, p in params_of(opts)]
        check_fields(where + " fit_config", cfg.get("fit_config"), {name: c[0] for name, c in owned if len(c) == 1})


def _check_architecture(build: Callable[[], nn.Module], weights_path: Path, config_path: Path) -> None:
    """The architecture config.json names, built on PyTorch's meta device (shapes, no memory),
    against the weights file's header: an edited backbone name (a 5 GB giant) is refused before
    it is built for real. A model that cannot be built without memory is checked after the
    build instead, by ``load_state_dict``."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except Exception:  # e.g. a model that reads a tensor's value while it is built
        return
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            names = handle.keys()
            saved = {k: tuple(handle.get_slice(k).get_shape()) for k in names}
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise TransferkitError(f"{weights_path} cannot be read ({type(exc).__name__}: {exc}); is it complete?") from exc
    differ = sorted(set(shapes) ^ set(saved)) or sorted(k for k in shapes if shapes[k] != saved[k])
    if differ:
        raise TransferkitError(
            f"{weights_path} does not fit the model {config_path} describes ({len(differ)} tensors differ, e.g. "
            f"{bounded(differ[0])}); was config.json edited?"
        )


def _check_head_size(weights_path: Path, classes: Sequence[str], config_path: Path, hidden: int = 0) -> None:
    """The classifier's output size and class order, read from the weights file's header (no
    tensor loaded): an edited class list must not make transferkit allocate a head for a
    million classes, nor a reordered one rename every prediction."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            names = list(handle.keys())
            heads = sorted(k for k in names if k.startswith("head.layers.") and k.endswith(".weight"))
            shape = handle.get_slice(heads[-1]).get_shape() if heads else None
            widths = [handle.get_slice(k).get_shape()[0] for k in heads[:-1]]
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise TransferkitError(f"{weights_path} cannot be read ({type(exc).__name__}: {exc}); is it complete?") from exc
    if heads and widths != ([hidden] if hidden else []):  # before a head that wide is built
        raise TransferkitError(
            f"{weights_path} has a head with hidden width(s) {widths or [0]} but {config_path} says {hidden}; "
            "was config.json edited?"
        )
    if shape is not None and shape[0] != len(classes):
        raise TransferkitError(
            f"{weights_path} has a head for {shape[0]} classes but {config_path} lists {len(classes)}; "
            "was config.json edited, or the class list changed?"
        )
    check_class_order(weights_path, classes, config_path)


def check_class_order(
    weights_path: Path, classes: Sequence[str] | Mapping[str, Sequence[str]], config_path: Path | str
) -> None:  # fmt: skip
    """Refuse a class list (or task lists) other than the one the weights were saved with.

    Weights without the digest are refused too: removing it is as easy as reordering the list, so
    an "older file" fallback would be the way around the check (runs saved before it: retrain)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            saved = (handle.metadata() or {}).get(CLASSES_KEY)
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise TransferkitError(f"{weights_path} cannot be read ({type(exc).__name__}: {exc}); is it complete?") from exc
    if saved is None:
        raise TransferkitError(
            f"{weights_path} carries no record of its class order (saved before transferkit kept one, or edited), "
            f"so the classes in {config_path} cannot be trusted to name its outputs; retrain the run"
        )
    if saved != class_digest(classes):
        raise TransferkitError(
            f"{config_path} lists the classes in another order (or other classes) than {weights_path} was trained "
            "with; was config.json edited? Restore its class list, or retrain"
        )


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a run directory written by :func:`save_model` (safetensors + JSON only)."""
    run_dir = Path(run_dir)
    config_path, weights_path = RunFolder(run_dir).config, RunFolder(run_dir).weights
    if not config_path.is_file() or not weights_path.is_file():
        raise TransferkitError(
            f"{run_dir} is not a model directory: it needs {RunFolder.CONFIG} and {RunFolder.WEIGHTS}"
        )
    cfg = read_json_object(config_path)  # bounded, an object, or one line (also 100,000 nested lists)
    _validate_config(cfg, config_path)
    modality, pre = preprocessing_from_dict(cfg["preprocessing"], str(config_path))  # checked before any tensor
    hidden = int(cfg["head"].get("hidden", 0))
    _check_head_size(weights_path, cfg["classes"], config_path, hidden)  # before a head that size is built
    head = cfg["head"]
    fit_config = cfg.get("fit_config", {})
    strategy = get_strategy(cfg["strategy"]) if "strategy" in cfg else None

    def build() -> TransferModel:
        return build_model(
            cfg["backbone"], len(cfg["classes"]), pretrained=False, hidden=int(head.get("hidden", 0)),
            strategy=strategy, options=fit_config,
        )  # fmt: skip

    _check_architecture(build, weights_path, config_path)  # before a byte of the model is allocated
    model = build()
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for empty and truncated files
        raise TransferkitError(f"{weights_path} cannot be read ({type(exc).__name__}: {exc}); is it complete?") from exc
    check_finite(state, weights_path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch, e.g. a head sized for another class list
        first = str(exc).strip().splitlines()[-1].strip()[:200]  # torch's message runs over several lines
        raise TransferkitError(f"{weights_path} does not fit {config_path}: {first}") from None
    if missing or unexpected:
        raise TransferkitError(
            f"{weights_path} does not match {config_path} (missing {len(missing)} tensors, "
            f"unexpected {len(unexpected)}; e.g. {(missing or unexpected)[0]}). "
            "Was config.json edited, or the class list changed?"
        )
    return TrainedModel(model.to(device), cfg["classes"], pre, cfg, modality)
