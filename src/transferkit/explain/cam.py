"""Class-activation maps for image models, with pytorch-grad-cam (``pip install grad-cam``).

The target layer is chosen from the backbone's layer groups (:func:`transferkit.layers.layer_groups`),
so every registered CNN works without a per-architecture table: the top group that still has a
spatial output, as the group's own module (a ResNet stage, after its residual add) or else the
last of its layers to run (EfficientNet's ``bn2``, after ``conv_head``). A ViT's top group gives
tokens, which are reshaped to their grid (prefix tokens dropped), as pytorch-grad-cam's ViT
example does.

Methods: ``gradcam`` (Selvaraju et al. 2017; one backward pass), ``scorecam`` (Wang et al.
2020; gradient-free: each activation channel masks the input, one forward pass per channel)
and ``eigencam`` (Muhammad & Yeasin 2020; gradient-free and class-agnostic: the activations'
first principal component, one forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.extras import require
from transferkit.layers import layer_groups

METHODS = ("gradcam", "scorecam", "eigencam")
PURPOSE = "class-activation maps"
MAX_PREFIX_TOKENS = 8  # a ViT's class and register tokens before its patch grid


@dataclass(frozen=True)
class Target:
    """The layer a CAM is taken at, and how its output becomes ``[batch, channels, h, w]``."""

    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None


def _tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens, channels]`` → ``[batch, channels, side, side]``, prefix tokens dropped."""
    tokens = x.shape[1]
    for prefix in range(MAX_PREFIX_TOKENS + 1):
        side = math.isqrt(tokens - prefix)
        if side > 1 and side * side == tokens - prefix:
            return x[:, prefix:].reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"{tokens} tokens are no square patch grid")


def _spatial(output: object) -> str | None:
    """'map' for a conv feature map, 'tokens' for a token sequence with a square grid, else None."""
    if not isinstance(output, torch.Tensor):
        return None
    if output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
        return "map"
    if output.ndim == 3 and output.shape[1] > 1:
        try:
            _tokens_to_grid(output[:1])
        except ValueError:
            return None
        return "tokens"
    return None


def target_layer(backbone: nn.Module, example: torch.Tensor) -> Target:
    """The top layer group's spatial output (see the module's docstring)."""
    modules = dict(backbone.named_modules())
    ran: list[tuple[str, str]] = []  # (module name, kind) in the order the forward pass ran them
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: ran.append((name, _spatial(o) or "")))
        for name, module in modules.items()
        if name
    ]
    try:
        with torch.no_grad():
            backbone(example)
    finally:
        for hook in hooks:
            hook.remove()
    kinds = {name: kind for name, kind in ran}
    for group in reversed(layer_groups(backbone)):
        owners = {n.rsplit(".", 1)[0] for n in group.param_names if "." in n}
        common = _common_prefix(owners)
        if common and kinds.get(common):
            return _target(common, modules[common], kinds[common])
        inside = [(n, k) for n, k in ran if k and any(n == o or n.startswith(o + ".") for o in owners)]
        if inside:
            name, kind = inside[-1]
            return _target(name, modules[name], kind)
    raise TransferkitError("this backbone has no layer with a spatial output: no class-activation map to draw")


def _target(name: str, module: nn.Module, kind: str) -> Target:
    return Target(name, module, _tokens_to_grid if kind == "tokens" else None)


def _common_prefix(names: set[str]) -> str:
    parts = [n.split(".") for n in names]
    if not parts:
        return ""
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def class_activation_maps(
    model: nn.Module, backbone: nn.Module, inputs: torch.Tensor, classes: list[int], method: str
) -> np.ndarray:
    """``[batch, h, w]`` maps in [0, 1] at the input's size, for class ``classes[i]`` of item i."""
    grad_cam = require("pytorch_grad_cam", PURPOSE)
    ClassifierOutputTarget = require("pytorch_grad_cam.utils.model_targets", PURPOSE).ClassifierOutputTarget
    if method not in METHODS:
        raise TransferkitError(f"method={method!r} is invalid: choose one of {', '.join(METHODS)}")
    target = target_layer(backbone, inputs[:1])
    kind = {"gradcam": grad_cam.GradCAM, "scorecam": grad_cam.ScoreCAM, "eigencam": grad_cam.EigenCAM}[method]
    with kind(model=model, target_layers=[target.module], reshape_transform=target.reshape) as cam:
        if method == "scorecam":
            cam.batch_size = 32  # its default of 16 masked inputs per pass: fewer, larger passes on a CPU
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The map over the image (uint8 RGB, ``[h, w, 3]``), jet-coloured at half weight."""
    image_utils = require("pytorch_grad_cam.utils.image", PURPOSE)
    return np.asarray(
        image_utils.show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=0.5)
    )


__all__ = ["METHODS", "Target", "class_activation_maps", "overlay", "target_layer"]
