"""Several classification tasks on one shared backbone, trained together.

Labels come from a CSV: an image path column and one column per task; an empty cell means
"not labelled for this task", and that example simply adds nothing to that task's loss.
The backbone is frozen and unfrozen by the same strategies (phase plans over timm layer
groups) as single-task ``fit``; frozen phases train the heads on backbone features computed
once. Task losses are summed with fixed weights, or with learned uncertainty weights
(Kendall, Gal and Cipolla, CVPR 2018): ``Σ exp(-s_t)·L_t + s_t/2`` with ``s_t = log σ_t²``,
so a task whose loss stays large (noisy, hard) is down-weighted instead of dominating.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from transferkit.backbones import create_backbone, image_preprocessing, layer_groups
from transferkit.config import FitConfig
from transferkit.data import (
    ImageTransform,
    Preprocessing,
    Sample,
    check_image,
    eval_transform,
    open_rgb,
    train_transform,
)
from transferkit.errors import ConfigError, DataError, TransferkitError, close_matches
from transferkit.features import default_cache_dir, extract_features, feature_settings
from transferkit.heads import ClassifierHead
from transferkit.memory import PeakMemory
from transferkit.metrics import score
from transferkit.model import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, TransferModel, atomic_write_text, save_model
from transferkit.strategies import Phase, get_strategy
from transferkit.training import (
    build_optimizer,
    count_params,
    freeze_for_phase,
    resolve_device,
    seed_everything,
    set_train_mode,
    warmup_cosine,
)

MISSING = -1  # label index of an unlabelled (image, task) pair
WEIGHTINGS = ("fixed", "uncertainty")


@dataclass(frozen=True)
class MultiTaskConfig:
    """Tasks and their loss weighting; ``base`` holds every shared `fit` option."""

    tasks: tuple[str, ...]
    image_column: str = "image"
    weighting: str = "fixed"
    task_weights: tuple[float, ...] | None = None  # fixed weighting; default 1 per task
    base: FitConfig = field(default_factory=lambda: FitConfig(augment=False))

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", self.tasks, "name at least one task column, e.g. --tasks digit,parity")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("tasks", self.tasks, "each task once")
        if self.image_column in self.tasks:
            raise ConfigError("image_column", self.image_column, "must not also be a task")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError("weighting", self.weighting, f"choose one of {', '.join(WEIGHTINGS)}")
        if self.task_weights is not None:
            if self.weighting != "fixed":
                raise ConfigError("task_weights", self.task_weights, "only applies with weighting='fixed'")
            if len(self.task_weights) != len(self.tasks) or any(not w > 0 for w in self.task_weights):
                raise ConfigError(
                    "task_weights", self.task_weights, f"give {len(self.tasks)} positive numbers, one per task"
                )
        if get_strategy(self.base.strategy).uses_sklearn:
            raise ConfigError(
                "strategy", self.base.strategy,
                "multi-task heads are trained by gradient: use feature-extraction, partial, full, two-phase or scratch",
            )  # fmt: skip

    def weights(self) -> tuple[float, ...]:
        return self.task_weights or tuple(1.0 for _ in self.tasks)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MultiTaskSample:
    path: Path
    labels: tuple[int, ...]  # one per task, MISSING where the CSV cell is empty


@dataclass(frozen=True)
class MultiTaskData:
    tasks: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    train: tuple[MultiTaskSample, ...]
    val: tuple[MultiTaskSample, ...]

    def single_task(self, task: str) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
        """The labelled (train, val) samples of one task, for a single-task baseline."""
        i = self.tasks.index(task)

        def pick(rows: Sequence[MultiTaskSample]) -> tuple[Sample, ...]:
            return tuple(Sample(r.path, r.labels[i]) for r in rows if r.labels[i] != MISSING)

        return pick(self.train), pick(self.val)


def load_multitask_csv(
    csv_path: str | Path, images: str | Path, cfg: MultiTaskConfig, val_fraction: float = 0.2, seed: int = 0
) -> MultiTaskData:
    """Read the CSV, check every image, and split train/val (stratified on the first task)."""
    csv_path, images = Path(csv_path), Path(images)
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist or is not a file")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    for name in (cfg.image_column, *cfg.tasks):
        if name not in columns:
            near = close_matches(name, columns)
            hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
            raise DataError(
                f"{csv_path} has no column {name!r}{hint}; its columns are {', '.join(columns) or '(none)'}"
            )
    classes = {t: tuple(sorted({r[t].strip() for r in rows if (r[t] or "").strip()})) for t in cfg.tasks}
    for task, names in classes.items():
        if len(names) < 2:
            raise DataError(f"task {task!r} needs at least 2 classes in {csv_path}; found {list(names)}")
    samples, problems = [], []
    for r in rows:
        path = images / (r[cfg.image_column] or "").strip()
        reason = "missing" if not path.is_file() else check_image(path)[0]
        if reason:
            problems.append(f"{path}: {reason}")
            continue
        labels = tuple(classes[t].index(r[t].strip()) if (r[t] or "").strip() else MISSING for t in cfg.tasks)
        if all(label == MISSING for label in labels):
            continue  # nothing to learn from
        samples.append(MultiTaskSample(path, labels))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"{len(problems)} image(s) listed in {csv_path} cannot be used: {shown}")
    first = np.array([s.labels[0] for s in samples])
    counts = np.bincount(first[first >= 0] if (first >= 0).any() else [0])
    stratify = first if (first >= 0).all() and counts.min() >= 2 else None
    train, val = train_test_split(samples, test_size=val_fraction, random_state=seed, stratify=stratify)
    return MultiTaskData(cfg.tasks, classes, tuple(train), tuple(val))


class MultiTaskDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, samples: Sequence[MultiTaskSample], transform: ImageTransform) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[index]
        return self.transform(open_rgb(s.path, self.transform.draft_size)), torch.tensor(s.labels)


# --------------------------------------------------------------------------- model and loss


class MultiTaskHead(nn.Module):
    """One classifier head per task, and the learned log-variances of uncertainty weighting."""

    def __init__(
        self, in_features: int, classes: dict[str, int], hidden: int, dropout: float, uncertainty: bool
    ) -> None:
        super().__init__()
        self.tasks = list(classes)
        self.sizes = list(classes.values())
        self.heads = nn.ModuleDict({t: ClassifierHead(in_features, n, hidden, dropout) for t, n in classes.items()})
        self.log_vars = nn.Parameter(torch.zeros(len(classes))) if uncertainty else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of all tasks side by side, [batch, Σ classes]: one tensor keeps nn.Module
        tooling (hooks, compile, the single-task loop's plumbing) working unchanged."""
        return torch.cat([self.heads[t](features) for t in self.tasks], dim=1)

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits, self.sizes, dim=1))


