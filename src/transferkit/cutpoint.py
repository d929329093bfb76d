"""Frozen layers computed once: the feature cache one level down.

A phase that trains only the top N layer groups (``partial``, ``two-phase --unfreeze N``)
runs the frozen groups below them to the same activations at every step — on
EfficientNet-Lite0 with the top 2 of 8 groups training, the frozen six hold most of the
forward FLOPs and all of the data loading. Here the backbone is cut between its frozen bottom
and its trainable top: the bottom runs once per view (its activations cached like features,
in fp16), and the phase trains ``top → head`` on the stored activations.

A cut is only made where it is exact. The backbone's children are read as a chain (a
Sequential child expanded), the top is the backbone itself with its bottom modules
replaced by ``Identity`` (sharing every parameter, so the optimizer, checkpoints and the
saved model see one set of weights), and ``top(bottom(x)) == backbone(x)`` is checked on
a probe input before anything is cached. A backbone whose forward is not such a chain (a
ViT adds position embeddings between modules) fails the check and recomputes, as before.
BatchNorm in the bottom runs in eval mode, as the policy in :mod:`transferkit.freezing`
has it for every frozen layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.layers import LayerGroup

# Cached activations beyond this many bytes (all views, fp16) are recomputed instead: the
# phase says so. Lite0 at 224 px cut below its top 2 groups: 44 KB per image and view.
CUT_CACHE_LIMIT = 4 << 30


@dataclass(frozen=True)
class Cut:
    """A backbone split below its first trainable group: ``top(bottom(x)) == backbone(x)``."""

    bottom: nn.Sequential  # the frozen modules, run once per view
    top: nn.Module  # the backbone with ``bottom``'s modules replaced by Identity
    paths: tuple[str, ...]  # the bottom's module paths, for the cache key and messages
    shape: tuple[int, ...]  # one item's activations at the cut (as the exactness probe found them)


def _chain(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The children in definition order; a Sequential child is expanded into its own."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _chain(child, path + ".")
        else:
            yield path, child


def _owns(path: str, param_name: str) -> bool:
    return param_name.startswith(path + ".")


def split(backbone: nn.Module, groups: Sequence[LayerGroup], trainable_from: int, example: torch.Tensor) -> Cut | None:
    """The longest chain prefix whose parameters all lie in groups below ``trainable_from``;
    ``None`` when there is none or the cut is not exact (see the module docstring)."""
    frozen = {name for g in groups[:trainable_from] for name in g.param_names}
    params = [name for name, _ in backbone.named_parameters()]
    bottom: list[tuple[str, nn.Module]] = []
    for path, module in _chain(backbone):
        own = [p for p in params if _owns(path, p)]
        if any(p not in frozen for p in own):
            break
        bottom.append((path, module))
    while bottom and not any(_owns(bottom[-1][0], p) for p in params):
        bottom.pop()  # parameter-free modules at the boundary (a pooling) stay in the top
    if not bottom:
        return None
    paths = tuple(path for path, _ in bottom)
    return _exact(backbone, nn.Sequential(*(m for _, m in bottom)), _without(backbone, set(paths)), paths, example)


def _without(module: nn.Module, paths: set[str], prefix: str = "") -> nn.Module:
    """A shallow copy of ``module`` whose modules at ``paths`` are Identity; every other module
    (and so every parameter) is shared with the original."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # its own table of children; the children are shared
    for name, child in module._modules.items():
        path = f"{prefix}{name}"
        if path in paths:
            clone._modules[name] = nn.Identity()
        elif child is not None and any(p.startswith(path + ".") for p in paths):
            clone._modules[name] = _without(child, paths, path + ".")
    return clone


@torch.inference_mode()
def _exact(
    backbone: nn.Module, bottom: nn.Sequential, top: nn.Module, paths: tuple[str, ...], example: torch.Tensor
) -> Cut | None:
    """The cut when ``top(bottom(x))`` is ``backbone(x)`` in eval mode, ``x`` two random images
    of ``example``'s shape (an integer input, token ids, is not an image: no cut)."""
    if example.is_floating_point() is False:
        return None
    was_training = backbone.training
    backbone.eval()
    top.eval()
    try:
        device = next(backbone.parameters()).device
        x = torch.randn((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
        whole, inner = backbone(x), bottom(x)
        halves = top(inner)
        exact = whole.shape == halves.shape and torch.allclose(whole, halves, rtol=1e-4, atol=1e-5)
        return Cut(bottom, top, paths, tuple(inner.shape[1:])) if exact else None
    except Exception:  # any failure means the forward is not this chain
        return None
    finally:
        backbone.train(was_training)


class CutModel(nn.Module):
    """What a cut phase trains: cached activations → the backbone's top → the head."""

    def __init__(self, top: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.top, self.head = top, head

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.top(activations))
        return logits
