"""Transfer strategies: named, reproducible plans of which layers train, for how long, how fast.

A strategy is a sequence of :class:`Phase` objects. A phase says how many of the backbone's
top layer groups are trainable (0 = frozen backbone, ``None`` = all), for how many epochs,
and at which learning rates. The training loop only executes phases; every decision about
freezing lives here, so the API, the CLI and ``compare`` mean the same thing by a name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from transferkit.extras import requirement_note
from transferkit.params import POSITIVE, WHOLE, Interval, param, whole
from transferkit.registry import Registry

if TYPE_CHECKING:
    from torch import nn

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
class Rule:
    """A constraint one strategy puts on a run's options: the field the message names, when it
    is broken, and the fix (text, or text made from the options)."""

    field: str
    broken: Callable[[Any], bool]
    fix: str | Callable[[Any], str]


@dataclass(frozen=True)
class Searched:
    """A depth ``auto`` tries. Plans of every strategy are ordered by ``rank`` (most promising
    first: the schedule drops plans from the end)."""

    rank: int
    unfreeze: int | None = None  # clamped to the backbone's groups
    min_groups: int = 0  # only on a backbone with more layer groups than this
    own_size: bool = False  # at the backbone's own input side, only where the modality has an input side


Role = Literal["probe", "baseline", "fine-tune"]
# "probe": closed form on frozen features — auto's first model, and the floor a trained head must reach
# "baseline": no pre-training — what the pre-trained strategies must beat (negative transfer)
# "fine-tune": every layer from pre-trained weights in one phase — what fine-tuning plans see of the
#   data (their input side, the domain shift), asked without the rules of a many-phase plan


def _lora(backbone: nn.Module, options: Mapping[str, Any]) -> nn.Module:
    from transferkit.layers import add_lora  # peft, only when asked

    defaults = LoraOptions()
    rank = options.get("lora_r", defaults.lora_r)
    alpha = options.get("lora_alpha", defaults.lora_alpha)
    return add_lora(backbone, int(rank), float(alpha))


@dataclass(frozen=True)
class Strategy:
    """A named plan of phases that answers for itself: what it checks, where it takes part
    (the default comparison, federation, auto's search, the textbook prior) and what loading a
    saved run must rebuild. Code outside this module asks these; it never compares a name."""

    name: str
    description: str
    pretrained: bool
    plan: Callable[[PlanOptions], tuple[Phase, ...]]
    classifier: str | None = None  # "logistic" / "svm": a scikit-learn head on frozen features
    default_unfreeze: int | None = 0
    # Adds what trains beside the frozen backbone (LoRA adapters) from the run's options; a saved
    # run is rebuilt with it before its weights load.
    adapt: Callable[[nn.Module, Mapping[str, Any]], nn.Module] | None = None
    options: tuple[type, ...] = ()  # the options classes it reads beyond the run's (Depth, HeadPhase, …)
    # Optional modules it imports (transferkit.extras): checked before a fit starts, and a search
    # (auto, compare) leaves the strategy out when one is missing instead of failing mid-way.
    requires: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    min_epochs: int = 1  # one per phase that must get an epoch (two-phase: 2; also federated rounds)
    compared: bool = False  # in `compare`'s default list
    federates: bool = False  # clients can train it in a federation (a closed-form head cannot be averaged)
    searched: tuple[Searched, ...] = ()  # the depths `auto` tries
    role: Role | None = None
    # The cells of the textbook prior (dataset size × similarity to ImageNet) it is the answer to,
    # with the advice in words: compare's report sets the measurements against it.
    prior: tuple[tuple[str, str, str], ...] = ()

    @property
    def uses_sklearn(self) -> bool:
        return self.classifier is not None

    @property
    def adapters(self) -> bool:
        """Whether adapters are added to the backbone (and saved with the run)."""
        return self.adapt is not None

    @property
    def fine_tunes(self) -> bool:
        """Whether any backbone weight may change (decides frozen-feature shortcuts)."""
        return self.default_unfreeze != 0 or self.adapters

    def problems(self, options: Any) -> list[tuple[str, Any, str]]:
        """(field, value, fix) for each of this strategy's rules the options break."""
        found = []
        for rule in self.rules:
            if rule.broken(options):
                fix = rule.fix(options) if callable(rule.fix) else rule.fix
                found.append((rule.field, getattr(options, rule.field), fix))
        return found


_REGISTRY: Registry[Strategy] = Registry("strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    return _REGISTRY.register(strategy)


def unregister_strategy(name: str) -> Strategy:
    return _REGISTRY.unregister(name)


def registered_strategies() -> list[Strategy]:
    return list(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    return _REGISTRY.get(name)


def with_role(role: Role) -> Strategy:
    """The registered strategy that plays ``role`` (the first, if several do)."""
    found = next((s for s in _REGISTRY if s.role == role), None)
    if found is None:
        raise LookupError(f"no registered strategy plays the role {role!r}")
    return found


def plays(name: str, role: Role) -> bool:
    """Whether the strategy called ``name`` plays ``role`` (False for a name not registered,
    e.g. a row of an old results.json)."""
    return name in _REGISTRY and _REGISTRY.get(name).role == role


def closed_form(name: str) -> bool:
    """Whether the strategy called ``name`` is fitted in closed form on frozen features (False
    for a name not registered)."""
    return name in _REGISTRY and _REGISTRY.get(name).uses_sklearn


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


DEFAULT = "two-phase"  # what `fit` trains when no strategy is named


register_strategy(
    Strategy(
        "linear-probe",
        "Frozen backbone features → scikit-learn logistic regression. Fastest; a strong floor.",
        pretrained=True,
        plan=_linear_probe,
        classifier="logistic",
        options=(ProbeOptions,),
        compared=True,
        searched=(Searched(6, own_size=True),),
        role="probe",
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
        compared=True,
        federates=True,
        searched=(Searched(4),),
        prior=(("small", "similar", "train only a new head on frozen features"),),
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
        compared=True,
        federates=True,
        searched=(Searched(1, unfreeze=2), Searched(5, unfreeze=1, min_groups=2)),
        prior=(("small", "different", "re-train the top blocks and keep the generic lower ones"),),
    )
)
register_strategy(
    Strategy(
        "full",
        "Every layer trains: head at --lr, backbone at the lower --backbone-lr.",
        pretrained=True,
        plan=lambda cfg: (Phase("full", cfg.epochs, ALL, cfg.lr, cfg.backbone_lr),),
        default_unfreeze=ALL,
        compared=True,
        federates=True,
        searched=(Searched(3),),
        role="fine-tune",
        prior=(("large", "different", "fine-tune every layer"),),
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
        rules=(
            Rule(
                "head_epochs",
                lambda c: c.head_epochs is not None and c.head_epochs >= c.epochs,
                lambda c: f"must be below epochs={c.epochs} so the fine-tune phase gets epochs",
            ),
        ),
        min_epochs=2,
        compared=True,
        federates=True,
        searched=(Searched(2),),
        prior=(("large", "similar", "fine-tune after warming the head up"),),
    )
)
register_strategy(
    Strategy(
        "lora",
        "Frozen backbone with low-rank adapters (peft LoRA, rank --lora-r) on its Linear layers, or its 1×1 "
        "convs; adapters and head train at --lr. A small share of the parameters.",
        pretrained=True,
        plan=lambda cfg: (Phase("lora", cfg.epochs, 0, cfg.lr, cfg.lr, adapters=True),),
        adapt=_lora,
        options=(LoraOptions,),
        requires=("peft",),
        federates=True,
        searched=(Searched(7),),
    )
)
register_strategy(
    Strategy(
        "scratch",
        "Same architecture from random init, all layers at --lr: the baseline pre-training must beat.",
        pretrained=False,
        plan=lambda cfg: (Phase("scratch", cfg.epochs, ALL, cfg.lr, cfg.lr),),
        default_unfreeze=ALL,
        compared=True,
        role="baseline",
    )
)
