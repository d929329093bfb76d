"""Federated commands: a simulation on this machine; a real server and client on Flower's deployment engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from transferkit import config
from transferkit.cli.app import app, existing, out
from transferkit.cli.options import config_options, given
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.workflows.federated.config import BASE_DEFAULTS, FederatedConfig

Opt = typer.Option


FedConfigFile = Annotated[Path | None, Opt("--config", help="YAML of `fit` options every client trains with.")]
# `fit` options the federation replaces (rounds for epochs, head rounds for head epochs), and the
# text, audio, LoRA and logging options of runs with an output folder of their own: clients have none.
FIT_SKIPS = (
    "epochs", "head_epochs", "modality", "text_column", "label_column", "max_length", "clip_seconds", "lora_r",
    "lora_alpha", "log", "clip_grad", "ema",
)  # fmt: skip


SERVER_DEFAULTS = {"clients": 2, "rounds": 3}  # a first real federation: two sites, three rounds

# What a client decides itself: the demo split of one machine's data, and its own copy of the
# starting weights when the server starts from a file (every other option arrives with each round).
CLIENT_FIT = ("seed", "init_weights")


def _federated_config(
    config_file: Path | None,
    options: dict[str, Any] | None,
    fit_options: dict[str, Any] | None,
    defaults: dict[str, Any] | None = None,
    **fixed: Any,
) -> FederatedConfig:
    """Options given here, then the YAML file, then the command's ``defaults``, then the config's."""
    own, rest = config.split_yaml(config_file, FederatedConfig)  # one YAML file holds both kinds of option
    base = config.resolve(None, defaults={**BASE_DEFAULTS, **rest}, **(fit_options or {}))
    chosen = {**(defaults or {}), **own, **given(options), **given(fixed)}
    return FederatedConfig(**chosen, base=base)


@app.command()
@config_options(FitConfig, exclude=FIT_SKIPS, into="fit_options", defaults=BASE_DEFAULTS)
@config_options(FederatedConfig, exclude=("partition",))
def federated(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `fit`; its training split is dealt to clients.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Report and models go here.")] = Path("runs/federated"),
    partition: Annotated[
        list[str] | None, Opt(help="iid or dirichlet; repeat to run both [default: iid and dirichlet].")
    ] = None,
    baseline: Annotated[
        bool, Opt("--baseline/--no-baseline", help="Also `fit` on the pooled data with the same budget.")
    ] = True,
    config_file: FedConfigFile = None,
    options: dict[str, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
) -> None:
    """Simulate federated fine-tuning with Flower on this machine; report it against centralised training."""
    from transferkit.workflows.federated import federated_report, replace_config

    schemes = partition or ["iid", "dirichlet"]
    cfg = _federated_config(config_file, options, fit_options, partition=schemes[0])
    for scheme in schemes:  # every name checked before the first simulation starts
        replace_config(cfg, partition=scheme)
    federated_report(data, cfg, schemes, baseline=baseline, out=out_dir, console=out)
    out.print(f"report: {out_dir / 'report.md'}, plot: {out_dir / 'accuracy.png'}", highlight=False, markup=False)


@app.command("federated-server")
@config_options(FitConfig, exclude=FIT_SKIPS, into="fit_options", defaults=BASE_DEFAULTS)
@config_options(FederatedConfig, exclude=("partition", "alpha"), defaults=SERVER_DEFAULTS)
def federated_server(
    data: Annotated[Path, typer.Argument(help="Image folder whose validation split scores each round.")],
    address: Annotated[str, Opt(help="host:port the SuperLink listens on.")] = "127.0.0.1:9092",
    out_dir: Annotated[Path, Opt("--out", "-o", help="Where the global model is saved.")] = Path("runs/fed-server"),
    round_timeout: Annotated[
        float | None, Opt(help="Seconds a round waits for replies [default: no limit].", min=1, max=604_800)
    ] = None,
    write_app: Annotated[
        Path | None,
        Opt(
            help="Only write the Flower app (data, --out and settings in its run config) to this new folder, "
            "for `flwr run DIR SUPERLINK` on a SuperLink you started."
        ),
    ] = None,
    config_file: FedConfigFile = None,
    options: dict[str, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
) -> None:
    """Start a Flower SuperLink and run the federation on it: clients started with
    `federated-client` (Flower SuperNodes) join over the network. Flower's own commands do the
    same step by step (docs/federated.md)."""
    from transferkit.workflows.federated import app_for, serve

    cfg = _federated_config(config_file, options, fit_options, defaults=SERVER_DEFAULTS)
    if write_app is not None:
        folder = app_for(data, cfg, write_app, out=out_dir, round_timeout=round_timeout)
        out.print(
            f"Flower app written to {folder}: flwr run {folder} <superlink> --stream", highlight=False, markup=False
        )
        return
    summary = serve(data, cfg, address, out=out_dir, console=out, round_timeout=round_timeout)
    out.print(
        f"{len(summary['rounds'])} rounds; sent {summary['bytes_total'] / 1e6:.2f} MB "
        f"(whole model both ways: {summary['full_model_bytes_total'] / 1e6:.2f} MB); model saved to {out_dir}",
        highlight=False,
    )


@app.command("federated-client")
@config_options(FitConfig, only=CLIENT_FIT, into="fit_options")
@config_options(FederatedConfig, only=("partition", "alpha"))
def federated_client(
    data: Annotated[Path, typer.Argument(help="This client's image folder (all of it trains).")],
    server: Annotated[str, Opt(help="The server's (SuperLink's) host:port.")] = "127.0.0.1:9092",
    part: Annotated[
        str | None, Opt(help="Demo on one machine: train on part I of N of DATA, written I/N (0-based).")
    ] = None,
    allow_download: Annotated[
        bool,
        Opt(
            "--allow-download/--offline-only",
            help="Let the server name any model, downloaded here (default: only backbones held offline: "
            "registered ones, or --init-weights).",
        ),
    ] = False,
    max_memory: Annotated[
        float | None,
        Opt(
            min=0.1,
            max=1e5,
            help="GiB a server's round may need here; a bigger round is refused "
            "[default: half of this machine's memory]",
        ),
    ] = None,
    options: dict[str, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
) -> None:
    """Join a `federated-server` as a Flower SuperNode and train on this client's images in every
    run it is sent, until stopped (with --part: on the part --partition, --alpha and --seed deal
    it, as the server's simulation would)."""
    from transferkit.workflows.federated import join

    own, fit_given = given(options), given(fit_options)
    init_weights = fit_given.get("init_weights")
    weights = str(existing(Path(init_weights), "weights file")) if init_weights is not None else None
    code = join(
        data, server, part=_part(part), partition_scheme=own.get("partition", "iid"), alpha=own.get("alpha", 0.5),
        seed=fit_given.get("seed", 0), init_weights=weights, allow_download=allow_download,
        max_memory=None if max_memory is None else int(max_memory * 2**30),
    )  # fmt: skip
    if code not in (0, 130):  # 130: stopped with Ctrl-C, as a SuperNode is
        raise typer.Exit(code)


def _part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError("part", text, "write it as I/N, e.g. 0/2 for the first of two parts") from None
    return i, n
