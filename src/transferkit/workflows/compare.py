"""Every strategy side by side on the user's data: same split, same epoch budget, same seeds.

Each (backbone, strategy, seed) run writes its model and a ``result.json`` into
``OUT/runs/<name>/``; ``result.json`` is written last and atomically, so a run that has one
is finished, and re-running ``compare`` with the same ``--out`` skips it. The summary
(``results.json``, ``results.csv``) and the HTML report are rebuilt from those files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from transferkit.api import fit
from transferkit.backbones import create_backbone
from transferkit.config import FitConfig
from transferkit.errors import TransferkitError
from transferkit.events import Callback
from transferkit.explain.attention import strategy_attention
from transferkit.layers import layer_groups
from transferkit.memory import PeakMemory, activation_sizes, estimate_phase_memory
from transferkit.metrics import accuracy_text
from transferkit.modalities import DatasetSplits, get_modality
from transferkit.ownership import (
    added_since,
    check_output_dir,
    claim_output_dir,
    copy_owned,
    is_owned,
    output_lock,
    owned_kind,
    resealed,
    seal,
    staged_folder,
)
from transferkit.paths import atomic_write_text
from transferkit.pipeline import data_key, fit_to_data, load_data
from transferkit.records import Predictions, RunKey, RunRecord
from transferkit.reports.html import MOST_CONFUSED, write_report
from transferkit.reports.previews import confused, store_previews
from transferkit.runfolder import RunFolder
from transferkit.runtime import resolve_device
from transferkit.schema import MAX_JSON_BYTES, read_json_object
from transferkit.strategies import Phase, get_strategy, with_role
from transferkit.workflows.compare_config import CompareConfig, default_strategies
from transferkit.workflows.folds import fold_splits
from transferkit.workflows.verdict import (
    Recommendation,
    negative_transfer,
    recommend,
    resolution,
    rule_of_thumb,
    summarise,
)

__all__ = ["SIMILAR_SHIFT", "CompareConfig", "compare", "default_strategies"]

LR_AUTO_STEPS = 100  # --lr auto: steps of each range test, as `lr-find`'s default
SIMILAR_SHIFT = 0.40  # domain shift (image: BatchNorm statistics) below which data count as pre-training-like


def run_and_record(
    splits: DatasetSplits, cfg: FitConfig, run_dir: Path, console: Console | None, fold: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunRecord:  # fmt: skip
    """One run of a comparison (or of ``auto``'s search) into ``run_dir``, and its record,
    written last as ``result.json``: a folder that has one holds a finished run."""
    device = resolve_device(cfg.device)
    with PeakMemory(device) as peak:
        resume = (run_dir / RunFolder.CHECKPOINT).is_file()  # a run killed mid-way: continue it, not start over
        result = fit(splits, cfg, out=run_dir, resume=resume, console=console, callbacks=callbacks)
    trainable = max(p["trainable_params"] for p in result.phases)
    total = sum(p.numel() for p in result.model.model.parameters())
    epochs_run = sum(p["epochs_run"] for p in result.phases) or 1  # a linear probe sees each image once
    scores = result.val_scores
    record = RunRecord(
        backbone=str(cfg.backbone), strategy=cfg.strategy, seed=cfg.seed, fold=fold,
        pretrained=get_strategy(cfg.strategy).pretrained, val=result.metrics["val"], test=result.metrics.get("test"),
        train_seconds=result.seconds, images_per_second=len(splits.train) * epochs_run / result.seconds,
        trainable_params=trainable, frozen_params=total - trainable, peak_memory_bytes=peak.peak,
        memory_growth_bytes=peak.growth, memory_kind=peak.kind, phases=result.phases, history=result.history,
        predictions=Predictions(
            items=val_items(splits),
            y_true=scores.y_true.tolist() if scores else [], y_pred=scores.y_pred.tolist() if scores else [],
            confidence=scores.confidence.tolist() if scores else [],
        ),
        run_dir=str(run_dir),
    )  # fmt: skip
    with resealed(run_dir):  # the run's own seal lists it too: a refit after a rejected record is not refused
        RunFolder(run_dir).write_json(RunFolder.RESULT, record.to_dict())  # last: marks the run finished
    return record


def val_items(splits: DatasetSplits) -> list[str]:
    """What a record calls its validation items (a file's path, a text itself): what previews show."""
    return [s.text if s.text is not None else str(s.path) for s in splits.val]


def load_record(run_dir: Path, items: list[str] | None = None, classes: int | None = None) -> RunRecord | None:
    """A finished run's record, or ``None`` (the run is done again): missing, unreadable, oversized,
    edited (or its folder: then it is not the run it describes), from another version, naming other
    validation ``items`` than these (the comparison would open and show files that are not the
    user's data), or labels beyond ``classes``."""
    path = run_dir / RunFolder.RESULT
    if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_JSON_BYTES or added_since(run_dir):
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep: the run is done again
        return None
    if not isinstance(values, dict):
        return None
    # where it was found, never a folder the file names (--best-out copies it)
    record = RunRecord.from_dict({**values, "run_dir": str(run_dir)})
    if record is None or (items is not None and record.predictions.items != items):
        return None
    labels = [*record.predictions.y_true, *record.predictions.y_pred]
    return None if classes is not None and any(not 0 <= int(y) < classes for y in labels) else record


# --------------------------------------------------------------------------- the whole comparison


@dataclass
class Comparison:
    config: dict[str, Any]
    classes: list[str]
    records: list[RunRecord]
    rows: list[dict[str, Any]]
    recommendation: Recommendation
    warnings: list[str]
    prior: dict[str, Any]
    memory_estimates: dict[str, list[dict[str, Any]]]
    attention: dict[str, Any] | None = None  # where each strategy looks (transferkit.explain.attention)
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("executed"), d.pop("skipped")
        return d


def _estimates(cfg: CompareConfig, splits: DatasetSplits) -> dict[str, list[dict[str, Any]]]:
    """Per (backbone, strategy): the memory each phase should need, before anything trains."""
    out: dict[str, list[dict[str, Any]]] = {}
    modality = get_modality(splits.modality)
    for backbone in cfg.backbones:
        model = create_backbone(backbone, pretrained=False)
        groups = layer_groups(model)
        total = sum(p.numel() for p in model.parameters())
        buffers = sum(b.numel() for b in model.buffers())
        head = (int(model.num_features) + 1) * len(splits.classes)  # type: ignore[arg-type]
        by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # strategies may differ in input size
        for strategy in cfg.strategies:
            example = modality.preprocessing(model, cfg.run_config(backbone, strategy, 0), splits.train).example()
            key = tuple(example.shape)
            if key not in by_shape:
                by_shape[key] = activation_sizes(model, groups, example)
            sizes = by_shape[key]
            phases = get_strategy(strategy).plan(cfg.run_config(backbone, strategy, 0)) or (Phase("probe", 0, 0, 0, 0),)
            out[RunKey(backbone, strategy).id] = [
                estimate_phase_memory(p, groups, sizes, total + head, head, buffers, cfg.base.batch_size).to_dict()
                for p in phases
            ]
    return out


def compare(
    data: str | Path,
    config: CompareConfig | None = None,
    *,
    out: str | Path,
    best_out: str | Path | None = None,
    console: Console | None = None,
    on_run_end: Callable[[RunRecord], None] | None = None,
) -> Comparison:
    """Run the plan (skipping finished runs in ``out``), then summarise, recommend and report."""
    cfg, left_out = (config or CompareConfig()).installed()
    if left_out:
        warnings.warn(left_out, stacklevel=2)
    out = Path(out)
    splits = load_data(data, cfg.base)
    base = fit_to_data(cfg.base.replace(backbone=cfg.backbones[0] if cfg.backbones else None), splits)
    cfg = dataclasses.replace(cfg, base=base.replace(backbone=None), backbones=cfg.backbones or (str(base.backbone),))
    for backbone in cfg.backbones:  # each named backbone must read this data
        fit_to_data(base.replace(backbone=backbone), splits)
    best_target = _check_best_out(Path(best_out), out) if best_out is not None else None
    check_output_dir(out, "comparison", "--out")
    with output_lock(out):  # after the data is known good: a wrong path leaves nothing behind
        claim_output_dir(out, "comparison", "--out")  # checked again: it may have changed meanwhile
        try:  # refused (other settings…): every file as written stays sealed; interrupted: stays open
            _check_same_settings(out, cfg, splits)
            comparison = _compare(data, cfg, splits, out, best_target, console, on_run_end)
        except TransferkitError:
            seal(out, "comparison")
            raise
        seal(out, "comparison")
        return comparison


def _compare(
    data: str | Path, cfg: CompareConfig, splits: DatasetSplits, out: Path, best_target: Path | None,
    console: Console | None, on_run_end: Callable[[RunRecord], None] | None,
) -> Comparison:  # fmt: skip
    estimates = _estimates(cfg, splits)
    folds = fold_splits(splits, cfg.folds, cfg.base.seed) if cfg.folds > 1 else [splits]
    rates = _auto_rates(data, cfg, out, console) if cfg.lr_auto else {}
    plan = cfg.plan()
    records: list[RunRecord] = []
    executed: list[str] = []
    skipped: list[str] = []
    durations: dict[tuple[str, str], float] = {}
    for i, (backbone, strategy, k) in enumerate(plan, start=1):
        name = cfg.run_name(backbone, strategy, k)
        record = load_record(out / "runs" / name, val_items(folds[k % cfg.folds]), len(splits.classes))
        if record is None:
            if console:
                left = _time_left(plan[i - 1 :], durations)
                where = f"seed {k // cfg.folds}" + (f" · fold {k % cfg.folds + 1}/{cfg.folds}" if cfg.folds > 1 else "")
                console.rule(f"run {i}/{len(plan)} · {backbone} · {strategy} · {where}{left}")
            run_cfg = cfg.run_config(backbone, strategy, k).replace(**rates.get(RunKey(backbone, strategy).id, {}))
            fold = k % cfg.folds if cfg.folds > 1 else None
            record = run_and_record(folds[k % cfg.folds], run_cfg, out / "runs" / name, console, fold)
            executed.append(name)
            if on_run_end is not None:
                on_run_end(record)
        else:
            skipped.append(name)
            if console:
                console.print(f"run {i}/{len(plan)} · {name}: finished earlier, reusing its result")
        durations.setdefault((backbone, strategy), record.train_seconds)
        records.append(record)

    comparison = _decide(cfg, folds, records, estimates)
    comparison.executed, comparison.skipped = executed, skipped
    comparison.attention = strategy_attention(records, _best_run(comparison), comparison.classes, out,
                                              splits.modality)  # fmt: skip
    _store_previews(comparison, folds, out)
    write_results(out, comparison)
    write_report(out)
    if best_target is not None:
        _copy_best(comparison, best_target)
    if console:
        print_summary(console, comparison, out)
    return comparison


def _store_previews(comparison: Comparison, folds: list[DatasetSplits], out: Path) -> None:
    """The thumbnails the report shows (its most confused items, the attention rows), made now
    from the user's data: the report never opens a file that ``results.json`` names."""
    best = _best_run(comparison)
    shown = [best.predictions.items[i] for i in confused(best.predictions, MOST_CONFUSED)]
    attention = comparison.attention or {}
    shown += [str(row["item"]) for row in attention.get("rows", [])]
    allowed = {item for fold in folds for item in val_items(fold)}
    store_previews(out, shown, get_modality(folds[0].modality), allowed)


def _decide(
    cfg: CompareConfig, folds: list[DatasetSplits], records: list[RunRecord], estimates: dict[str, Any]
) -> Comparison:
    """``folds``: the one held-out split, or the K cross-validation splits (each item validated once)."""
    rows = summarise(records)
    splits = folds[0]
    validated = sum(len(f.val) for f in folds)
    floor = 1.0 / max(validated, 1)  # one validation image
    per_class = len(splits.train) / len(splits.classes)
    shift = None
    domain = cfg.domain
    modality = get_modality(splits.modality)
    if domain == "auto":  # the modality's probe of how unlike pre-training the data is (images: BatchNorm shift)
        backbone = cfg.backbones[0]
        model = create_backbone(backbone, pretrained=False)
        pre = modality.preprocessing(model, cfg.run_config(backbone, with_role("fine-tune").name, 0), splits.train)
        shift = modality.domain_shift(backbone, splits, pre)
        domain = "unknown" if shift is None else ("similar" if shift < SIMILAR_SHIFT else "different")
    prior_strategy, prior_reason = rule_of_thumb(per_class, domain, modality.unit)
    prior = {"strategy": prior_strategy, "reason": prior_reason, "domain": domain, "batchnorm_shift": shift}
    return Comparison(
        cfg.to_dict(), list(splits.classes), records, rows,
        recommend(rows, cfg.time_budget, floor),
        negative_transfer(rows, floor) + resolution(rows, validated, modality.unit, cfg.folds), prior, estimates,
    )  # fmt: skip


def _auto_rates(data: str | Path, cfg: CompareConfig, out: Path, console: Console | None) -> dict[str, Any]:
    """``--lr auto``: the LR range test once per (backbone, strategy) that trains by gradient
    descent, on the base seed's split; kept in ``lr-auto.json`` so a resumed comparison trains
    with the rates its finished runs used."""
    from transferkit.workflows.lr_find import lr_find, stored_rates, suggested_options

    path = out / "lr-auto.json"
    kept = stored_rates(path) if path.is_file() else None  # held to the rates' bounds, else measured again
    if kept is not None:
        return kept
    rates: dict[str, Any] = {}
    for backbone in cfg.backbones:
        for strategy in cfg.strategies:
            run_cfg = cfg.run_config(backbone, strategy, 0)
            if not get_strategy(strategy).plan(run_cfg):
                continue  # fitted in closed form: no learning rate
            if console:
                console.rule(f"--lr auto · {backbone} · {strategy}")
            chosen = suggested_options(lr_find(data, run_cfg, steps=LR_AUTO_STEPS, console=console), run_cfg)
            rates[RunKey(backbone, strategy).id] = chosen
            if console:
                console.print(", ".join(f"{k} {v:.2g}" for k, v in chosen.items()) or "no suggestion; the defaults")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rates, indent=2))
    return rates


