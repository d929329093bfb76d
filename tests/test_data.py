from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_dataset
from transferkit.demos import write_digits_demo
from transferkit.errors import DataError
from transferkit.modalities.image import load_image_eval_samples as load_eval_samples
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.modalities.image_io import open_rgb


def test_flat_layout_is_split_stratified_and_seeded(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, classes=3, per_class=10)
    a = load_splits(root, val_fraction=0.2, seed=1)
    b = load_splits(root, val_fraction=0.2, seed=1)
    c = load_splits(root, val_fraction=0.2, seed=2)
    assert a.classes == ("class_0", "class_1", "class_2")
    assert a.counts("val") == {"class_0": 2, "class_1": 2, "class_2": 2}
    assert a.counts("train") == {"class_0": 8, "class_1": 8, "class_2": 8}
    assert a.val == b.val and a.val != c.val
    assert not {s.path for s in a.train} & {s.path for s in a.val}


def test_train_val_test_layout(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, classes=2, per_class=8, layout="split")
    for c in ("class_0", "class_1"):
        (root / "test" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(root / "test" / c / "t.png")
    splits = load_splits(root)
    assert len(splits.train) == 12 and len(splits.val) == 4 and len(splits.test) == 2
    assert [s.path.parent.parent.name for s in splits.test] == ["test", "test"]
    assert {s.path.parent.parent.name for s in load_eval_samples(root, splits.classes)} == {"test"}


def test_unreadable_and_non_image_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, classes=2, per_class=5)
    (root / "class_0" / "notes.txt").write_text("hello")
    (root / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "class_1" / "empty.png").write_bytes(b"")
    (root / "class_1" / ".DS_Store").write_bytes(b"\0\0")
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable or non-image file\(s\)") as record:
        splits = load_splits(root)
    assert len(record) == 1
    message = str(record[0].message)
    assert "notes.txt" in message and "broken.jpg" in message and "empty.png" in message
    assert len(splits.train) + len(splits.val) == 10


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: make_dataset(root, classes=1, per_class=3), "at least 2 class sub-folders"),
        (lambda root: (make_dataset(root, classes=2, per_class=3), (root / "empty_class").mkdir()), "empty_class"),
    ],
    ids=["missing-folder", "one-class", "empty-class"],
)
def test_bad_folders_raise_clear_errors(tmp_path: Path, setup: object, message: str) -> None:
    root = tmp_path / "data"
    setup(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        load_splits(root)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(DataError, match="is a file"):
        load_splits(path)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("img.tiff" if mode == "CMYK" else "img.png")
    Image.new("RGB", (10, 10), (200, 100, 50)).convert(mode).save(path)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (10, 10)


def test_digits_demo_writes_real_digits(tmp_path: Path) -> None:
    root = write_digits_demo(tmp_path / "digits", size=16)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    files = list(root.rglob("*.png"))
    assert len(files) == 1797
    pixels = np.asarray(Image.open(files[0]))
    assert pixels.shape == (16, 16) and pixels.min() < 100 < pixels.max()
