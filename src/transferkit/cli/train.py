"""Commands that train: ``fit``, ``compare`` and ``fit-multitask``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from transferkit import config
from transferkit.cli.app import Json, Quiet, app, emit_json, existing, fit_option, flag, names, out, speaker
from transferkit.errors import ConfigError, TransferkitError
from transferkit.launch import launched_by_torchrun
from transferkit.workflows.compare_config import DEFAULT_STRATEGIES, CompareConfig

Opt = typer.Option
ConfigFile = Annotated[Path | None, Opt("--config", help="YAML file of options; options given here override it.")]
Data = Annotated[
    Path, typer.Argument(help="Class folders (DATA/<class>/… or DATA/train|val[|test]/<class>/…) or a text table.")
]
Resume = Annotated[bool, Opt("--resume", help="Continue the interrupted run in --out from its last finished epoch.")]


@app.command()
def fit(
    data: Data,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory to write the model to.")] = Path("runs/latest"),
    config_file: ConfigFile = None,
    backbone: Annotated[str | None, fit_option("backbone")] = None,
    strategy: Annotated[str | None, fit_option("strategy")] = None,
    epochs: Annotated[int | None, fit_option("epochs")] = None,
    head_epochs: Annotated[int | None, fit_option("head_epochs")] = None,
    unfreeze: Annotated[int | None, fit_option("unfreeze")] = None,
    lr: Annotated[
        str | None, Opt(help="Head learning rate [default: 1e-3]; auto: run `lr-find` first and use its suggestions")
    ] = None,
    backbone_lr: Annotated[float | None, fit_option("backbone_lr")] = None,
    batch_size: Annotated[int | None, fit_option("batch_size")] = None,
    image_size: Annotated[str | None, fit_option("image_size")] = None,
    augment: Annotated[bool | None, flag("augment")] = None,
    hflip: Annotated[bool | None, flag("hflip")] = None,
    hidden: Annotated[int | None, fit_option("hidden")] = None,
    dropout: Annotated[float | None, fit_option("dropout")] = None,
    label_smoothing: Annotated[float | None, fit_option("label_smoothing")] = None,
    class_weights: Annotated[bool | None, flag("class_weights")] = None,
    bn_stats: Annotated[str | None, fit_option("bn_stats")] = None,
    patience: Annotated[int | None, fit_option("patience")] = None,
    val_fraction: Annotated[float | None, fit_option("val_fraction")] = None,
    seed: Annotated[int | None, fit_option("seed")] = None,
    device: Annotated[str | None, fit_option("device")] = None,
    num_workers: Annotated[int | None, fit_option("num_workers")] = None,
    min_steps: Annotated[int | None, fit_option("min_steps")] = None,
    layer_decay: Annotated[float | None, fit_option("layer_decay")] = None,
    warmup: Annotated[float | None, fit_option("warmup")] = None,
    compile_model: Annotated[bool | None, fit_option("compile", "--compile/--no-compile")] = None,
    cache: Annotated[bool | None, flag("cache")] = None,
    probe_init: Annotated[bool | None, flag("probe_init")] = None,
    cache_views: Annotated[int | None, fit_option("cache_views")] = None,
    strict: Annotated[bool | None, fit_option("strict", "--strict")] = None,
    init_weights: Annotated[str | None, fit_option("init_weights")] = None,
    trust_pickle: Annotated[bool | None, fit_option("trust_pickle", "--trust-pickle")] = None,
    resume: Resume = False,
    nproc: Annotated[
        int, Opt(help="Processes to train with (torchrun, DDP); --batch-size stays the global batch.", min=1)
    ] = 1,
    modality: Annotated[str | None, fit_option("modality")] = None,
    text_column: Annotated[str | None, fit_option("text_column")] = None,
    label_column: Annotated[str | None, fit_option("label_column")] = None,
    max_length: Annotated[int | None, fit_option("max_length")] = None,
    clip_seconds: Annotated[float | None, fit_option("clip_seconds")] = None,
    lora_r: Annotated[int | None, fit_option("lora_r")] = None,
    lora_alpha: Annotated[float | None, fit_option("lora_alpha")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train one strategy on DATA and save the model to --out (checkpointed every epoch)."""
    options = dict(locals())
    for key in ("data", "out_dir", "config_file", "resume", "nproc", "compile_model", "as_json", "quiet"):
        options.pop(key)
    options["lr"] = _learning_rate(lr, auto_allowed=not resume and nproc == 1)
    cfg = config.resolve(config_file, compile=compile_model, **options)
    existing(data)
    if lr == "auto":
        cfg = _auto_learning_rates(data, cfg, speaker(as_json, quiet))
    if nproc > 1 and not launched_by_torchrun():
        if cfg.batch_size % nproc:  # caught here, before K processes start and fail alike
            raise ConfigError(
                "batch_size", cfg.batch_size, f"must be a multiple of --nproc {nproc} (it is the global batch)"
            )
        from transferkit.ownership import check_output_dir, is_legacy_run

        check_output_dir(out_dir, "run", "--out", legacy=is_legacy_run)  # one line here, not K ranks failing
        raise typer.Exit(_torchrun(nproc))
    from transferkit import api, distributed  # torch: loaded once the options are known to be valid

    result = api.fit(data, cfg, out=out_dir, resume=resume, console=speaker(as_json, quiet))
    distributed.teardown()
    if not distributed.is_main():
        return
    if as_json:
        emit_json(api.result_summary(result))
    elif quiet:
        api.print_result(out, result)


