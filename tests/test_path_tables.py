"""Tables of files (a labelling tool's ``path,label`` CSV) for images and clips: the same files
as folders and as a table give the same split and the same run; every way a row can point
elsewhere is skipped and said; a broken table is one line and exit 2."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

import transferkit
from tests.conftest import QUICK, TINY, TINY_AUDIO, TINY_IMAGE, make_dataset, make_tones
from tests.test_cli import FAST, run_cli
from transferkit.config import FitConfig
from transferkit.errors import DataError
from transferkit.modalities import detect_modality
from transferkit.workflows.compare import CompareConfig, compare

RUN = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "epochs": 2, "seed": 0, **QUICK}


def write_table(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def table_of(folder: Path, name: str = "labels.csv", shuffle: bool = True, **extra: str) -> Path:
    """The class folders under ``folder`` as a table beside them, rows in a random order."""
    rows = [
        {"path": str(p.relative_to(folder)), "label": p.parent.name, **extra}
        for p in sorted(folder.glob("*/*.png")) + sorted(folder.glob("*/*.wav"))
    ]
    if shuffle:
        random.Random(0).shuffle(rows)
    return write_table(folder / name, rows)


def test_the_same_images_as_folders_and_as_a_table_give_the_same_run(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=3, per_class=10)
    table = table_of(data)
    assert detect_modality(table).name == "image"
    by_folder = transferkit.load_data(data, FitConfig(**RUN))
    by_table = transferkit.load_data(table, FitConfig(**RUN))
    assert by_table.classes == by_folder.classes
    assert [s.path for s in by_table.val] == [s.path for s in by_folder.val]  # the same split, row order aside
    a = transferkit.fit(data, strategy="two-phase", **RUN)
    b = transferkit.fit(table, strategy="two-phase", **RUN)
    assert a.metrics["val"] == b.metrics["val"]
    wa, wb = a.model.model.state_dict(), b.model.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_split_column_decides_and_evaluate_scores_the_test_rows(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=12)
    rows = []
    for i, p in enumerate(sorted(data.glob("*/*.png"))):
        rows.append(
            {
                "path": str(p.relative_to(data)),
                "label": p.parent.name,
                "split": ["train", "train", "val", "test"][i % 4],
            }
        )
    table = write_table(data / "labels.csv", rows)
    splits = transferkit.load_data(table, FitConfig(**RUN))
    assert {str(s.path.relative_to(data)) for s in splits.val} == {r["path"] for r in rows if r["split"] == "val"}
    assert {str(s.path.relative_to(data)) for s in splits.test} == {r["path"] for r in rows if r["split"] == "test"}
    transferkit.fit(table, out=tmp_path / "run", strategy="linear-probe", **RUN)
    report = transferkit.evaluate(tmp_path / "run", table)
    assert report["num_items"] == sum(r["split"] == "test" for r in rows) and report["unit"] == "images"


def test_rows_that_point_elsewhere_are_skipped_and_said(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=6)
    outside = make_dataset(tmp_path / "elsewhere", classes=2, per_class=1)
    (data / "link.png").symlink_to(outside / "class_0" / "000.png")
    rows = [{"path": str(p.relative_to(data)), "label": p.parent.name} for p in sorted(data.glob("*/*.png"))]
    hostile = {
        "../elsewhere/class_0/000.png": "leads outside",
        str(outside / "class_1" / "000.png"): "absolute path",
        "link.png": "leads outside",
        "class_0/nothing.png": "missing",
        "": "no path",
    }
    rows += [{"path": cell, "label": "class_0"} for cell in hostile]
    rows.append({"path": "class_1/000.png", "label": ""})  # no label
    table = write_table(data / "labels.csv", rows)
    with pytest.warns(UserWarning) as caught:
        splits = transferkit.load_data(table, FitConfig(**RUN))
    reasons = [s.reason for s in splits.skipped]
    for why in [*hostile.values(), "no label"]:
        assert any(why in r for r in reasons), (why, reasons)
    assert all(s.path.resolve().is_relative_to(data.resolve()) for s in (*splits.train, *splits.val))
    assert any("cannot be used" in str(w.message) or "skipped" in str(w.message) for w in caught)
    with pytest.raises(DataError, match="--strict"):
        transferkit.load_data(table, FitConfig(**RUN, strict=True))


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["file", "label"], [["a.png", "x"]], "needs a 'path' column"),
        (["path", "class"], [["a.png", "x"]], "label column 'label'"),
        (["path", "label", "split"], [["class_0/000.png", "class_0", "holdout"]], "is not one of train, val, test"),
        (["path", "label"], [["class_0/000.png", "class_0"], ["class_0/001.png", "class_0"]], "at least 2 classes"),
    ],
)
def test_a_broken_table_is_one_line_and_exit_2(
    header: list[str], rows: list[list[str]], message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = make_dataset(tmp_path / "data", classes=2, per_class=3)
    table = data / "labels.csv"
    table.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    code, _, err = run_cli(["fit", table, "--modality", "image", *FAST, "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_the_issues_first_try_now_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`transferkit fit labels.csv --strategy linear-probe` beside a folder of images (issue 44)."""
    data = make_dataset(tmp_path / "data", classes=3, per_class=6)
    table = table_of(data)
    code, out, err = run_cli(
        ["fit", table, "--strategy", "linear-probe", *FAST, "--out", tmp_path / "run"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "images" in out
    code, out, err = run_cli(["predict", tmp_path / "run", data / "class_1" / "000.png"], capsys, monkeypatch)
    assert code == 0, err


def test_a_tsv_of_clips_with_a_split_column(tmp_path: Path) -> None:
    data = make_tones(tmp_path / "tones", classes=2, per_class=6)
    rows = [
        {"path": str(p.relative_to(data)), "label": p.parent.name, "split": "val" if i % 3 == 0 else "train"}
        for i, p in enumerate(sorted(data.glob("*/*.wav")))
    ]
    table = write_table(data / "clips.tsv", rows, delimiter="\t")
    assert detect_modality(table).name == "audio"
    splits = transferkit.load_data(table, FitConfig(backbone=TINY_AUDIO))
    assert len(splits.val) == sum(r["split"] == "val" for r in rows)


def test_compare_reads_a_table_as_it_reads_the_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=3, per_class=8)
    table = table_of(data)
    base = FitConfig(**{k: v for k, v in RUN.items() if k not in ("epochs", "backbone")})
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=2, seeds=1, base=base)
    by_folder = compare(data, cfg, out=tmp_path / "a")
    by_table = compare(table, cfg, out=tmp_path / "b")
    assert [r["val_accuracy_mean"] for r in by_folder.rows] == [r["val_accuracy_mean"] for r in by_table.rows]


