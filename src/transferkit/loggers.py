"""Loggers users already watch runs in: TensorBoard and MLflow, as callbacks of the loop.

``--log tensorboard`` writes event files under ``OUT/tensorboard`` (``tensorboard --logdir
OUT``; a ``compare`` shows every run beside the others); ``--log mlflow`` logs to the
tracking store MLflow itself would use — ``MLFLOW_TRACKING_URI``, else MLflow's default (a
local ``mlflow.db`` in the working folder) — in the experiment ``transferkit``, one MLflow run
per transferkit run, named after its folder. Each logs, per epoch, the training and validation loss and
accuracy, macro-F1 and the epoch's seconds, and the head's and backbone's learning rates
every optimiser step, as Hugging Face's ``report_to`` and Lightning's loggers do; MLflow also
records the run's config as parameters. Only the main process logs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from transferkit import distributed
from transferkit.events import Callback, EpochRecord, Loop, TrainResult
from transferkit.extras import ensure, require
from transferkit.paths import mark
from transferkit.runfolder import RunFolder

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # each logger's package (the ``log`` extra)


def check_loggers(names: Sequence[str]) -> None:
    """Refuse a logger whose package is missing before any compute, with the install line."""
    for name in names:
        ensure((_PACKAGES[name],), f"--log {name}")


def _scalars(record: EpochRecord) -> dict[str, float]:
    return {
        "train/loss": record.train_loss, "train/accuracy": record.train_accuracy,
        "val/loss": record.val_loss, "val/accuracy": record.val_accuracy, "val/macro_f1": record.val_macro_f1,
        "time/epoch_seconds": record.seconds,
    }  # fmt: skip


class TensorBoardLogger(Callback):
    def __init__(self, folder: Path, run_name: str = "") -> None:
        self.folder = folder / RunFolder.TENSORBOARD / run_name if run_name else folder / RunFolder.TENSORBOARD
        self.writer: Any = None

    def _open(self) -> Any:
        if self.writer is None:
            require("tensorboard", "--log tensorboard")  # torch's writer imports it
            writer = require("torch.utils.tensorboard", "--log tensorboard", extra="log")
            mark(self.folder, "logs")  # TensorBoard names and appends its own files: the folder answers for them
            self.writer = writer.SummaryWriter(log_dir=str(self.folder))
        return self.writer

    def on_batch_end(self, loop: Loop, loss: torch.Tensor) -> None:
        if distributed.is_main():
            for name, lr in loop.learning_rates().items():
                self._open().add_scalar(f"lr/{name}", lr, loop.step)

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        if distributed.is_main():
            for name, value in _scalars(record).items():
                self._open().add_scalar(name, value, record.epoch)
            self.writer.flush()  # an interrupted run keeps what it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowLogger(Callback):
    def __init__(self, folder: Path, run_name: str = "", params: Mapping[str, Any] | None = None) -> None:
        self.uri = os.environ.get("MLFLOW_TRACKING_URI")  # None: MLflow's own default
        self.run_name = run_name or folder.name
        self.params = dict(params or {})
        self.client: Any = None
        self.run_id = ""

    def _open(self) -> Any:
        if self.client is None:
            tracking = require("mlflow.tracking", "--log mlflow")
            self.client = tracking.MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name("transferkit")
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("transferkit")
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
            for key, value in self.params.items():
                self.client.log_param(self.run_id, key, str(value)[:500])  # MLflow's limit on a value
        return self.client

    def on_batch_end(self, loop: Loop, loss: torch.Tensor) -> None:
        if distributed.is_main() and loop.step % 10 == 0:  # one request per step would dwarf a small run
            for name, lr in loop.learning_rates().items():
                self._open().log_metric(self.run_id, f"lr_{name}", lr, step=loop.step)

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        if distributed.is_main():
            for name, value in _scalars(record).items():
                self._open().log_metric(self.run_id, name.replace("/", "_"), value, step=record.epoch)

    def on_fit_end(self, loop: Loop, result: TrainResult) -> None:
        if self.client is not None:
            self.client.log_metric(self.run_id, "best_epoch", result.best_epoch)

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


def loggers(
    names: Sequence[str], folder: Path | None, run_name: str = "", params: Mapping[str, Any] | None = None
) -> list[Callback]:
    """The callbacks ``--log`` names, writing into ``folder`` (the run's or the comparison's)."""
    if not names:
        return []
    check_loggers(names)
    made: list[Callback] = []
    for name in names:
        if name == "tensorboard" and folder is None:
            warnings.warn("log=tensorboard writes into the run's folder: give out=… (nothing logged)", stacklevel=3)
        elif name == "tensorboard" and folder is not None:
            made.append(TensorBoardLogger(folder, run_name))
        else:
            made.append(MLflowLogger(folder or Path("transferkit"), run_name, params))
    return made
