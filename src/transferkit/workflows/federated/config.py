"""How a federation runs, and how the training images are dealt to clients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferkit.config import FitConfig, from_dict
from transferkit.errors import ConfigError, DataError
from transferkit.params import WHOLE, Check, Constraint, Interval, Options, param, positive, validate, whole
from transferkit.strategies import Phase, get_strategy, registered_strategies
from transferkit.workflows.federated.compression import CHOICES, SCHEMES, Codec


def federated_strategies() -> tuple[str, ...]:
    """The strategies whose clients' updates can be averaged (`Strategy.federates`): no closed-form head."""
    return tuple(s.name for s in registered_strategies() if s.federates)


PARTITIONS = ("iid", "dirichlet")
AGGREGATORS = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "bulyan")
ROBUST = ("fedmedian", "fedtrimmedavg", "krum", "bulyan")  # what one lying client cannot move alone
MAX_CLIENTS = 1_000


def _is_codec(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        Codec.parse(text)  # the codec decides its own names
    except ConfigError:
        return False
    return True


MIN_IMAGES_PER_CLIENT = 2
# What every client trains with unless the user says otherwise: a frozen backbone's head on
# clean inputs at the backbone's own size (clients cannot agree on a size from data they do not share).
_FROZEN = next(s.name for s in registered_strategies() if s.federates and not s.fine_tunes)
BASE_DEFAULTS: dict[str, Any] = {"strategy": _FROZEN, "augment": False, "image_size": None}


@dataclass(frozen=True)
class FederatedConfig:
    """How the federation runs; ``base`` holds the `fit` options every client trains with."""

    clients: int = param(4, "Number of clients (data owners)", whole(1_000))
    rounds: int = param(6, "Federated rounds", WHOLE)
    # also the most a server's message may ask of a client (client.read_fit_message)
    local_epochs: int = param(1, "Epochs each client trains per round", WHOLE)
    partition: str = param("iid", "How the simulation deals the training images to clients", Options(PARTITIONS))
    alpha: float = param(
        0.5, "Dirichlet concentration: smaller = more label skew", positive(1e6),
    )  # fmt: skip
    aggregator: str = param(
        "fedavg", "Flower's aggregation strategy; fedmedian, fedtrimmedavg, krum and bulyan withstand lying clients",
        Options(AGGREGATORS), cli="--aggregate",
    )  # fmt: skip
    proximal_mu: float = param(
        0.01, "FedProx: weight of the pull towards the global weights", positive(1e6),
    )  # fmt: skip
    server_lr: float = param(0.01, "FedAdam: the server's step size", positive(10))
    trim: float = param(
        0.2, "fedtrimmedavg: share of the values cut at each end", Interval(float, 0, 0.5, closed="left"),
        fix="must be in [0, 0.5)",
    )  # fmt: skip
    byzantine: int = param(
        1, "krum and bulyan: lying clients to withstand (krum needs 2×this+3 replies a round, bulyan 4×this+3)",
        whole(MAX_CLIENTS, low=0),
    )  # fmt: skip
    max_client_items: int = param(
        1_000_000, "Most items one client's reply may claim (its weight in the average); a larger claim is refused",
        whole(999_999_999),
    )  # fmt: skip
    fraction_fit: float = param(1.0, "Share of clients sampled per round", Interval(float, 0, 1, closed="right"),
                                fix="must be in (0, 1]")  # fmt: skip
    min_clients: int | None = param(None, "Fewest replies a round needs [default: all clients]", whole(1_000))
    compress: str = param(
        "none", "Updates both ways as changes quantised to int8 or int4, or their top share topk:F (e.g. topk:0.1)",
        Check(_is_codec, " | ".join(SCHEMES), refused=("int2", "topk:2")),
        fix=f"choose {CHOICES}",
    )  # fmt: skip
    dp_noise: float | None = param(
        None, "Flower's central differential privacy: noise multiplier on the clipped updates' sum [default: off]",
        Interval(float, 0, 1e3), fix="must be from 0 to 1,000",
    )  # fmt: skip
    dp_clip: float = param(
        1.0, "Differential privacy: each client's update is clipped to this L2 norm",
        positive(1e6),
    )  # fmt: skip
    secure_aggregation: bool = param(
        False, "Flower's SecAgg+: the server learns only the clients' mean update, never one client's"
    )
    head_rounds: int | None = param(None, "two-phase: rounds of the head phase [default: half the rounds]", WHOLE)
    base: FitConfig = field(default_factory=lambda: FitConfig(**BASE_DEFAULTS))

    def __post_init__(self) -> None:
        validate(self)
        if self.min_clients is not None and not 1 <= self.min_clients <= self.clients:
            raise ConfigError("min_clients", self.min_clients, f"must be between 1 and clients={self.clients}")
        if not get_strategy(self.base.strategy).federates:
            raise ConfigError(
                "strategy", self.base.strategy, f"federated runs train with one of {', '.join(federated_strategies())}"
            )
        for option in ("clip_grad", "ema"):  # loop variations the clients' rounds do not run
            if getattr(self.base, option) is not None:
                raise ConfigError(option, getattr(self.base, option), "federated clients do not take it; drop it")
        if self.rounds < (least := get_strategy(self.base.strategy).min_epochs):
            raise ConfigError(
                "rounds", self.rounds, f"{self.base.strategy} needs at least {least} rounds (one per phase)"
            )
        if self.compress != "none" and self.fraction_fit < 1:
            raise ConfigError(
                "compress", self.compress, "compressed rounds need every client every round: use --fraction-fit 1"
            )
        if self.secure_aggregation:
            self._check_secure()
        self._check_robust()
        if self.head_rounds is not None and not 1 <= self.head_rounds < self.rounds:
            raise ConfigError("head_rounds", self.head_rounds, f"must be between 1 and rounds-1={self.rounds - 1}")
        if self.base.bn_stats != "frozen":
            raise ConfigError("bn_stats", self.base.bn_stats, "federated runs keep pre-trained BatchNorm statistics")
        self.phases()  # the plan must fit the backbone's options before any compute

    def _check_secure(self) -> None:
        """What secure aggregation cannot combine with: a server that sees only the masked sum
        can neither decode one client's compressed change nor clip one client's update."""
        if self.compress != "none":
            raise ConfigError(
                "compress", self.compress, "secure aggregation quantises the updates itself: use --compress none"
            )
        if self.dp_noise is not None:
            raise ConfigError(
                "dp_noise", self.dp_noise,
                "the server's differential privacy clips each client's update, which secure aggregation hides: "
                "drop --dp-noise or --secure-aggregation",
            )  # fmt: skip
        if self.sampled < 2:
            raise ConfigError("clients", self.clients, "secure aggregation needs at least 2 clients a round")

    def _check_robust(self) -> None:
        """Krum and Bulyan need enough honest replies around the liars they withstand; a robust
        rule looks at each client's update, which secure aggregation hides from the server."""
        least = {"krum": 2 * self.byzantine + 3, "bulyan": 4 * self.byzantine + 3}.get(self.aggregator, 1)
        if self.needed < least:
            raise ConfigError(
                "min_clients", self.needed,
                f"{self.aggregator} with --byzantine {self.byzantine} needs at least {least} replies a round",
            )  # fmt: skip
        if self.secure_aggregation and self.aggregator in ROBUST:
            raise ConfigError(
                "aggregator", self.aggregator, "a robust rule needs each client's update; secure aggregation hides it"
            )

    @property
    def needed(self) -> int:
        return self.min_clients if self.min_clients is not None else self.clients

    @staticmethod
    def bound(name: str) -> Constraint:
        """The declared constraint of option ``name``: the wire's checks use the same one."""
        return FederatedConfig.__dataclass_fields__[name].metadata["param"].constraints[0]  # type: ignore[no-any-return]

    def phases(self) -> tuple[Phase, ...]:
        """The strategy's plan with rounds for epochs: each phase spans ``phase.epochs`` rounds."""
        plan_cfg = self.base.replace(epochs=self.rounds, head_epochs=self.head_rounds)
        return get_strategy(self.base.strategy).plan(plan_cfg)

    def phase_of(self, server_round: int) -> int:
        ends = np.cumsum([p.epochs for p in self.phases()])
        return int(np.searchsorted(ends, server_round))

    def lr_scale(self, server_round: int) -> float:
        """Cosine decay across a phase's rounds; clients hold the LR within a round."""
        index = self.phase_of(server_round)
        first = sum(p.epochs for p in self.phases()[:index]) + 1
        return 0.5 * (1 + math.cos(math.pi * (server_round - first) / self.phases()[index].epochs))

    @property
    def sampled(self) -> int:
        """Clients asked each round: Flower's share of the cohort, never fewer than are needed."""
        return max(int(self.clients * self.fraction_fit), self.needed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "base": self.base.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FederatedConfig:
        """The inverse of :meth:`to_dict`; unknown keys are errors, as for a `fit` config."""
        own = dict(values)
        base = from_dict(dict(own.pop("base", {})))
        unknown = sorted(set(own) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError("federated", unknown, "unknown federated option(s)")
        return cls(**own, base=base)


# --------------------------------------------------------------------------- partitions


def partition(
    labels: Sequence[int],
    clients: int,
    scheme: str,
    alpha: float = 0.5,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Indices of each client's images: ``iid`` deals every class out evenly; ``dirichlet``
    gives each class to the clients in Dirichlet(alpha) proportions (label skew).
    ``names`` (class names by label) only make error messages readable."""
    array = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(array, return_counts=True)
    if scheme == "iid":
        if counts.min() < clients:
            rare = int(classes[counts.argmin()])
            name = repr(names[rare]) if names else str(rare)
            raise DataError(
                f"{clients} IID clients need at least {clients} training images per class; class {name} has "
                f"{counts.min()}: use --clients {counts.min()} or fewer"
            )
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            for k, chunk in enumerate(np.array_split(rng.permutation(np.flatnonzero(array == c)), clients)):
                parts[k] += chunk.tolist()
        return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    if len(array) < MIN_IMAGES_PER_CLIENT * clients:
        raise DataError(f"{len(array)} training images cannot give {clients} clients {MIN_IMAGES_PER_CLIENT} each")
    for _ in range(100):  # redraw until no client is left (nearly) empty
        parts = [[] for _ in range(clients)]
        for c in classes:
            index = rng.permutation(np.flatnonzero(array == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(index)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(index, cuts)):
                parts[k] += chunk.tolist()
        if min(len(p) for p in parts) >= MIN_IMAGES_PER_CLIENT:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"100 Dirichlet(alpha={alpha}) splits each left a client with under {MIN_IMAGES_PER_CLIENT} images; "
        "use fewer --clients or a larger --alpha"
    )


def replace_config(cfg: FederatedConfig, **changes: Any) -> FederatedConfig:
    values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    return FederatedConfig(**{**values, **changes})