def test_a_table_of_dicom_files_is_read_as_images(tmp_path: Path) -> None:
    """Medical rows often point at .dcm files: the image modality claims and reads them."""
    pytest.importorskip("pydicom")
    import numpy as np

    from tests.test_medical import write_dicom

    rng = np.random.default_rng(0)
    rows = []
    for label in ("clear", "effusion"):
        for i in range(5):
            values = rng.integers(0, 400, (16, 16)) + (600 if label == "effusion" else 0)
            write_dicom(tmp_path / "scans" / f"{label}{i}.dcm", values)
            rows.append({"path": f"scans/{label}{i}.dcm", "label": label})
    table = write_table(tmp_path / "findings.csv", rows)
    assert detect_modality(table).name == "image"
    splits = transferkit.load_data(table, FitConfig(**RUN))
    assert splits.classes == ("clear", "effusion") and len(splits.train) + len(splits.val) == 10


def test_a_file_under_two_labels_is_refused_as_a_labelling_error(tmp_path: Path) -> None:
    """The sixth round: the same file listed as two classes trained on both and was only
    reported as leakage, while its validation copy scored against the other label."""
    data = make_dataset(tmp_path / "data", classes=2, per_class=5)
    rows = [{"path": str(p.relative_to(data)), "label": p.parent.name} for p in sorted(data.glob("*/*.png"))]
    rows.append({"path": "class_0/000.png", "label": "class_1"})
    table = write_table(data / "labels.csv", rows)
    with pytest.raises(DataError, match=r"more than one label \(000\.png: class_0, class_1\)"):
        transferkit.load_data(table, FitConfig(**RUN))
