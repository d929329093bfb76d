"""Scoring never substitutes: an item that cannot be read is skipped and counted, or refused.

Training may stand another image in for one that breaks mid-epoch; evaluate must not, or a run
folder whose images were overwritten scores the survivors under every label (accuracy 1.0)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import make_dataset
from tests.test_trust import FIT, copy_run
from transferkit import api
from transferkit.cli import main
from transferkit.errors import DataError
from transferkit.ownership import signed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scoring")
    data = make_dataset(root / "data", classes=2, per_class=10)
    api.fit(data, out=root / "run", strategy="feature-extraction", **FIT)
    return root / "run", data


def _held_out(run: Path) -> list[Path]:
    return [Path(i["path"]) for i in json.loads((run / "split.json").read_text())["val"]]


def test_evaluate_scores_only_the_readable_items_and_counts_the_rest(
    run_dir: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = run_dir
    copy = copy_run(run, tmp_path / "copy")
    items = _held_out(copy)
    assert len(items) >= 3
    # split.json names files in the data folder: break a copy of it, point the split there
    broken = tmp_path / "broken"
    split = json.loads((copy / "split.json").read_text())
    for entry in split["val"]:
        target = broken / Path(entry["path"]).relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(entry["path"]).read_bytes())
        entry["path"] = str(target)
    (copy / "split.json").write_text(json.dumps(signed(split)))  # a split this machine wrote
    victims = [broken / p.relative_to(data) for p in items[1:]]
    victims[0].unlink()
    for v in victims[1:]:
        v.write_bytes(b"junk")
    with pytest.warns(UserWarning, match=rf"skipped {len(victims)} of {len(items)} images") as caught:
        report = api.evaluate(copy)
    assert report["num_items"] == 1 and report["num_skipped"] == len(victims)
    assert sum("cannot be read" in str(w.message) for w in caught) == 1
    assert not any("using another" in str(w.message) for w in caught)

    (broken / items[0].relative_to(data)).write_bytes(b"junk")  # none left: a one-line error, exit 2
    with pytest.raises(DataError, match="nothing scored"):
        api.evaluate(copy)
    monkeypatch.setattr(sys, "argv", ["transferkit", "evaluate", str(copy), "--json"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as info:
        warnings.simplefilter("ignore")
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "nothing scored" in err and "Traceback" not in err


def test_evaluate_on_data_with_junk_files_skips_them_with_one_warning(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = run_dir
    data = make_dataset(tmp_path / "data", classes=2, per_class=5)
    for i in range(3):
        (data / "class_0" / f"junk{i}.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 3 of 13 images") as caught:
        report = api.evaluate(run, data)
    assert report["num_items"] == 10  # the scan refused the junk up front: none stood in for another
    assert sum("cannot be read" in str(w.message) for w in caught) == 1
