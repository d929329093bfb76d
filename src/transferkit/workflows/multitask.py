"""Several classification tasks on one shared backbone, trained together — in the one loop.

Labels come from a CSV: a file path column and one column per task; an empty cell means
"not labelled for this task", and that example adds nothing to that task's loss. A
multi-task run is an ordinary run of :func:`transferkit.pipeline.run` whose :class:`Task`
has one head per task and a masked, weighted loss: strategies (LoRA and scratch
included), the feature cache, checkpoints and ``--resume``, mixed precision, the NaN guard,
patience, class weights and the BatchNorm policy are the engine's, not copies.

Task losses are summed with fixed weights, or with learned uncertainty weights (Kendall,
Gal and Cipolla, CVPR 2018): ``Σ exp(-s_t)·L_t + s_t/2`` with ``s_t = log σ_t²``, so a task
whose loss stays large (noisy, hard) is down-weighted instead of dominating.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.api import run_output
from transferkit.backbones import create_backbone, registered_names
from transferkit.checkpoint import check_finite
from transferkit.config import HIDDEN, FitConfig
from transferkit.errors import DataError, TransferkitError, close_matches
from transferkit.heads import ClassifierHead
from transferkit.memory import PeakMemory
from transferkit.metrics import Scores, score
from transferkit.modalities import (
    MISSING,
    DatasetSplits,
    Modality,
    Sample,
    detect_modality,
    get_modality,
    stratified_split,
)
from transferkit.modalities.common import read_table
from transferkit.model import TransferModel, check_class_order, save_model
from transferkit.pipeline import class_weights, fit_to_data, require_validation, run
from transferkit.runfolder import RunFolder, check_format_version
from transferkit.runtime import Amp, resolve_device
from transferkit.schema import Interval, OneOf, check_mapping, check_names, check_stored_name
from transferkit.strategies import get_strategy
from transferkit.workflows.multitask_config import WEIGHTINGS
from transferkit.workflows.multitask_config import MultiTaskConfig as MultiTaskConfig  # re-exported: its home before

KIND = "multitask"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MultiTaskData:
    """Samples whose label is one class index per task (``MISSING`` where unlabelled)."""

    tasks: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    splits: DatasetSplits

    @property
    def train(self) -> tuple[Sample, ...]:
        return self.splits.train

    @property
    def val(self) -> tuple[Sample, ...]:
        return self.splits.val

    def single_task(self, task: str) -> DatasetSplits:
        """The labelled samples of one task, for a single-task baseline on the same split."""
        i = self.tasks.index(task)

        def pick(rows: Sequence[Sample]) -> tuple[Sample, ...]:
            return tuple(replace(r, label=r.label[i]) for r in rows if r.label[i] != MISSING)  # type: ignore[index]

        return DatasetSplits(self.classes[task], pick(self.train), pick(self.val), modality=self.splits.modality)


def load_multitask_csv(
    csv_path: str | Path, root: str | Path, cfg: MultiTaskConfig, val_fraction: float = 0.2, seed: int = 0
) -> MultiTaskData:
    """Read the CSV, check every file with its modality, and split train/val with the one
    stratified split of every command (stratified on the first task)."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist or is not a file")
    rows = read_table(csv_path)
    columns = list(rows[0]) if rows else []
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
    modality = get_modality(cfg.base.modality) if cfg.base.modality != "auto" else detect_modality(root)
    samples, problems = [], []
    for r in rows:
        path = root / (r[cfg.image_column] or "").strip()
        reason = "missing" if not path.is_file() else modality.check_file(path)
        if reason:
            problems.append(f"{path}: {reason}")
            continue
        labels = tuple(classes[t].index(r[t].strip()) if (r[t] or "").strip() else MISSING for t in cfg.tasks)
        if all(label == MISSING for label in labels):
            continue  # nothing to learn from
        samples.append(replace(modality.read_inputs([path])[0], label=labels))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"{len(problems)} file(s) listed in {csv_path} cannot be used: {shown}")
    train, val = stratified_split(samples, val_fraction, seed)
    first = cfg.tasks[0]
    splits = DatasetSplits(classes[first], tuple(train), tuple(val), modality=modality.name)
    return MultiTaskData(cfg.tasks, classes, splits)


# --------------------------------------------------------------------------- heads and objective


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


@dataclass
class MultiScores:
    """Validation scores of every task; ``accuracy``/``macro_f1``/``loss`` are their means,
    which is what the loop monitors and restores the best epoch by."""

    per_task: dict[str, Scores]
    loss: float

    @property
    def accuracy(self) -> float:
        return float(np.mean([s.accuracy for s in self.per_task.values()]))

    @property
    def macro_f1(self) -> float:
        return float(np.mean([s.macro_f1 for s in self.per_task.values()]))

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss}

    def metrics(self) -> dict[str, dict[str, float]]:
        return {
            t: {"accuracy": s.accuracy, "macro_f1": s.macro_f1, "labelled": len(s.y_true)}
            for t, s in self.per_task.items()
        }


