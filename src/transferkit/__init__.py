"""transferkit: which pre-trained model, which strategy, how good, how fast — on your data."""

__version__ = "0.1.0"

from transferkit.api import FitResult, evaluate, fit, load, predict
from transferkit.backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    create_backbone,
    layer_groups,
    list_layers,
    register_backbone,
    registered_backbones,
)
from transferkit.config import FitConfig
from transferkit.data import write_digits_demo
from transferkit.errors import ConfigError, DataError, TransferkitError
from transferkit.model import TrainedModel
from transferkit.strategies import Phase, Strategy, get_strategy, register_strategy, registered_strategies

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "ConfigError",
    "DataError",
    "FitConfig",
    "FitResult",
    "Phase",
    "Strategy",
    "TrainedModel",
    "TransferkitError",
    "__version__",
    "create_backbone",
    "evaluate",
    "fit",
    "get_strategy",
    "layer_groups",
    "list_layers",
    "load",
    "predict",
    "register_backbone",
    "register_strategy",
    "registered_backbones",
    "registered_strategies",
    "write_digits_demo",
]