def multitask_loss(
    head: MultiTaskHead, logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float]
) -> tuple[torch.Tensor, list[float]]:
    """Weighted sum of per-task cross-entropies, each averaged over the examples labelled for
    that task; (total, per-task losses). A batch with no label for a task adds nothing for it."""
    total = logits.new_zeros(())
    per_task: list[float] = []
    for i, task_logits in enumerate(head.split(logits)):
        mask = labels[:, i] != MISSING
        if not mask.any():
            per_task.append(float("nan"))
            continue
        loss = nn.functional.cross_entropy(task_logits[mask], labels[mask, i])
        per_task.append(float(loss.detach()))
        if head.log_vars is not None:
            total = total + torch.exp(-head.log_vars[i]) * loss + 0.5 * head.log_vars[i]
        else:
            total = total + weights[i] * loss
    return total, per_task


# --------------------------------------------------------------------------- training


@dataclass
class MultiTaskResult:
    run_dir: Path | None
    metrics: dict[str, dict[str, float]]  # task → accuracy, macro_f1, labelled
    history: list[dict[str, Any]]
    seconds: float
    total_params: int
    peak_memory_bytes: int
    task_weights: dict[str, float]  # final effective weights (exp(-s) under uncertainty weighting)
    model: TransferModel


def fit_multitask(
    data: MultiTaskData,
    cfg: MultiTaskConfig,
    *,
    out: str | Path | None = None,
    console: Console | None = None,
) -> MultiTaskResult:
    """Train the shared backbone and every task head; save to ``out`` like ``fit`` does."""
    base = cfg.base
    started = time.perf_counter()
    seed_everything(base.seed)
    device = resolve_device(base.device)
    strategy = get_strategy(base.strategy)
    backbone = create_backbone(base.backbone, pretrained=strategy.pretrained)
    sizes = {t: len(data.classes[t]) for t in data.tasks}
    in_features = int(backbone.num_features)  # type: ignore[arg-type]
    head = MultiTaskHead(in_features, sizes, base.hidden, base.dropout, cfg.weighting == "uncertainty")
    model = TransferModel(backbone, head).to(device)  # type: ignore[arg-type]
    pre = image_preprocessing(backbone, base.image_size)
    groups = layer_groups(backbone)
    with PeakMemory(device) as memory:
        history = _train_phases(model, head, groups, strategy.plan(base), data, pre, cfg, device, console)
    metrics = evaluate_multitask(model, head, val_images(data, pre, base.batch_size), data, device)
    seconds = time.perf_counter() - started
    weights = (
        dict(zip(data.tasks, torch.exp(-head.log_vars.detach()).tolist(), strict=True))
        if head.log_vars is not None
        else dict(zip(data.tasks, cfg.weights(), strict=True))
    )
    result = MultiTaskResult(
        Path(out) if out else None, metrics, history, seconds, count_params(model), memory.peak, weights, model
    )
    if out is not None:
        _save(Path(out), result, data, pre, cfg)
    if console:
        for task, m in metrics.items():
            console.print(f"  {task}: val accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}", highlight=False)
    return result


