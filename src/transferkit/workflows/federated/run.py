"""Running a federation: a simulation, a real server, a real client; saving; against centralised."""

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit.config import FitConfig
from transferkit.errors import ConfigError, TransferkitError
from transferkit.features import extract_features, feature_batches, feature_settings
from transferkit.loaders import sample_loader
from transferkit.metrics import Scores
from transferkit.modalities import DatasetSplits, get_modality
from transferkit.modalities.common import first_label
from transferkit.model import TransferModel, save_model
from transferkit.ownership import check_output_dir, claim_output_dir, is_legacy_run, mark, output_lock
from transferkit.paths import atomic_write_text, default_cache_dir
from transferkit.pipeline import SingleLabel, fit_to_data, load_data, prepare_model
from transferkit.reports.federated import plot_rounds, report_markdown
from transferkit.runtime import seed_everything
from transferkit.scoring import evaluate
from transferkit.strategies import Phase, get_strategy
from transferkit.workflows.federated.client import StandaloneClient, TransferClient, payload_bytes
from transferkit.workflows.federated.flower import ServerConfig, ndarrays_to_parameters
from transferkit.workflows.federated.server import PhasedStrategy, RoundRecord
from transferkit.workflows.federated_config import PARTITIONS, FederatedConfig, partition, replace_config

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
        self.model, _ = prepare_model(base, get_strategy(base.strategy), SingleLabel(len(splits.classes)))
        self.modality = get_modality(splits.modality)
        self.pre = self.modality.preprocessing(self.model.backbone, base)
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
                settings = feature_settings(str(base.backbone), self.pre)
                clean = self.modality.transform(self.pre, is_training=False)
                features = extract_features(
                    model.backbone, self.modality, self.splits.val, [clean], batch_size=base.batch_size,
                    device=device, cache_dir=default_cache_dir() if base.cache else None, settings=settings,
                )  # fmt: skip
                self._val_features = feature_batches(features, base.batch_size)
            return evaluate(model.head, self._val_features, n, device)
        clean = self.modality.transform(self.pre, is_training=False)
        return evaluate(model, sample_loader(self.modality, self.splits.val, clean, base, device), n, device)

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

    if out is not None:
        check_output_dir(
            Path(out), "run", "--out", legacy=is_legacy_run
        )  # before any compute: never a folder of the user's
    base = cfg.base
    splits = data if isinstance(data, DatasetSplits) else load_data(data, base)
    cfg = replace_config(cfg, base=fit_to_data(base, splits))
    base = cfg.base
    labels = [first_label(s) for s in splits.train]
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
        # context.state outlives the client object: it keeps a compressed link's weights between rounds
        return TransferClient(shards[cid], classes, cid, cfg.base.init_weights, context.state).to_client()

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

    if out is not None:
        check_output_dir(Path(out), "run", "--out", legacy=is_legacy_run)
    base = cfg.base
    splits = load_data(data, base)
    cfg = replace_config(cfg, base=fit_to_data(base, splits))
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
    init_weights: str | None = None,
) -> None:
    """A real Flower client: trains on all of ``data`` (or on part ``i`` of ``n`` of it, for a
    demo on one machine) whenever the server at ``address`` asks. The server scores centrally,
    so no image is held back for a validation nobody would read."""
    from flwr.compat.client.app import start_client

    splits = load_data(data, FitConfig(val_fraction=val_fraction, seed=seed))
    samples = [*splits.train, *splits.val, *splits.test]
    client_id = 0
    if part is not None:
        client_id, n = part
        if not 0 <= client_id < n:
            raise ConfigError("part", f"{client_id}/{n}", f"the part number must be 0..{n - 1}")
        samples = [
            samples[i]
            for i in partition([first_label(s) for s in samples], n, partition_scheme, alpha, seed)[client_id]
        ]
    _quiet_flower()
    client = StandaloneClient(samples, splits.classes, client_id, init_weights)
    start_client(server_address=address, client=client.to_client())


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
    claim_output_dir(out, "run", "--out", legacy=is_legacy_run)  # checked again: it may have changed meanwhile
    with output_lock(out):
        save_model(out, server.model, card)
        atomic_write_text(out / "rounds.json", json.dumps(result.summary(), indent=2))
    return out


# --------------------------------------------------------------------------- federated vs centralised


def centralised(splits: DatasetSplits, cfg: FederatedConfig) -> dict[str, float]:
    """`fit` on the pooled training images with the same strategy and epoch budget."""
    from transferkit.api import fit  # the workflow's baseline; api is the layer below

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
    check_output_dir(out, "federated comparison", "--out", legacy=lambda p: (p / "federated.json").is_file())
    base = cfg.base
    splits = load_data(data, base)
    cfg = replace_config(cfg, base=fit_to_data(base, splits))
    mark(out, "federated comparison")
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
