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
