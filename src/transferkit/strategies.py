"""Transfer strategies: named, reproducible plans of which layers train, for how long, how fast.

A strategy is a sequence of :class:`Phase` objects. A phase says how many of the backbone's
top layer groups are trainable (0 = frozen backbone, ``None`` = all), for how many epochs,
and at which learning rates. The training loop only executes phases; every decision about
freezing lives here, so the API, the CLI and ``compare`` mean the same thing by a name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from transferkit.extras import requirement_note
from transferkit.params import POSITIVE, WHOLE, Interval, param, whole
from transferkit.registry import Registry

if TYPE_CHECKING:
    from transferkit.layers import LayerGroup


class PlanOptions(Protocol):
    """What a plan reads of a run's config (:class:`transferkit.config.PlanOptions` is one; declared
    here so strategies never import the config, which imports them)."""

    @property
    def epochs(self) -> int: ...
    @property
    def head_epochs(self) -> int | None: ...
    @property
    def unfreeze(self) -> int | None: ...
    @property
    def lr(self) -> float: ...
    @property
    def backbone_lr(self) -> float: ...


# The options strategies own; the run config composes them (``transferkit.params.owned``).
UNFREEZE = whole(1_000)  # more than any backbone has: "all of them" (the strategy clamps)
LORA_RANK = whole(1_024)
LORA_ALPHA = Interval(float, 1e-6, 1e6)


@dataclass(frozen=True)
class Depth:
    unfreeze: int | None = param(
        None, "partial / two-phase: top layer groups that train [default: the strategy's]", UNFREEZE
    )


@dataclass(frozen=True)
class HeadPhase:
    head_epochs: int | None = param(None, "two-phase: epochs of the head-only phase [default: half of epochs]", WHOLE)


@dataclass(frozen=True)
class ProbeOptions:
    c: float = param(1.0, "Inverse regularisation of the linear-probe classifiers", POSITIVE)


@dataclass(frozen=True)
class LoraOptions:
    lora_r: int = param(8, "lora: rank of the adapters", LORA_RANK)
    lora_alpha: float = param(16.0, "lora: adapter scale alpha (update × alpha/r)", LORA_ALPHA)


ALL = None  # ``unfreeze=ALL``: every backbone group trains


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    unfreeze: int | None  # top backbone groups that train; 0 = none, None = all
    head_lr: float
    backbone_lr: float
    adapters: bool = False  # LoRA adapters train (the backbone's own weights stay frozen)

    @property
    def head_only(self) -> bool:
        """Nothing in the backbone changes: its features can be computed once."""
        return self.unfreeze == 0 and not self.adapters

    def trainable_groups(self, n_groups: int) -> range:
        count = n_groups if self.unfreeze is None else self.unfreeze
        return range(n_groups - count, n_groups)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    pretrained: bool
    plan: Callable[[PlanOptions], tuple[Phase, ...]]
    classifier: str | None = None  # "logistic" / "svm": a scikit-learn head on frozen features
    default_unfreeze: int | None = 0
    adapters: str | None = None  # "lora": low-rank adapters are added to the backbone and train
    options: tuple[type, ...] = ()  # the options classes it reads beyond the run's (Depth, HeadPhase, …)
    # Optional modules it imports (transferkit.extras): checked before a fit starts, and a search
    # (auto, compare) leaves the strategy out when one is missing instead of failing mid-way.
    requires: tuple[str, ...] = ()

    @property
    def uses_sklearn(self) -> bool:
        return self.classifier is not None

    @property
    def fine_tunes(self) -> bool:
        """Whether any backbone weight may change (decides frozen-feature shortcuts)."""
        return self.default_unfreeze != 0 or self.adapters is not None


_REGISTRY: Registry[Strategy] = Registry("strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    return _REGISTRY.register(strategy)


def registered_strategies() -> list[Strategy]:
    return list(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    return _REGISTRY.get(name)


def usable(names: Iterable[str]) -> tuple[list[str], str | None]:
    """The strategies of ``names`` whose optional packages are installed, and one line naming
    the others with what installs them (``None`` when none is left out): a search tries what
    this install can run and says what it left out, rather than failing on it mid-way."""
    kept, notes = [], []
    for name in names:
        note = requirement_note(get_strategy(name).requires)
        if note is None:
            kept.append(name)
        else:
            notes.append(f"{name} ({note})")
    return kept, f"left out, optional package missing: {'; '.join(notes)}" if notes else None


def expected_trainable_params(groups: Sequence[LayerGroup], head_params: int, phase: Phase) -> int:
    """What a phase promises to train: the head, its top groups and its adapters, nothing else."""
    unfrozen = set(phase.trainable_groups(len(groups)))
    adapters = sum(g.adapter_params for g in groups if g.index not in unfrozen) if phase.adapters else 0
    return head_params + sum(groups[i].num_params for i in unfrozen) + adapters


def _unfreeze(cfg: PlanOptions, default: int | None) -> int | None:
    return cfg.unfreeze if cfg.unfreeze is not None else default


def _head_epochs(cfg: PlanOptions) -> int:
    return cfg.head_epochs if cfg.head_epochs is not None else max(1, cfg.epochs // 2)


def _linear_probe(cfg: PlanOptions) -> tuple[Phase, ...]:
    return ()  # fitted in closed form by scikit-learn, no gradient epochs


register_strategy(
    Strategy(
        "linear-probe",
        "Frozen backbone features → scikit-learn logistic regression. Fastest; a strong floor.",
        pretrained=True,
        plan=_linear_probe,
        classifier="logistic",
        options=(ProbeOptions,),
    )
)
register_strategy(
    Strategy(
        "linear-probe-svm",
        "Frozen backbone features → scikit-learn linear SVM (scores softmaxed, not calibrated).",
        pretrained=True,
        plan=_linear_probe,
        classifier="svm",
        options=(ProbeOptions,),
    )
)
register_strategy(
    Strategy(
        "feature-extraction",
        "Frozen backbone, a new head trained with SGD (Keras' 'transfer learning').",
        pretrained=True,
        plan=lambda cfg: (Phase("head", cfg.epochs, 0, cfg.lr, 0.0),),
    )
)
register_strategy(
    Strategy(
        "partial",
        "Top N block groups and the head train (--unfreeze, default 2); backbone at the lower LR.",
        pretrained=True,
        plan=lambda cfg: (Phase("partial", cfg.epochs, _unfreeze(cfg, 2), cfg.lr, cfg.backbone_lr),),
        default_unfreeze=2,
        options=(Depth,),
    )
)
register_strategy(
    Strategy(
        "full",
        "Every layer trains: head at --lr, backbone at the lower --backbone-lr.",
        pretrained=True,
        plan=lambda cfg: (Phase("full", cfg.epochs, ALL, cfg.lr, cfg.backbone_lr),),
        default_unfreeze=ALL,
    )
)
register_strategy(
    Strategy(
        "two-phase",
        "Head alone for --head-epochs, then unfreeze (top N or all) and continue at --backbone-lr.",
        pretrained=True,
        plan=lambda cfg: (
            Phase("head", _head_epochs(cfg), 0, cfg.lr, 0.0),
            Phase("fine-tune", cfg.epochs - _head_epochs(cfg), _unfreeze(cfg, ALL), cfg.backbone_lr, cfg.backbone_lr),
        ),
        default_unfreeze=ALL,
        options=(HeadPhase, Depth),
    )
)
register_strategy(
    Strategy(
        "lora",
        "Frozen backbone with low-rank adapters (peft LoRA, rank --lora-r) on its Linear layers, or its 1×1 "
        "convs; adapters and head train at --lr. A small share of the parameters.",
        pretrained=True,
        plan=lambda cfg: (Phase("lora", cfg.epochs, 0, cfg.lr, cfg.lr, adapters=True),),
        adapters="lora",
        options=(LoraOptions,),
        requires=("peft",),
    )
)
register_strategy(
    Strategy(
        "scratch",
        "Same architecture from random init, all layers at --lr: the baseline pre-training must beat.",
        pretrained=False,
        plan=lambda cfg: (Phase("scratch", cfg.epochs, ALL, cfg.lr, cfg.lr),),
        default_unfreeze=ALL,
    )
)