def _learning_rate(value: str | None, auto_allowed: bool) -> float | None:
    """--lr as a number; None for the default and for ``auto`` (decided by the sweep)."""
    if value is None or (value == "auto" and auto_allowed):
        return None
    if value == "auto":
        raise ConfigError("lr", value, "cannot be auto with --resume or --nproc; give the rates the sweep chose")
    try:
        return float(value)
    except ValueError:
        raise ConfigError("lr", value, "must be a number, or auto") from None


def _auto_learning_rates(data: Path, cfg: config.FitConfig, console: Any) -> config.FitConfig:
    from transferkit.workflows.lr_find import lr_find, suggested_options

    chosen = suggested_options(lr_find(data, cfg, console=console), cfg)
    if console:
        rates = ", ".join(f"{k} {v:.2g}" for k, v in chosen.items()) or "none (the loss never fell); the defaults"
        console.print(f"--lr auto: {rates}")
    return cfg.replace(**chosen)


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
    data: Data,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Comparison directory (re-use it to resume).")] = Path(
        "runs/compare"
    ),
    backbone: Annotated[
        list[str] | None, Opt(help="Backbone to compare; repeat for several [default: the data's default].")
    ] = None,
    strategies: Annotated[str, Opt(help="Comma-separated strategy names.")] = ",".join(DEFAULT_STRATEGIES),
    budget_epochs: Annotated[int, Opt(help="Epoch budget every strategy gets.")] = CompareConfig.budget_epochs,
    seeds: Annotated[int, Opt(help="Seeds per strategy; the spread over them decides ties.")] = CompareConfig.seeds,
    folds: Annotated[
        int, Opt(help="K-fold cross-validation: every item validated once (small data); 1: one held-out split.")
    ] = CompareConfig.folds,
    time_budget: Annotated[float | None, Opt(help="Seconds per run the recommendation may cost.")] = None,
    domain: Annotated[
        str, Opt(help="auto, similar or different (to the pre-training data), for the prior.")
    ] = CompareConfig.domain,
    best_out: Annotated[Path | None, Opt(help="Save the recommended model here, as `fit` would.")] = None,
    config_file: ConfigFile = None,
    image_size: Annotated[str | None, fit_option("image_size")] = None,
    batch_size: Annotated[int | None, fit_option("batch_size")] = None,
    augment: Annotated[bool | None, flag("augment")] = None,
    seed: Annotated[int | None, fit_option("seed")] = None,
    device: Annotated[str | None, fit_option("device")] = None,
    lr: Annotated[
        str | None, Opt(help="Head learning rate [default: 1e-3]; auto: `lr-find` per strategy first, its rates used")
    ] = None,
    probe_init: Annotated[bool | None, flag("probe_init")] = None,
    num_workers: Annotated[int | None, fit_option("num_workers")] = None,
    min_steps: Annotated[int | None, fit_option("min_steps")] = None,
    layer_decay: Annotated[float | None, fit_option("layer_decay")] = None,
    modality: Annotated[str | None, fit_option("modality")] = None,
    text_column: Annotated[str | None, fit_option("text_column")] = None,
    label_column: Annotated[str | None, fit_option("label_column")] = None,
    max_length: Annotated[int | None, fit_option("max_length")] = None,
    clip_seconds: Annotated[float | None, fit_option("clip_seconds")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Run strategies side by side under one budget; write a report and a recommendation."""
    base = config.resolve(
        config_file, image_size=image_size, batch_size=batch_size, augment=augment, seed=seed, device=device,
        lr=_learning_rate(lr, auto_allowed=True), modality=modality, text_column=text_column,
        label_column=label_column, max_length=max_length,
        clip_seconds=clip_seconds, probe_init=probe_init, num_workers=num_workers, min_steps=min_steps,
        layer_decay=layer_decay,
    )  # fmt: skip
    cfg = CompareConfig(
        backbones=tuple(backbone or ()), strategies=names(strategies), budget_epochs=budget_epochs, seeds=seeds,
        folds=folds, lr_auto=lr == "auto", time_budget=time_budget, domain=domain, base=base,
    )  # fmt: skip
    existing(data)
    from transferkit.workflows.compare import compare as run_compare
    from transferkit.workflows.compare import print_summary

    comparison = run_compare(data, cfg, out=out_dir, best_out=best_out, console=speaker(as_json, quiet))
    if as_json:
        emit_json({"out": str(out_dir), **comparison.to_dict()})
    elif quiet:
        print_summary(out, comparison, out_dir)


@app.command("fit-multitask")
def fit_multitask_cmd(
    labels_csv: Annotated[Path, typer.Argument(help="CSV: a file path column and one label column per task.")],
    images: Annotated[Path, Opt(help="Folder the CSV's paths are relative to.")],
    tasks: Annotated[str, Opt(help="Comma-separated task columns; an empty cell means unlabelled.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory.")] = Path("runs/multitask"),
    image_column: Annotated[str, Opt(help="Column holding the file paths.")] = "image",
    weighting: Annotated[str, Opt(help="Loss weighting: fixed or uncertainty (learned, Kendall et al. 2018).")] = (
        "fixed"
    ),
    task_weights: Annotated[str | None, Opt(help="With fixed weighting: one weight per task, e.g. 1,0.5.")] = None,
    compare_single: Annotated[
        bool, Opt("--compare-single", help="Also train one model per task and print the comparison.")
    ] = False,
    seeds: Annotated[int, Opt(help="With --compare-single: seeds to average over.")] = 1,
    config_file: ConfigFile = None,
    strategy: Annotated[str | None, fit_option("strategy")] = None,
    backbone: Annotated[str | None, fit_option("backbone")] = None,
    epochs: Annotated[int | None, fit_option("epochs")] = None,
    image_size: Annotated[str | None, fit_option("image_size")] = None,
    batch_size: Annotated[int | None, fit_option("batch_size")] = None,
    augment: Annotated[bool, Opt("--augment/--no-augment", help="Training augmentation.")] = False,
    seed: Annotated[int | None, fit_option("seed")] = None,
    device: Annotated[str | None, fit_option("device")] = None,
    resume: Resume = False,
) -> None:
    """Train several classification tasks on one shared backbone (missing labels are masked)."""
    existing(labels_csv)
    existing(images)
    from transferkit.workflows.multitask import MultiTaskConfig, fit_multitask, load_multitask_csv
    from transferkit.workflows.multitask_versus import print_versus, versus_single_task

    base = config.resolve(
        config_file, strategy=strategy, backbone=backbone, epochs=epochs, image_size=image_size,
        batch_size=batch_size, augment=augment, seed=seed, device=device,
    )  # fmt: skip
    cfg = MultiTaskConfig(
        tasks=names(tasks), image_column=image_column, weighting=weighting,
        task_weights=_weights(task_weights), base=base,
    )  # fmt: skip
    data = load_multitask_csv(labels_csv, images, cfg, base.val_fraction, base.seed)
    out.print(f"{len(data.train)} train / {len(data.val)} val items; tasks: " + ", ".join(
        f"{t} ({len(data.classes[t])} classes)" for t in data.tasks), highlight=False)  # fmt: skip
    if compare_single:
        result = versus_single_task(data, cfg, console=out, out=out_dir, seeds=seeds)
        from transferkit.paths import atomic_write_text

        atomic_write_text(out_dir / "versus_single_task.json", json.dumps(result, indent=2))  # into the run of ours
        print_versus(out, result)
        out.print(f"model saved to {out_dir}; numbers: {out_dir / 'versus_single_task.json'}", highlight=False)
    else:
        fit_multitask(data, cfg, out=out_dir, resume=resume, console=out)
        out.print(f"saved to {out_dir}", highlight=False)


def _weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(w) for w in names(text))
    except ValueError as exc:
        raise TransferkitError(f"--task-weights={text!r} is invalid: give numbers separated by commas") from exc
