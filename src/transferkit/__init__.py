"""transferkit: which pre-trained model, which strategy, how good, how fast — on your data.

The public names below load on first use (PEP 562), so ``import transferkit`` and the
command line's ``--help`` do not pay for torch; ``from transferkit import fit`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transferkit.version import __version__

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("FitResult", "evaluate", "fit", "load", "predict"), "transferkit.api"),
    **dict.fromkeys(
        (
            "BackboneSpec",
            "NameResolver",
            "create_backbone",
            "register_backbone",
            "register_resolver",
            "registered_backbones",
            "resolve_backbone",
        ),
        "transferkit.backbones",
    ),
    "FitConfig": "transferkit.config",
    "write_digits_demo": "transferkit.demos",
    **dict.fromkeys(("ConfigError", "DataError", "TransferkitError"), "transferkit.errors"),
    **dict.fromkeys(("layer_groups", "list_layers"), "transferkit.layers"),
    **dict.fromkeys(
        ("DatasetSplits", "Modality", "get_modality", "register_modality", "registered_modalities"),
        "transferkit.modalities",
    ),
    "TrainedModel": "transferkit.model",
    "load_data": "transferkit.pipeline",
    **dict.fromkeys(
        ("Phase", "Strategy", "get_strategy", "register_strategy", "registered_strategies"), "transferkit.strategies"
    ),
}

__all__ = [
    "BackboneSpec",
    "ConfigError",
    "DataError",
    "DatasetSplits",
    "FitConfig",
    "FitResult",
    "Modality",
    "NameResolver",
    "Phase",
    "Strategy",
    "TrainedModel",
    "TransferkitError",
    "__version__",
    "create_backbone",
    "evaluate",
    "fit",
    "get_modality",
    "get_strategy",
    "layer_groups",
    "list_layers",
    "load",
    "load_data",
    "predict",
    "register_backbone",
    "register_modality",
    "register_resolver",
    "register_strategy",
    "registered_backbones",
    "registered_modalities",
    "registered_strategies",
    "resolve_backbone",
    "write_digits_demo",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and IDEs see: the names, eagerly
    from transferkit.api import FitResult, evaluate, fit, load, predict
    from transferkit.backbones import (
        BackboneSpec,
        NameResolver,
        create_backbone,
        register_backbone,
        register_resolver,
        registered_backbones,
        resolve_backbone,
    )
    from transferkit.config import FitConfig
    from transferkit.demos import write_digits_demo
    from transferkit.errors import ConfigError, DataError, TransferkitError
    from transferkit.layers import layer_groups, list_layers
    from transferkit.modalities import DatasetSplits, Modality, get_modality, register_modality, registered_modalities
    from transferkit.model import TrainedModel
    from transferkit.pipeline import load_data
    from transferkit.strategies import Phase, Strategy, get_strategy, register_strategy, registered_strategies
