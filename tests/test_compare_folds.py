"""`compare --folds K` (every item validated once) and `compare --lr auto` (rates from the sweep)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
from tests.test_cli import run_cli
from transferkit.errors import ConfigError
from transferkit.modalities import DatasetSplits, Sample
from transferkit.modalities.common import stratified_folds
from transferkit.workflows.compare import CompareConfig, compare
from transferkit.workflows.folds import fold_splits
from transferkit.workflows.verdict import resolution

BASE = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)


def _samples(per_class: list[int]) -> list[Sample]:
    return [Sample(Path(f"{c}/{i}.png"), c) for c, n in enumerate(per_class) for i in range(n)]


def test_folds_cover_every_item_once_and_keep_the_classes_even() -> None:
    samples = _samples([10, 7, 3])
    folds = stratified_folds(samples, 3, seed=0)
    assert sorted(str(s.path) for f in folds for s in f) == sorted(str(s.path) for s in samples)
    for c, n in enumerate([10, 7, 3]):
        per_fold = [Counter(s.label for s in f)[c] for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1


def test_fold_splits_train_on_the_rest_and_keep_test_apart() -> None:
    samples = _samples([6, 6])
    splits = DatasetSplits(("a", "b"), tuple(samples[2:]), tuple(samples[:2]), test=(samples[0],))
    made = fold_splits(splits, 3, seed=1)
    assert len(made) == 3
    for k in made:
        assert set(map(id, k.train)).isdisjoint(map(id, k.val)) and len(k.train) + len(k.val) == 12
        assert k.test == splits.test
    assert sorted(id(s) for k in made for s in k.val) == sorted(id(s) for s in samples)


def test_fold_splits_refuse_what_cannot_be_validated() -> None:
    lonely = DatasetSplits(("a", "b"), tuple(_samples([5, 1])), ())
    with pytest.raises(ConfigError, match="single item"):
        fold_splits(lonely, 2, seed=0)
    with pytest.raises(ConfigError, match="at most the number of labelled items"):
        fold_splits(DatasetSplits(("a", "b"), tuple(_samples([2, 2])), ()), 5, seed=0)
    with pytest.raises(ConfigError, match="folds"):
        CompareConfig(folds=0)


def test_compare_with_folds_validates_every_image_once(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=3, per_class=6)
    cfg = CompareConfig(
        backbones=(TINY,), strategies=("linear-probe", "feature-extraction"), budget_epochs=1, seeds=1, folds=3,
        base=BASE,
    )  # fmt: skip
    result = compare(data, cfg, out=tmp_path / "out")
    for strategy in ("linear-probe", "feature-extraction"):
        runs = [r for r in result.records if r.strategy == strategy]
        assert sorted(r.fold for r in runs) == [0, 1, 2]  # type: ignore[type-var]
        items = [item for r in runs for item in r.predictions.items]
        assert len(items) == len(set(items)) == 18  # every image once
    assert all(len(r["val_correct"]) == 18 for r in result.rows)  # the paired test sees all of them
    names = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert names[0] == f"{TINY}__feature-extraction__seed0__fold0" and len(names) == 6
    assert "--folds" not in " ".join(result.warnings)  # cross-validated already: not advised again


def test_resolution_warning_advises_folds_only_without_them() -> None:
    rows = [{"val_accuracy_mean": 0.9}]
    assert "--folds 5" in resolution(rows, 40)[0]
    assert "--folds" not in resolution(rows, 40, folds=5)[0]


def test_compare_lr_auto_sweeps_each_sgd_strategy_once_and_keeps_its_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("transferkit.workflows.compare.LR_AUTO_STEPS", 15)  # a short sweep still suggests
    data = make_dataset(tmp_path / "data", classes=2, per_class=6)
    out = tmp_path / "out"
    args = ["compare", str(data), "--out", str(out), "--backbone", TINY, "--image-size", str(TINY_IMAGE),
            "--batch-size", "4", "--budget-epochs", "2", "--seeds", "1", "--no-augment", "--device", "cpu",
            "--strategies", "linear-probe,full", "--lr", "auto", "--domain", "similar", "--json"]  # fmt: skip
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    rates = json.loads((out / "lr-auto.json").read_text())
    assert list(rates) == [f"{TINY}__full"]  # the closed-form probe has no learning rate
    config = json.loads((out / "runs" / f"{TINY}__full__seed0" / "config.json").read_text())
    for option, value in rates[f"{TINY}__full"].items():
        assert config["fit_config"][option] == pytest.approx(value)
    code, _, err = run_cli(args, capsys, monkeypatch)  # a rerun reuses the rates and the finished runs
    assert code == 0, err
    assert json.loads((out / "lr-auto.json").read_text()) == rates
