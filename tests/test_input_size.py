"""`--image-size auto`: the input side the sources call for (BiT-HyperRule), said on the data line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY, make_dataset
from transferkit.backbones import create_backbone
from transferkit.config import FitConfig, from_dict
from transferkit.errors import ConfigError
from transferkit.modalities import get_modality
from transferkit.pipeline import load_data


def _preprocessing(data: Path, **changes: object):  # type: ignore[no-untyped-def]
    cfg = FitConfig(backbone=TINY, **changes)  # type: ignore[arg-type]
    splits = load_data(data, cfg)
    return get_modality("image").preprocessing(create_backbone(TINY), cfg, splits.train)


def test_small_sources_train_at_128_px_and_the_reason_is_said(tmp_path: Path) -> None:
    pre = _preprocessing(make_dataset(tmp_path / "data"))  # 40 px sources
    assert pre.image_size == 128
    assert "sources 40 px; --image-size 160 for the backbone's own" in pre.describe()  # test_efficientnet: 160
    assert "reason" not in pre.to_dict()  # saved with the model: the side, not the story


@pytest.mark.parametrize("strategy", ["linear-probe", "feature-extraction"])
def test_a_frozen_backbone_keeps_its_own_side_on_small_sources(tmp_path: Path, strategy: str) -> None:
    # Frozen features cannot adapt to a smaller input (few-shot digits: 0.933 at 128 px, 0.975 at 224).
    pre = _preprocessing(make_dataset(tmp_path / "data"), strategy=strategy)
    assert pre.image_size == 160
    assert "the backbone's own: a frozen backbone sees best at the size it learned; sources 40 px" in pre.describe()


def test_training_from_random_weights_keeps_the_backbones_own_side(tmp_path: Path) -> None:
    # BiT-HyperRule is a rule for pre-trained weights: MNIST-1,500 scratch 0.703 at 128 px, 0.907 at 224 (seed 0)
    pre = _preprocessing(make_dataset(tmp_path / "data"), strategy="scratch")
    assert pre.image_size == 160 and "from random weights" in pre.describe()


def test_large_sources_keep_the_backbones_own_side(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    for path in data.rglob("*.png"):
        Image.open(path).resize((160, 200)).save(path)
    pre = _preprocessing(data)
    assert pre.image_size == 160 and "the backbone's own; sources 160 px" in pre.describe()


def test_a_number_or_none_decides_and_auto_without_samples_is_the_backbones_own(tmp_path: Path) -> None:
    assert _preprocessing(make_dataset(tmp_path / "data"), image_size=64).image_size == 64
    assert get_modality("image").preprocessing(create_backbone(TINY), FitConfig()).image_size == 160


@pytest.mark.parametrize(("given", "kept"), [("auto", "auto"), ("96", 96), (96, 96), (None, None)])
def test_the_option_takes_auto_or_pixels(given: object, kept: object) -> None:
    assert from_dict({"image_size": given}).image_size == kept


@pytest.mark.parametrize("bad", ["big", 8, 0, True, 2.5])
def test_other_sizes_are_refused_with_the_fix(bad: object) -> None:
    with pytest.raises(ConfigError, match="image_size"):
        from_dict({"image_size": bad})


def _mirror_classes(root: Path, symmetric: bool) -> Path:
    """Two classes of shapes: each always on its own side (digits-like), or either side at random."""
    import numpy as np

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(24):
            image = Image.new("L", (48, 48), 0)
            left = bool(rng.integers(2)) if symmetric else c == 0
            x = 4 if left else 28
            image.paste(255 if c else 128, (x, 4 + c * 20, x + 16, 20 + c * 20))
            image.putpixel((i, 46), 1 + int(rng.integers(60)))  # no two files alike
            image.convert("RGB").save(root / f"c{c}" / f"{i}.png")
    return root


def test_flips_go_off_where_classes_are_not_mirror_symmetric(tmp_path: Path) -> None:
    sided = _preprocessing(_mirror_classes(tmp_path / "sided", symmetric=False))
    assert not sided.flip and "no flips: the classes are not mirror-symmetric" in sided.describe()
    either = _preprocessing(_mirror_classes(tmp_path / "either", symmetric=True))
    assert either.flip and "no flips" not in either.describe()
    assert _preprocessing(tmp_path / "sided", hflip=True).flip  # what the user says stands


def test_the_train_transform_follows_the_decision(tmp_path: Path) -> None:
    cfg = FitConfig(backbone=TINY)
    image = get_modality("image")
    sided = _preprocessing(_mirror_classes(tmp_path / "sided", symmetric=False))
    names = lambda t: [type(step).__name__ for step in t.steps]  # noqa: E731
    assert "RandomHorizontalFlip" not in names(image.transform(sided, is_training=True, cfg=cfg))
    assert "RandomHorizontalFlip" in names(image.transform(sided, True, cfg.replace(hflip=True)))
