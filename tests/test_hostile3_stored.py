"""Third hostile trial: what transferkit wrote and reads back, edited by whoever sent the folder.

A received comparison's ``results.json`` must not size the report's allocations (a list of
10,000 class names made ``transferkit report`` allocate gigabytes; 100,000 asked for 74.5 GiB),
and every field a resume reads back from a checkpoint is held to the bounds of the options
that produced it (history rows, phase rows, the schedule, the optimizer's groups). Each edit is
one line on stderr and exit code 2, naming the field.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

import transferkit
from tests.conftest import QUICK, TINY, TINY_IMAGE, interrupted_in_epoch, make_dataset, quick_config
from tests.tampering import vouched
from tests.test_cli import run_cli
from transferkit.errors import TransferkitError
from transferkit.records import Predictions
from transferkit.reports.html import MAX_DRAWN, drawn_classes, plot_confusion, write_report
from transferkit.runfolder import RunFolder

# --------------------------------------------------------------------------- results.json


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small comparison (two strategies, one seed, one epoch), made once; tests edit copies."""
    from transferkit.workflows.compare import CompareConfig, compare

    root = tmp_path_factory.mktemp("hostile3-cmp")
    data = make_dataset(root / "data", classes=3, per_class=8)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(
        backbones=(TINY,), strategies=("linear-probe", "feature-extraction"), budget_epochs=1, seeds=1, base=base
    )
    compare(data, cfg, out=root / "out")
    return root / "out"


