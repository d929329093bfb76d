"""The end of a search: the model kept in ``OUT/best``, a weight-space ensemble where it pays,
the score on items no selection saw, and the files to ship.

- :func:`publish` puts a run in ``OUT/best`` atomically (copied beside it, then swapped in),
  so a model that loads and predicts is there at every moment after the first one.
- :func:`wise_ft` (Wortsman et al., CVPR 2022): the fine-tuned weights interpolated with the
  ones they started from — here the probe-initialised model — kept only where the paired test
  says the mix is better on validation.
- :func:`held_out_scores` scores a saved model on the held-out share.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from transferkit.checkpoint import write_safetensors
from transferkit.events import Callback, Loop
from transferkit.metrics import Scores
from transferkit.modalities import Sample
from transferkit.model import TrainedModel, load_model, save_model
from transferkit.ownership import STAGING, copy_owned, signed, staged_folder
from transferkit.runfolder import RunFolder
from transferkit.scoring import evaluate

BEST = "best"
WISE_ALPHA = 0.5  # WiSE-FT's mixing weight of the fine-tuned model; the paper's default
_LEFT_OUT = shutil.ignore_patterns(
    RunFolder.RESULT, f"{RunFolder.CHECKPOINT}*", RunFolder.START, RunFolder.TENSORBOARD, ".transferkit*"
)


class StartWeights(Callback):
    """Keep a fresh run's starting weights (after the probe initialised its head) for WiSE-FT."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RunFolder.START

    def on_fit_start(self, loop: Loop) -> None:
        if loop.state.epoch == 0 and not self.path.is_file():  # a resumed run started earlier
            state = {k: v.detach().cpu().contiguous() for k, v in loop.model.state_dict().items()}
            write_safetensors(state, self.path, {})


def publish(run_dir: Path, out: Path, split: dict[str, Any] | None = None) -> Path:
    """Copy the run in ``run_dir`` to ``out/best`` (replacing the one there at one rename);
    ``split`` replaces its ``split.json`` (the final model records the held-out items)."""
    target = out / BEST
    with staged_folder(target, "run", "--out") as staging:
        copy_owned(run_dir, staging, _LEFT_OUT)
        if split is not None:
            RunFolder(staging).write_json(RunFolder.SPLIT, signed(split))
    return target


def recover_best(out: Path) -> None:
    """A kill between the two renames of :func:`publish` leaves the previous model aside: put it back."""
    target = out / BEST
    if target.exists():
        return
    aside = sorted(out.glob(f".{BEST}{STAGING}old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        aside[-1].rename(target)


def wise_ft(run_dir: Path, into: Path, alpha: float = WISE_ALPHA) -> TrainedModel | None:
    """The run's model with weights ``alpha·fine-tuned + (1-alpha)·start``, saved into ``into``;
    ``None`` when the run kept no start (a frozen or resumed-from-old run)."""
    start_path = run_dir / RunFolder.START
    if not start_path.is_file():
        return None
    trained = load_model(run_dir)
    start = load_file(str(start_path))
    tuned = trained.model.state_dict()
    if set(start) != set(tuned) or any(start[k].shape != tuned[k].shape for k in tuned):
        return None  # not the same network (an older run): nothing to interpolate
    mixed = {
        k: alpha * v + (1 - alpha) * start[k].to(v.dtype) if v.is_floating_point() else v for k, v in tuned.items()
    }
    trained.model.load_state_dict(mixed)
    # the strategy stays the run's (a registered name: the card is checked on load); the mix is its own field
    card = {**trained.config, "weights": {"method": "wise-ft", "alpha": alpha}}
    save_model(into, trained.model, card)
    for name in (RunFolder.SPLIT, RunFolder.HISTORY, RunFolder.HISTORY_CSV):
        if (run_dir / name).is_file() and not (run_dir / name).is_symlink():  # a link is never followed
            shutil.copy2(run_dir / name, into / name, follow_symlinks=False)
    return TrainedModel(trained.model, trained.classes, trained.preprocessing, card, trained.modality)


def held_out_scores(model: TrainedModel, samples: Sequence[Sample], batch_size: int = 32) -> Scores:
    """Accuracy and per-item predictions of a saved model on ``samples`` (CPU)."""
    modality = model.modality
    samples, _ = modality.scorable(samples)  # the unreadable are skipped with a warning, never replaced
    dataset = modality.dataset(samples, modality.transform(model.preprocessing, is_training=False))
    loader: DataLoader[Any] = DataLoader(dataset, batch_size=batch_size)
    return evaluate(model.model, loader, len(model.classes), torch.device("cpu"))
