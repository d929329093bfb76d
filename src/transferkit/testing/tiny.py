"""Tiny parts to test with: backbones of a few thousand random weights, one per built-in
modality, and small generated data whose classes are learnable (colour and shape; topic
words; pitch). A third-party modality or strategy is checked on these in seconds
(:mod:`transferkit.testing.checks`); nothing here is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from transferkit.backbones import BackboneSpec, register_backbone, registered_names
from transferkit.extras import require

TINY_IMAGE_BACKBONE = "tiny.test"  # timm's test_efficientnet: ~100k parameters, with BatchNorm, 6 groups
TINY_IMAGE_SIZE = 32
TINY_TEXT_BACKBONE = "tiny-text.test"  # a 2-layer, 32-wide BERT with the offline MiniLM tokenizer
TINY_AUDIO_BACKBONE = "tiny-audio.test"  # a 2-layer, 16-wide GE2E-shaped LSTM encoder, seeded


def _tiny_image_backbone(pretrained: bool) -> nn.Module:
    """timm's test_efficientnet; "pretrained" stands in for downloaded weights: timm's own
    initialisation, the same every time."""
    import timm

    from transferkit.modalities.image import channels_last

    with torch.random.fork_rng(devices=[]):
        if pretrained:
            torch.manual_seed(1234)
        return channels_last(timm.create_model("test_efficientnet", num_classes=0))


def _tiny_text_encoder(pretrained: bool) -> nn.Module:
    from transferkit.modalities.text_encoder import TextEncoder

    transformers = require("transformers", "the tiny text backbone")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 if pretrained else int(torch.randint(0, 2**31, ())))
        encoder = transformers.BertModel(config, add_pooling_layer=False)
    return TextEncoder(encoder, "mean", max_length=32)


def _minilm_tokenizer() -> str:
    from transferkit.modalities.text_encoder import minilm_source

    return minilm_source()


def _tiny_audio_encoder(pretrained: bool) -> nn.Module:
    from transferkit.modalities.audio_encoders import GE2EEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 if pretrained else int(torch.randint(0, 2**31, ())))
        model = GE2EEncoder(hidden=16, layers=2, embedding=16)
    model.clip_seconds = 0.5  # type: ignore[assignment]
    return model


def register_tiny_backbones() -> None:
    """Register the three tiny backbones (once; a second call changes nothing)."""
    if TINY_IMAGE_BACKBONE in registered_names():
        return
    register_backbone(
        BackboneSpec(TINY_IMAGE_BACKBONE, "image", _tiny_image_backbone, "tiny test backbone", "test_efficientnet")
    )
    text = "tiny text test backbone"
    register_backbone(BackboneSpec(TINY_TEXT_BACKBONE, "text", _tiny_text_encoder, text, source=_minilm_tokenizer))
    register_backbone(BackboneSpec(TINY_AUDIO_BACKBONE, "audio", _tiny_audio_encoder, "tiny audio test backbone"))


# --------------------------------------------------------------------------- data

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 200, 40)]


def make_image(label: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A square (even classes) or a disc (odd) in the class's colour on a dark background."""
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


def make_images(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0, layout: str = "flat") -> Path:
    """Class folders of PNGs under ``root`` (``layout="split"``: under train/ and val/)."""
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


def make_tones(root: Path, classes: int = 3, per_class: int = 8, seed: int = 0, seconds: float = 0.4) -> Path:
    """Short noisy sine tones as .wav files; the class is the pitch."""
    soundfile = require("soundfile", "writing tones")
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