def _edited(comparison: Path, where: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of the comparison whose results.json ``edit`` changed, its report.html deleted."""
    out = where / "received"
    shutil.copytree(comparison, out)
    data = json.loads((out / "results.json").read_text())
    edit(data)
    (out / "results.json").write_text(json.dumps(data))
    (out / "report.html").unlink()
    return out


def _refused(out: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    code, _, err = run_cli(["report", str(out)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err[-800:]
    assert not (out / "report.html").exists()
    return err


def test_a_class_list_the_runs_cannot_account_for_is_refused_at_once(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: 10,000 names (100 KB of text) and a 3-class comparison's records; the
    report took 7.8 GB and did not finish in 120 s. Every run trains a head of at least one
    weight per class, so its trainable parameters bound the classes it can tell apart."""
    out = _edited(comparison, tmp_path, lambda d: d.__setitem__("classes", [f"class {i}" for i in range(10_000)]))
    started = time.perf_counter()
    err = _refused(out, capsys, monkeypatch)
    assert "classes='10,000 names' is invalid" in err and "trains 771 parameters" in err, err
    assert time.perf_counter() - started < 20


def test_the_confusion_plot_is_sized_by_the_items_never_by_the_class_count() -> None:
    """Where every count is edited alike (a trainable count as large as the class list), the
    plot still allocates for the classes the items touch, at most MAX_DRAWN of them."""
    classes = [f"c{i}" for i in range(100_000)]
    few = Predictions(items=["a", "b", "c"], y_true=[0, 99_999, 5], y_pred=[0, 5, 5], confidence=[0.9, 0.8, 0.7])
    assert drawn_classes(few, len(classes)) == [0, 5, 99_999]
    assert drawn_classes(few, MAX_DRAWN) == list(range(MAX_DRAWN))  # few classes: each, touched or not
    started = time.perf_counter()
    assert plot_confusion(few, classes, "t")  # a 100,000² matrix was 74.5 GiB
    n = 500
    many = Predictions(
        items=[str(i) for i in range(n)], y_true=list(range(n)), y_pred=[(i + 1) % n for i in range(n)],
        confidence=[0.5] * n,
    )  # fmt: skip
    assert len(drawn_classes(many, len(classes))) == MAX_DRAWN
    assert plot_confusion(many, classes, "t")
    assert time.perf_counter() - started < 30


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of one field of results.json, given as a dotted path (list positions as numbers)."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[int(last) if isinstance(target, list) else last] = value

    return edit


def _duplicate_row(data: dict[str, Any]) -> None:
    data["rows"].append(dict(data["rows"][0]))


def _unplanned_record(data: dict[str, Any]) -> None:
    data["records"] += [dict(data["records"][0], seed=s) for s in range(1, 1000)]


EDITS = {
    # the finding's second half: NaN said "max() arg is an empty sequence"; now the field is named
    "nan accuracy": (_set("records.0.val.accuracy", math.nan), "records[0].val.accuracy=nan"),
    "label past the classes": (_set("records.1.predictions.y_pred.0", 3), "records[1].predictions.y_pred[0]=3"),
    "negative label": (_set("records.0.predictions.y_true.1", -1), "records[0].predictions.y_true[1]=-1"),
    "one label too few": (_set("records.0.predictions.y_true", [0]), "records[0].predictions="),
    "confidence past 1": (_set("records.0.predictions.confidence.0", 7.0), "records[0].predictions.confidence[0]=7.0"),
    "history row of text": (_set("records.1.history.0.val_accuracy", "x" * 1000), "records[1].history[0].val_accuracy"),
    "history row of another shape": (_set("records.1.history.0", {"epoch": 1}), "records[1].history[0]="),
    "phase of 2**40 epochs": (_set("records.1.phases.0.epochs_planned", 2**40), "records[1].phases[0].epochs_planned"),
    "seeds past the records'": (_set("config.seeds", 10**9), "config.seeds=1000000000"),
    "folds past the records'": (_set("config.folds", 2**32), "config.folds=4294967296"),
    "budget past its bound": (_set("config.budget_epochs", 2**40), "config.budget_epochs=1099511627776"),
    "a run twice": (lambda d: d["records"].__setitem__(1, dict(d["records"][0])), "records=("),
    "a fold of text": (_set("records.0.fold", "x"), "records[0].fold='x'"),
    "a modality of no one's": (_set("config.base.modality", "smell"), "config.base.modality='smell'"),
    "a modality of a number": (_set("config.base.modality", 5), "config.base.modality=5"),
    "batch size of text": (_set("config.base.batch_size", "<script>"), "config.base.batch_size='<script>'"),
    "records past the plan": (_unplanned_record, "records='1,001 records'"),
    "a row twice": (_duplicate_row, "rows='3 rows'"),
    "a row of text": (_set("rows.0.train_seconds", "slow"), "rows[0].train_seconds='slow'"),
    "a million warnings": (_set("warnings", ["w"] * 1_000_000), "warnings='list'"),
    "recommendation of no row": (_set("recommendation.strategy", "full"), "recommendation="),
    "estimate of no row": (_set("memory_estimates.x__y", [{}] * 100_000), "memory_estimates.x__y="),
    "a shift of infinity": (_set("prior.batchnorm_shift", math.inf), "prior.batchnorm_shift=inf"),
    "no classes": (_set("classes", "abc"), "classes='abc'"),
}


@pytest.mark.parametrize("case", EDITS, ids=list(EDITS))
def test_every_field_the_report_reads_is_checked_and_named(
    case: str,
    comparison: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edit, named = EDITS[case]
    err = _refused(_edited(comparison, tmp_path, edit), capsys, monkeypatch)
    assert named in err and "is invalid" in err, err


def test_an_untouched_comparison_still_rebuilds_its_report(comparison: Path, tmp_path: Path) -> None:
    out = _edited(comparison, tmp_path, lambda d: None)
    assert write_report(out).is_file()
    legacy = _edited(comparison, tmp_path / "legacy", lambda d: d["records"][0]["predictions"].update(
        paths=d["records"][0]["predictions"].pop("items")))  # fmt: skip
    assert write_report(legacy).is_file()  # comparisons from before 0.2 named their items "paths"


def test_an_attention_entry_of_a_million_columns_is_cut_before_it_is_read(tmp_path: Path) -> None:
    from transferkit.explain.attention import MAX_COLUMNS
    from transferkit.modalities import get_modality
    from transferkit.reports.attention import attention_section

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("a column past the cut was turned to text")

    edited = {"columns": [*"abcdefghij"[:MAX_COLUMNS], *[Loud()] * 1_000_000], "rows": [{"item": "x", "cells": []}]}
    assert "".join(f"<th>{c}</th>" for c in "abcdefghij"[:MAX_COLUMNS]) in attention_section(
        edited, tmp_path, get_modality("image")
    )


# --------------------------------------------------------------------------- checkpoints

FIT = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "seed": 0, "augment": False, **QUICK}
TWO_PHASE = {**FIT, "strategy": "two-phase", "epochs": 4, "head_epochs": 2, "unfreeze": 2}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, a run stopped in its second epoch): its checkpoint is mid-phase, with the
    optimizer and schedule of the head phase."""
    root = tmp_path_factory.mktemp("hostile3-fit")
    data = make_dataset(root / "data", classes=3, per_class=8)
    with pytest.MonkeyPatch.context() as patch, interrupted_in_epoch(2, patch):
        transferkit.fit(data, out=root / "run", **TWO_PHASE)
    assert (root / "run" / RunFolder.CHECKPOINT).is_file()
    return data, root / "run"


def _tamper(run: Path, key: str, edit: Callable[[Any], object]) -> None:
    """Edit one JSON entry of the checkpoint's safetensors metadata in place."""
    path = run / RunFolder.CHECKPOINT
    tensors = load_file(str(path))
    with open(path, "rb") as f:
        meta = dict(json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"])
    value = json.loads(meta[key])
    edit(value)
    meta[key] = json.dumps(value)
    save_file(tensors, str(path), metadata=meta)
    vouched(run)


def _group(key: str, value: Any) -> Callable[[Any], None]:
    return lambda optimizer: optimizer["param_groups"][0].__setitem__(key, value)


CHECKPOINT_EDITS = {
    # the finding: each was copied on into history.csv, config.json or the schedule
    "history of text": ("loop", lambda v: v["history"][0].__setitem__("val_accuracy", "x" * 1000),
                        "loop.history[0].val_accuracy='xxx"),
    "phase of 2**40 epochs": ("loop", lambda v: v["phases"][0].__setitem__("epochs_planned", 2**40),
                              "loop.phases[0].epochs_planned=1099511627776"),
    "schedule at step 10**18": ("scheduler", lambda v: v.__setitem__("last_epoch", 10**18),
                                "last_epoch=1000000000000000000"),
    # and their kin
    "history row of another shape": ("loop", lambda v: v["history"][0].update(note="<b>"), "loop.history[0]="),
    "history out of order": ("loop", lambda v: v["history"][0].__setitem__("epoch", 5), "loop.history[0].epoch=5"),
    "a loss of infinity": ("loop", lambda v: v["history"][0].__setitem__("train_loss", math.inf),
                           "loop.history[0].train_loss=inf"),
    "phase of other epochs": ("loop", lambda v: v["phases"][0].__setitem__("epochs_planned", 3), "this run's plan"),
    "phase of another name": ("loop", lambda v: v["phases"][0].__setitem__("name", "fine-tune"), "this run's plan"),
    "phase rows twice": ("loop", lambda v: v["phases"].append(dict(v["phases"][0])), "this run's plan"),
    "more epochs run than counted": ("loop", lambda v: v["phases"][0].__setitem__("epochs_run", 2), "this run's plan"),
    "best score of text": ("loop", lambda v: v.__setitem__("best_value", "high"), "loop.best_value='high'"),
    "best scores of text": ("loop", lambda v: v.__setitem__("best_val", {"accuracy": "x"}), "loop.best_val.accuracy"),
    "schedule of another count": ("scheduler", lambda v: v.__setitem__("_step_count", 10**9), "_step_count"),
    "schedule at a rate of 1e300": ("scheduler", lambda v: v.__setitem__("_last_lr", [1e300] * len(v["_last_lr"])),
                                    "_last_lr[0]=1e+300"),
    "schedule of other base rates": ("scheduler", lambda v: v.__setitem__("base_lrs", [5.0] * len(v["base_lrs"])),
                                     "base_lrs"),
    "optimizer rate of 1e9": ("optimizer", _group("lr", 1e9), "group 0 lr=1000000000.0"),
    "optimizer of other decay": ("optimizer", _group("weight_decay", 50.0), "weight_decay=50.0"),
    "optimizer of other betas": ("optimizer", _group("betas", [0.0, 2.0]), "betas=[0.0, 2.0]"),
}  # fmt: skip


@pytest.mark.parametrize("case", CHECKPOINT_EDITS, ids=list(CHECKPOINT_EDITS))
def test_every_field_a_resume_reads_back_is_checked(case: str, interrupted: tuple[Path, Path], tmp_path: Path) -> None:
    data, original = interrupted
    run = tmp_path / "run"
    shutil.copytree(original, run)
    key, edit, named = CHECKPOINT_EDITS[case]
    _tamper(run, key, edit)
    with pytest.raises(TransferkitError) as info:
        transferkit.fit(data, out=run, resume=True, **TWO_PHASE)
    message = str(info.value)
    assert "\n" not in message and named in message and "start over" in message, message
    assert not (run / "config.json").exists()  # nothing of it copied on into a finished run


def test_the_untampered_checkpoint_resumes_and_a_tampered_one_is_exit_2(
    interrupted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, original = interrupted
    run = tmp_path / "tampered"
    shutil.copytree(original, run)
    _tamper(run, "loop", lambda v: v["history"][0].__setitem__("val_accuracy", "x" * 1000))
    flags = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", "--seed", "0", "--no-augment",
             "--min-steps", "0", "--strategy", "two-phase", "--epochs", "4", "--head-epochs", "2",
             "--unfreeze", "2"]  # fmt: skip
    code, _, err = run_cli(["fit", str(data), "--out", str(run), "--resume", *flags], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "loop.history[0].val_accuracy" in err, err[-800:]
    resumed = transferkit.fit(data, out=shutil.copytree(original, tmp_path / "kept"), resume=True, **TWO_PHASE)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [p["epochs_planned"] for p in resumed.phases] == [2, 2]


def test_the_rows_read_back_are_spelled_as_the_loop_writes_them() -> None:
    """records sits below events in the layers, so it spells the loop's row keys itself."""
    from dataclasses import fields

    from transferkit.events import EpochRecord, PhaseSummary
    from transferkit.records import HISTORY_KEYS, PHASE_KEYS

    assert tuple(f.name for f in fields(EpochRecord)) == HISTORY_KEYS
    assert tuple(f.name for f in fields(PhaseSummary)) == PHASE_KEYS


def test_a_run_record_whose_labels_are_not_this_datas_classes_is_run_again(tmp_path: Path) -> None:
    """A tampered runs/<name>/result.json (a label beyond the class list) is not reused: the run
    is done again, and compare ends with a report instead of a refusal at the end."""
    import json as _json

    from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
    from transferkit.workflows.compare import CompareConfig, compare

    data = make_dataset(tmp_path / "data", classes=2, per_class=6)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1, base=base)
    first = compare(data, cfg, out=tmp_path / "out")
    run = Path(first.records[0].run_dir)
    values = _json.loads((run / "result.json").read_text())
    values["predictions"]["y_pred"] = [7] * len(values["predictions"]["y_pred"])
    (run / "result.json").write_text(_json.dumps(values))
    vouched(run)  # as if killed before it was sealed, its marker rewritten to vouch for the edit
    vouched(tmp_path / "out")
    again = compare(data, cfg, out=tmp_path / "out")
    assert again.executed == [run.name]
