"""Running a federation on this machine (Flower's simulation engine), and against centralised."""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from transferkit.extras import require
from transferkit.modalities import DatasetSplits
from transferkit.modalities.common import first_label
from transferkit.ownership import check_output_dir, claim_output_dir, seal
from transferkit.paths import atomic_write_text
from transferkit.pipeline import fit_to_data, load_data
from transferkit.reports.federated import plot_rounds, report_markdown
from transferkit.strategies import HeadPhase, get_strategy
from transferkit.workflows.federated.apps import simulation_apps
from transferkit.workflows.federated.config import PARTITIONS, FederatedConfig, partition, replace_config
from transferkit.workflows.federated.result import Coordinator, FederatedResult


def simulate(
    data: str | Path | DatasetSplits,
    cfg: FederatedConfig,
    *,
    out: str | Path | None = None,
    console: Console | None = None,
) -> FederatedResult:
    """Flower's simulation engine on this machine: the training split dealt to ``cfg.clients``
    virtual SuperNodes (IID or Dirichlet label skew), scored on the validation split every round.
    The same ServerApp and ClientApp logic a deployment runs (see :mod:`.apps`)."""
    run_simulation = require("flwr.simulation", "federated simulation").run_simulation

    if out is not None:
        check_output_dir(Path(out), "run", "--out")  # before any compute: never a folder of the user's
    base = cfg.base
    splits = data if isinstance(data, DatasetSplits) else load_data(data, base)
    cfg = replace_config(cfg, base=fit_to_data(base, splits))
    base = cfg.base
    labels = [first_label(s) for s in splits.train]
    parts = partition(labels, cfg.clients, cfg.partition, cfg.alpha, base.seed, splits.classes)
    shards = [[splits.train[i] for i in part] for part in parts]
    coordinator = Coordinator(splits, cfg, console)
    if console:
        console.print(
            f"[bold]transferkit federated[/] {cfg.clients} clients ({cfg.partition}"
            + (f", alpha {cfg.alpha}" if cfg.partition == "dirichlet" else "")
            + f"; images per client {[len(s) for s in shards]}), {cfg.rounds} rounds × {cfg.local_epochs} local "
            f"epoch(s), {base.strategy}, {cfg.aggregator}; {len(splits.val)} central validation images",
            highlight=False,
            soft_wrap=True,
        )
    server_app, client_app = simulation_apps(coordinator, shards, splits.classes, base.init_weights)
    quiet_flower()
    backend = {
        "client_resources": {"num_cpus": 1},
        "init_args": {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR},
    }
    run_simulation(server_app, client_app, num_supernodes=cfg.clients, backend_config=backend)
    return coordinator.finish([len(s) for s in shards], out)


def quiet_flower() -> None:
    """Flower logs every message at INFO; transferkit prints one line per round instead.

    ``run_simulation`` is the Python entry point to the same simulation engine ``flwr run``
    drives; Flower marks it deprecated in favour of the CLI, a banner that says nothing to a
    transferkit user (no app bundle to build). Federated evaluation is skipped on purpose:
    the server scores centrally.
    """
    flower = logging.getLogger("flwr")
    flower.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropExpected) for f in flower.filters):
        flower.addFilter(_DropExpected())
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning, no GPU here


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().lower()
        return "deprecated" not in text and "federated evaluation will be skipped" not in text


# --------------------------------------------------------------------------- federated vs centralised


def centralised(splits: DatasetSplits, cfg: FederatedConfig) -> dict[str, float]:
    """`fit` on the pooled training images with the same strategy and epoch budget."""
    from transferkit.api import fit  # the workflow's baseline; api is the layer below

    phases = cfg.phases()
    head = phases[0].epochs * cfg.local_epochs if HeadPhase in get_strategy(cfg.base.strategy).options else None
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
    check_output_dir(out, "federated comparison", "--out")
    base = cfg.base
    splits = load_data(data, base)
    cfg = replace_config(cfg, base=fit_to_data(base, splits))
    claim_output_dir(out, "federated comparison", "--out")
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
    seal(out, "federated comparison")
    if console:
        console.print(report_markdown(report), highlight=False, soft_wrap=True)
    return report
