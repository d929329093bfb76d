"""Federated fine-tuning with Flower: the images stay with their owners, only trainable weights travel.

Each round the server sends the weights the round's phase trains (the head, plus any
unfrozen backbone groups) to the sampled clients; each client trains them for
``local_epochs`` on its own images with the same strategy plans, freezing and loop as
``fit``, and sends them back; Flower's own strategy (FedAvg, FedProx or FedAdam) aggregates
them, weighted by example counts. Frozen weights never move: every party builds the same
pre-trained backbone locally. The server scores the global model on a central validation
split after every round.

Two-phase strategies run as phases of rounds (head rounds, then fine-tune rounds); the set
of travelling weights changes at the boundary, so :class:`PhasedStrategy` keeps the global
model and starts a fresh Flower strategy per phase (as ``fit`` starts a fresh optimizer).

Everything a client needs to know arrives with each round's instructions (the ``fit``
config, the phase, the learning-rate scale), so a real client is started with nothing but
its images and the server's address.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.api import feature_loaders, image_loader, prepare_model
from transferkit.backbones import image_preprocessing, layer_groups
from transferkit.config import FitConfig, from_dict
from transferkit.data import DatasetSplits, Sample, eval_transform, load_splits, train_transform
from transferkit.errors import ConfigError, DataError, TransferkitError
from transferkit.features import FeatureViews, default_cache_dir, extract_features, feature_settings
from transferkit.metrics import Scores
from transferkit.model import TransferModel, atomic_write_text, save_model
from transferkit.strategies import Phase, get_strategy
from transferkit.training import Loaders, evaluate, freeze_for_phase, seed_everything, train

try:  # an optional extra: `pip install 'transferkit[federated]'`
    from flwr.client import NumPyClient
    from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAdam, FedAvg, FedProx, Strategy
except ImportError as exc:  # pragma: no cover - the test extra installs flwr
    raise TransferkitError("federated training needs Flower: pip install 'transferkit[federated]'") from exc

FEDERATED_STRATEGIES = ("feature-extraction", "partial", "two-phase", "full")
PARTITIONS = ("iid", "dirichlet")
AGGREGATORS = ("fedavg", "fedprox", "fedadam")
MIN_IMAGES_PER_CLIENT = 2


@dataclass(frozen=True)
class FederatedConfig:
    """How the federation runs; ``base`` holds the `fit` options every client trains with."""

    clients: int = 4
    rounds: int = 6
    local_epochs: int = 1
    partition: str = "iid"  # how the simulation splits the training images over clients
    alpha: float = 0.5  # Dirichlet concentration: small = each client sees few classes
    aggregator: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx: pull of the global weights on local training
    server_lr: float = 0.01  # FedAdam: the server's own step size
    fraction_fit: float = 1.0  # share of clients sampled per round
    min_clients: int | None = None  # fewest clients a round needs (default: all of them)
    head_rounds: int | None = None  # two-phase: rounds of the head phase (default: half)
    base: FitConfig = field(default_factory=lambda: FitConfig(strategy="feature-extraction", augment=False))

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "local_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, value, "must be a positive whole number")
        if self.partition not in PARTITIONS:
            raise ConfigError("partition", self.partition, f"choose one of {', '.join(PARTITIONS)}")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError("aggregator", self.aggregator, f"choose one of {', '.join(AGGREGATORS)}")
        for name in ("alpha", "proximal_mu", "server_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(name, value, "must be a positive number")
        if not 0 < self.fraction_fit <= 1:
            raise ConfigError("fraction_fit", self.fraction_fit, "must be in (0, 1]")
        if self.min_clients is not None and not 1 <= self.min_clients <= self.clients:
            raise ConfigError("min_clients", self.min_clients, f"must be between 1 and clients={self.clients}")
        if self.base.strategy not in FEDERATED_STRATEGIES:
            raise ConfigError(
                "strategy", self.base.strategy, f"federated runs train with one of {', '.join(FEDERATED_STRATEGIES)}"
            )
        if self.base.strategy == "two-phase" and self.rounds < 2:
            raise ConfigError("rounds", self.rounds, "two-phase needs at least 2 rounds (head, then fine-tune)")
        if self.head_rounds is not None and not 1 <= self.head_rounds < self.rounds:
            raise ConfigError("head_rounds", self.head_rounds, f"must be between 1 and rounds-1={self.rounds - 1}")
        if self.base.bn_stats != "frozen":
            raise ConfigError("bn_stats", self.base.bn_stats, "federated runs keep pre-trained BatchNorm statistics")
        self.phases()  # the plan must fit the backbone's options before any compute

    @property
    def needed(self) -> int:
        return self.min_clients if self.min_clients is not None else self.clients

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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "base": self.base.to_dict()}


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


# --------------------------------------------------------------------------- weights that travel


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_arrays(model: nn.Module, names: Sequence[str]) -> list[np.ndarray]:
    params = dict(model.named_parameters())
    return [params[n].detach().cpu().numpy().copy() for n in names]


def set_arrays(model: nn.Module, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    if len(arrays) != len(names):
        raise TransferkitError(f"received {len(arrays)} weight arrays for {len(names)} trainable tensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, arrays, strict=True):
            params[name].copy_(torch.from_numpy(np.asarray(array)))


def payload_bytes(parameters: Parameters) -> int:
    """What Flower puts on the wire for these weights (its serialised tensors)."""
    return sum(len(t) for t in parameters.tensors)


# --------------------------------------------------------------------------- the client


class TransferClient(NumPyClient):
    """One data owner: trains the round's travelling weights on its own images.

    The model is built once per client object, from the ``fit`` config the server sends,
    with the same pre-trained backbone and seed on every party.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], client_id: int = 0) -> None:
        self.samples, self.classes, self.client_id = tuple(samples), tuple(classes), client_id
        self._model: TransferModel | None = None

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return []  # the server always starts from its own weights

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        cfg = from_dict(json.loads(config["fit_config"]))
        if tuple(json.loads(config["classes"])) != self.classes:
            raise DataError(f"client {self.client_id} has classes {self.classes}, the server {config['classes']}")
        phase = Phase(**json.loads(config["phase"]))
        model = self._build(cfg)
        groups = layer_groups(model.backbone)
        freeze_for_phase(model, groups, phase)
        names = trainable_names(model)
        set_arrays(model, names, parameters)
        # A new shuffle every round and client, reproducible from the run's seed.
        cfg = cfg.replace(seed=cfg.seed + 1000 * int(config["round"]) + self.client_id)
        loaders, features = self._loaders(model, cfg)
        mu = float(config.get("proximal_mu", 0.0))
        result = train(
            model, groups, [phase], loaders, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            num_classes=len(self.classes), device=torch.device("cpu"), weight_decay=cfg.weight_decay, warmup=0.0,
            patience=None, monitor="loss", restore_best=False, frozen_features=features,
            penalty=_proximal(model, names, mu) if mu > 0 else None, decay=False,
        )  # fmt: skip
        last = result.history[-1]
        metrics = {"train_loss": last.train_loss, "train_accuracy": last.train_accuracy}
        return get_arrays(model, names), len(self.samples), metrics

    def _build(self, cfg: FitConfig) -> TransferModel:
        if self._model is None:
            seed_everything(cfg.seed)
            self._model, _ = prepare_model(cfg, get_strategy(cfg.strategy), len(self.classes))
        return self._model

    def _loaders(self, model: TransferModel, cfg: FitConfig) -> tuple[Loaders, Callable[[], Loaders] | None]:
        """Image loaders, and (as in ``fit``) cached features for frozen phases unless every
        epoch must see fresh augmentation. No local validation: the server scores centrally."""
        splits = DatasetSplits(self.classes, self.samples, ())
        pre = image_preprocessing(model.backbone, cfg.image_size)
        transform = train_transform(pre, hflip=cfg.hflip) if cfg.augment else eval_transform(pre)
        device = torch.device("cpu")
        images = Loaders(image_loader(splits.train, transform, cfg, device, shuffle=True), _NO_VALIDATION)
        if cfg.augment and cfg.cache_views == 0:
            return images, None
        return images, lambda: feature_loaders(model, splits, pre, cfg, device, None)


