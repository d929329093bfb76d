"""The server's side: a Flower strategy per phase of the plan, and the bookkeeping."""

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from rich.console import Console

from transferkit.freezing import freeze_for_phase
from transferkit.layers import layer_groups
from transferkit.metrics import Scores
from transferkit.model import TransferModel
from transferkit.strategies import Phase
from transferkit.workflows.compression import Codec, apply_change, digest, send_change
from transferkit.workflows.federated.client import (
    get_arrays,
    payload_bytes,
    set_arrays,
    trainable_names,
    wire_problem,
)  # fmt: skip
from transferkit.workflows.federated.flower import (
    ClientManager,
    ClientProxy,
    FedAdam,
    FedAvg,
    FedProx,
    FitIns,
    FitRes,
    Parameters,
    Strategy,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from transferkit.workflows.federated_config import FederatedConfig

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
        self.codec = Codec.parse(cfg.compress)
        self._held: dict[str, np.ndarray] = {}  # a compressed link's weights, as every client holds them
        self._rng = np.random.default_rng(cfg.base.seed)

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
        extra: dict[str, Any] = {}
        if self.codec.active:  # the change since the last round, as every client holds that one
            weights = dict(zip(self._names, parameters_to_ndarrays(parameters), strict=True))
            parameters = ndarrays_to_parameters(send_change(self.codec, self._names, self._held, weights, self._rng))
            extra = {"compress": self.codec.name, "digest": digest([self._held[n] for n in self._names])}
        instructions = self._inner.configure_fit(server_round, parameters, client_manager)
        phase = self.phases[phase_index]
        scale = self.cfg.lr_scale(server_round)
        local = Phase(
            phase.name, self.cfg.local_epochs, phase.unfreeze, phase.head_lr * scale, phase.backbone_lr * scale
        )
        extra |= {
            "fit_config": json.dumps(self.cfg.base.to_dict()),
            "classes": json.dumps(self.classes),
            "phase": json.dumps(asdict(local)),
            "round": server_round,
        }
        for _, ins in instructions:
            ins.config.update(extra)
        self._pending = {"down": sum(payload_bytes(ins.parameters) for _, ins in instructions)}
        return instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        assert self._inner is not None
        up = sum(payload_bytes(res.parameters) for _, res in results)
        results, refused = self._well_formed(results)
        failures = [*failures, *refused]
        self._pending |= {"up": up, "ok": len(results), "failed": len(failures)}
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

    def _well_formed(self, results: list[tuple[ClientProxy, FitRes]]) -> tuple[list[Any], list[Any]]:
        """A client's reply is untrusted too: the weights it sends must have the travelling
        tensors' count and shapes and be finite, its item count a positive whole number.
        A reply that is not counts as a failed client, never as a crash of the server."""
        good, bad = [], []
        for proxy, res in results:
            try:
                arrays = parameters_to_ndarrays(res.parameters)
                if self.codec.active:  # a change from what the client holds: the weights it trained
                    now = apply_change(self.codec, self._held, self._names, arrays)
                    arrays = [now[n] for n in self._names]
                    res = replace(res, parameters=ndarrays_to_parameters(arrays))
                ok = wire_problem(self.model, self._names, arrays) is None and (
                    isinstance(res.num_examples, int) and 0 < res.num_examples < 10**9
                )
            except Exception:  # a change that does not decode (WireError), bytes Flower cannot deserialise
                ok = False
            if ok:
                good.append((proxy, res))
            else:
                bad.append((proxy, res))
                if self.console:
                    self.console.print("  [yellow]a client's reply did not fit the model (shapes, values); ignored[/]")
        return good, bad

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
        arrays = get_arrays(self.model, self._names)
        for name, array in zip(self._names, arrays, strict=True):  # clients build these weights themselves
            self._held.setdefault(name, array.copy())
        initial = ndarrays_to_parameters(arrays)
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
