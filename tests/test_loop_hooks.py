"""The loop's per-batch hooks (#43): after backward, before the optimizer step (gradients
unscaled) and after it, dispatched by one fan-out; gradient clipping ships as a callback that
changes training as documented and resumes bit-identically; one `should_stop`, reset per phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import transferkit
from tests.conftest import interrupted_in_epoch, make_dataset
from tests.test_events import RUN, _train_with
from transferkit.events import HOOKS, Callback, Loop


def test_the_dispatcher_fans_out_every_hook_a_callback_has() -> None:
    assert set(HOOKS) == {name for name in dir(Callback) if name.startswith("on_")}


class BatchHooks(Callback):
    order = 10  # after the built-in variations (clipping): sees what the optimizer will step with

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.norms: list[float] = []

    def on_before_backward(self, loop: Loop, loss: torch.Tensor) -> None:
        self.calls.append("before_backward")

    def on_after_backward(self, loop: Loop) -> None:
        self.calls.append("after_backward")

    def on_before_optimizer_step(self, loop: Loop, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("before_optimizer_step")
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    def on_after_optimizer_step(self, loop: Loop) -> None:
        self.calls.append(f"after_optimizer_step:{loop.step}")

    def on_batch_end(self, loop: Loop, loss: torch.Tensor) -> None:
        self.calls.append("batch_end")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("hooks") / "data", classes=2, per_class=8)


def test_each_batch_tells_backward_step_and_end_in_order(data: Path) -> None:
    hooks = BatchHooks()
    _train_with([hooks], data, strategy="full", epochs=1)
    assert hooks.calls[:10] == [
        "before_backward", "after_backward", "before_optimizer_step", "after_optimizer_step:1", "batch_end",
        "before_backward", "after_backward", "before_optimizer_step", "after_optimizer_step:2", "batch_end",
    ]  # fmt: skip


def test_clip_grad_caps_the_norm_the_optimizer_steps_with(data: Path) -> None:
    free, clipped = BatchHooks(), BatchHooks()
    a = _train_with([free], data, strategy="full", epochs=1, lr=0.05, backbone_lr=0.05, restore_best=False)
    b = _train_with(
        [clipped], data, strategy="full", epochs=1, lr=0.05, backbone_lr=0.05, clip_grad=1e-3, restore_best=False
    )
    assert max(free.norms) > 1e-3 and max(clipped.norms) <= 1e-3 * (1 + 1e-4)
    after_a, after_b = a.model.state_dict(), b.model.state_dict()
    moved = [not torch.equal(after_a[k], after_b[k]) for k in after_a]
    assert any(moved)  # clipping changed what was learnt


def test_a_clipped_run_resumes_bit_identically(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options: dict[str, Any] = {**RUN, "strategy": "two-phase", "epochs": 3, "clip_grad": 0.05, "restore_best": False}
    reference = transferkit.fit(data, out=tmp_path / "reference", **options)
    with interrupted_in_epoch(3, monkeypatch):
        transferkit.fit(data, out=tmp_path / "run", **options)
    resumed = transferkit.fit(data, out=tmp_path / "run", resume=True, **options)
    a, b = reference.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_early_stop_in_the_head_phase_says_so_once(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: a two-phase fit whose head phase stops early (--patience 1) printed
    "early stop" after every later fine-tune epoch while training went on."""
    from rich.console import Console

    from transferkit.config import FitConfig
    from transferkit.pipeline import SingleLabel, fit_to_data, load_data, run

    cfg = FitConfig(**{**RUN, "strategy": "two-phase", "epochs": 8, "head_epochs": 6, "patience": 1, "lr": 1e-6})
    splits = load_data(data, cfg)
    console = Console(record=True, width=200)
    trained = run(splits, fit_to_data(cfg, splits), SingleLabel(len(splits.classes)), console=console)
    text = console.export_text()
    head, tune = trained.result.phases
    assert head.stopped_early and tune.epochs_run >= 1
    assert text.count("early stop") <= len(trained.result.phases)


def test_ema_scores_and_saves_the_average_and_resumes_bit_identically(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ema: the saved model is the average of the weights after each step (here, with
    restore-best off, the last one), not the raw weights; and the average rides in the
    checkpoint, so an interrupted run ends with the same bits."""
    options: dict[str, Any] = {**RUN, "strategy": "two-phase", "epochs": 3, "ema": 0.9, "restore_best": False}
    reference = transferkit.fit(data, out=tmp_path / "reference", **options)
    plain = transferkit.fit(data, out=tmp_path / "plain", **{**options, "ema": None})
    a, p = reference.model.model.state_dict(), plain.model.model.state_dict()
    assert any(not torch.equal(a[k], p[k]) for k in a if a[k].is_floating_point())  # the average is what was saved
    with interrupted_in_epoch(3, monkeypatch):
        transferkit.fit(data, out=tmp_path / "run", **options)
    resumed = transferkit.fit(data, out=tmp_path / "run", resume=True, **options)
    b = resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_ema_of_zero_decay_is_the_raw_weights(data: Path) -> None:
    """avg = 0·avg + 1·weights after every step: the same model as no averaging."""
    one = _train_with([], data, strategy="full", epochs=2, restore_best=False)
    zero = _train_with([], data, strategy="full", epochs=2, restore_best=False, ema=0.0)
    a, b = one.model.state_dict(), zero.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
