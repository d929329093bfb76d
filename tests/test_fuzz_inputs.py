"""Fuzz: fit, evaluate and predict over folders of messy files see only clear messages.

Hypothesis builds class folders mixing good images with random bytes, wrong extensions, empty
files, directories named like images, hidden files and symlink loops; every command must end
with exit 0 or a one-line error (exit 2), never a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import QUICK_FLAGS, TINY, TINY_IMAGE, make_image
from tests.test_cli import run_cli

FAST = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", *QUICK_FLAGS]
KINDS = ("random_png", "random_jpg", "empty", "dir_named_jpg", "text_as_png", "hidden", "loop", "notes")


def _write(folder: Path, kind: str, index: int, rng: np.random.Generator, label: int) -> None:
    name = f"{kind}_{index}"
    if kind == "good":
        make_image(label, rng).save(folder / f"{name}.png")
    elif kind in ("random_png", "random_jpg"):
        (folder / f"{name}.{kind[-3:]}").write_bytes(
            rng.integers(0, 256, int(rng.integers(1, 400))).astype(np.uint8).tobytes()
        )
    elif kind == "empty":
        (folder / f"{name}.png").write_bytes(b"")
    elif kind == "dir_named_jpg":
        (folder / f"{name}.jpg").mkdir()
    elif kind == "text_as_png":
        (folder / f"{name}.png").write_text("not an image at all")
    elif kind == "hidden":
        (folder / f"._{name}.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    elif kind == "loop":
        os.symlink(folder.parent, folder / name, target_is_directory=True)
    else:
        (folder / f"{name}.txt").write_text("a stray note")


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.lists(st.lists(st.sampled_from(KINDS), max_size=6), min_size=2, max_size=3),  # a list per class
    seed=st.integers(0, 2**16),
)
def test_messy_folders_give_results_or_one_line_errors(
    layout: list[list[str]], seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    root = tmp_path / f"case{seed}"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for label, kinds in enumerate(layout):
        folder = root / "data" / f"class_{label}"
        folder.mkdir(parents=True)
        goods = 0 if label == 2 else 3  # two learnable classes; a third, if any, of messy files only
        for index, kind in enumerate(["good"] * goods + kinds):
            _write(folder, kind, index, rng, label)
    run = root / "run"
    code, _, err = run_cli(
        ["fit", root / "data", *FAST, "--strategy", "linear-probe", "--out", run], capsys, monkeypatch
    )
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert err.startswith("error:") and not (run / "model.safetensors").exists()
        return
    for args in (
        ["evaluate", run, root / "data"],
        ["predict", run, root / "data"],
        ["predict", run, root / "data" / "class_0" / "good_0.png"],
    ):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code in (0, 2) and "Traceback" not in err, (args, err)
