"""Commands that train: ``fit``, ``compare`` and ``fit-multitask``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from transferkit import config
from transferkit.cli.app import Json, Quiet, app, emit_json, existing, out, speaker
from transferkit.cli.options import config_options, given
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.launch import launched_by_torchrun
from transferkit.workflows.compare_config import CompareConfig
from transferkit.workflows.multitask_config import MultiTaskConfig

Opt = typer.Option
ConfigFile = Annotated[Path | None, Opt("--config", help="YAML file of options; options given here override it.")]
Data = Annotated[
    Path, typer.Argument(help="Class folders (DATA/<class>/… or DATA/train|val[|test]/<class>/…) or a text table.")
]
Resume = Annotated[bool, Opt("--resume", help="Continue the interrupted run in --out from its last finished epoch.")]
LearningRate = Annotated[
    str | None, Opt(help="Head learning rate [default: 1e-3]; auto: run `lr-find` first and use its suggestions")
]
# Options a command's own config holds instead of the run's: compare's --backbone (several),
# --strategies and --budget-epochs; fit-multitask trains images only, one strategy per task set.
COMPARE_OWNS = ("backbone", "strategy", "epochs")
MULTITASK_SKIPS = ("modality", "text_column", "label_column", "max_length", "clip_seconds", "lora_r", "lora_alpha")


@app.command()
@config_options(FitConfig)
def fit(
    data: Data,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory to write the model to.")] = Path("runs/latest"),
    config_file: ConfigFile = None,
    lr: LearningRate = None,
    resume: Resume = False,
    nproc: Annotated[
        int, Opt(help="Processes to train with (torchrun, DDP); --batch-size stays the global batch.", min=1, max=1_024)
    ] = 1,
    as_json: Json = False,
    quiet: Quiet = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Train one strategy on DATA and save the model to --out (checkpointed every epoch)."""
    lr_value = _learning_rate(lr, auto_allowed=not resume and nproc == 1)
    cfg = config.resolve(config_file, **(options or {}), lr=lr_value)
    existing(data)
    if lr == "auto":
        cfg = _auto_learning_rates(data, cfg, speaker(as_json, quiet))
    if nproc > 1 and not launched_by_torchrun():
        if cfg.batch_size % nproc:  # caught here, before K processes start and fail alike
            raise ConfigError(
                "batch_size", cfg.batch_size, f"must be a multiple of --nproc {nproc} (it is the global batch)"
            )
        from transferkit.ownership import check_output_dir

        check_output_dir(out_dir, "run", "--out")  # one line here, not K ranks failing
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
@config_options(FitConfig, exclude=COMPARE_OWNS, into="fit_options")
@config_options(CompareConfig)
def compare(
    data: Data,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Comparison directory (re-use it to resume).")] = Path(
        "runs/compare"
    ),
    best_out: Annotated[Path | None, Opt(help="Save the recommended model here, as `fit` would.")] = None,
    config_file: ConfigFile = None,
    lr: Annotated[
        str | None, Opt(help="Head learning rate [default: 1e-3]; auto: `lr-find` per strategy first, its rates used")
    ] = None,
    as_json: Json = False,
    quiet: Quiet = False,
    options: dict[str, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
) -> None:
    """Run strategies side by side under one budget; write a report and a recommendation."""
    own, rest = config.split_yaml(config_file, CompareConfig)  # one YAML file holds both kinds of option
    base = config.resolve(None, defaults=rest, **(fit_options or {}), lr=_learning_rate(lr, auto_allowed=True))
    chosen = {**own, **given(options)}
    cfg = CompareConfig(**chosen, lr_auto=lr == "auto", base=base)
    existing(data)
    from transferkit.workflows.compare import compare as run_compare
    from transferkit.workflows.compare import print_summary

    comparison = run_compare(data, cfg, out=out_dir, best_out=best_out, console=speaker(as_json, quiet))
    if as_json:
        emit_json({"out": str(out_dir), **comparison.to_dict()})
    elif quiet:
        print_summary(out, comparison, out_dir)


@app.command("fit-multitask")
@config_options(FitConfig, exclude=MULTITASK_SKIPS)
@config_options(MultiTaskConfig, into="task_options")
def fit_multitask_cmd(
    labels_csv: Annotated[Path, typer.Argument(help="CSV: a file path column and one label column per task.")],
    images: Annotated[Path, Opt(help="Folder the CSV's paths are relative to.")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run directory.")] = Path("runs/multitask"),
    compare_single: Annotated[
        bool, Opt("--compare-single", help="Also train one model per task and print the comparison.")
    ] = False,
    seeds: Annotated[int, Opt(help="With --compare-single: seeds to average over.", min=1, max=100)] = 1,
    config_file: ConfigFile = None,
    resume: Resume = False,
    options: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
) -> None:
    """Train several classification tasks on one shared backbone (missing labels are masked)."""
    existing(labels_csv)
    existing(images)
    from transferkit.ownership import resealed
    from transferkit.workflows.multitask import fit_multitask, load_multitask_csv
    from transferkit.workflows.multitask_versus import print_versus, versus_single_task

    own, rest = config.split_yaml(config_file, MultiTaskConfig)  # one YAML file holds both kinds of option
    base = config.resolve(None, defaults=rest, **(options or {}))
    cfg = MultiTaskConfig.from_values({**own, **given(task_options)}, base)
    data = load_multitask_csv(labels_csv, images, cfg, base.val_fraction, base.seed)
    out.print(f"{len(data.train)} train / {len(data.val)} val items; tasks: " + ", ".join(
        f"{t} ({len(data.classes[t])} classes)" for t in data.tasks), highlight=False)  # fmt: skip
    if compare_single:
        result = versus_single_task(data, cfg, console=out, out=out_dir, seeds=seeds)
        from transferkit.paths import atomic_write_text

        with resealed(out_dir):  # into the run of ours, which stays sealed
            atomic_write_text(out_dir / "versus_single_task.json", json.dumps(result, indent=2))
        print_versus(out, result)
        out.print(
            f"model saved to {out_dir}; numbers: {out_dir / 'versus_single_task.json'}", highlight=False, markup=False
        )
    else:
        fit_multitask(data, cfg, out=out_dir, resume=resume, console=out)
        out.print(f"saved to {out_dir}", highlight=False, markup=False)