_NO_VALIDATION: DataLoader[Any] = DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)))


def _proximal(model: nn.Module, names: Sequence[str], mu: float) -> Callable[[], torch.Tensor]:
    """FedProx: (mu/2)·‖w − w_global‖² over the travelling weights."""
    params = dict(model.named_parameters())
    anchors = [(params[n], params[n].detach().clone()) for n in names]

    def penalty() -> torch.Tensor:
        return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in anchors)  # type: ignore[return-value]

    return penalty


# --------------------------------------------------------------------------- the server


@dataclass
class RoundRecord:
    round: int
    phase: str
    clients_ok: int
    clients_failed: int
    accuracy: float
    macro_f1: float
    loss: float
    bytes_down: int
    bytes_up: int
    seconds: float
    train_loss: float = math.nan  # clients' own loss in their last local epoch, weighted by examples


class PhasedStrategy(Strategy):
    """A Flower strategy per phase of the plan, the global model kept across phases.

    Also does the bookkeeping: bytes each way, replies and failures, and the central
    validation score after every round.
    """

    def __init__(
        self,
        cfg: FederatedConfig,
        model: TransferModel,
        classes: Sequence[str],
        score: Callable[[TransferModel, Phase], Scores],
        console: Console | None = None,
        join_timeout: float = 600.0,
    ) -> None:
        self.cfg, self.model, self.classes, self.score, self.console = cfg, model, tuple(classes), score, console
        self.join_timeout = join_timeout
        self.groups = layer_groups(model.backbone)
        self.phases = cfg.phases()
        self.records: list[RoundRecord] = []
        self._phase = -1
        self._inner: Strategy | None = None
        self._names: list[str] = []
        self._pending: dict[str, Any] = {}
        self._started = time.perf_counter()

    # Flower calls these, in this order, every round.
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self._enter(0)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._started = time.perf_counter()
        if server_round == 1:  # the first round waits for the whole cohort; later ones go on with fewer
            client_manager.wait_for(self.cfg.clients, timeout=int(self.join_timeout))
        phase_index = self.cfg.phase_of(server_round)
        if phase_index != self._phase:
            set_arrays(self.model, self._names, parameters_to_ndarrays(parameters))
            parameters = self._enter(phase_index)
        assert self._inner is not None  # set by _enter
        instructions = self._inner.configure_fit(server_round, parameters, client_manager)
        phase = self.phases[phase_index]
        scale = self.cfg.lr_scale(server_round)
        local = Phase(
            phase.name, self.cfg.local_epochs, phase.unfreeze, phase.head_lr * scale, phase.backbone_lr * scale
        )
        extra = {
            "fit_config": json.dumps(self.cfg.base.to_dict()),
            "classes": json.dumps(self.classes),
            "phase": json.dumps(asdict(local)),
            "round": server_round,
        }
        for _, ins in instructions:
            ins.config.update(extra)  # type: ignore[arg-type]
        self._pending = {"down": sum(payload_bytes(ins.parameters) for _, ins in instructions)}
        return instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        assert self._inner is not None
        self._pending |= {
            "up": sum(payload_bytes(res.parameters) for _, res in results),
            "ok": len(results),
            "failed": len(failures),
        }
        if len(results) < self.cfg.needed:  # too few replies: keep the global model as it was
            if self.console:
                self.console.print(
                    f"  [yellow]round {server_round}: {len(results)} of {self.cfg.needed} needed clients replied "
                    f"({len(failures)} failed); weights unchanged[/]"
                )
            return None, {}
        parameters, metrics = self._inner.aggregate_fit(server_round, results, failures)
        self._pending["train_loss"] = metrics.get("train_loss", math.nan)
        if parameters is not None:  # FedAdam's arithmetic promotes to float64: send what the model holds
            params = dict(self.model.named_parameters())
            arrays = parameters_to_ndarrays(parameters)
            dtypes = [params[n].detach().numpy().dtype for n in self._names]
            parameters = ndarrays_to_parameters([a.astype(d, copy=False) for a, d in zip(arrays, dtypes, strict=True)])
        return parameters, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[Any]:
        return []  # scored centrally, on the server's validation split

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
        set_arrays(self.model, self._names, parameters_to_ndarrays(parameters))
        phase = self.phases[self.cfg.phase_of(max(server_round, 1))]
        scores = self.score(self.model, phase)
        if server_round > 0:
            pending = self._pending
            record = RoundRecord(
                server_round, phase.name, pending.get("ok", 0), pending.get("failed", 0), scores.accuracy,
                scores.macro_f1, scores.loss, pending.get("down", 0), pending.get("up", 0),
                time.perf_counter() - self._started, pending.get("train_loss", math.nan),
            )  # fmt: skip
            self.records.append(record)
            if self.console:
                self.console.print(
                    f"round {server_round:>3}/{self.cfg.rounds} \\[{phase.name}] {record.clients_ok} client(s)"
                    + (f", {record.clients_failed} failed" if record.clients_failed else "")
                    + f" | val acc {scores.accuracy:.3f} f1 {scores.macro_f1:.3f} loss {scores.loss:.3f}"
                    f" | sent {_mb(record.bytes_down + record.bytes_up)} | {record.seconds:.1f}s",
                    highlight=False,
                    soft_wrap=True,
                )
        elif self.console:
            self.console.print(f"round   0 (start) | val acc {scores.accuracy:.3f}", highlight=False)
        return scores.loss, {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}

    def _enter(self, index: int) -> Parameters:
        """Start phase ``index``: its travelling weights, and a fresh Flower strategy over them."""
        self._phase = index
        freeze_for_phase(self.model, self.groups, self.phases[index])
        self._names = trainable_names(self.model)
        initial = ndarrays_to_parameters(get_arrays(self.model, self._names))
        self._inner = _flower_strategy(self.cfg, initial)
        return initial