def _time_left(remaining: list[tuple[str, str, int]], durations: dict[tuple[str, str], float]) -> str:
    if not durations:
        return ""
    # A strategy not measured yet is assumed as slow as the slowest so far: fine-tuning runs
    # come after the cheap frozen ones, and an estimate that only grows would mislead.
    slowest = max(durations.values())
    seconds = sum(durations.get((b, s), slowest) for b, s, _ in remaining)
    return f" · about {seconds / 60:.0f} min left" if seconds >= 60 else f" · about {seconds:.0f}s left"


def _check_same_settings(out: Path, cfg: CompareConfig, splits: DatasetSplits) -> None:
    """Refuse to mix results of different settings, or of other data, in one ``--out`` directory."""
    path = out / "compare.json"
    settings = {**cfg.to_dict(), "data": data_key(splits)}
    if path.is_file():
        previous = read_json_object(path)  # a received or edited folder: an object, or one line
        if "data" in previous and previous["data"] != settings["data"]:
            raise TransferkitError(
                f"{out} holds a comparison on other data; use another --out or delete that directory"
            )
        previous.pop("data", None)
        previous.setdefault("folds", 1)  # comparisons from before these options ran as their defaults do
        previous.setdefault("lr_auto", False)
        if previous != json.loads(json.dumps(cfg.to_dict())):
            raise TransferkitError(
                f"{out} holds a comparison with other settings; use another --out or delete that directory"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2))


