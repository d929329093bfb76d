"""The loop speaks through events: every hook fires in order, and the loggers write what users read."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import QUICK, TINY, TINY_IMAGE, make_dataset
from transferkit.api import fit
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.events import Callback, EpochRecord, Loop, TrainResult

RUN = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "seed": 0, "augment": False, **QUICK}


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, loop: Loop) -> None:
        self.events.append("fit_start")

    def on_phase_start(self, loop: Loop) -> None:
        self.events.append(f"phase_start:{loop.phase.name if loop.phase else '?'}")

    def on_batch_end(self, loop: Loop, loss: torch.Tensor) -> None:
        if not self.events[-1].startswith("batch"):
            self.events.append("batch")

    def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
        self.events.append(f"epoch:{record.epoch}")

    def on_checkpoint(self, loop: Loop, boundary: bool) -> None:
        self.events.append("boundary" if boundary else "checkpoint")

    def on_phase_end(self, loop: Loop) -> None:
        self.events.append("phase_end")

    def on_fit_end(self, loop: Loop, result: TrainResult) -> None:
        self.events.append(f"fit_end:{result.best_epoch >= 0}")

    def close(self) -> None:
        self.events.append("close")


def _train_with(callbacks: list[Callback], data: Path, **options: Any) -> Any:
    from transferkit.pipeline import SingleLabel, fit_to_data, load_data, run

    cfg = FitConfig(**{**RUN, **options})
    splits = load_data(data, cfg)
    return run(splits, fit_to_data(cfg, splits), SingleLabel(len(splits.classes)), callbacks=callbacks)


def test_every_event_fires_in_order_and_close_comes_last(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    recorder = Recorder()
    _train_with([recorder], data, strategy="two-phase", epochs=2, head_epochs=1)
    assert recorder.events == [
        "fit_start",
        "phase_start:head", "batch", "epoch:1", "checkpoint", "boundary", "phase_end",
        "phase_start:fine-tune", "batch", "epoch:2", "checkpoint", "boundary", "phase_end",
        "fit_end:True", "close",
    ]  # fmt: skip


def test_a_failing_run_still_closes_every_callback(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=8)

    class Boom(Callback):
        def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
            raise RuntimeError("boom")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        _train_with([Boom(), recorder], data, strategy="full", epochs=1)
    assert recorder.events[-1] == "close"


def test_a_callback_can_stop_a_phase(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=8)

    class StopAfterOne(Callback):
        def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
            loop.should_stop = True  # the documented flag (the phase summary is the loop's record, not a switch)

    trained = _train_with([StopAfterOne()], data, strategy="full", epochs=3)
    assert [p.epochs_run for p in trained.result.phases] == [1]


@pytest.mark.skipif(importlib.util.find_spec("tbparse") is None, reason="needs tbparse (the log extra)")
def test_tensorboard_logs_scalars_and_learning_rates(tmp_path: Path) -> None:
    from tbparse import SummaryReader

    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    fit(data, **{**RUN, "strategy": "two-phase", "epochs": 2, "head_epochs": 1, "log": ("tensorboard",)},
        out=tmp_path / "run")  # fmt: skip
    scalars = SummaryReader(str(tmp_path / "run" / "tensorboard")).scalars
    tags = set(scalars["tag"])
    assert {"train/loss", "val/accuracy", "val/macro_f1", "lr/head", "lr/backbone"} <= tags
    assert sorted(scalars[scalars["tag"] == "val/accuracy"]["step"]) == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow (the log extra)")
@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_mlflow_logs_params_and_metrics_to_a_local_store(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # MLflow 3's default local store is sqlite; its file store still works when asked for by name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if store == "sqlite" else (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    fit(data, **{**RUN, "strategy": "full", "epochs": 2, "log": ("mlflow",)}, out=tmp_path / "run")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("transferkit").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "full"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]


def test_an_unknown_logger_is_refused_before_any_compute() -> None:
    with pytest.raises(ConfigError, match="log="):
        FitConfig(log=("wandb",))


def test_the_history_files_follow_the_run_epoch_by_epoch(tmp_path: Path) -> None:
    from transferkit.pipeline import SingleLabel, fit_to_data, load_data, run

    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    cfg = FitConfig(**{**RUN, "strategy": "full", "epochs": 3})
    splits = load_data(data, cfg)
    seen: list[int] = []

    class Watch(Callback):
        order = 30  # after the history files are written

        def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
            rows = json.loads((tmp_path / "run" / "history.json").read_text())
            seen.append(len(rows))
            assert (tmp_path / "run" / "history.csv").read_text().count("\n") == len(rows) + 1

    (tmp_path / "run").mkdir()
    run(splits, fit_to_data(cfg, splits), SingleLabel(2), out=tmp_path / "run", callbacks=[Watch()])
    assert seen == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard (the log extra)")
def test_every_run_of_a_comparison_logs_beside_the_others(tmp_path: Path) -> None:
    from transferkit.workflows.compare import CompareConfig, compare

    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    base = FitConfig(**{**RUN, "log": ("tensorboard",)})
    cfg = CompareConfig(backbones=(TINY,), strategies=("feature-extraction", "full"), budget_epochs=1, seeds=1,
                        base=base)  # fmt: skip
    compare(data, cfg, out=tmp_path / "cmp")
    logged = sorted(p.parent.parent.name for p in (tmp_path / "cmp").rglob("events.out.tfevents.*"))
    assert logged == [f"{TINY}__feature-extraction__seed0", f"{TINY}__full__seed0"]  # tensorboard --logdir cmp


def test_tensorboard_without_a_run_folder_says_nothing_was_logged(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    data = make_dataset(tmp_path / "data", classes=2, per_class=8)
    with pytest.warns(UserWarning, match="log=tensorboard writes into the run's folder"):
        fit(data, **{**RUN, "strategy": "feature-extraction", "epochs": 1, "log": ("tensorboard",)})
