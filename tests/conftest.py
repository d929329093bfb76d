"""Shared fixtures: a tiny registered backbone with deterministic 'pretrained' weights, and
small generated image folders whose classes are learnable (colour and shape differ)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

from transferkit.config import FitConfig
from transferkit.testing import (
    TINY_AUDIO_BACKBONE,
    TINY_IMAGE_BACKBONE,
    TINY_IMAGE_SIZE,
    TINY_TEXT_BACKBONE,
    make_images,
    register_tiny_backbones,
)
from transferkit.testing import make_image as make_image  # re-exported: tests import the makers from here
from transferkit.testing import make_text_table as make_text_table
from transferkit.testing import make_tones as make_tones

# The suite gives the same answer on every clone: property tests draw the same examples each run
# (a fresh random draw once failed CI on a case no change had touched). To hunt for new cases,
# run with TRANSFERKIT_HYPOTHESIS=explore and pin what it finds with @example.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("TRANSFERKIT_HYPOTHESIS", "repeatable"))

# Console lines are read back by tests: one width everywhere (a pytest-xdist worker has no
# terminal and rich would wrap at 80 columns there, but not in a terminal).
os.environ["COLUMNS"] = "200"
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: two workers share the cores, not 2 × 2 threads
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# The tiny backbones and data makers are public (transferkit.testing): a plugin's tests use the same.
register_tiny_backbones()
TINY = TINY_IMAGE_BACKBONE  # timm's test_efficientnet: ~100k parameters, with BatchNorm, 6 groups
TINY_IMAGE = TINY_IMAGE_SIZE


# Tests train a few dozen items (3 steps an epoch), where the default --min-steps 50 would
# stretch every phase to ~17 epochs: each test's config says min_steps 0 through these (tests of
# the stretch leave them out). Nothing rewrites the defaults a user gets.
QUICK: dict[str, Any] = {"min_steps": 0}
QUICK_FLAGS = ["--min-steps", "0"]


def quick_config(**changes: Any) -> FitConfig:
    """The run config a test trains with: epochs alone decide, every other field as given."""
    return FitConfig(**{**QUICK, **changes})


make_dataset = make_images


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def tiny_config() -> dict[str, object]:
    """FitConfig overrides that keep a fit well under a second or two per epoch."""
    return {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "epochs": 2, "seed": 0, **QUICK}


@pytest.fixture(scope="session")
def tiny_compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """One small comparison (4 strategies × 2 seeds) shared by the compare and report tests."""
    from transferkit.workflows.compare import CompareConfig, compare

    root = tmp_path_factory.mktemp("cmp")
    data = make_dataset(root / "data", classes=3, per_class=12)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    strategies = ("linear-probe", "feature-extraction", "two-phase", "scratch")
    cfg = CompareConfig(backbones=(TINY,), strategies=strategies, budget_epochs=2, seeds=2, base=base)
    result = compare(data, cfg, out=root / "out", best_out=root / "best")
    return root, data, result


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write the user's feature cache, nor the machine key in their config folder."""
    os.environ["TRANSFERKIT_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))


# --------------------------------------------------------------------------- text

TINY_TEXT = TINY_TEXT_BACKBONE  # a 2-layer, 32-wide BERT with the offline MiniLM tokenizer


@pytest.fixture
def tiny_text(tmp_path: Path) -> Path:
    return make_text_table(tmp_path / "news.csv")


# --------------------------------------------------------------------------- real processes

ROOT = Path(__file__).resolve().parent.parent
CLI = "import tests.conftest; from transferkit.cli import main; main()"  # the CLI with the tiny backbones


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def kill_after_first_checkpoint(command: list[str], checkpoint: Path, timeout: float = 120) -> None:
    """Start ``command``, SIGKILL it as soon as ``checkpoint`` exists, and check it did exist."""
    process = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the process finished before it could be killed"


# --------------------------------------------------------------------------- audio

TINY_AUDIO = TINY_AUDIO_BACKBONE  # a 2-layer, 16-wide GE2E-shaped LSTM encoder, seeded


@contextlib.contextmanager
def interrupted_in_epoch(n: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Raise KeyboardInterrupt (as Ctrl-C would) when the loop starts its ``n``-th epoch; the
    ``with`` body must raise it, leaving the checkpoint of the epochs before."""
    from transferkit import training

    real, calls = training.train_one_epoch, {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> tuple[float, float]:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_one_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            yield