def _train_phases(
    model: TransferModel,
    head: MultiTaskHead,
    groups: Sequence[Any],
    phases: Sequence[Phase],
    data: MultiTaskData,
    pre: Preprocessing,
    cfg: MultiTaskConfig,
    device: torch.device,
    console: Console | None,
) -> list[dict[str, Any]]:
    """Phase by phase as in ``fit``; keeps the epoch with the best mean validation accuracy."""
    base = cfg.base
    train_tf = train_transform(pre, base.hflip) if base.augment else eval_transform(pre)
    generator = torch.Generator().manual_seed(base.seed)
    images = DataLoader(
        MultiTaskDataset(data.train, train_tf), batch_size=base.batch_size, shuffle=True, generator=generator
    )
    features: tuple[DataLoader[Any], DataLoader[Any]] | None = None
    images_val = val_images(data, pre, base.batch_size)
    best, best_state, history, epoch = -1.0, copy.deepcopy(model.state_dict()), [], 0
    for phase in phases:
        freeze_for_phase(model, groups, phase)
        head_only = phase.head_only and not base.augment
        if head_only and features is None:
            features = _feature_loaders(model, data, pre, cfg, device, generator, console)
        loader, val_loader = features if head_only and features is not None else (images, images_val)
        optimizer = build_optimizer(model, phase, base.weight_decay)
        scheduler = warmup_cosine(optimizer, phase.epochs * len(loader), base.warmup)
        if console:
            console.print(
                f"[bold]phase {phase.name}[/]: {phase.epochs} epoch(s), {count_params(model, True):,} trainable "
                f"/ {count_params(model, False):,} frozen parameters",
            )
        for _ in range(phase.epochs):
            epoch += 1
            start = time.perf_counter()
            net: nn.Module = head if head_only else model
            set_train_mode(net, base.bn_stats == "update")
            losses = []
            for inputs, labels in loader:
                loss, _ = multitask_loss(head, net(inputs.to(device)), labels.to(device), cfg.weights())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            val = evaluate_multitask(net, head, val_loader, data, device)
            mean_acc = float(np.mean([m["accuracy"] for m in val.values()]))
            history.append({"epoch": epoch, "phase": phase.name, "train_loss": float(np.mean(losses)),
                            "val_mean_accuracy": mean_acc, "seconds": time.perf_counter() - start,
                            **{f"val_{t}_accuracy": m["accuracy"] for t, m in val.items()}})  # fmt: skip
            if console:
                per_task = "  ".join(f"{t} {m['accuracy']:.3f}" for t, m in val.items())
                console.print(
                    f"epoch {epoch:>3} {phase.name:<9} loss {history[-1]['train_loss']:.4f} | val {per_task}",
                    highlight=False,
                )
            if mean_acc > best:
                best, best_state = mean_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return history


