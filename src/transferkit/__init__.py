"""transferkit: which pre-trained model, which strategy, how good, how fast — on your data."""

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
from transferkit.version import __version__

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
