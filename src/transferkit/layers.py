"""Inside a backbone: its layer groups, its layers, LoRA adapters and weights from a user's file.

Layer groups come from timm's ``group_matcher(coarse=True)`` (stem, each stage or
transformer block, top), so "unfreeze the top N groups" cuts at the same kind of boundary
on every architecture; modules outside timm provide the same method.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.extras import require

# --------------------------------------------------------------------------- layer groups


@dataclass(frozen=True)
class LayerGroup:
    """A block group from timm's ``group_matcher``; group 0 is the stem, the last is the top."""

    index: int
    param_names: tuple[str, ...]
    num_params: int
    adapter_params: int = 0  # of num_params, those in LoRA adapters (see add_lora)

    @property
    def label(self) -> str:
        first = self.param_names[0].rsplit(".", 1)[0]
        last = self.param_names[-1].rsplit(".", 1)[0]
        return first if first == last else f"{first} … {last}"


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Parameter groups from bottom (stem) to top, as timm defines them for this model."""
    params = dict(model.named_parameters())
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        from timm.models import group_parameters

        grouped = group_parameters(model, matcher(coarse=True))
        names_per_group = [tuple(names) for names in grouped.values()]
    else:  # not a timm model: each top-level child is a group
        names_per_group = []
        for child, module in model.named_children():
            names = tuple(f"{child}.{n}" for n, _ in module.named_parameters())
            if names:
                names_per_group.append(names)
    return [
        LayerGroup(
            i, names, sum(params[n].numel() for n in names), sum(params[n].numel() for n in names if is_adapter(n))
        )
        for i, names in enumerate(names_per_group)
    ]


def is_adapter(param_name: str) -> bool:
    """A LoRA adapter's weight (peft names them ``….lora_A.<adapter>.weight``)."""
    return ".lora_" in param_name


@dataclass(frozen=True)
class LayerInfo:
    index: int
    name: str
    type: str
    num_params: int
    trainable: bool
    group: int | None


def list_layers(model: nn.Module) -> list[LayerInfo]:
    """Every layer in definition order, with its group and trainable state.

    A layer is a module holding parameters of its own (timm's BatchNormAct2d holds weights
    *and* has an activation child), or a parameter-free leaf outside such a module.
    """
    group_of = {n: g.index for g in layer_groups(model) for n in g.param_names}
    rows: list[LayerInfo] = []
    owners: list[str] = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        is_leaf = not any(True for _ in module.children())
        inside_owner = any(name.startswith(f"{o}.") for o in owners)
        if not name or not (own or (is_leaf and not inside_owner)):
            continue
        if own:
            owners.append(name)
        group = group_of.get(f"{name}.{own[0][0]}") if own else None
        rows.append(
            LayerInfo(
                index=len(rows),
                name=name,
                type=type(module).__name__,
                num_params=sum(p.numel() for _, p in own),
                trainable=any(p.requires_grad for _, p in own),
                group=group,
            )
        )
    return rows


# --------------------------------------------------------------------------- weights from files

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def load_weights_file(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Fill ``model`` from a user's weight file; keys that do not fit are an error.

    safetensors files hold only tensors. A pickle can run code when it is opened, so it is
    read with ``weights_only=True`` (tensors and plain containers, nothing else) unless the
    user says they trust the file.
    """
    path = Path(path)
    state = _read_weights(path, trust_pickle)
    if not isinstance(state, dict):
        raise TransferkitError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not usable:
        raise TransferkitError(f"no tensor in {path} fits this backbone (names or shapes differ)")
    missing = sorted(set(own) - set(usable))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in state if k in own and k not in usable)
    if missing or unexpected or reshaped:  # a partial match is allowed, never silent
        parts = [f"{len(usable)} of the backbone's {len(own)} tensors loaded"]
        for what, names in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)):
            if names:
                parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})")
        warnings.warn(f"--init-weights {path}: " + "; ".join(parts), stacklevel=2)
    model.load_state_dict(usable, strict=False)


def _read_weights(path: Path, trust_pickle: bool) -> object:
    if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise TransferkitError(f"{path}: weights must be .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise TransferkitError(
            f"refusing to unpickle {path}: it holds more than tensors, and unpickling it could run code. "
            "Convert it to .safetensors, or pass --trust-pickle if you trust where it came from"
        ) from exc
    except Exception as exc:  # safetensors and torch raise their own types for empty or truncated files
        raise TransferkitError(f"{path} cannot be read as weights ({type(exc).__name__}: {exc})") from exc
    return loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded


# --------------------------------------------------------------------------- adapters


def add_lora(backbone: nn.Module, rank: int, alpha: float) -> nn.Module:
    """LoRA adapters (peft) on every Linear layer — transformers, ViTs — or, in a network with
    none, on every 1×1 convolution (the pointwise convs of MobileNets and EfficientNets).
    The base weights stay as they are; the adapters start as a zero update."""
    peft = require("peft", "the lora strategy")

    targets = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    if not targets:
        targets = [
            n
            for n, m in backbone.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        ]
    if not targets:
        raise TransferkitError("LoRA found no Linear layer or 1×1 convolution in this backbone to adapt")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    adapted: nn.Module = peft.inject_adapter_in_model(config, backbone)
    return adapted