def _check_best_out(best_out: Path, out: Path) -> Path:
    """``--best-out`` is replaced by the recommended run, so it must be a path of its own: not
    the comparison, not inside it nor around it, and not a folder that is not a transferkit run
    (checked before any compute; nothing else is ever deleted)."""
    if best_out.is_symlink():  # before resolve(), which follows the link
        raise TransferkitError(f"--best-out {best_out} is a symbolic link; give a real folder")
    target, home = best_out.resolve(), out.resolve()
    if target == home or home in target.parents or target in home.parents:
        raise TransferkitError(f"--best-out {best_out} overlaps --out {out}; give a separate folder")
    if target.is_file():
        raise TransferkitError(f"--best-out {best_out} is a file; give a folder")
    if owned_kind(target) not in (None, "run"):
        raise TransferkitError(f"--best-out {best_out} holds a transferkit {owned_kind(target)}, not a run")
    if target.is_dir() and any(target.iterdir()) and not is_owned(target):
        raise TransferkitError(
            f"--best-out {best_out} is a folder that holds something other than a transferkit run; "
            "it would be replaced: give a new or empty folder"
        )
    return target


def _best_run(comparison: Comparison) -> RunRecord:
    """The recommended strategy's best run (the one ``--best-out`` receives)."""
    rec = comparison.recommendation
    runs = [r for r in comparison.records if r.key == RunKey(rec.backbone, rec.strategy)]
    return max(runs, key=lambda r: r.val["accuracy"])