class MultiTaskObjective:
    """Weighted sum of per-task cross-entropies, each over the examples labelled for that
    task; a batch with no label for a task adds nothing for it."""

    def __init__(
        self, head: MultiTaskHead, weights: Sequence[float], label_smoothing: float,
        class_weights: Sequence[torch.Tensor | None],
    ) -> None:  # fmt: skip
        self.head, self.weights = head, list(weights)
        self.criteria = [nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing) for w in class_weights]

    def task_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for i, task_logits in enumerate(self.head.split(logits)):
            mask = labels[:, i] != MISSING
            out.append(self.criteria[i](task_logits[mask], labels[mask, i]) if mask.any() else None)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The combined per-task means, weighted by the batch's rows (the loop's (sum, weight))."""
        rows = logits.new_tensor(float(len(labels)))
        return self.combined(logits, labels) * rows, rows

    def combined(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros(())
        for i, loss in enumerate(self.task_losses(logits, labels)):
            if loss is None:
                continue
            if self.head.log_vars is not None:
                total = total + torch.exp(-self.head.log_vars[i]) * loss + 0.5 * self.head.log_vars[i]
            else:
                total = total + self.weights[i] * loss
        return total

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        right = counted = 0
        for i, task_logits in enumerate(self.head.split(logits)):
            mask = labels[:, i] != MISSING
            right += int((task_logits.argmax(1)[mask] == labels[mask, i]).sum())
            counted += int(mask.sum())
        return right, counted

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> MultiScores:
        model.eval()
        amp, preds, targets, loss_sum = Amp(device), [], [], 0.0
        for inputs, labels in loader:
            with amp.autocast():
                logits = model(inputs.to(device, non_blocking=True)).float()
            labels = labels.to(device)
            loss_sum += float(self.loss(logits, labels)[0])
            preds.append(torch.stack([t.argmax(1) for t in self.head.split(logits)], dim=1).cpu())
            targets.append(labels.cpu())
        y = torch.cat(targets).numpy() if targets else np.zeros((0, len(self.head.tasks)), dtype=np.int64)
        p = torch.cat(preds).numpy() if preds else np.zeros_like(y)
        if isinstance(loader.sampler, distributed.ShardSampler):  # each rank scored its shard
            y, p = (distributed.gather_rows(a, loader.sampler.n) for a in (y, p))
            loss_sum = distributed.sum_across(loss_sum)[0]
        per_task = {}
        for i, (task, size) in enumerate(zip(self.head.tasks, self.head.sizes, strict=True)):
            mask = y[:, i] != MISSING
            per_task[task] = score(y[mask, i], p[mask, i], size)
        return MultiScores(per_task, loss_sum / max(len(y), 1))


@dataclass(frozen=True)
class MultiTask:
    """The :class:`transferkit.pipeline.Task` of a multi-task run."""

    data: MultiTaskData
    cfg: MultiTaskConfig

    def head(self, in_features: int, cfg: FitConfig) -> nn.Module:
        sizes = {t: len(self.data.classes[t]) for t in self.data.tasks}
        return MultiTaskHead(in_features, sizes, cfg.hidden, cfg.dropout, self.cfg.weighting == "uncertainty")

    def objective(
        self, head: nn.Module, splits: DatasetSplits, cfg: FitConfig, device: torch.device
    ) -> MultiTaskObjective:
        assert isinstance(head, MultiTaskHead)  # built by self.head
        weights: list[torch.Tensor | None] = []
        for i, task in enumerate(self.data.tasks):
            labels = [s.label[i] for s in splits.train if s.label[i] != MISSING]  # type: ignore[index]
            n = len(self.data.classes[task])
            weights.append(class_weights(labels, n).to(device) if cfg.class_weights else None)
        return MultiTaskObjective(head, self.cfg.weights(), cfg.label_smoothing, weights)


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
    resume: bool = False,
    console: Console | None = None,
) -> MultiTaskResult:
    """Train the shared backbone and every task head; save to ``out`` like ``fit`` does
    (checkpointed every epoch, ``resume=True`` continues an interrupted run)."""
    base = fit_to_data(cfg.base, data.splits)
    require_validation(data.splits, tasks=data.tasks)
    out_dir = Path(out) if out is not None else None
    with run_output(out_dir, resume):
        with PeakMemory(resolve_device(base.device)) as memory:
            trained = run(data.splits, base, MultiTask(data, cfg), out=out_dir, resume=resume, console=console)
        head = trained.model.head
        assert isinstance(head, MultiTaskHead) and isinstance(trained.val_scores, MultiScores)
        weights = torch.exp(-head.log_vars.detach()).tolist() if head.log_vars is not None else list(cfg.weights())
        result = MultiTaskResult(
            out_dir, trained.val_scores.metrics(), trained.result.history_dicts(), trained.seconds,
            sum(p.numel() for p in trained.model.parameters()), memory.peak,
            dict(zip(data.tasks, weights, strict=True)), trained.model,
        )  # fmt: skip
        if out_dir is not None and distributed.is_main():
            _save(out_dir, result, data, trained.preprocessing.to_dict(), replace(cfg, base=base))
            (out_dir / RunFolder.CHECKPOINT).unlink(missing_ok=True)  # the finished model supersedes it
    if console:
        for task, m in result.metrics.items():
            console.print(f"  {task}: val accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}", highlight=False)
    return result


# --------------------------------------------------------------------------- saving, loading, predicting


def _save(out: Path, result: MultiTaskResult, data: MultiTaskData, pre: dict[str, Any], cfg: MultiTaskConfig) -> None:
    config = {
        "kind": KIND,
        "backbone": cfg.base.backbone,
        "strategy": cfg.base.strategy,
        "tasks": {t: list(data.classes[t]) for t in data.tasks},
        "preprocessing": pre,
        "head": {"hidden": cfg.base.hidden, "weighting": cfg.weighting},
        "metrics": result.metrics,
        "task_weights": result.task_weights,
        "train_seconds": result.seconds,
        "multitask_config": {**asdict(cfg), "base": cfg.base.to_dict()},
    }
    save_model(out, result.model, config)
    RunFolder(out).write_json(RunFolder.HISTORY, result.history, indent=2)


@dataclass
class MultiTaskPrediction:
    path: str
    labels: dict[str, str]
    probabilities: dict[str, float]


class TrainedMultiTask:
    def __init__(
        self, model: TransferModel, tasks: dict[str, list[str]], pre: Any, modality: Modality
    ) -> None:  # fmt: skip
        self.model, self.tasks, self.preprocessing, self.modality = model.eval(), tasks, pre, modality

    @torch.inference_mode()
    def predict(self, items: Sequence[str | Path], batch_size: int = 32) -> list[MultiTaskPrediction]:
        samples = self.modality.read_inputs(items)
        dataset = self.modality.dataset(samples, self.modality.transform(self.preprocessing, is_training=False))
        head = self.model.head
        assert isinstance(head, MultiTaskHead)  # internal invariant: built by load_multitask
        out = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = torch.stack([dataset[start + j][0] for j in range(len(chunk))])
            per_task = [t.softmax(1).max(1) for t in head.split(self.model(batch))]
            for j, s in enumerate(chunk):
                labels = {t: self.tasks[t][int(top.indices[j])] for t, top in zip(self.tasks, per_task, strict=True)}
                probs = {t: float(top.values[j]) for t, top in zip(self.tasks, per_task, strict=True)}
                out.append(MultiTaskPrediction(str(s.path), labels, probs))
        return out


def is_multitask_run(run_dir: str | Path) -> bool:
    try:
        return bool(json.loads((Path(run_dir) / RunFolder.CONFIG).read_text(encoding="utf-8")).get("kind") == KIND)
    except (OSError, ValueError, RecursionError, AttributeError):  # RecursionError: JSON nested 100,000 deep
        return False


def load_multitask(run_dir: str | Path) -> TrainedMultiTask:
    """Rebuild the architecture from config.json and fill it from safetensors (no pickle)."""
    from transferkit.model import preprocessing_from_dict

    run_dir = Path(run_dir)
    where = str(run_dir / RunFolder.CONFIG)
    try:
        cfg = json.loads((run_dir / RunFolder.CONFIG).read_text(encoding="utf-8"))
        tasks = {
            str(t): check_names(where, f"tasks.{t}", c, 2)
            for t, c in check_mapping(where, "tasks", cfg["tasks"]).items()
        }
        hidden = Interval(int, 0, HIDDEN.high).check(where, "head.hidden", cfg["head"]["hidden"])
        weighting = OneOf(WEIGHTINGS).check(where, "head.weighting", cfg["head"]["weighting"])
        backbone_name = check_stored_name(where, "backbone", cfg["backbone"], registered_names(), hub_ids=True)
        modality, pre = preprocessing_from_dict(cfg["preprocessing"], where)
        version = int(cfg["format_version"])
        base = cfg.get("multitask_config", {}).get("base", {})
    except (OSError, KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise TransferkitError(f"{run_dir} is not a multi-task model directory ({type(exc).__name__}: {exc})") from exc
    check_format_version(version, where)
    check_class_order(run_dir / RunFolder.WEIGHTS, tasks, where)  # before anything is built: in the weights' order
    backbone = create_backbone(backbone_name, pretrained=False)
    strategy = get_strategy(cfg["strategy"]) if isinstance(cfg.get("strategy"), str) else None
    if strategy is not None and strategy.adapt is not None:  # its adapters, as the run added them
        backbone = strategy.adapt(backbone, base if isinstance(base, dict) else {})
    in_features = int(backbone.num_features)  # type: ignore[arg-type]
    head = MultiTaskHead(in_features, {t: len(c) for t, c in tasks.items()}, hidden, 0.0, weighting == "uncertainty")
    model = TransferModel(backbone, head)  # type: ignore[arg-type]
    try:
        state = load_file(str(run_dir / RunFolder.WEIGHTS))
        check_finite(state, run_dir / RunFolder.WEIGHTS)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as exc:
        raise TransferkitError(
            f"{run_dir / RunFolder.WEIGHTS} does not match {run_dir / RunFolder.CONFIG}: {exc}"
        ) from exc
    return TrainedMultiTask(model, tasks, pre, modality)
