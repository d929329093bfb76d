"""The :class:`Modality` base class and its registry.

A modality is everything that differs between images, texts (and whatever comes next):
which paths it claims, how it reads splits and predict inputs, the preprocessing its
encoders expect, its transforms and dataset, what identifies one sample in the feature
cache, and how the report previews a sample. Everything else — the loop, strategies,
caching, compare, rank, multi-task, federated, the report — calls these methods and never
asks which modality it has. Like Flower's five-method ``Strategy``: few methods, all small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transferkit.modalities.common import DatasetSplits, Sample, skip_unreadable
from transferkit.registry import Registry

if TYPE_CHECKING:  # torch is imported by what runs, not by what registers
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset


class RunOptions(Protocol):
    """What a modality reads of a run's config. :class:`transferkit.config.FitConfig` is one;
    declared here so that modalities never import the config, which imports them."""

    @property
    def backbone(self) -> str | None: ...
    @property
    def strategy(self) -> str: ...
    @property
    def augment(self) -> bool: ...
    @property
    def image_size(self) -> int | str | None: ...
    @property
    def hflip(self) -> bool | str: ...
    @property
    def window(self) -> str | None: ...
    @property
    def text_column(self) -> str: ...
    @property
    def label_column(self) -> str: ...
    @property
    def max_length(self) -> int | None: ...
    @property
    def clip_seconds(self) -> float | None: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def strict(self) -> bool: ...


# (module to trace, example inputs, input names, the dynamic axes of each input)
ExportSignature = tuple["nn.Module", tuple["torch.Tensor", ...], list[str], list[tuple[int, ...]]]


class Preprocessing(Protocol):
    """What an encoder's pre-trained weights expect of their input; saved with every model."""

    def to_dict(self) -> dict[str, Any]: ...  # with "kind": the modality's name

    def example(self) -> torch.Tensor: ...  # one input batch of the right shape

    def describe(self) -> str: ...  # one line for the console


