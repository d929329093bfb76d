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

import numpy as np
import pytest
import timm
import torch
from hypothesis import settings
from PIL import Image, ImageDraw
from torch import nn

from transferkit.backbones import BackboneSpec, register_backbone
from transferkit.config import FitConfig
from transferkit.modalities.image import channels_last

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

TINY = "tiny.test"  # timm's test_efficientnet: ~100k parameters, with BatchNorm, 6 groups
TINY_IMAGE = 32


def _tiny_image_backbone(pretrained: bool) -> nn.Module:
    """timm's test_efficientnet; "pretrained" stands in for downloaded weights: timm's own
    initialisation, the same every time."""
    with torch.random.fork_rng(devices=[]):
        if pretrained:
            torch.manual_seed(1234)
        return channels_last(timm.create_model("test_efficientnet", num_classes=0))


register_backbone(BackboneSpec(TINY, "image", _tiny_image_backbone, "tiny test backbone", "test_efficientnet"))


# Tests train a few dozen items (3 steps an epoch), where the default --min-steps 50 would
# stretch every phase to ~17 epochs: each test's config says min_steps 0 through these (tests of
# the stretch leave them out). Nothing rewrites the defaults a user gets.
QUICK: dict[str, Any] = {"min_steps": 0}
QUICK_FLAGS = ["--min-steps", "0"]


def quick_config(**changes: Any) -> FitConfig:
    """The run config a test trains with: epochs alone decide, every other field as given."""
    return FitConfig(**{**QUICK, **changes})


COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 200, 40)]


def make_image(label: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 60, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(2, size // 3, 2))
    box = (x, y, x + size // 2, y + size // 2)
    colour = COLOURS[label % len(COLOURS)]
    if label % 2 == 0:
        draw.rectangle(box, fill=colour)
    else:
        draw.ellipse(box, fill=colour)
    return image


def make_dataset(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0, layout: str = "flat") -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            if layout == "flat":
                folder = root / f"class_{c}"
            else:
                split = "val" if i % 4 == 0 else "train"
                folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            make_image(c, rng).save(folder / f"{i:03d}.png")
    return root


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

TINY_TEXT = "tiny-text.test"  # a 2-layer, 32-wide BERT with the offline MiniLM tokenizer


def _tiny_encoder(pretrained: bool) -> nn.Module:
    from transformers import BertConfig, BertModel

    from transferkit.modalities.text_encoder import TextEncoder

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 if pretrained else int(torch.randint(0, 2**31, ())))
        encoder = BertModel(config, add_pooling_layer=False)
    return TextEncoder(encoder, "mean", max_length=32)


def _minilm_tokenizer() -> str:
    from transferkit.modalities.text_encoder import minilm_source

    return minilm_source()


register_backbone(BackboneSpec(TINY_TEXT, "text", _tiny_encoder, "tiny text test backbone", source=_minilm_tokenizer))

TOPICS = {
    "sport": ["match", "goal", "team", "coach", "league", "striker", "season", "win"],
    "money": ["bank", "shares", "profit", "market", "price", "investors", "bond", "tax"],
    "music": ["album", "band", "song", "concert", "guitar", "singer", "tour", "chart"],
}
FILLER = ["the", "a", "today", "after", "with", "and", "new", "big", "last", "week", "report", "said"]


def make_text_table(path: Path, per_class: int = 12, seed: int = 0) -> Path:
    """A CSV of short sentences whose topic words give the class away."""
    rng = np.random.default_rng(seed)
    rows = []
    for topic, words in TOPICS.items():
        for _ in range(per_class):
            tokens = list(rng.choice(words, 3)) + list(rng.choice(FILLER, 5))
            rng.shuffle(tokens)
            rows.append(f'"{" ".join(tokens)}",{topic}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


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

TINY_AUDIO = "tiny-audio.test"  # a 2-layer, 16-wide GE2E-shaped LSTM encoder, seeded


def _tiny_audio(pretrained: bool) -> nn.Module:
    from transferkit.modalities.audio_encoders import GE2EEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 if pretrained else int(torch.randint(0, 2**31, ())))
        model = GE2EEncoder(hidden=16, layers=2, embedding=16)
    model.clip_seconds = 0.5  # type: ignore[assignment]
    return model


register_backbone(BackboneSpec(TINY_AUDIO, "audio", _tiny_audio, "tiny audio test backbone"))


def make_tones(root: Path, classes: int = 3, per_class: int = 8, seed: int = 0, seconds: float = 0.4) -> Path:
    """Short noisy sine tones as .wav files; the class is the pitch."""
    import soundfile

    rng = np.random.default_rng(seed)
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    for c in range(classes):
        (root / f"tone_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pitch = 250.0 * (c + 1) * (1 + rng.uniform(-0.03, 0.03))
            wave = 0.3 * np.sin(2 * np.pi * pitch * t + rng.uniform(0, 6.3)) + 0.01 * rng.standard_normal(len(t))
            soundfile.write(root / f"tone_{c}" / f"{i:03d}.wav", wave.astype(np.float32), rate)
    return root


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
