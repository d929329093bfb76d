"""`transferkit lr-find`: the LR range test over each phase of a strategy's plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import QUICK, TINY, TINY_IMAGE
from tests.test_cli import run_cli
from transferkit.config import FitConfig
from transferkit.errors import TransferkitError
from transferkit.pipeline import SingleLabel, fit_to_data, load_data, prepare
from transferkit.workflows.lr_find import _sweep, lr_find, suggested_options

TINY_FIT = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "seed": 0, **QUICK}


def test_each_phase_is_swept_from_the_same_start_and_the_weights_put_back(tiny_data: Path) -> None:
    cfg = FitConfig(strategy="two-phase", **TINY_FIT)
    sweeps = lr_find(tiny_data, cfg, steps=20)
    assert [s.phase for s in sweeps] == ["head", "fine-tune"]
    for sweep in sweeps:
        assert sweep.lrs == sorted(sweep.lrs) and len(sweep.lrs) == len(sweep.losses) >= 5
        assert sweep.suggestion is None or sweep.lrs[0] <= sweep.suggestion * 10 <= sweep.lrs[-1]
    head, fine_tune = sweeps
    options = suggested_options(sweeps, cfg)
    if head.factor is not None:  # the head phase runs at --lr, the fine-tune phase at --backbone-lr
        assert options["lr"] == pytest.approx(cfg.lr * head.factor)
    if fine_tune.factor is not None:
        assert options["backbone_lr"] == pytest.approx(cfg.backbone_lr * fine_tune.factor)


def test_the_sweep_puts_the_weights_back(tiny_data: Path) -> None:
    cfg = fit_to_data(FitConfig(strategy="full", **TINY_FIT), load_data(tiny_data, FitConfig(**TINY_FIT)))
    ready = prepare(load_data(tiny_data, cfg), cfg, SingleLabel(3))
    before = {k: v.clone() for k, v in ready.model.state_dict().items()}
    swept = _sweep(ready, ready.plan.phases[0], steps=8, low=1e-3, high=10.0)
    assert len(swept.losses) >= 2  # it did train, at LRs that move every weight
    after = ready.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_writes_the_plot_and_json(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plot = tmp_path / "sweep.png"
    tiny = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8"]
    sweep = ["lr-find", tiny_data, "--strategy", "full", "--steps", "15", "--plot", plot, "--json"]
    code, out, err = run_cli([*sweep, *tiny], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert [s["phase"] for s in result["sweeps"]] == ["full"] and plot.read_bytes()[:4] == b"\x89PNG"


def test_a_strategy_without_sgd_has_no_learning_rate_to_find(tiny_data: Path) -> None:
    with pytest.raises(TransferkitError, match="no learning rate"):
        lr_find(tiny_data, FitConfig(strategy="linear-probe", **TINY_FIT), steps=10)


def test_fit_lr_auto_sweeps_first_and_trains_at_the_suggestion(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", "--epochs", "1", "--no-augment"]
    code, _, err = run_cli(
        ["fit", tiny_data, "--strategy", "feature-extraction", "--lr", "auto", "--json", "--out", tmp_path / "run",
         *tiny], capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert "sweeping phase head" in err and "--lr auto:" in err
    chosen = json.loads((tmp_path / "run" / "config.json").read_text())["fit_config"]["lr"]
    said = err.split("--lr auto:")[1].split("\n")[0]
    assert ("lr " in said) == (chosen != FitConfig().lr)  # the sweep's suggestion is what trained
    for bad, message in ((["--lr", "fast"], "must be a number, or auto"), (["--lr", "auto", "--resume"], "auto with")):
        code, _, err = run_cli(["fit", tiny_data, "--out", tmp_path / "other", *bad, *tiny], capsys, monkeypatch)
        assert code == 2 and message in " ".join(err.split()), err
