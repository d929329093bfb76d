"""Federated commands: a simulation on this machine, a real server, a real client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from transferkit import config
from transferkit.cli.app import app, existing, fit_option, out
from transferkit.errors import ConfigError

if TYPE_CHECKING:
    from transferkit.workflows.federated import FederatedConfig

Opt = typer.Option


# Options shared by `federated` and `federated-server`.
Clients = Annotated[int, Opt(help="Number of clients (data owners).")]
Rounds = Annotated[int, Opt(help="Federated rounds.")]
LocalEpochs = Annotated[int, Opt(help="Epochs each client trains per round.")]
FedStrategy = Annotated[str, Opt(help="feature-extraction, partial, two-phase or full.")]
Aggregator = Annotated[str, Opt(help="fedavg, fedprox or fedadam (Flower's own strategies).")]
ProximalMu = Annotated[float, Opt(help="FedProx: weight of the pull towards the global weights.")]
ServerLr = Annotated[float, Opt(help="FedAdam: the server's step size.")]
MinClients = Annotated[int | None, Opt(help="Fewest replies a round needs [default: all clients].")]
HeadRounds = Annotated[int | None, Opt(help="two-phase: rounds of the head phase [default: rounds // 2].")]
FedConfigFile = Annotated[Path | None, Opt("--config", help="YAML of `fit` options every client trains with.")]
FedBackbone = Annotated[str | None, fit_option("backbone")]
FedImageSize = Annotated[int | None, Opt(help="Input side in pixels [default: the backbone's own].")]
FedBatch = Annotated[int | None, Opt(help="Batch size on each client [default: 32].")]
FedUnfreeze = Annotated[int | None, Opt(help="partial / two-phase: top layer groups to unfreeze.")]
FedLr = Annotated[float | None, Opt(help="Head learning rate [default: 1e-3].")]
FedBackboneLr = Annotated[float | None, Opt(help="Backbone learning rate [default: 1e-4].")]
FedAugment = Annotated[bool, Opt("--augment/--no-augment", help="Training augmentation on the clients.")]
FedSeed = Annotated[int | None, Opt(help="Random seed; also seeds the split and the partitions [default: 0].")]


def _federated_config(
    config_file: Path | None, clients: int, rounds: int, local_epochs: int, partition: str, alpha: float,
    aggregator: str, proximal_mu: float, server_lr: float, min_clients: int | None, head_rounds: int | None,
    **fit_options: object,
) -> FederatedConfig:  # fmt: skip
    from transferkit.workflows.federated import FederatedConfig

    base = config.resolve(config_file, **fit_options)
    return FederatedConfig(
        clients=clients, rounds=rounds, local_epochs=local_epochs, partition=partition, alpha=alpha,
        aggregator=aggregator, proximal_mu=proximal_mu, server_lr=server_lr, min_clients=min_clients,
        head_rounds=head_rounds, base=base,
    )  # fmt: skip


@app.command()
def federated(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `fit`; its training split is dealt to clients.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Report and models go here.")] = Path("runs/federated"),
    partition: Annotated[
        list[str] | None, Opt(help="iid or dirichlet; repeat to run both [default: iid and dirichlet].")
    ] = None,
    alpha: Annotated[float, Opt(help="Dirichlet concentration: smaller = more label skew.")] = 0.5,
    baseline: Annotated[
        bool, Opt("--baseline/--no-baseline", help="Also `fit` on the pooled data with the same budget.")
    ] = True,
    clients: Clients = 4,
    rounds: Rounds = 6,
    local_epochs: LocalEpochs = 1,
    strategy: FedStrategy = "feature-extraction",
    aggregator: Aggregator = "fedavg",
    proximal_mu: ProximalMu = 0.01,
    server_lr: ServerLr = 0.01,
    min_clients: MinClients = None,
    head_rounds: HeadRounds = None,
    config_file: FedConfigFile = None,
    backbone: FedBackbone = None,
    image_size: FedImageSize = None,
    batch_size: FedBatch = None,
    unfreeze: FedUnfreeze = None,
    lr: FedLr = None,
    backbone_lr: FedBackboneLr = None,
    augment: FedAugment = False,
    seed: FedSeed = None,
) -> None:
    """Simulate federated fine-tuning with Flower on this machine; report it against centralised training."""
    from transferkit.workflows.federated import federated_report, replace_config

    schemes = partition or ["iid", "dirichlet"]
    cfg = _federated_config(
        config_file, clients, rounds, local_epochs, schemes[0], alpha, aggregator, proximal_mu, server_lr,
        min_clients, head_rounds, strategy=strategy, backbone=backbone, image_size=image_size,
        batch_size=batch_size, unfreeze=unfreeze, lr=lr, backbone_lr=backbone_lr, augment=augment, seed=seed,
    )  # fmt: skip
    for scheme in schemes:  # every name checked before the first simulation starts
        replace_config(cfg, partition=scheme)
    federated_report(data, cfg, schemes, baseline=baseline, out=out_dir, console=out)
    out.print(f"report: {out_dir / 'report.md'}, plot: {out_dir / 'accuracy.png'}", highlight=False)


@app.command("federated-server")
def federated_server(
    data: Annotated[Path, typer.Argument(help="Image folder whose validation split scores each round.")],
    address: Annotated[str, Opt(help="host:port to listen on.")] = "127.0.0.1:8080",
    out_dir: Annotated[Path, Opt("--out", "-o", help="Where the global model is saved.")] = Path("runs/fed-server"),
    round_timeout: Annotated[float | None, Opt(help="Seconds a round waits for replies [default: no limit].")] = None,
    clients: Clients = 2,
    rounds: Rounds = 3,
    local_epochs: LocalEpochs = 1,
    strategy: FedStrategy = "feature-extraction",
    aggregator: Aggregator = "fedavg",
    proximal_mu: ProximalMu = 0.01,
    server_lr: ServerLr = 0.01,
    min_clients: MinClients = None,
    head_rounds: HeadRounds = None,
    config_file: FedConfigFile = None,
    backbone: FedBackbone = None,
    image_size: FedImageSize = None,
    batch_size: FedBatch = None,
    unfreeze: FedUnfreeze = None,
    lr: FedLr = None,
    backbone_lr: FedBackboneLr = None,
    augment: FedAugment = False,
    seed: FedSeed = None,
) -> None:
    """Run a real Flower server: clients started with `federated-client` join it over the network."""
    from transferkit.workflows.federated import serve

    cfg = _federated_config(
        config_file, clients, rounds, local_epochs, "iid", 0.5, aggregator, proximal_mu, server_lr,
        min_clients, head_rounds, strategy=strategy, backbone=backbone, image_size=image_size,
        batch_size=batch_size, unfreeze=unfreeze, lr=lr, backbone_lr=backbone_lr, augment=augment, seed=seed,
    )  # fmt: skip
    result = serve(data, cfg, address, out=out_dir, console=out, round_timeout=round_timeout)
    out.print(
        f"{len(result.rounds)} rounds; sent {result.bytes_total / 1e6:.2f} MB "
        f"(whole model both ways: {result.full_model_bytes_total / 1e6:.2f} MB); model saved to {out_dir}",
        highlight=False,
    )


@app.command("federated-client")
def federated_client(
    data: Annotated[Path, typer.Argument(help="This client's image folder (all of it trains).")],
    server: Annotated[str, Opt(help="The server's host:port.")] = "127.0.0.1:8080",
    part: Annotated[
        str | None, Opt(help="Demo on one machine: train on part I of N of DATA, written I/N (0-based).")
    ] = None,
    partition: Annotated[str, Opt(help="With --part: iid or dirichlet.")] = "iid",
    alpha: Annotated[float, Opt(help="With --part dirichlet: the concentration.")] = 0.5,
    seed: Annotated[int, Opt(help="Seed of --part (match the server's).")] = 0,
    init_weights: Annotated[
        Path | None, Opt(help="This client's own copy of the starting weights, when the server starts from a file.")
    ] = None,
) -> None:
    """Join a `federated-server` and train on this client's images whenever it asks."""
    from transferkit.workflows.federated import join

    weights = str(existing(init_weights, "weights file")) if init_weights is not None else None
    join(data, server, part=_part(part), partition_scheme=partition, alpha=alpha, seed=seed, init_weights=weights)


def _part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError("part", text, "write it as I/N, e.g. 0/2 for the first of two parts") from None
    return i, n