def _copy_best(comparison: Comparison, best_out: Path) -> None:
    """Copy the recommended run beside ``best_out`` first, then swap it in: an interruption
    leaves either the old run or the new one."""
    best = _best_run(comparison)
    with staged_folder(best_out, "run", "--best-out") as staging:  # re-checks: it may have changed meanwhile
        copy_owned(Path(best.run_dir), staging, shutil.ignore_patterns(RunFolder.RESULT, ".transferkit*"))


# --------------------------------------------------------------------------- output


CSV_COLUMNS = [
    "backbone", "strategy", "pretrained", "seeds", "val_accuracy_mean", "val_accuracy_std", "val_accuracy_low",
    "val_accuracy_high", "val_macro_f1_mean", "val_macro_f1_std", "test_accuracy_mean", "test_accuracy_std",
    "test_macro_f1_mean", "test_macro_f1_std", "train_seconds", "images_per_second", "trainable_params",
    "frozen_params", "peak_memory_bytes", "memory_growth_bytes", "memory_kind", "estimated_memory_bytes",
]  # fmt: skip


def write_results(out: Path, comparison: Comparison) -> None:
    atomic_write_text(out / "results.json", json.dumps(comparison.to_dict(), indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in comparison.rows:
        estimate = comparison.memory_estimates.get(RunKey(row["backbone"], row["strategy"]).id, [])
        writer.writerow({**row, "estimated_memory_bytes": max((e["total"] for e in estimate), default="")})
    atomic_write_text(out / "results.csv", buffer.getvalue())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def print_summary(console: Console, comparison: Comparison, out: Path) -> None:
    speed = f"{get_modality(comparison.config['base']['modality']).unit}/s"
    table = Table(
        "strategy", "val acc (± sd over runs)", "95% CI", "macro-F1", "time", speed, "trainable", "frozen", "peak mem",
        "est. mem",
    )  # fmt: skip
    multi = len({r["backbone"] for r in comparison.rows}) > 1
    if multi:
        table.columns[0].header = "backbone · strategy"
    for r in comparison.rows:
        est = comparison.memory_estimates.get(RunKey(r["backbone"], r["strategy"]).id, [])
        table.add_row(
            f"{r['backbone']} · {r['strategy']}" if multi else r["strategy"],
            accuracy_text(r, interval=False),
            f"{r['val_accuracy_low']:.3f}–{r['val_accuracy_high']:.3f}" if "val_accuracy_low" in r else "",
            f"{r['val_macro_f1_mean']:.3f}",
            f"{r['train_seconds']:.0f}s",
            f"{r['images_per_second']:.0f}",
            f"{r['trainable_params']:,}",
            f"{r['frozen_params']:,}",
            _mib(r["peak_memory_bytes"]),
            _mib(max((e["total"] for e in est), default=0)),
        )
    console.print(table)
    console.print(f"[bold green]Recommendation:[/] {comparison.recommendation.reason}", soft_wrap=True)
    prior = comparison.prior
    agree = "agrees" if prior["strategy"] == comparison.recommendation.strategy else "differs"
    console.print(f"Rule of thumb: {prior['strategy']} — {prior['reason']} (the measurement {agree}).", soft_wrap=True)
    for warning in comparison.warnings:
        console.print(f"[bold yellow]Warning:[/] {warning}", soft_wrap=True)
    console.print(
        f"Report: {out / 'report.html'}  ·  numbers: {out / 'results.json'}, {out / 'results.csv'}", soft_wrap=True
    )
