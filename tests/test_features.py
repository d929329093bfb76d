"""The feature cache: reused when nothing changed, rebuilt when anything did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit
from tests.conftest import TINY, quick_config
from transferkit.backbones import create_backbone
from transferkit.features import ViewSampler, extract_features
from transferkit.modalities import get_modality
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.modalities.image_io import ImagePreprocessing as Preprocessing
from transferkit.modalities.image_io import eval_transform, train_transform

PRE = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGE = get_modality("image")


def _extract(data: Path, cache: Path, transforms: list[Any] | None = None, model: Any = None) -> Any:
    splits = load_splits(data)
    backbone = model or create_backbone(TINY)
    return extract_features(
        backbone, IMAGE, splits.train, transforms or [eval_transform(PRE)], batch_size=8,
        device=torch.device("cpu"), cache_dir=cache, settings={"pre": PRE.to_dict()},
    )  # fmt: skip


def test_cache_is_reused_with_identical_features(tiny_data: Path, tmp_path: Path) -> None:
    first = _extract(tiny_data, tmp_path)
    second = _extract(tiny_data, tmp_path)
    assert not first.reused and second.reused
    assert np.array_equal(np.asarray(first.values), np.asarray(second.values))
    assert isinstance(second.values, np.memmap)
    uncached = extract_features(
        create_backbone(TINY),
        IMAGE,
        load_splits(tiny_data).train,
        [eval_transform(PRE)],
        batch_size=8,
        device=torch.device("cpu"),
    )
    assert np.allclose(np.asarray(first.values), uncached.values, atol=1e-6)


def test_a_changed_image_or_model_invalidates_the_cache(tiny_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _extract(tiny_data, cache)
    image = next((tiny_data / "class_0").glob("*.png"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _extract(tiny_data, cache).reused  # touched, not changed: the key is the content
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    assert not _extract(tiny_data, cache).reused
    other = create_backbone(TINY)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert not _extract(tiny_data, cache, model=other).reused
    assert len(list(cache.iterdir())) == 3


def test_augmented_views_differ_and_are_rebuilt_identically(tiny_data: Path, tmp_path: Path) -> None:
    views = [train_transform(PRE)] * 3
    a = _extract(tiny_data, tmp_path / "a", views)
    b = _extract(tiny_data, tmp_path / "b", views)
    assert a.values.shape[0] == 3
    assert not np.allclose(a.values[0], a.values[1])
    assert np.array_equal(np.asarray(a.values), np.asarray(b.values))


def test_view_sampler_visits_every_image_once_per_epoch() -> None:
    sampler = ViewSampler(10, 3, torch.Generator().manual_seed(0))
    indices = list(sampler)
    assert sorted(i % 10 for i in indices) == list(range(10))
    assert {i // 10 for i in indices} <= {0, 1, 2}


@pytest.mark.parametrize("options", [{"augment": False}, {"augment": True, "cache_views": 2}])
def test_second_fit_reuses_the_cache_with_the_same_result(
    options: dict[str, Any],
    tiny_data: Path,
    tiny_config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))  # empty: other tests' identical images share

    said = [Console(record=True, width=200), Console(record=True, width=200)]
    a = transferkit.fit(tiny_data, strategy="feature-extraction", console=said[0], **{**tiny_config, **options})
    b = transferkit.fit(tiny_data, strategy="feature-extraction", console=said[1], **{**tiny_config, **options})
    first, second = (c.export_text() for c in said)
    cached_sets = 3 if options["augment"] else 2  # clean train (probe init), [augmented train views,] val
    assert "reusing cache" not in first and second.count("features: reusing cache") == cached_sets
    assert [h["val_accuracy"] for h in a.history] == [h["val_accuracy"] for h in b.history]
    c = transferkit.fit(tiny_data, strategy="feature-extraction", cache=False, **{**tiny_config, **options})
    assert [h["train_loss"] for h in a.history] == pytest.approx([h["train_loss"] for h in c.history], rel=1e-5)


def test_a_cached_array_changed_on_disk_is_recomputed_not_trained_on(tmp_path: Path) -> None:
    from tests.conftest import TINY_IMAGE, make_dataset
    from transferkit.backbones import create_backbone
    from transferkit.features import extract_features
    from transferkit.modalities import get_modality
    from transferkit.pipeline import load_data

    data = make_dataset(tmp_path / "data")
    cfg = quick_config(backbone=TINY, image_size=TINY_IMAGE)
    samples = load_data(data, cfg).train
    image, backbone = get_modality("image"), create_backbone(TINY)
    pre = image.preprocessing(backbone, cfg)
    run = lambda: extract_features(backbone, image, samples, [image.transform(pre, False)], batch_size=8,  # noqa: E731
                                   device=torch.device("cpu"), cache_dir=tmp_path / "cache")  # fmt: skip
    expected = np.array(run().values)  # a copy: the file under the map is replaced below
    (npy,) = (tmp_path / "cache").rglob("features.npy")
    np.save(npy.with_name("other.npy"), np.zeros((1, 2, 3), np.float32))  # another shape: an edit, another version
    os.replace(npy.with_name("other.npy"), npy)
    again = run()
    assert not again.reused and np.allclose(again.values, expected)
