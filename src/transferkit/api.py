"""The Python API the CLI mirrors: ``fit``, ``evaluate``, ``predict`` and ``load``.

Thin on purpose: the engine is :mod:`transferkit.pipeline` (model, loaders, the loop);
this module turns its result into a :class:`FitResult`, a saved run and console lines.
"""

from __future__ import annotations

import contextlib
import json
import platform
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit import distributed
from transferkit.backbones import resolve_backbone
from transferkit.callbacks import write_history
from transferkit.config import FitConfig, from_dict
from transferkit.errors import TransferkitError
from transferkit.events import Callback
from transferkit.extras import ensure
from transferkit.metrics import Scores, detailed_report, wilson
from transferkit.modalities import DatasetSplits, Sample, get_modality
from transferkit.modalities.common import Prediction, item_identity
from transferkit.model import TrainedModel, load_model, save_model
from transferkit.ownership import signed, signed_here
from transferkit.pipeline import SingleLabel, Trained, fit_to_data, load_data, run
from transferkit.plan import RunPlan
from transferkit.runfolder import RunFolder
from transferkit.schema import check_names
from transferkit.scoring import evaluate as evaluate_model
from transferkit.strategies import get_strategy
from transferkit.version import __version__


@dataclass
class FitResult:
    """What ``fit`` hands back: the trained model, its scores and how it got there."""

    model: TrainedModel
    config: FitConfig
    metrics: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    phases: list[dict[str, Any]]
    seconds: float
    run_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)
    val_scores: Scores | None = None  # per-item predictions on the validation split


