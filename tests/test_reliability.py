"""Regression tests for runs that silently did the wrong thing or lost work (issue: reliability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import transferkit
from tests.conftest import QUICK, TINY, TINY_IMAGE, interrupted_in_epoch, make_dataset
from transferkit.config import FitConfig
from transferkit.errors import TransferkitError
from transferkit.runfolder import RunFolder
from transferkit.workflows.compare import CompareConfig, compare

RUN = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "seed": 0, "augment": False, **QUICK}


def _interrupted_fit(data: Path, out: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> None:
    """A two-phase fit stopped in its second epoch: a checkpoint is left in ``out``."""
    with interrupted_in_epoch(2, monkeypatch):
        transferkit.fit(data, out=out, **options)
    assert (out / RunFolder.CHECKPOINT).is_file()


def test_fit_resume_refuses_a_checkpoint_made_on_other_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = {**RUN, "strategy": "two-phase", "epochs": 4}
    data = make_dataset(tmp_path / "data", classes=3)
    _interrupted_fit(data, tmp_path / "run", monkeypatch, **options)
    more_classes = make_dataset(tmp_path / "four", classes=4)
    with pytest.raises(TransferkitError, match=r"other data \(classes class_0, class_1, class_2 → .*class_3\)"):
        transferkit.fit(more_classes, out=tmp_path / "run", resume=True, **options)
    other_items = make_dataset(tmp_path / "other", classes=3, per_class=11, seed=5)
    with pytest.raises(TransferkitError, match="the same classes, other items"):
        transferkit.fit(other_items, out=tmp_path / "run", resume=True, **options)
    transferkit.fit(data, out=tmp_path / "run", resume=True, **options)  # the same data still resumes


def test_compare_refuses_to_reuse_runs_made_on_other_data(tmp_path: Path) -> None:
    cfg = CompareConfig(
        backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1,
        base=FitConfig(**{k: v for k, v in RUN.items() if k != "backbone"}),
    )  # fmt: skip
    compare(make_dataset(tmp_path / "a"), cfg, out=tmp_path / "cmp")
    with pytest.raises(TransferkitError, match="comparison on other data"):
        compare(make_dataset(tmp_path / "b", seed=7, per_class=11), cfg, out=tmp_path / "cmp")


def test_best_out_never_deletes_what_is_not_a_run(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    cfg = CompareConfig(
        backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1,
        base=FitConfig(**{k: v for k, v in RUN.items() if k != "backbone"}),
    )  # fmt: skip
    out = tmp_path / "runs" / "compare"
    for bad in (tmp_path / "runs", out, out / "best"):  # around, equal to, inside the comparison
        with pytest.raises(TransferkitError, match="overlaps --out"):
            compare(data, cfg, out=out, best_out=bad)
    assert not out.exists()  # refused before anything was written
    precious = tmp_path / "thesis"
    (precious / "chapter1.tex").parent.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(TransferkitError, match="other than a transferkit run"):
        compare(data, cfg, out=out, best_out=precious)
    assert (precious / "chapter1.tex").read_text() == "years of work"
    best = tmp_path / "best"
    compare(data, cfg, out=out, best_out=best)
    compare(data, cfg, out=out, best_out=best)  # a previous best run is replaced
    assert (best / "model.safetensors").is_file() and not (tmp_path / ".best.incoming").exists()


def test_an_empty_validation_split_is_refused_before_training(tmp_path: Path) -> None:
    own = make_dataset(tmp_path / "own", layout="split")
    for image in (own / "val").rglob("*.png"):
        image.unlink()
    with pytest.raises(TransferkitError, match="validation split is empty"):
        transferkit.fit(own, out=tmp_path / "run", strategy="linear-probe", **RUN)
    singles = make_dataset(tmp_path / "singles", per_class=1)
    with pytest.raises(TransferkitError, match="validation split is empty"):
        transferkit.fit(singles, out=tmp_path / "run", strategy="linear-probe", **RUN)
    assert not (tmp_path / "run").exists()


def test_a_task_without_labelled_validation_rows_is_refused(tmp_path: Path) -> None:
    from tests.test_multitask import _csv
    from transferkit.workflows.multitask import MultiTaskConfig, fit_multitask, load_multitask_csv

    csv_path, images = _csv(tmp_path)
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=FitConfig(**RUN))
    data = load_multitask_csv(csv_path, images, cfg)
    val = {str(s.path) for s in data.val}
    lines = csv_path.read_text().splitlines()
    kept = [lines[0]] + [
        (f"{row.split(',')[0]},{row.split(',')[1]}," if str(images / row.split(",")[0]) in val else row)
        for row in lines[1:]
    ]  # fmt: skip
    csv_path.write_text("\n".join(kept) + "\n")  # task 'first' unlabelled on every validation row
    data = load_multitask_csv(csv_path, images, cfg)
    with pytest.raises(TransferkitError, match="task 'first' has no labelled validation rows"):
        fit_multitask(data, cfg, out=tmp_path / "run")


def test_text_rows_without_a_label_are_skipped_not_made_a_class(tmp_path: Path) -> None:
    from transferkit.modalities.text import load_text_splits

    rows = ["text,label", *(f"sport goal {i},sport" for i in range(6)), *(f"bank shares {i},money" for i in range(6))]
    table = tmp_path / "t.csv"
    table.write_text("\n".join([*rows, "no label here,", "another,"]) + "\n")
    with pytest.warns(UserWarning, match=r"2 row\(s\) without a label \(line 14, 15\)"):
        splits = load_text_splits(table)
    assert splits.classes == ("money", "sport")
    with pytest.raises(TransferkitError, match="without a label"):
        load_text_splits(table, strict=True)
    jsonl = tmp_path / "t.jsonl"
    records = [f'{{"text": "goal {i}", "label": "sport"}}' for i in range(5)]
    records += [f'{{"text": "bank {i}", "label": "money"}}' for i in range(5)]
    jsonl.write_text("\n".join([*records, '{"text": "what", "label": null}']) + "\n")
    with pytest.warns(UserWarning, match="without a label"):
        assert load_text_splits(jsonl).classes == ("money", "sport")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": oops}\n', "line 2: not valid JSON"),
     ("list.jsonl", b'["a", "x"]\n', "line 1: each line must be a JSON object"),
     ("latin.csv", "text,label\ncaf\xe9 au lait,food\n".encode("latin-1"), "is not UTF-8")],
)  # fmt: skip
def test_broken_text_tables_are_messages_not_tracebacks(
    name: str, content: bytes, message: str, tmp_path: Path
) -> None:
    from transferkit.modalities.text import load_text_splits

    (tmp_path / name).write_bytes(content)
    with pytest.raises(TransferkitError, match=message):
        load_text_splits(tmp_path / name)


def test_predict_skips_unreadable_files_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import run_cli

    data = make_dataset(tmp_path / "data")
    transferkit.fit(data, out=tmp_path / "run", strategy="linear-probe", **RUN)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (data / "class_0" / "000.png").rename(inbox / "good.png")
    (inbox / "random.png").write_bytes(bytes(range(256)) * 4)
    (inbox / "foo.jpg").mkdir()
    (inbox / "._good.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\): .*random.png \(not an image\)") as said:
        code, out, err = run_cli(["predict", tmp_path / "run", inbox, "--json"], capsys, monkeypatch)
    assert code == 0, err
    import json

    assert [row["path"] for row in json.loads(out)["predictions"]] == [str(inbox / "good.png")]
    assert len([w for w in said if "unreadable" in str(w.message)]) == 1 and "Traceback" not in err
    (inbox / "good.png").unlink()
    code, _, err = run_cli(["predict", tmp_path / "run", inbox], capsys, monkeypatch)
    assert code == 2 and "no readable images to predict" in err


def test_a_mistyped_text_file_name_is_flagged(tmp_path: Path) -> None:
    from transferkit.modalities.text import expand_texts

    with pytest.warns(UserWarning, match="'reveiw.txt' is not a file: classified as the text itself"):
        samples = expand_texts(["reveiw.txt", "a perfectly normal sentence"])
    assert [s.text for s in samples] == ["reveiw.txt", "a perfectly normal sentence"]


def test_init_weights_reports_a_partial_match_and_unreadable_files_are_messages(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from transferkit.backbones import create_backbone

    data = make_dataset(tmp_path / "data")
    own = create_backbone(TINY, pretrained=True).state_dict()
    partial = {k: v.contiguous().clone() for k, v in list(own.items())[:5]} | {"extra.weight": torch.zeros(3)}
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.warns(UserWarning, match=rf"5 of the backbone's {len(own)} tensors loaded; .* missing .*1 unexpected"):
        transferkit.fit(data, strategy="linear-probe", init_weights=str(tmp_path / "partial.safetensors"), **RUN)
    save_file({"nothing.here": torch.zeros(2)}, tmp_path / "none.safetensors")
    with pytest.raises(TransferkitError, match=r"no tensor in .* fits this backbone"):
        transferkit.fit(data, strategy="linear-probe", init_weights=str(tmp_path / "none.safetensors"), **RUN)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(TransferkitError, match="cannot be read as weights"):
        transferkit.fit(data, strategy="linear-probe", init_weights=str(tmp_path / "empty.safetensors"), **RUN)

    run = tmp_path / "run"
    transferkit.fit(data, out=run, strategy="linear-probe", **RUN)
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated by a full disk or a copy
    with pytest.raises(TransferkitError, match=r"cannot be read .*is it complete"):
        transferkit.load(run)


def test_unwritable_output_paths_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import FAST, run_cli

    data = make_dataset(tmp_path / "data")
    (tmp_path / "a_file").write_text("not a folder")
    args = ["fit", data, *FAST, "--strategy", "linear-probe", "--out", tmp_path / "a_file" / "run"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "Not a directory" in err and "Traceback" not in err
    run = tmp_path / "run"
    assert run_cli(["fit", data, *FAST, "--strategy", "linear-probe", "--out", run], capsys, monkeypatch)[0] == 0
    code, _, err = run_cli(["evaluate", run, data, "--report", tmp_path / "a_file" / "r.json"], capsys, monkeypatch)
    assert code == 2 and "a_file" in err and "Traceback" not in err  # a file where a folder goes


def test_a_file_replaced_with_the_same_size_and_mtime_gets_new_features(tmp_path: Path) -> None:
    import os

    import numpy as np
    from PIL import Image
    from rich.console import Console

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in range(3):
        (data / f"class_{c}").mkdir(parents=True)
        for i in range(6):  # uncompressed PNGs: every file of a size has the same byte count
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(data / f"class_{c}" / f"{i}.png", compress_level=0)
    options = {**RUN, "strategy": "feature-extraction", "epochs": 1}
    transferkit.fit(data, **options)
    victim = data / "class_0" / "0.png"
    before = victim.stat()
    Image.fromarray(np.full((24, 24, 3), 255, dtype=np.uint8)).save(victim, compress_level=0)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    console = Console(record=True, width=200)
    transferkit.fit(data, console=console, **options)
    said = console.export_text()
    assert said.count("reusing cache") == 1  # the split holding the changed file was extracted again


def test_two_runs_filling_the_same_cache_at_once_both_succeed(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import ROOT, cli_command, cli_env

    data = make_dataset(tmp_path / "data", per_class=20)
    env = {**cli_env(), "TRANSFERKIT_CACHE": str(tmp_path / "cache")}
    args = ["fit", str(data), "--backbone", TINY, "--image-size", "32", "--strategy", "linear-probe"]
    runs = [
        subprocess.Popen(cli_command(*args, "--out", str(tmp_path / f"run{i}")), cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], errors
    assert not list((tmp_path / "cache").rglob("*.partial.npy"))
    entries = [p for p in (tmp_path / "cache").iterdir() if p.name != "scan-verdicts"]
    assert entries and all((p / "manifest.json").is_file() and (p / "features.npy").is_file() for p in entries)


def test_evaluate_on_the_training_folder_warns_and_without_data_scores_the_saved_split(tmp_path: Path) -> None:
    import json

    data = make_dataset(tmp_path / "data")  # flat: fit splits it; evaluate would see all 30 images
    transferkit.fit(data, out=tmp_path / "run", strategy="linear-probe", **RUN)
    with pytest.warns(UserWarning, match="24 of the 30 items scored were used for training"):
        transferkit.evaluate(tmp_path / "run", data)
    held_out = transferkit.evaluate(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert held_out["num_items"] == len(saved["val"]) == 6


def test_a_federated_client_takes_no_loading_or_trust_settings_and_may_lack_classes(tmp_path: Path) -> None:
    from transferkit.errors import DataError
    from transferkit.modalities import Sample
    from transferkit.workflows.federated.client import TransferClient

    client = TransferClient([Sample(tmp_path / "x.png", 0), Sample(tmp_path / "y.png", 1)], ("cat", "fox"))
    sent = FitConfig(**RUN).to_dict()
    assert client._own_config({**sent, "trust_pickle": True}).trust_pickle is False
    with pytest.raises(TransferkitError, match="a client never loads files the server names"):
        client._own_config({**sent, "init_weights": "/home/me/evil.pt", "trust_pickle": True})
    own = TransferClient([], ("cat", "fox"), init_weights=str(tmp_path / "mine.safetensors"))
    (tmp_path / "mine.safetensors").write_bytes(b"")
    taken = own._own_config({**sent, "init_weights": "/home/me/evil.pt", "trust_pickle": True})
    assert taken.init_weights == str(tmp_path / "mine.safetensors") and taken.trust_pickle is False
    client._align_classes(("ant", "cat", "dog", "fox"))  # label skew: this client has two of four classes
    assert client.classes == ("ant", "cat", "dog", "fox") and [s.label for s in client.samples] == [1, 3]
    stranger = TransferClient([Sample(tmp_path / "z.png", 0)], ("yak",))
    with pytest.raises(DataError, match="classes the server does not: yak"):
        stranger._align_classes(("ant", "cat"))


def test_a_real_federated_client_trains_on_all_its_images(tmp_path: Path) -> None:
    """A SuperNode's client (what its node config describes) trains on every image it has:
    the server validates centrally, so a client keeps nothing back; a demo part is its share."""
    pytest.importorskip("flwr")
    from transferkit.workflows.federated.apps import node_client

    data = str(make_dataset(tmp_path / "data"))
    assert len(node_client({"data": data}).samples) == 30  # not 24
    part = node_client({"data": data, "part": "1/3", "partition-id": 4, "num-partitions": 9})  # Flower's own keys
    assert len(part.samples) in (9, 10, 11)
    with pytest.raises(TransferkitError, match="node-config"):
        node_client({"data": data, "model": "evil"})


def test_resume_with_loader_workers_is_bit_identical_and_keyed_on_their_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    data = make_dataset(tmp_path / "data")
    options = {**RUN, "augment": True, "strategy": "two-phase", "epochs": 4, "num_workers": 1, "restore_best": False}
    reference = transferkit.fit(data, out=tmp_path / "reference", **options)
    with interrupted_in_epoch(3, monkeypatch):  # mid fine-tune phase, augmented images from a worker
        transferkit.fit(data, out=tmp_path / "run", **options)
    with pytest.raises(TransferkitError, match="num_workers: 1 → 0"):
        transferkit.fit(data, out=tmp_path / "run", resume=True, **{**options, "num_workers": 0})
    resumed = transferkit.fit(data, out=tmp_path / "run", resume=True, **options)
    a, b = reference.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run with workers drew other augmentations"


def test_the_checkpoint_keeps_the_amp_loss_scale(tmp_path: Path) -> None:
    import torch

    from transferkit.checkpoint import LoopState, load_checkpoint, save_checkpoint

    scaler = {"scale": 2048.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 17}  # fmt: skip
    save_checkpoint(tmp_path / RunFolder.CHECKPOINT, {"loop": LoopState(), "model": {"w": torch.ones(2)}, "best": {},
                                                  "scaler": scaler})  # fmt: skip
    assert load_checkpoint(tmp_path / RunFolder.CHECKPOINT).scaler == scaler