def _feature_loaders(
    model: TransferModel,
    data: MultiTaskData,
    pre: Preprocessing,
    cfg: MultiTaskConfig,
    device: torch.device,
    generator: torch.Generator,
    console: Console | None,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """The frozen backbone runs once over train and val; the heads then train and are scored
    on its features (as ``fit`` does)."""
    loaders = []
    for rows, shuffle in ((data.train, True), (data.val, False)):
        feats = extract_features(
            model.backbone, [Sample(r.path, 0) for r in rows], [eval_transform(pre)], batch_size=cfg.base.batch_size,
            device=device, cache_dir=default_cache_dir() if cfg.base.cache else None,
            settings=feature_settings(cfg.base.backbone, pre), console=console,
        )  # fmt: skip
        dataset = TensorDataset(torch.from_numpy(np.array(feats.values[0])), torch.tensor([r.labels for r in rows]))
        # Only the shuffled loader draws from the generator: a fixed-order one would still take a
        # seed from it per epoch and shift the training order.
        draw = generator if shuffle else None
        loaders.append(DataLoader(dataset, batch_size=cfg.base.batch_size, shuffle=shuffle, generator=draw))
    return loaders[0], loaders[1]


def val_images(data: MultiTaskData, pre: Preprocessing, batch_size: int) -> DataLoader[Any]:
    return DataLoader(MultiTaskDataset(data.val, eval_transform(pre)), batch_size=batch_size)


@torch.inference_mode()
def evaluate_multitask(
    net: nn.Module, head: MultiTaskHead, loader: DataLoader[Any], data: MultiTaskData, device: torch.device
) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 per task over the validation examples labelled for that task.
    ``net`` maps the loader's inputs (images, or cached features for the head alone) to logits."""
    net.eval()
    outputs, targets = [], []
    for inputs, labels in loader:
        outputs.append([t.argmax(1).cpu() for t in head.split(net(inputs.to(device)))])
        targets.append(labels)
    y = torch.cat(targets).numpy() if targets else np.zeros((0, len(data.tasks)), dtype=int)
    metrics = {}
    for i, task in enumerate(data.tasks):
        pred = torch.cat([o[i] for o in outputs]).numpy() if outputs else np.zeros(0, dtype=int)
        mask = y[:, i] != MISSING
        s = score(y[mask, i], pred[mask], len(data.classes[task]))
        metrics[task] = {"accuracy": s.accuracy, "macro_f1": s.macro_f1, "labelled": int(mask.sum())}
    return metrics


# --------------------------------------------------------------------------- saving, loading, predicting

KIND = "multitask"


def _save(out: Path, result: MultiTaskResult, data: MultiTaskData, pre: Preprocessing, cfg: MultiTaskConfig) -> None:
    config = {
        "kind": KIND,
        "backbone": cfg.base.backbone,
        "strategy": cfg.base.strategy,
        "tasks": {t: list(data.classes[t]) for t in data.tasks},
        "preprocessing": pre.to_dict(),
        "head": {"hidden": cfg.base.hidden, "weighting": cfg.weighting},
        "metrics": result.metrics,
        "task_weights": result.task_weights,
        "train_seconds": result.seconds,
        "multitask_config": {**asdict(cfg), "base": cfg.base.to_dict()},
    }
    save_model(out, result.model, config)
    atomic_write_text(out / "history.json", json.dumps(result.history, indent=2))


@dataclass
class MultiTaskPrediction:
    path: str
    labels: dict[str, str]
    probabilities: dict[str, float]


class TrainedMultiTask:
    def __init__(self, model: TransferModel, tasks: dict[str, list[str]], pre: Preprocessing) -> None:
        self.model, self.tasks, self.preprocessing = model.eval(), tasks, pre

    @torch.inference_mode()
    def predict(self, paths: Sequence[str | Path], batch_size: int = 32) -> list[MultiTaskPrediction]:
        transform = eval_transform(self.preprocessing)
        head = self.model.head
        assert isinstance(head, MultiTaskHead)  # internal invariant: built by load_multitask
        out = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = torch.stack([transform(open_rgb(p, transform.draft_size)) for p in chunk])
            per_task = [t.softmax(1).max(1) for t in head.split(self.model(batch))]
            for j, p in enumerate(chunk):
                labels = {t: self.tasks[t][int(top.indices[j])] for t, top in zip(self.tasks, per_task, strict=True)}
                probs = {t: float(top.values[j]) for t, top in zip(self.tasks, per_task, strict=True)}
                out.append(MultiTaskPrediction(str(p), labels, probs))
        return out


def is_multitask_run(run_dir: str | Path) -> bool:
    try:
        return bool(json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("kind") == KIND)
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_multitask(run_dir: str | Path) -> TrainedMultiTask:
    """Rebuild the architecture from config.json and fill it from safetensors (no pickle)."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        tasks = {str(t): [str(c) for c in names] for t, names in cfg["tasks"].items()}
        hidden, weighting = int(cfg["head"]["hidden"]), str(cfg["head"]["weighting"])
        backbone_name, pre = str(cfg["backbone"]), Preprocessing.from_dict(cfg["preprocessing"])
        version = int(cfg["format_version"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransferkitError(f"{run_dir} is not a multi-task model directory ({type(exc).__name__}: {exc})") from exc
    if version > FORMAT_VERSION:
        raise TransferkitError(f"{run_dir} was written by a newer transferkit (format {version}); upgrade")
    backbone = create_backbone(backbone_name, pretrained=False)
    in_features = int(backbone.num_features)  # type: ignore[arg-type]
    head = MultiTaskHead(in_features, {t: len(c) for t, c in tasks.items()}, hidden, 0.0, weighting == "uncertainty")
    model = TransferModel(backbone, head)  # type: ignore[arg-type]
    try:
        model.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise TransferkitError(f"{run_dir / WEIGHTS_FILE} does not match {run_dir / CONFIG_FILE}: {exc}") from exc
    if not isinstance(pre, Preprocessing):
        raise TransferkitError(f"{run_dir / CONFIG_FILE}: a multi-task run holds an image model")
    return TrainedMultiTask(model, tasks, pre)


# --------------------------------------------------------------------------- against one model per task


def versus_single_task(
    data: MultiTaskData,
    cfg: MultiTaskConfig,
    console: Console | None = None,
    out: str | Path | None = None,
    seeds: int = 1,
) -> dict[str, Any]:
    """One multi-task model vs one single-task ``fit`` per task: same split, strategy, epochs
    and seeds; accuracies as mean and sd over ``seeds`` (one seed moved them by ~1 point here).

    The feature cache is off for both, so neither side reuses the other's backbone passes.
    The multi-task model of the first seed is saved to ``out``.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError("seeds", seeds, "must be a positive whole number")
    runs = [_versus_once(data, cfg, cfg.base.seed + k, console, out if k == 0 else None) for k in range(seeds)]
    summary: dict[str, Any] = {
        "tasks": list(data.tasks), "strategy": cfg.base.strategy, "epochs": cfg.base.epochs,
        "weighting": cfg.weighting, "seeds": seeds, "runs": runs,
    }  # fmt: skip
    for side in ("multi_task", "single_task"):
        summary[side] = {
            "per_task": {
                t: {f"{m}_{stat}": fn([r[side]["per_task"][t][m] for r in runs])
                    for m in ("accuracy", "macro_f1") for stat, fn in (("mean", np.mean), ("sd", np.std))}
                for t in data.tasks
            },
            "seconds": float(np.mean([r[side]["seconds"] for r in runs])),
            "params": runs[0][side]["params"],
            "peak_memory_bytes": max(r[side]["peak_memory_bytes"] for r in runs),
        }  # fmt: skip
        for row in summary[side]["per_task"].values():
            row.update({k: float(v) for k, v in row.items()})
    return summary


def _versus_once(
    data: MultiTaskData, cfg: MultiTaskConfig, seed: int, console: Console | None, out: str | Path | None
) -> dict[str, Any]:
    from transferkit.api import fit  # api imports the model stack; only this comparison needs it
    from transferkit.data import DatasetSplits

    base = cfg.base.replace(cache=False, seed=seed)
    if console:
        console.rule(f"multi-task: one shared backbone (seed {seed})")
    multi = fit_multitask(data, MultiTaskConfig(**{**asdict(cfg), "base": base}), out=out, console=console)
    single: dict[str, dict[str, float]] = {}
    for task in data.tasks:
        if console:
            console.rule(f"single-task: {task} (seed {seed})")
        train, val = data.single_task(task)
        with PeakMemory(resolve_device(base.device)) as memory:
            result = fit(DatasetSplits(classes=data.classes[task], train=train, val=val), base, console=console)
        single[task] = {
            "accuracy": result.metrics["val"]["accuracy"],
            "macro_f1": result.metrics["val"]["macro_f1"],
            "seconds": result.seconds,
            "params": count_params(result.model.model),
            "peak_memory_bytes": memory.peak,
        }
    return {
        "seed": seed,
        "multi_task": {
            "per_task": multi.metrics, "seconds": multi.seconds, "params": multi.total_params,
            "peak_memory_bytes": multi.peak_memory_bytes, "task_weights": multi.task_weights,
        },
        "single_task": {
            "per_task": single,
            "seconds": sum(s["seconds"] for s in single.values()),
            "params": sum(int(s["params"]) for s in single.values()),
            "peak_memory_bytes": max(int(s["peak_memory_bytes"]) for s in single.values()),
        },
    }  # fmt: skip


def print_versus(console: Console, table_data: dict[str, Any]) -> None:
    from rich.table import Table

    multi, single = table_data["multi_task"], table_data["single_task"]
    seeds = table_data["seeds"]
    table = Table(
        f"mean ± sd over {seeds} seed(s)", "multi-task (1 model)", f"single-task ({len(table_data['tasks'])} models)"
    )
    for task in table_data["tasks"]:
        m, s = multi["per_task"][task], single["per_task"][task]
        for metric, label in (("accuracy", "val accuracy"), ("macro_f1", "macro-F1")):
            table.add_row(
                f"{task}: {label}",
                f"{m[f'{metric}_mean']:.4f} ± {m[f'{metric}_sd']:.4f}",
                f"{s[f'{metric}_mean']:.4f} ± {s[f'{metric}_sd']:.4f}",
            )
    table.add_row("parameters (all models)", f"{multi['params']:,}", f"{single['params']:,}")
    table.add_row("training time per seed (all models)", f"{multi['seconds']:.1f} s", f"{single['seconds']:.1f} s")
    table.add_row(
        "peak memory (process RSS)", f"{multi['peak_memory_bytes'] / 2**20:,.0f} MiB",
        f"{single['peak_memory_bytes'] / 2**20:,.0f} MiB (largest run)",
    )  # fmt: skip
    console.print(table)