class Modality(ABC):
    """Subclass it and implement the abstract methods; the others have defaults (no preview,
    no domain-shift probe, no backbones of its own, nothing beside an exported graph)."""

    name: str
    unit: str  # what a sample is called in counts: "images", "texts"
    default_backbone: str
    augments: bool = False  # whether training inputs are augmented (when cfg.augment)
    input_options: tuple[str, ...] = ()  # the run options that set its input size (the report names them)
    options: type | None = None  # its options class (transferkit.params fields); the run config composes it
    literal_inputs: bool = False  # predict and serve take the items themselves (texts), not files
    # how an int8 export quantizes: "static" from calibration items (conv nets over pixels or
    # spectrograms), "dynamic" per batch (transformers over token ids, whose activations vary)
    int8: str = "static"
    attribution: str | None = None  # how `transferkit explain` attributes a prediction (transferkit.explain)

    @abstractmethod
    def claim(self, path: Path) -> int:
        """How many items under ``path`` this modality reads (0: not its data)."""
        ...

    @abstractmethod
    def load_splits(self, path: Path, cfg: RunOptions) -> DatasetSplits: ...

    @abstractmethod
    def load_eval_samples(self, path: Path, classes: Sequence[str], fit_config: Mapping[str, Any]) -> list[Sample]: ...

    @abstractmethod
    def check_file(self, path: Path) -> str | None:
        """Why the file at ``path`` cannot be used (unreadable, corrupt, empty), or ``None``."""
        ...

    @abstractmethod
    def read_inputs(self, items: Sequence[str | Path]) -> list[Sample]:
        """What ``predict`` is given (files, folders, literal inputs) as unlabelled samples."""
        ...

    @abstractmethod
    def preprocessing(self, backbone: nn.Module, cfg: RunOptions, samples: Sequence[Sample] = ()) -> Preprocessing:
        """What the encoder expects; ``samples`` (the training items) decide the settings left
        to the data (``--image-size auto``). Without them such a setting is the encoder's own."""
        ...

    @abstractmethod
    def preprocessing_from_dict(self, values: Mapping[str, Any]) -> Preprocessing: ...

    @abstractmethod
    def transform(self, pre: Preprocessing, is_training: bool, cfg: RunOptions | None = None) -> Callable[[Any], Any]:
        """The one transform entry point (timm's ``create_transform(is_training=…)``)."""
        ...

    @abstractmethod
    def dataset(
        self, samples: Sequence[Sample], transform: Callable[[Any], Any], training: bool = False
    ) -> Dataset[Any]:
        """The samples read lazily; only a ``training`` dataset may put another item in place
        of one that breaks (a scored one never: see :meth:`scorable`)."""
        ...

    def scorable(self, samples: Sequence[Sample]) -> tuple[list[Sample], int]:
        """The items a scoring path may score, and how many it skips.

        Scoring never substitutes an unreadable item (that would score another item under its
        label), so each file is checked first, as the data scan checks it: those that cannot be
        read are skipped with one warning, and if none is left that is an error."""
        verdicts: dict[Path, str | None] = {}
        for s in samples:
            if s.text is None and s.path not in verdicts:
                verdicts[s.path] = self.check_file(s.path)
        return skip_unreadable(samples, verdicts, self.unit)

    @abstractmethod
    def sample_key(self, sample: Sample) -> bytes:
        """What identifies one sample's content in the feature cache key."""
        ...

    def input_side(
        self, backbone: Callable[[], nn.Module], cfg: RunOptions, samples: Sequence[Sample] = ()
    ) -> int | None:
        """The square side inputs are resized to under ``cfg`` (``auto`` settings decided on
        ``samples``), or ``None`` for inputs that have none; ``backbone`` builds the network
        only where the answer needs it."""
        return None

    def augmentation(self, pre: Preprocessing, cfg: RunOptions) -> dict[str, Any]:
        """What decides the random training views besides the seed (cached views are keyed on it)."""
        return {}

    def preview(self, path: str) -> str | None:
        """An HTML snippet showing the sample at ``path`` (a thumbnail, a text's start)."""
        return None

    def domain_shift(self, backbone: str, splits: DatasetSplits, pre: Preprocessing) -> float | None:
        """How unlike the encoder's pre-training data the samples are; ``None``: no probe."""
        return None

    def register_backbones(self) -> None:
        """Add its offline zoo and name resolvers to the backbone registry."""
        return None

    # Deployment (ONNX): what the exported graph takes, and the same inputs built without torch.
    @abstractmethod
    def export_signature(self, model: nn.Module, pre: Preprocessing) -> ExportSignature:
        """The module to trace, example inputs (batch 2), the ONNX input names and dynamic axes."""
        ...

    def export_assets(self, pre: Preprocessing, folder: Path) -> None:
        """Write what inference needs beside the ``.onnx`` file (a tokenizer), if anything."""
        return None

    @abstractmethod
    def onnx_inputs(self, pre: Preprocessing, samples: Sequence[Sample], assets: Path) -> dict[str, np.ndarray]:
        """The exported graph's inputs for ``samples``, made with NumPy only (no torch import)."""
        ...


_REGISTRY: Registry[Modality] = Registry("modality", builtins="transferkit.modalities")


def register_modality(modality: Modality) -> Modality:
    _REGISTRY.register(modality)
    modality.register_backbones()
    return modality


def get_modality(name: str) -> Modality:
    return _REGISTRY.get(name)


def registered_modalities() -> list[Modality]:
    return list(_REGISTRY)


def detect_modality(path: str | Path) -> Modality:
    """The modality that claims most items under ``path``; the first registered on a tie."""
    modalities = registered_modalities()
    claims = [m.claim(Path(path)) for m in modalities]
    return modalities[max(range(len(modalities)), key=lambda i: (claims[i], -i))]


def modality_names() -> tuple[str, ...]:
    return tuple(m.name for m in registered_modalities())
