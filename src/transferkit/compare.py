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
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from transferkit.api import fit, is_text, load_data
from transferkit.backbones import (
    DEFAULT_BACKBONE,
    DEFAULT_TEXT_BACKBONE,
    check_backbone_name,
    create_backbone,
    image_preprocessing,
    layer_groups,
    preprocessing_for,
)
from transferkit.checkpoint import CHECKPOINT_FILE
from transferkit.config import FitConfig
from transferkit.data import DatasetSplits, ImageDataset, eval_transform
from transferkit.errors import ConfigError, TransferkitError
from transferkit.memory import PeakMemory, activation_sizes, estimate_phase_memory
from transferkit.model import atomic_write_text
from transferkit.report import write_report
from transferkit.strategies import Phase, get_strategy
from transferkit.training import resolve_device

DEFAULT_STRATEGIES = ("linear-probe", "feature-extraction", "partial", "full", "two-phase", "scratch")
DOMAINS = ("auto", "similar", "different")
SMALL_DATASET = 1000  # images per class below which a dataset counts as small for the rule of thumb
SIMILAR_SHIFT = 0.40  # BatchNorm statistics shift below which images count as ImageNet-like


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and under which shared budget; ``base`` holds every other fit option."""

    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    budget_epochs: int = 4
    seeds: int = 2
    time_budget: float | None = None  # seconds per run a recommendation may cost
    domain: str = "auto"
    base: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        for name in ("backbones", "strategies"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(name, values, "name at least one")
            if len(set(values)) != len(values):
                raise ConfigError(name, values, "each name once")
        for backbone in self.backbones:
            check_backbone_name(backbone)
        for strategy in self.strategies:
            get_strategy(strategy)
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError("seeds", self.seeds, "must be a positive whole number")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("time_budget", self.time_budget, "must be a positive number of seconds")
        if self.domain not in DOMAINS:
            raise ConfigError("domain", self.domain, f"choose one of {', '.join(DOMAINS)}")
        if not isinstance(self.budget_epochs, int) or self.budget_epochs < 1:
            raise ConfigError("budget_epochs", self.budget_epochs, "must be a positive whole number")
        for backbone in self.backbones:  # every run's config must be valid before the first runs
            for strategy in self.strategies:
                try:
                    self.run_config(backbone, strategy, 0)
                except ConfigError as exc:
                    raise ConfigError(
                        "budget_epochs" if exc.field == "epochs" else exc.field, exc.value, f"{strategy}: {exc}"
                    ) from exc

    def run_config(self, backbone: str, strategy: str, seed_index: int) -> FitConfig:
        return self.base.replace(
            backbone=backbone, strategy=strategy, epochs=self.budget_epochs, seed=self.base.seed + seed_index
        )

    def plan(self) -> list[tuple[str, str, int]]:
        """Seed by seed, so an early stop still leaves every strategy measured once."""
        return [(b, s, k) for b in self.backbones for k in range(self.seeds) for s in self.strategies]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        return d


def run_name(backbone: str, strategy: str, seed_index: int) -> str:
    return f"{backbone}__{strategy}__seed{seed_index}"


# --------------------------------------------------------------------------- one run


def _run_one(splits: DatasetSplits, cfg: FitConfig, run_dir: Path, console: Console | None) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    with PeakMemory(device) as peak:
        # A run killed mid-way left its checkpoint: continue it instead of starting over.
        result = fit(splits, cfg, out=run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file(), console=console)
    trainable = max(p["trainable_params"] for p in result.phases)
    total = sum(p.numel() for p in result.model.model.parameters())
    epochs_run = sum(p["epochs_run"] for p in result.phases) or 1  # a linear probe sees each image once
    scores = result.val_scores
    record = {
        "backbone": cfg.backbone,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "pretrained": get_strategy(cfg.strategy).pretrained,
        "val": result.metrics["val"],
        "test": result.metrics.get("test"),
        "train_seconds": result.seconds,
        "images_per_second": len(splits.train) * epochs_run / result.seconds,
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "peak_memory_bytes": peak.peak,
        "memory_growth_bytes": peak.growth,
        "memory_kind": peak.kind,
        "phases": result.phases,
        "history": result.history,
        "predictions": {
            "paths": [str(s.path) for s in splits.val],
            "y_true": scores.y_true.tolist() if scores else [],
            "y_pred": scores.y_pred.tolist() if scores else [],
            "confidence": scores.confidence.tolist() if scores else [],
        },
        "run_dir": str(run_dir),
    }
    atomic_write_text(run_dir / "result.json", json.dumps(record))  # last: marks the run finished
    return record


def _load_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return record
    except json.JSONDecodeError:
        return None  # unreadable: run it again


# --------------------------------------------------------------------------- decisions


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backbone, strategy): means and seed spreads of every measurement."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["backbone"], r["strategy"]) for r in records))
    for backbone, strategy in keys:
        runs = [r for r in records if (r["backbone"], r["strategy"]) == (backbone, strategy)]
        row: dict[str, Any] = {"backbone": backbone, "strategy": strategy, "pretrained": runs[0]["pretrained"]}
        row["seeds"] = len(runs)
        for split in ("val", "test"):
            for metric in ("accuracy", "macro_f1"):
                values = [r[split][metric] for r in runs if r.get(split)]
                if values:
                    row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"] = _mean_std(values)
        row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in runs)
        row["images_per_second"] = statistics.fmean(r["images_per_second"] for r in runs)
        row["trainable_params"] = runs[0]["trainable_params"]
        row["frozen_params"] = runs[0]["frozen_params"]
        row["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
        row["memory_growth_bytes"] = max(r["memory_growth_bytes"] for r in runs)
        row["memory_kind"] = runs[0]["memory_kind"]
        rows.append(row)
    return rows


def _spread(a: dict[str, Any], b: dict[str, Any], floor: float) -> float:
    return max(float(a["val_accuracy_std"]), float(b["val_accuracy_std"]), floor)


@dataclass(frozen=True)
class Recommendation:
    backbone: str
    strategy: str
    reason: str


def recommend(rows: Sequence[dict[str, Any]], time_budget: float | None = None, floor: float = 0.0) -> Recommendation:
    """The most accurate row within the time budget; among rows within the seed spread of it,
    the fastest. ``floor`` is the smallest difference that counts (e.g. one validation image)."""
    eligible = [r for r in rows if time_budget is None or r["train_seconds"] <= time_budget]
    note = ""
    if not eligible:
        eligible, note = list(rows), f" (no run fitted the {time_budget:.0f}s budget, so all were considered)"
    best = max(eligible, key=lambda r: r["val_accuracy_mean"])
    close = [r for r in eligible if r["val_accuracy_mean"] >= best["val_accuracy_mean"] - _spread(best, r, floor)]
    choice = min(close, key=lambda r: r["train_seconds"])

    def acc(r: dict[str, Any]) -> str:
        return f"{r['val_accuracy_mean']:.3f} ± {r['val_accuracy_std']:.3f}"

    if choice is best:
        others = "" if len(close) == 1 else ", and no run within its seed spread is faster"
        reason = (
            f"{choice['strategy']} has the best validation accuracy ({acc(choice)}) "
            f"in {choice['train_seconds']:.0f}s{others}"
        )
    else:
        speedup = best["train_seconds"] / max(choice["train_seconds"], 1e-9)
        reason = (
            f"{choice['strategy']} ({acc(choice)}) is within the seed spread of the most accurate, "
            f"{best['strategy']} ({acc(best)}), and trains {speedup:.1f}× faster"
        )
    if len({r["backbone"] for r in rows}) > 1:
        reason += f" with {choice['backbone']}"
    return Recommendation(choice["backbone"], choice["strategy"], reason + note + ".")


def negative_transfer(rows: Sequence[dict[str, Any]], floor: float = 0.0) -> list[str]:
    """Plain-language warnings where pre-training did not help, judged against ``scratch``."""
    warnings: list[str] = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        scratch = next((r for r in rows if r["backbone"] == backbone and r["strategy"] == "scratch"), None)
        pretrained = [r for r in rows if r["backbone"] == backbone and r["pretrained"]]
        if scratch is None or not pretrained:
            continue
        s = scratch["val_accuracy_mean"]
        if all(s >= r["val_accuracy_mean"] for r in pretrained):
            warnings.append(
                f"Negative transfer with {backbone}: training from scratch ({s:.3f}) matches or beats every "
                "pretrained strategy, so ImageNet pre-training does not help on this data."
            )
        for r in pretrained:
            if r["val_accuracy_mean"] < s - _spread(r, scratch, floor):
                warnings.append(
                    f"{r['strategy']} ({r['val_accuracy_mean']:.3f}) is worse than scratch ({s:.3f}) "
                    f"beyond the seed spread with {backbone}: its pre-trained features hurt here."
                )
    return warnings


def rule_of_thumb(images_per_class: float, domain: str, unit: str = "images") -> tuple[str, str]:
    """The textbook prior (size × similarity to ImageNet) that the measurements are set against."""
    size = "small" if images_per_class < SMALL_DATASET else "large"
    table = {
        ("small", "similar"): ("feature-extraction", "train only a new head on frozen features"),
        ("small", "different"): ("partial", "re-train the top blocks and keep the generic lower ones"),
        ("large", "similar"): ("two-phase", "fine-tune after warming the head up"),
        ("large", "different"): ("full", "fine-tune every layer"),
    }
    strategy, advice = table.get((size, domain), ("two-phase", "fine-tune after warming the head up"))
    what = {"similar": "similar to ImageNet", "different": "unlike ImageNet"}.get(domain, "unknown similarity")
    return strategy, f"{size} dataset ({images_per_class:.0f} {unit} per class), {what}: {advice}"


@torch.inference_mode()
def batchnorm_shift(backbone: str, splits: DatasetSplits, image_size: int | None, limit: int = 64) -> float | None:
    """How far the user's images move the backbone's BatchNorm inputs from its pre-training
    statistics: the mean over layers and channels of |batch mean − running mean| / running sd.

    Measured here with EfficientNet-Lite0: crops of natural photos 0.18–0.38, scanned digits
    0.43–0.61, random noise 0.44–0.49 (64–224 px). ``None`` without BatchNorm layers or
    without pre-trained weights at hand (e.g. hub weights and no internet).
    """
    try:
        model = create_backbone(backbone, pretrained=True).eval()
    except TransferkitError:
        return None
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    shifts: list[float] = []

    def measure(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        running_mean, running_var = module.running_mean, module.running_var
        if not isinstance(running_mean, torch.Tensor) or not isinstance(running_var, torch.Tensor):
            return  # a BatchNorm without tracked statistics says nothing about pre-training
        sd = (running_var + 1e-5).sqrt()
        shifts.append(float(((inputs[0].mean(dim=(0, 2, 3)) - running_mean).abs() / sd).mean()))

    handles = [m.register_forward_hook(measure) for m in norms]
    try:
        step = max(1, len(splits.train) // limit)
        dataset = ImageDataset(splits.train[::step][:limit], eval_transform(image_preprocessing(model, image_size)))
        model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    finally:
        for h in handles:
            h.remove()
    return statistics.fmean(shifts)


# --------------------------------------------------------------------------- the whole comparison


@dataclass
class Comparison:
    config: dict[str, Any]
    classes: list[str]
    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    recommendation: Recommendation
    warnings: list[str]
    prior: dict[str, Any]
    memory_estimates: dict[str, list[dict[str, Any]]]
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("executed"), d.pop("skipped")
        return d


def _estimates(cfg: CompareConfig, splits: DatasetSplits) -> dict[str, list[dict[str, Any]]]:
    """Per (backbone, strategy): the memory each phase should need, before anything trains."""
    out: dict[str, list[dict[str, Any]]] = {}
    for backbone in cfg.backbones:
        model = create_backbone(backbone, pretrained=False)
        groups = layer_groups(model)
        example = preprocessing_for(model, cfg.base.image_size, cfg.base.max_length, backbone).example()
        sizes = activation_sizes(model, groups, example)
        total = sum(p.numel() for p in model.parameters())
        buffers = sum(b.numel() for b in model.buffers())
        head = (int(model.num_features) + 1) * len(splits.classes)  # type: ignore[arg-type]
        for strategy in cfg.strategies:
            phases = get_strategy(strategy).plan(cfg.run_config(backbone, strategy, 0)) or (Phase("probe", 0, 0, 0, 0),)
            out[f"{backbone}__{strategy}"] = [
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
    on_run_end: Callable[[dict[str, Any]], None] | None = None,
) -> Comparison:
    """Run the plan (skipping finished runs in ``out``), then summarise, recommend and report."""
    cfg = config or CompareConfig()
    out = Path(out)
    _check_same_settings(out, cfg)
    splits = load_data(data, cfg.base)
    if is_text(splits):  # no augmentation for text; the image default backbone becomes the text one
        base = cfg.base.replace(augment=False, modality="text")
        backbones = (DEFAULT_TEXT_BACKBONE,) if cfg.backbones == (DEFAULT_BACKBONE,) else cfg.backbones
        cfg = dataclasses.replace(cfg, base=base, backbones=backbones)
    estimates = _estimates(cfg, splits)
    plan = cfg.plan()
    records: list[dict[str, Any]] = []
    executed: list[str] = []
    skipped: list[str] = []
    durations: dict[tuple[str, str], float] = {}
    for i, (backbone, strategy, k) in enumerate(plan, start=1):
        name = run_name(backbone, strategy, k)
        record = _load_record(out / "runs" / name)
        if record is None:
            if console:
                left = _time_left(plan[i - 1 :], durations)
                console.rule(f"run {i}/{len(plan)} · {backbone} · {strategy} · seed {k}{left}")
            record = _run_one(splits, cfg.run_config(backbone, strategy, k), out / "runs" / name, console)
            executed.append(name)
            if on_run_end is not None:
                on_run_end(record)
        else:
            skipped.append(name)
            if console:
                console.print(f"run {i}/{len(plan)} · {name}: finished earlier, reusing its result")
        durations.setdefault((backbone, strategy), record["train_seconds"])
        records.append(record)

    comparison = _decide(cfg, splits, records, estimates)
    comparison.executed, comparison.skipped = executed, skipped
    write_results(out, comparison)
    write_report(out)
    if best_out is not None:
        _copy_best(comparison, out, Path(best_out))
    if console:
        print_summary(console, comparison, out)
    return comparison


def _decide(
    cfg: CompareConfig, splits: DatasetSplits, records: list[dict[str, Any]], estimates: dict[str, Any]
) -> Comparison:
    rows = summarise(records)
    floor = 1.0 / max(len(splits.val), 1)  # one validation image
    per_class = len(splits.train) / len(splits.classes)
    shift = None
    domain = cfg.domain
    text = is_text(splits)
    if domain == "auto":  # the BatchNorm shift measures images against ImageNet; text has no such probe
        shift = None if text else batchnorm_shift(cfg.backbones[0], splits, cfg.base.image_size)
        domain = "unknown" if shift is None else ("similar" if shift < SIMILAR_SHIFT else "different")
    prior_strategy, prior_reason = rule_of_thumb(per_class, domain, "texts" if text else "images")
    prior = {"strategy": prior_strategy, "reason": prior_reason, "domain": domain, "batchnorm_shift": shift}
    return Comparison(
        cfg.to_dict(), list(splits.classes), records, rows,
        recommend(rows, cfg.time_budget, floor), negative_transfer(rows, floor), prior, estimates,
    )  # fmt: skip


def _time_left(remaining: list[tuple[str, str, int]], durations: dict[tuple[str, str], float]) -> str:
    if not durations:
        return ""
    # A strategy not measured yet is assumed as slow as the slowest so far: fine-tuning runs
    # come after the cheap frozen ones, and an estimate that only grows would mislead.
    slowest = max(durations.values())
    seconds = sum(durations.get((b, s), slowest) for b, s, _ in remaining)
    return f" · about {seconds / 60:.0f} min left" if seconds >= 60 else f" · about {seconds:.0f}s left"


def _check_same_settings(out: Path, cfg: CompareConfig) -> None:
    """Refuse to mix results of different settings in one ``--out`` directory."""
    path = out / "compare.json"
    settings = cfg.to_dict()
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(settings)):
            raise TransferkitError(
                f"{out} holds a comparison with other settings; use another --out or delete that directory"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2))


def _copy_best(comparison: Comparison, out: Path, best_out: Path) -> None:
    rec = comparison.recommendation
    runs = [r for r in comparison.records if (r["backbone"], r["strategy"]) == (rec.backbone, rec.strategy)]
    best = max(runs, key=lambda r: r["val"]["accuracy"])
    if best_out.exists():
        shutil.rmtree(best_out)
    shutil.copytree(best["run_dir"], best_out, ignore=shutil.ignore_patterns("result.json"))


# --------------------------------------------------------------------------- output


CSV_COLUMNS = [
    "backbone", "strategy", "pretrained", "seeds", "val_accuracy_mean", "val_accuracy_std", "val_macro_f1_mean",
    "val_macro_f1_std", "test_accuracy_mean", "test_accuracy_std", "test_macro_f1_mean", "test_macro_f1_std",
    "train_seconds", "images_per_second", "trainable_params", "frozen_params", "peak_memory_bytes",
    "memory_growth_bytes", "memory_kind",
    "estimated_memory_bytes",
]  # fmt: skip


def write_results(out: Path, comparison: Comparison) -> None:
    atomic_write_text(out / "results.json", json.dumps(comparison.to_dict(), indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in comparison.rows:
        estimate = comparison.memory_estimates.get(f"{row['backbone']}__{row['strategy']}", [])
        writer.writerow({**row, "estimated_memory_bytes": max((e["total"] for e in estimate), default="")})
    atomic_write_text(out / "results.csv", buffer.getvalue())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def print_summary(console: Console, comparison: Comparison, out: Path) -> None:
    speed = "texts/s" if comparison.config["base"].get("modality") == "text" else "img/s"
    table = Table("strategy", "val acc", "macro-F1", "time", speed, "trainable", "frozen", "peak mem", "est. mem")
    multi = len({r["backbone"] for r in comparison.rows}) > 1
    if multi:
        table.columns[0].header = "backbone · strategy"
    for r in comparison.rows:
        est = comparison.memory_estimates.get(f"{r['backbone']}__{r['strategy']}", [])
        table.add_row(
            f"{r['backbone']} · {r['strategy']}" if multi else r["strategy"],
            f"{r['val_accuracy_mean']:.3f} ± {r['val_accuracy_std']:.3f}",
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