def load(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a saved run (``model.safetensors`` + ``config.json``); nothing is unpickled."""
    return load_model(run_dir, device=device)


def fit(
    data: str | Path | DatasetSplits,
    config: FitConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> FitResult:
    """Train one strategy on a dataset and, with ``out``, save the run there.

    ``overrides`` are :class:`FitConfig` fields, e.g. ``fit("data", strategy="partial", unfreeze=2)``.
    ``data`` may also be splits loaded once with :func:`transferkit.pipeline.load_data`, so that
    several runs share them whatever their seeds. With ``out``, a checkpoint is written after
    every epoch; ``resume=True`` continues from it (same config required). ``callbacks`` listen
    to the training loop's events (:mod:`transferkit.events`).
    """
    cfg = config.replace(**overrides) if config is not None else from_dict(overrides)
    # a missing optional package (lora: peft) is one line before the output folder or data is touched
    ensure(get_strategy(cfg.strategy).requires, f"the {cfg.strategy} strategy")
    with run_output(Path(out) if out is not None else None, resume):
        return _fit(data, cfg, out, resume, console, callbacks)


def _fit(
    data: str | Path | DatasetSplits, cfg: FitConfig, out: str | Path | None, resume: bool, console: Console | None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:  # fmt: skip
    splits = data if isinstance(data, DatasetSplits) else load_data(data, cfg)
    cfg = fit_to_data(cfg, splits)

    def header(plan: RunPlan) -> None:
        if console:
            _print_header(console, plan, splits)

    trained = run(
        splits, cfg, SingleLabel(len(splits.classes)), out=Path(out) if out is not None else None, resume=resume,
        console=console, header=header, callbacks=callbacks,
    )  # fmt: skip
    if not distributed.is_main():
        console = None  # rank 0 speaks for all
    metrics = {"val": trained.val_scores.summary()}
    if trained.test_scores is not None:
        metrics["test"] = trained.test_scores.summary()
    modality = get_modality(splits.modality)
    model = TrainedModel(trained.model, splits.classes, trained.preprocessing, model_card(trained, metrics), modality)
    result = FitResult(
        model, cfg, metrics, trained.result.history_dicts(), [asdict(p) for p in trained.result.phases],
        trained.seconds, skipped=[f"{s.path}: {s.reason}" for s in splits.skipped],
        val_scores=trained.val_scores if isinstance(trained.val_scores, Scores) else None,
    )  # fmt: skip
    if out is not None and distributed.is_main():
        result.run_dir = save_run(out, result, splits)
        (Path(out) / RunFolder.CHECKPOINT).unlink(missing_ok=True)  # the finished model supersedes it
    distributed.barrier()  # no rank returns before the model is on disk
    if console:
        print_result(console, result)
    return result


@contextlib.contextmanager
def run_output(out: Path | None, resume: bool, option: str = "--out") -> Iterator[None]:
    """Claim ``out`` for one run and lock it for the run's length (:meth:`RunFolder.writing`);
    only the launching process does (a DDP worker writes nothing)."""
    if out is None or not distributed.launched_as_main():
        yield
        return
    with RunFolder(out).writing(resume, option):
        yield


def result_summary(result: FitResult) -> dict[str, Any]:
    """A fit's result as plain data (``fit --json``): what the console's last lines say."""
    cfg = result.config
    return {
        "run_dir": str(result.run_dir) if result.run_dir else None, "backbone": cfg.backbone,
        "strategy": cfg.strategy, "metrics": result.metrics, "seconds": result.seconds,
        "best_epoch": result.model.config.get("best_epoch"), "classes": list(result.model.classes),
        "history": result.history, "skipped": result.skipped,
    }  # fmt: skip


def model_card(trained: Trained, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``config.json`` of a run: the architecture to rebuild, and how it was trained."""
    cfg, splits = trained.config, trained.splits
    assert cfg.backbone is not None  # set by fit_to_data
    return {
        "backbone": cfg.backbone,
        "timm_model": resolve_backbone(cfg.backbone).architecture,
        "strategy": trained.strategy.name,
        "pretrained": trained.strategy.pretrained,
        "classes": list(splits.classes),
        "preprocessing": trained.preprocessing.to_dict(),
        "head": {"hidden": cfg.hidden, "dropout": cfg.dropout},
        "metrics": metrics,
        "best_epoch": trained.result.best_epoch,
        "phases": [asdict(p) for p in trained.result.phases],
        "data": {split: splits.counts(split) for split in ("train", "val", "test") if getattr(splits, split)},
        "fit_config": cfg.to_dict(),
        "train_seconds": trained.seconds,
        "versions": library_versions(),
    }


def library_versions() -> dict[str, str]:
    import timm

    return {
        "transferkit": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(),
    }  # fmt: skip


def save_run(out: str | Path, result: FitResult, splits: DatasetSplits | None = None) -> Path:
    """Model, config, the metrics history (JSON and CSV) and the held-out items in one directory."""
    out = Path(out)
    save_model(out, result.model.model, result.model.config)
    if splits is not None:  # what the run was validated on: export checks and later scoring reuse it
        RunFolder(out).write_json(RunFolder.SPLIT, signed(split_record(splits)))
    write_history(out, result.history)
    return out


def split_record(splits: DatasetSplits) -> dict[str, Any]:
    """``split.json``: the classes, the validation and test items, and which items trained."""
    held_out = {name: [_item(s) for s in getattr(splits, name)] for name in ("val", "test")}
    trained_on = sorted({item_identity(s) for s in splits.train})  # to warn when evaluate is given them
    return {"classes": list(splits.classes), **held_out, "train_items": trained_on}


def _item(sample: Sample) -> dict[str, Any]:
    return {"path": str(sample.path), "label": sample.label, **({"text": sample.text} if sample.text else {})}


def _warn_if_trained_on(run_dir: str | Path, samples: Sequence[Sample]) -> None:
    try:
        trained_on = set(json.loads((Path(run_dir) / RunFolder.SPLIT).read_text(encoding="utf-8"))["train_items"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return  # an older run: nothing to compare with
    seen = sum(item_identity(s) in trained_on for s in samples)
    if seen:
        warnings.warn(
            f"{seen} of the {len(samples)} items scored were used for training, so these scores are optimistic; "
            f"`transferkit evaluate {run_dir}` without DATA scores the held-out validation split",
            stacklevel=2,
        )


def held_out_samples(run_dir: str | Path, split: str = "val", *, classes: Sequence[str] | None) -> list[Sample] | None:
    """The validation (or test) items a run saved, or ``None`` for runs from before ``split.json``.

    ``classes`` are the loaded model's (checked against its weights): the split's labels are
    indices into the list it saved, so a split whose list differs would be scored against
    other classes than it names. Only a multi-task export, which has no such list, passes None."""
    path = Path(run_dir) / RunFolder.SPLIT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not signed_here(record):  # its items name files: read only what this machine wrote
            raise TransferkitError(
                f"{path} was not written by transferkit on this machine, or was edited since; its items could name "
                "any file here: pass the data to score on"
            )
        saved = check_names(str(path), "classes", record["classes"], at_least=2)
        samples = [_held_out(i, len(saved)) for i in record[split]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise TransferkitError(f"{path} is unreadable ({type(exc).__name__}); pass the data explicitly") from None
    if classes is not None and list(saved) != list(classes):
        raise TransferkitError(
            f"{path} lists other classes (or another order) than the model in {run_dir}; was it edited or copied "
            "from another run? Pass the data explicitly"
        )
    # A run folder is input like any other: its split may name only regular files (not a device
    # such as /dev/zero, nor a folder), and only labels of the run's classes. A file moved away
    # since is skipped with a warning when read, as in training.
    odd = [s.path for s in samples if not s.text and s.path.exists() and not _regular_file(s.path)]
    if odd:
        raise TransferkitError(
            f"{path} names {len(odd)} item(s) that are not regular files, e.g. {odd[0]}; pass the data explicitly"
        )
    return samples


def _held_out(item: Any, classes: int) -> Sample:
    label = item["label"]
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < classes:
        raise ValueError(f"label {label!r} is not one of the run's {classes} classes")
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise TypeError("text must be a string")
    return Sample(Path(str(item["path"])), label, text)


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def evaluate(run_dir: str | Path, data: str | Path | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion matrix of a saved model on ``data``.

    ``data`` may be a full dataset (its test split is used, else val) or a plain set of classes;
    without it, the validation split the run saved is scored. Items the model was trained on
    are scored too, with a warning saying how many: their accuracy is optimistic. Items that
    cannot be read are skipped (``num_skipped``), never replaced by others.
    """
    trained = load(run_dir)
    modality = trained.modality
    if data is None:
        samples = held_out_samples(run_dir, classes=trained.classes) or []
        if not samples:
            raise TransferkitError(f"{run_dir} saved no validation split (an older run): give DATA to score")
    else:
        samples = modality.load_eval_samples(Path(data), trained.classes, trained.config.get("fit_config", {}))
        _warn_if_trained_on(run_dir, samples)
    samples, skipped = modality.scorable(samples)  # never scored: an item that cannot be read
    dataset = modality.dataset(samples, modality.transform(trained.preprocessing, is_training=False))
    loader: DataLoader[Any] = DataLoader(dataset, batch_size=batch_size)
    scores: Scores = evaluate_model(trained.model, loader, len(trained.classes), torch.device("cpu"))
    report = detailed_report(scores, trained.classes, modality.unit)
    report["num_skipped"] = skipped
    return report


def predict(run_dir: str | Path, items: Sequence[str | Path], top_k: int = 3) -> list[Prediction]:
    """Top-k labels and probabilities for files or folders of them (text models: also texts)."""
    return load(run_dir).predict(items, top_k=top_k)


def _print_header(console: Console, plan: RunPlan, splits: DatasetSplits) -> None:
    unit = plan.modality.unit
    console.print(
        f"[bold]transferkit fit[/] backbone={plan.backbone} strategy={plan.strategy.name} device={plan.device}\n"
        f"  data: {len(splits.classes)} classes, {len(splits.train)} train / {len(splits.val)} val"
        + (f" / {len(splits.test)} test" if splits.test else "")
        + f" {unit}; {plan.describe()}",
        soft_wrap=True,
    )
    if splits.skipped:
        console.print(f"  [yellow]skipped {len(splits.skipped)} unreadable file(s)[/]")


def print_result(console: Console, result: FitResult) -> None:
    """The closing lines of a fit: validation (and test) scores, time, where the model went."""
    val = result.metrics["val"]
    line = f"[bold green]final validation accuracy {val['accuracy']:.4f}[/]"
    scores = result.val_scores
    if scores is not None and len(scores.y_true):  # how far that figure can be trusted
        low, high = wilson(int((scores.y_true == scores.y_pred).sum()), len(scores.y_true))
        line += f" (95% CI {low:.3f}–{high:.3f} over {len(scores.y_true)} items)"
    line += f", macro-F1 {val['macro_f1']:.4f}"
    if "test" in result.metrics:
        line += f", test accuracy {result.metrics['test']['accuracy']:.4f}"
    console.print(line + f" in {result.seconds:.1f}s")
    if result.run_dir:
        console.print(f"  saved to {result.run_dir}", markup=False)