def _flower_strategy(cfg: FederatedConfig, initial: Parameters) -> Strategy:
    common: dict[str, Any] = {
        "fraction_fit": cfg.fraction_fit,
        "fraction_evaluate": 0.0,
        "min_fit_clients": cfg.needed,
        "min_available_clients": cfg.needed,
        "initial_parameters": initial,
        "accept_failures": True,
        "fit_metrics_aggregation_fn": _weighted_mean,
    }
    if cfg.aggregator == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.aggregator == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.base.lr, tau=1e-3, **common)
    return FedAvg(**common)


def _weighted_mean(replies: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Clients' training metrics, weighted by their example counts."""
    total = sum(n for n, _ in replies) or 1
    keys = set.intersection(*(set(m) for _, m in replies)) if replies else set()
    return {k: sum(n * float(m[k]) for n, m in replies) / total for k in sorted(keys)}


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


# --------------------------------------------------------------------------- running a federation


@dataclass
class FederatedResult:
    config: FederatedConfig
    rounds: list[RoundRecord]
    classes: tuple[str, ...]
    client_sizes: list[int]
    full_model_bytes: int  # one copy of every weight and buffer, serialised as Flower would
    seconds: float
    model: TransferModel | None = None
    run_dir: Path | None = None

    @property
    def bytes_total(self) -> int:
        return sum(r.bytes_down + r.bytes_up for r in self.rounds)

    @property
    def full_model_bytes_total(self) -> int:
        """What the same rounds would have sent with the whole model going both ways."""
        return sum(2 * r.clients_ok * self.full_model_bytes for r in self.rounds)

    def summary(self) -> dict[str, Any]:
        final = self.rounds[-1] if self.rounds else None
        return {
            "partition": self.config.partition,
            "clients": self.config.clients,
            "client_sizes": self.client_sizes,
            "final_accuracy": final.accuracy if final else None,
            "final_macro_f1": final.macro_f1 if final else None,
            "bytes_total": self.bytes_total,
            "full_model_bytes_total": self.full_model_bytes_total,
            "seconds": self.seconds,
            "rounds": [asdict(r) for r in self.rounds],
        }


class _Server:
    """The server's side: the global model, the central validation split and its scorer."""

    def __init__(self, splits: DatasetSplits, cfg: FederatedConfig, console: Console | None) -> None:
        base = cfg.base
        seed_everything(base.seed)
        self.model, _ = prepare_model(base, get_strategy(base.strategy), len(splits.classes))
        self.pre = image_preprocessing(self.model.backbone, base.image_size)
        self.splits, self.cfg, self.console = splits, cfg, console
        self._val_features: DataLoader[Any] | None = None
        self.strategy = PhasedStrategy(cfg, self.model, splits.classes, self.score, console)
        state = [v.detach().cpu().numpy() for v in self.model.state_dict().values()]
        self.full_model_bytes = payload_bytes(ndarrays_to_parameters(state))

    def score(self, model: TransferModel, phase: Phase) -> Scores:
        base, device = self.cfg.base, torch.device("cpu")
        n = len(self.splits.classes)
        if phase.head_only:  # frozen backbone: score the head on validation features computed once
            if self._val_features is None:
                settings = feature_settings(base.backbone, self.pre)
                features = extract_features(
                    model.backbone, self.splits.val, [eval_transform(self.pre)], batch_size=base.batch_size,
                    device=device, cache_dir=default_cache_dir() if base.cache else None, settings=settings,
                )  # fmt: skip
                self._val_features = DataLoader(FeatureViews(features), batch_size=base.batch_size)
            return evaluate(model.head, self._val_features, n, device)
        return evaluate(model, image_loader(self.splits.val, eval_transform(self.pre), base, device), n, device)

    def finish(self, client_sizes: list[int], started: float, out: str | Path | None) -> FederatedResult:
        """The federation's result, saved to ``out``; an error if it stopped short."""
        done = len(self.strategy.records)
        if done < self.cfg.rounds:
            raise TransferkitError(f"the federation stopped after {done} of {self.cfg.rounds} rounds; see Flower's log")
        result = FederatedResult(
            self.cfg, self.strategy.records, self.splits.classes, client_sizes, self.full_model_bytes,
            time.perf_counter() - started, self.model,
        )  # fmt: skip
        if out is not None:
            result.run_dir = save_federated(out, result, self)
        return result


def simulate(
    data: str | Path | DatasetSplits,
    cfg: FederatedConfig,
    *,
    out: str | Path | None = None,
    console: Console | None = None,
) -> FederatedResult:
    """A Flower simulation on this machine: the training split dealt to ``cfg.clients``
    clients (IID or Dirichlet label skew), scored on the validation split every round."""
    from flwr.simulation import start_simulation

    base = cfg.base
    splits = data if isinstance(data, DatasetSplits) else load_splits(data, base.val_fraction, base.seed, base.strict)
    labels = [s.label for s in splits.train]
    parts = partition(labels, cfg.clients, cfg.partition, cfg.alpha, base.seed, splits.classes)
    shards = [[splits.train[i] for i in part] for part in parts]
    server = _Server(splits, cfg, console)
    if console:
        console.print(
            f"[bold]transferkit federated[/] {cfg.clients} clients ({cfg.partition}"
            + (f", alpha {cfg.alpha}" if cfg.partition == "dirichlet" else "")
            + f"; images per client {[len(s) for s in shards]}), {cfg.rounds} rounds × {cfg.local_epochs} local "
            f"epoch(s), {base.strategy}, {cfg.aggregator}; {len(splits.val)} central validation images",
            highlight=False,
            soft_wrap=True,
        )
    classes = splits.classes

    def client_fn(context: Any) -> Any:
        cid = int(context.node_config["partition-id"])
        return TransferClient(shards[cid], classes, cid).to_client()

    _quiet_flower()
    started = time.perf_counter()
    start_simulation(
        client_fn=client_fn,
        num_clients=cfg.clients,
        config=ServerConfig(num_rounds=cfg.rounds),
        strategy=server.strategy,
        client_resources={"num_cpus": 1},
        ray_init_args={"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR},
    )
    return server.finish([len(s) for s in shards], started, out)


def serve(
    data: str | Path,
    cfg: FederatedConfig,
    address: str,
    *,
    out: str | Path | None = None,
    console: Console | None = None,
    round_timeout: float | None = None,
) -> FederatedResult:
    """A real Flower server on ``address``: waits for ``cfg.needed`` clients, runs the rounds,
    scores on ``data``'s validation split and saves the global model."""
    from flwr.server import start_server

    base = cfg.base
    splits = load_splits(data, base.val_fraction, base.seed, base.strict)
    server = _Server(splits, cfg, console)
    if console:
        go_on = f"; rounds go on with {cfg.needed} if some drop out" if cfg.needed < cfg.clients else ""
        console.print(f"serving on {address}: waiting for {cfg.clients} client(s){go_on}", highlight=False)
    _quiet_flower()
    started = time.perf_counter()
    start_server(
        server_address=address,
        config=ServerConfig(num_rounds=cfg.rounds, round_timeout=round_timeout),
        strategy=server.strategy,
    )
    return server.finish([], started, out)


def join(
    data: str | Path,
    address: str,
    *,
    part: tuple[int, int] | None = None,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> None:
    """A real Flower client: trains on ``data``'s training split (or on part ``i`` of ``n``
    of it, for a demo on one machine) whenever the server at ``address`` asks."""
    from flwr.compat.client.app import start_client

    splits = load_splits(data, val_fraction, seed)
    samples = list(splits.train)
    client_id = 0
    if part is not None:
        client_id, n = part
        if not 0 <= client_id < n:
            raise ConfigError("part", f"{client_id}/{n}", f"the part number must be 0..{n - 1}")
        samples = [
            samples[i] for i in partition([s.label for s in samples], n, partition_scheme, alpha, seed)[client_id]
        ]
    _quiet_flower()
    start_client(server_address=address, client=TransferClient(samples, splits.classes, client_id).to_client())


def _quiet_flower() -> None:
    """Flower logs every message at INFO; transferkit prints one line per round instead.

    transferkit calls Flower's deprecated one-process entry points (start_simulation,
    start_server, start_client) on purpose: they run a federation from a library call,
    with no app bundle to deploy; their deprecation banners say nothing to our users.
    """
    flower = logging.getLogger("flwr")
    flower.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropDeprecation) for f in flower.filters):
        flower.addFilter(_DropDeprecation())
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning, no GPU here


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


# --------------------------------------------------------------------------- saving


def save_federated(out: str | Path, result: FederatedResult, server: _Server) -> Path:
    """The global model as `fit` saves one (so `evaluate` and `predict` read it) plus the rounds."""
    out = Path(out)
    cfg = result.config
    final = result.rounds[-1]
    card = {
        "backbone": cfg.base.backbone,
        "strategy": cfg.base.strategy,
        "pretrained": True,
        "classes": list(result.classes),
        "preprocessing": server.pre.to_dict(),
        "head": {"hidden": cfg.base.hidden, "dropout": cfg.base.dropout},
        "metrics": {"val": {"accuracy": final.accuracy, "macro_f1": final.macro_f1, "loss": final.loss}},
        "fit_config": cfg.base.to_dict(),
        "federated": cfg.to_dict(),
        "train_seconds": result.seconds,
    }
    save_model(out, server.model, card)
    atomic_write_text(out / "rounds.json", json.dumps(result.summary(), indent=2))
    return out


# --------------------------------------------------------------------------- federated vs centralised


def centralised(splits: DatasetSplits, cfg: FederatedConfig) -> dict[str, float]:
    """`fit` on the pooled training images with the same strategy and epoch budget."""
    from transferkit.api import fit

    phases = cfg.phases()
    head = phases[0].epochs * cfg.local_epochs if cfg.base.strategy == "two-phase" else None
    result = fit(splits, cfg.base.replace(epochs=cfg.rounds * cfg.local_epochs, head_epochs=head))
    val = result.metrics["val"]
    return {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"], "seconds": result.seconds}


def federated_report(
    data: str | Path,
    cfg: FederatedConfig,
    partitions: Sequence[str] = PARTITIONS,
    *,
    baseline: bool = True,
    out: str | Path = "runs/federated",
    console: Console | None = None,
) -> dict[str, Any]:
    """Each partition scheme simulated in turn, the centralised baseline beside them; writes
    ``report.md``, ``federated.json``, ``accuracy.png`` and each run's model under ``out``."""
    out = Path(out)
    base = cfg.base
    splits = load_splits(data, base.val_fraction, base.seed, base.strict)
    report: dict[str, Any] = {"config": cfg.to_dict(), "runs": {}}
    for scheme in partitions:
        result = simulate(splits, replace_config(cfg, partition=scheme), out=out / scheme, console=console)
        report["runs"][scheme] = result.summary()
    if baseline:
        if console:
            console.print("centralised baseline: `fit` on the pooled training images, same budget", highlight=False)
        report["centralised"] = centralised(splits, cfg)
    atomic_write_text(out / "federated.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    plot_rounds(report, out / "accuracy.png")
    if console:
        console.print(report_markdown(report), highlight=False, soft_wrap=True)
    return report


def replace_config(cfg: FederatedConfig, **changes: Any) -> FederatedConfig:
    values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    return FederatedConfig(**{**values, **changes})


def report_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    base = cfg["base"]
    lines = [
        f"# Federated vs centralised: {base['strategy']} on {base['backbone']}",
        "",
        f"{cfg['clients']} clients, {cfg['rounds']} rounds × {cfg['local_epochs']} local epoch(s), "
        f"{cfg['aggregator']}; Dirichlet alpha {cfg['alpha']} for the non-IID split. Centralised: `fit` on the "
        f"pooled training images for {cfg['rounds'] * cfg['local_epochs']} epochs. Accuracy on the same central "
        "validation split.",
        "",
        "| run | final val accuracy | macro-F1 | sent in total | whole model both ways | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for scheme, run in report["runs"].items():
        lines.append(
            f"| federated, {scheme} (images per client {run['client_sizes']}) | {run['final_accuracy']:.4f} | "
            f"{run['final_macro_f1']:.4f} | {_mb(run['bytes_total'])} | {_mb(run['full_model_bytes_total'])} | "
            f"{run['seconds']:.0f} |"
        )
    if "centralised" in report:
        c = report["centralised"]
        lines.append(f"| centralised | {c['accuracy']:.4f} | {c['macro_f1']:.4f} | — | — | {c['seconds']:.0f} |")
    lines += ["", "Accuracy after each round, and what the round sent (all clients, both ways):", ""]
    lines.append("| round | phase | " + " | ".join(report["runs"]) + " | sent (first run) |")
    lines.append("|---|---|" + "---|" * len(report["runs"]) + "---|")
    runs = list(report["runs"].values())
    for i, first in enumerate(runs[0]["rounds"]):
        accs = " | ".join(f"{run['rounds'][i]['accuracy']:.4f}" for run in runs)
        sent = _mb(first["bytes_down"] + first["bytes_up"])
        lines.append(f"| {first['round']} | {first['phase']} | {accs} | {sent} |")
    return "\n".join(lines) + "\n"


def plot_rounds(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme, run in report["runs"].items():
        rounds = [r["round"] for r in run["rounds"]]
        ax.plot(rounds, [r["accuracy"] for r in run["rounds"]], marker="o", label=f"federated, {scheme}")
    if "centralised" in report:
        ax.axhline(report["centralised"]["accuracy"], color="black", linestyle="--", label="centralised")
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
