"""Interrupted runs resume to exactly the weights an uninterrupted run ends with."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import transferkit
from tests.conftest import QUICK, QUICK_FLAGS, ROOT, TINY, TINY_IMAGE, cli_command, cli_env, kill_after_first_checkpoint
from transferkit import training
from transferkit.checkpoint import load_checkpoint
from transferkit.errors import TransferkitError
from transferkit.ownership import LOCK, MARKER
from transferkit.runfolder import RunFolder

TWO_PHASE = {"strategy": "two-phase", "epochs": 4, "head_epochs": 2, "unfreeze": 2, "restore_best": False, **QUICK}


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th training epoch raise KeyboardInterrupt, as Ctrl-C would."""
    real = training.train_one_epoch
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> tuple[float, float]:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", flaky)


@pytest.mark.parametrize(
    ("augment", "stop_at"),
    [(True, 2), (True, 3), (True, 4), (False, 2), (False, 3)],
    ids=["aug-mid-head", "aug-phase-boundary", "aug-mid-finetune", "cached-mid-head", "cached-phase-boundary"],
)
def test_resume_matches_an_uninterrupted_run(
    augment: bool,
    stop_at: int,
    tiny_data: Path,
    tiny_config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = {**tiny_config, **TWO_PHASE, "augment": augment}
    reference = transferkit.fit(tiny_data, out=tmp_path / "reference", **options)

    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_at)
        with pytest.raises(KeyboardInterrupt):
            transferkit.fit(tiny_data, out=tmp_path / "run", **options)
    saved = load_checkpoint(tmp_path / "run" / RunFolder.CHECKPOINT)
    assert saved.loop.epoch == stop_at - 1  # at most the current epoch is lost

    resumed = transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **options)
    a, b = reference.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert [h["val_accuracy"] for h in reference.history] == [h["val_accuracy"] for h in resumed.history]
    assert [p["name"] for p in resumed.phases] == ["head", "fine-tune"]
    assert not (tmp_path / "run" / RunFolder.CHECKPOINT).exists(), "a finished run drops its checkpoint"


def test_resume_refuses_other_settings_and_finished_runs(
    tiny_data: Path, tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {**tiny_config, **TWO_PHASE}
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            transferkit.fit(tiny_data, out=tmp_path / "run", **options)
    with pytest.raises(TransferkitError, match=r"cannot resume with other settings \(lr: 0.001 → 0.01\)"):
        transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **{**options, "lr": 0.01})
    transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **options)
    with pytest.raises(TransferkitError, match="finished run; nothing to resume"):
        transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **options)


def test_a_truncated_checkpoint_is_reported_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / RunFolder.CHECKPOINT
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(TransferkitError, match="not a readable checkpoint"):
        load_checkpoint(path)


# A real process, really killed: the CLI with the tiny test backbone registered.
def _fit_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["fit", str(data), "--out", str(out), "--backbone", TINY, "--image-size", str(TINY_IMAGE)]
    args += ["--batch-size", "4", "--strategy", "two-phase", "--epochs", "6", "--head-epochs", "2", "--seed", "3"]
    return cli_command(*args, *QUICK_FLAGS, *extra)


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    subprocess.run(_fit_cmd(tiny_data, tmp_path / "ref"), check=True, capture_output=True, cwd=ROOT, env=cli_env())
    run = tmp_path / "run"
    kill_after_first_checkpoint(_fit_cmd(tiny_data, run), run / RunFolder.CHECKPOINT)
    done = subprocess.run(_fit_cmd(tiny_data, run, "--resume"), capture_output=True, text=True, cwd=ROOT, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_disk_full_is_reported_and_the_last_checkpoint_survives(
    tiny_data: Path, tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import SafetensorError

    from transferkit import checkpoint

    real_save = checkpoint.save_file
    calls = {"n": 0}

    def fills_up(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint; what safetensors raises on a full disk:
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    with pytest.raises(TransferkitError, match=r"disk full .* previous file is intact"):
        transferkit.fit(tiny_data, out=tmp_path / "run", **{**tiny_config, **TWO_PHASE})
    assert load_checkpoint(tmp_path / "run" / RunFolder.CHECKPOINT).loop.epoch == 1
    left = [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".") and p.name not in (MARKER, LOCK)]
    assert not left, "no temporary file left behind"
