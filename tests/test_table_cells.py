"""Table cells are input: every table reader (text CSV/TSV/JSONL, audio tables, multi-task
tables) takes a cell as a string, a whole number or true/false, and refuses anything else in
one line naming the row — a JSONL label ``["business"]`` is not the class "['business']"."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

import transferkit
from tests.conftest import make_dataset, make_tones, quick_config
from transferkit.config import FitConfig
from transferkit.errors import DataError
from transferkit.modalities.common import read_table, table_cell
from transferkit.modalities.text import load_text_eval_samples, load_text_splits
from transferkit.workflows.multitask import MultiTaskConfig, load_multitask_csv


def jsonl(path: Path, labels: list[Any], texts: list[Any] | None = None) -> Path:
    texts = texts or [f"sentence number {i} about things" for i in range(len(labels))]
    path.write_text("\n".join(json.dumps({"text": t, "label": c}) for t, c in zip(texts, labels, strict=True)) + "\n")
    return path


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["business"], "a list"),
        ({"name": "business"}, "an object"),
        (math.nan, "the number nan"),
        (math.inf, "the number inf"),
        (0.5, "the number 0.5"),
        (1e300, "the number 1e+300"),
        (2**80, "a whole number beyond ±2^53"),
    ],
)
def test_a_label_that_names_no_one_class_is_refused_naming_its_line(tmp_path: Path, value: Any, shown: str) -> None:
    labels: list[Any] = ["sport", "business"] * 5
    labels[6] = value
    table = jsonl(tmp_path / "t.jsonl", labels)
    with pytest.raises(DataError, match=re.escape(f"line 7: label is {shown}")) as info:
        load_text_splits(table)
    assert "\n" not in str(info.value) and "['business']" not in str(info.value)
    with pytest.raises(DataError, match="line 7"):  # evaluate's door reads the same way
        load_text_eval_samples(table, ["business", "sport"], "text", "label")


def test_a_list_in_the_text_column_is_refused_too(tmp_path: Path) -> None:
    texts: list[Any] = [f"sentence {i} here" for i in range(10)]
    texts[2] = ["two", "texts"]
    with pytest.raises(DataError, match="line 3: text is a list"):
        load_text_splits(jsonl(tmp_path / "t.jsonl", ["a", "b"] * 5, texts))


def test_whole_numbers_and_booleans_are_class_names_as_json_writes_them(tmp_path: Path) -> None:
    splits = load_text_splits(jsonl(tmp_path / "n.jsonl", [1, 2.0, 1.0, 2] * 3))  # pandas writes 2 as 2.0 beside a gap
    assert splits.classes == ("1", "2")
    assert load_text_splits(jsonl(tmp_path / "b.jsonl", [True, False] * 5)).classes == ("false", "true")
    assert [table_cell(v) for v in (" x ", None, 3, -3.0, False)] == ["x", "", "3", "-3", "false"]


def test_a_null_or_missing_label_is_unlabelled_and_blank_lines_keep_the_numbering(tmp_path: Path) -> None:
    rows = [{"text": f"sentence {i} here", "label": "ab"[i % 2]} for i in range(10)]
    rows[3]["label"] = None
    del rows[5]["label"]  # the first row's keys name the columns: a later row may lack one (was a KeyError)
    table = tmp_path / "t.jsonl"
    table.write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")  # a blank line between rows
    with pytest.warns(UserWarning, match=r"2 row\(s\) without a label \(line 7, 11\)"):
        splits = load_text_splits(table)
    assert len(splits.train) + len(splits.val) == 8 and splits.classes == ("a", "b")
    with pytest.raises(DataError, match="line 7, 11"):
        load_text_splits(table, strict=True)


def test_a_csv_row_with_an_unquoted_delimiter_is_refused_not_shifted(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"sentence {i},{'ab'[i % 2]}\n" for i in range(8)) + "hello, world,a\n")
    with pytest.raises(DataError, match=r"t.csv, line 10: 3 cells where the header names 2"):
        load_text_splits(table)  # was: a class named " world"
    (tmp_path / "ok.csv").write_text("text,label\nsome text,a,\nshort\n")  # an empty extra cell; a short row
    assert read_table(tmp_path / "ok.csv") == [{"text": "some text", "label": "a"}, {"text": "short", "label": ""}]


def test_audio_tables_read_cells_through_the_same_door(tmp_path: Path) -> None:
    data = make_tones(tmp_path / "d", classes=2, per_class=4)
    rows = [f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}" for p in sorted(data.glob("*/*.wav"))]
    table = tmp_path / "clips.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\nno_label_or_path\n")  # a short row: was a TypeError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = transferkit.load_data(table, FitConfig(modality="audio"))
    assert len(splits.train) + len(splits.val) == 8 and any("no label" in str(w.message) for w in caught)
    table.write_text("path,label\n" + "\n".join(rows) + "\nx.wav,tone_0,extra\n")
    with pytest.raises(DataError, match="line 10: 3 cells"):
        transferkit.load_data(table, FitConfig(modality="audio"))


def test_multitask_tables_read_cells_through_the_same_door(tmp_path: Path) -> None:
    images = make_dataset(tmp_path / "images", classes=2, per_class=3)
    rows = [f"{p.relative_to(images).as_posix()},{p.parent.name}" for p in sorted(images.glob("*/*.png"))]
    table = tmp_path / "labels.csv"
    table.write_text("image,kind\n" + "\n".join(rows) + "\nclass_0/x.png,big, red\n")
    cfg = MultiTaskConfig(tasks=("kind",), base=quick_config())
    with pytest.raises(DataError, match="line 8: 3 cells where the header names 2"):
        load_multitask_csv(table, images, cfg)
