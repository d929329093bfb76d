"""The messy folders users really have: every case is skipped or handled, never a crash."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit
from tests.conftest import make_dataset, make_image
from transferkit.errors import DataError
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.modalities.image_io import ImageDataset, check_image, eval_transform, open_rgb


def _jpeg_bytes(mode: str = "RGB", size: tuple[int, int] = (60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode != "RGB" else (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A flat dataset with one of every problem the reliability issue lists."""
    root = make_dataset(tmp_path / "messy", classes=2, per_class=12)
    good, other = root / "class_0", root / "class_1"
    (good / "zero.png").write_bytes(b"")
    (good / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (good / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (good / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (good / "notes.txt").write_text("not an image")
    (good / "random.png").write_bytes(os.urandom(512))
    (other / "cmyk.jpg").write_bytes(_jpeg_bytes("CMYK"))
    Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(other / "sixteen.png")
    Image.new("RGBA", (30, 30), (0, 0, 255, 128)).save(other / "alpha.png")
    Image.new("RGB", (30, 30), (0, 200, 0)).convert("P").save(other / "palette.png")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(other / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    Image.new("RGB", (40, 20), (10, 10, 10)).save(other / "rotated.jpg", exif=exif)
    (other / ".hidden").mkdir()
    make_image(0, np.random.default_rng(1)).save(other / ".hidden" / "secret.png")
    (other / "loop").mkdir()
    (other / "loop" / "again").symlink_to(other / "loop", target_is_directory=True)
    return root


def test_every_bad_file_is_skipped_with_its_reason(messy: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped 5 unreadable or non-image file\(s\)") as record:
        splits = load_splits(messy)
    reasons = {s.path.name: s.reason for s in splits.skipped}
    assert set(reasons) == {"zero.png", "truncated.jpg", "Thumbs.db", "notes.txt", "random.png"}
    assert reasons["zero.png"] == "empty file"
    assert reasons["truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["random.png"] == "not an image"
    assert reasons["notes.txt"] == reasons["Thumbs.db"] == "not an image file type"
    used = {s.path.name for s in (*splits.train, *splits.val)}
    assert {"cmyk.jpg", "sixteen.png", "alpha.png", "palette.png", "animated.gif", "rotated.jpg"} <= used
    assert "secret.png" not in used and ".DS_Store" not in reasons, "hidden files and folders are ignored"
    assert len([w for w in record if "skipped" in str(w.message)]) == 1


def test_exif_rotation_is_applied(messy: Path) -> None:
    assert open_rgb(messy / "class_1" / "rotated.jpg").size == (20, 40)


def test_strict_refuses_before_training(messy: Path) -> None:
    with pytest.raises(DataError, match=r"--strict: 5 file\(s\) cannot be used: .*zero.png \(empty file\)"):
        load_splits(messy, strict=True)


def test_decompression_bomb_limit_is_respected(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (10_001, 10_001)).save(path)  # 100 M pixels, tiny on disk
    reason, _ = check_image(path)
    assert reason is not None and "decompression-bomb limit" in reason


def test_unicode_and_spaces_in_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(["chat noir", "Hund 🐕", "ñandú"]):
        (tmp_path / name).mkdir()
        for j in range(4):
            make_image(i, rng).save(tmp_path / name / f"ïmage {j}.png")
    splits = load_splits(tmp_path)
    assert splits.classes == ("Hund 🐕", "chat noir", "ñandú")


def test_single_image_class_and_heavy_imbalance_are_warned(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, classes=2, per_class=30)
    (root / "rare").mkdir()
    make_image(2, np.random.default_rng(0)).save(root / "rare" / "only.png")
    with pytest.warns(UserWarning) as record:
        splits = load_splits(root)
    messages = " | ".join(str(w.message) for w in record)
    assert "single training image: rare" in messages
    assert "heavy class imbalance (24:1; class_0: 24, class_1: 24, rare: 1); consider --class-weights" in messages
    assert splits.counts("train")["rare"] == 1 and splits.counts("val")["rare"] == 0


def test_duplicates_across_train_and_val_are_reported(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, classes=2, per_class=8, layout="split")
    copy = root / "val" / "class_0" / "copy_of_train.png"
    copy.write_bytes((root / "train" / "class_0" / "001.png").read_bytes())
    with pytest.warns(UserWarning, match=r"leakage: 1 validation/test image\(s\) are byte-identical"):
        splits = load_splits(root)
    assert splits.duplicates == ((copy, root / "train" / "class_0" / "001.png"),)


def test_a_file_broken_after_the_scan_does_not_end_the_epoch(tiny_data: Path) -> None:
    splits = load_splits(tiny_data)
    dataset = ImageDataset(splits.train, eval_transform(_pre()), training=True)
    victim = splits.train[3].path
    victim.write_bytes(b"gone")
    with pytest.warns(UserWarning, match="could not read"):
        items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == len(splits.train)
    assert items[3][1] == splits.train[4].label  # the next image stood in


def test_a_scored_dataset_never_stands_another_image_in(tiny_data: Path) -> None:
    splits = load_splits(tiny_data)
    dataset = ImageDataset(splits.val, eval_transform(_pre()))  # not training: scoring
    splits.val[0].path.write_bytes(b"gone")
    with pytest.raises(DataError, match="never replaced"):
        dataset[0]


def _pre() -> transferkit.modalities.image_io.ImagePreprocessing:
    return transferkit.modalities.image_io.ImagePreprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_fit_runs_on_the_messy_folder(messy: Path, tiny_config: dict[str, object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = transferkit.fit(messy, strategy="feature-extraction", **{**tiny_config, "epochs": 1})
    assert len(result.skipped) == 5 and all(": " in s for s in result.skipped)
