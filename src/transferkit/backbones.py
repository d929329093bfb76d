"""The backbone registry: one place that decides what a backbone name means.

A backbone is a network that maps one input to a pooled feature vector of size
``module.num_features``. Each modality registers its offline zoo here
(:func:`register_backbone`) and the resolvers for names it understands without
registration (any timm model name, ``hf:<hub id>``). :func:`resolve_backbone` looks a name
up once: registered names first, then each resolver in turn — as timm's
``parse_model_name`` decides a name's source in one function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transferkit.errors import TransferkitError, unknown_name_message
from transferkit.registry import Registry

if TYPE_CHECKING:  # torch loads only when a backbone is built: `--help` and `list` stay instant
    from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """A named way to build a backbone; ``build(pretrained)`` returns the module.

    ``architecture`` says what it is built on (a timm name, a hub id) for listings and model
    cards; ``source`` is where its companion files live (a text encoder's tokenizer folder);
    ``requires`` names the module its offline weights come in and the command that installs
    it (``transferkit doctor`` checks it without importing anything).
    """

    name: str
    modality: str
    build: Callable[[bool], nn.Module]
    description: str
    architecture: str = ""
    source: Callable[[], str] | None = field(default=None, compare=False)
    requires: tuple[str, str] | None = None
    # optional modules of transferkit's extras that building it imports (transformers for text
    # encoders): ``rank`` and ``auto`` leave the backbone out when one is missing (transferkit.extras)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class NameResolver:
    """Names a modality understands without registering each one (``hf:``, timm names)."""

    name: str
    resolve: Callable[[str], BackboneSpec | None]
    candidates: Callable[[], Iterable[str]] = lambda: ()


# The modalities register their zoos and resolvers (images: timm, text: hf:, audio: hf-audio:).
_REGISTRY: Registry[BackboneSpec] = Registry("backbone", builtins="transferkit.modalities")
_RESOLVERS: list[NameResolver] = []


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return _REGISTRY.register(spec)


def register_resolver(resolver: NameResolver) -> NameResolver:
    _RESOLVERS.append(resolver)
    return resolver


def registered_backbones() -> list[BackboneSpec]:
    return list(_REGISTRY)


def registered_names() -> list[str]:
    """The registered backbones' names: what a file or message may name without a resolver."""
    return [spec.name for spec in _REGISTRY]


def resolve_backbone(name: str) -> BackboneSpec:
    """The spec behind ``name``: registered, else the first resolver that understands it."""
    if name in _REGISTRY:  # (the first lookup also registers the built-in resolvers)
        return _REGISTRY.get(name)
    for resolver in _RESOLVERS:
        spec = resolver.resolve(name)
        if spec is not None:
            return spec
    pool = [spec.name for spec in _REGISTRY] + [c for r in _RESOLVERS for c in r.candidates()]
    raise TransferkitError(unknown_name_message("backbone", name, pool, "see `transferkit list` or timm.list_models()"))


def check_backbone_name(name: str) -> None:
    """Raise a helpful error unless some registry entry or resolver knows ``name``."""
    resolve_backbone(name)


def create_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """Build backbone ``name`` (classifier removed: it returns pooled features)."""
    return resolve_backbone(name).build(pretrained)


def modality_of(name: str) -> str:
    return resolve_backbone(name).modality
