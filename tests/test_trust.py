"""Trust boundaries: transferkit never deletes or overwrites what it did not write, and treats
every file and message it reads as hostile. One regression test per case of the hostile review."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transferkit
from tests.conftest import QUICK, TINY, TINY_IMAGE, make_dataset, quick_config
from tests.tampering import vouched
from transferkit import api
from transferkit.checkpoint import load_checkpoint
from transferkit.errors import TransferkitError
from transferkit.model import load_model
from transferkit.ownership import is_owned, output_lock
from transferkit.runfolder import RunFolder

FIT = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "epochs": 2, "seed": 0, "augment": False, **QUICK}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (links as their target): compare before and after."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            files[key] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            files[key] = path.read_bytes()
        else:
            files[key + "/"] = b""
    return files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trust")
    data = make_dataset(root / "data", per_class=8)
    api.fit(data, out=root / "run", strategy="feature-extraction", **FIT)
    return root / "run", data


def copy_run(run: Path, where: Path) -> Path:
    where.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "split.json"):
        (where / name).write_bytes((run / name).read_bytes())
    return where


# --------------------------------------------------------------------------- ownership


def test_fit_refuses_a_folder_of_the_users_and_leaves_it_as_it_was(tiny_data: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "history.csv").write_text("my,own\n1,2\n")
    before = snapshot(mine)
    with pytest.raises(TransferkitError, match="did not write"):
        transferkit.fit(tiny_data, out=mine, **FIT)
    assert snapshot(mine) == before


def test_fit_into_its_own_run_again_replaces_it_without_stale_files(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    transferkit.fit(tiny_data, out=out, **FIT)
    assert is_owned(out) and (out / "history.csv").is_file()
    transferkit.fit(tiny_data, out=out, **{**FIT, "strategy": "linear-probe"})  # no history: none left over
    assert not (out / "history.csv").exists() and (out / "model.safetensors").is_file()


def test_a_second_writer_of_the_same_out_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    transferkit.fit(tiny_data, out=out, **FIT)
    with output_lock(out), pytest.raises(TransferkitError, match="another transferkit process"):
        transferkit.fit(tiny_data, out=out, **FIT)


def test_cache_clear_deletes_only_transferkits_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_data: Path
) -> None:
    from typer.testing import CliRunner

    from transferkit.cli import app

    cache = tmp_path / "somewhere"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(cache))
    transferkit.fit(tiny_data, **{**FIT, "strategy": "linear-probe"})  # writes one real entry
    ours = [p for p in cache.iterdir() if p.is_dir() and p.name != "verdicts"]  # verdicts get a file of the user's
    user = cache / "projects"
    (user / "verdicts").mkdir(parents=True)
    (user / "manifest.json").write_text("{}")
    (user / "thesis.tex").write_text("years of work")
    (cache / "verdicts").mkdir(exist_ok=True)
    (cache / "verdicts" / "notes.txt").write_text("mine")
    before = snapshot(user) | {"v": (cache / "verdicts" / "notes.txt").read_bytes()}
    result = CliRunner().invoke(app, ["cache", "clear"])
    assert result.exit_code == 0, result.output
    assert ours and not any(p.exists() for p in ours)
    assert snapshot(user) | {"v": (cache / "verdicts" / "notes.txt").read_bytes()} == before


@pytest.mark.parametrize(
    "files",
    [
        {"app/manifest.json": "{}"},  # a web app's manifest
        {"mf/manifest.json": "{}", "mf/features.npy": "x"},  # the names a feature cache uses
        {"verdicts/scores.json": "{}"},  # the name of the scan verdicts' folder
    ],
    ids=["manifest", "manifest+features", "verdicts"],
)
def test_cache_clear_never_takes_a_folder_that_only_looks_like_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]
) -> None:
    from typer.testing import CliRunner

    from transferkit.cli import app

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["cache", "clear"])
    assert result.exit_code == 0 and "(0 entries)" in result.output, result.output
    assert snapshot(tmp_path) == before


def test_cache_clear_reports_only_what_it_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only cache: nothing goes, so nothing is reported freed, and the exit says so."""
    from typer.testing import CliRunner

    from transferkit.cli import app
    from transferkit.ownership import mark

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    mark(tmp_path / "abc123", "feature cache")
    (tmp_path / "abc123" / "features.npy").write_bytes(b"0" * 4096)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)  # as a read-only folder answers (root ignores chmod)
    result = CliRunner().invoke(app, ["cache", "clear"])  # main() turns the error into one line and exit 2
    assert "(0 entries)" in result.output and "could not remove 1" in str(result.exception)


def test_scan_verdicts_are_never_written_into_a_users_verdicts_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.paths import VerdictStore

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    for name in ("verdicts", "scan-verdicts"):  # an earlier version's unmarked folder; a look-alike of ours
        (tmp_path / name).mkdir()
        (tmp_path / name / "image.json").write_text(json.dumps({"version": "v1", "verdicts": {"planted": "ok"}}))
    before = snapshot(tmp_path)
    store = VerdictStore("image", "v1")
    store.add({"digest": ""})
    assert store.get("planted") is None and snapshot(tmp_path) == before  # neither read nor written
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "fresh"))
    VerdictStore("image", "v1").add({"digest": ""})
    assert is_owned(tmp_path / "fresh" / "scan-verdicts") and VerdictStore("image", "v1").get("digest") == ""


def test_cache_clear_keeps_a_file_added_to_an_entry_and_reads_a_broken_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from transferkit.cli import app
    from transferkit.ownership import mark

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    for key, manifest in (("a1", "[1, 2]"), ("b2", '{"settings": "x", "shape": 3, "images": "many"}')):
        mark(tmp_path / key, "feature cache")
        (tmp_path / key / "manifest.json").write_text(manifest)
        (tmp_path / key / "features.npy").write_bytes(b"0")
    (tmp_path / "a1" / "notes.json").write_text("mine")
    listed = CliRunner().invoke(app, ["cache", "list"])
    assert listed.exit_code == 0 and listed.exception is None, listed.output
    result = CliRunner().invoke(app, ["cache", "clear"])
    assert result.exit_code == 0 and "(1 entries)" in result.output, result.output
    assert (tmp_path / "a1" / "notes.json").read_text() == "mine" and not (tmp_path / "b2").exists()
    assert (tmp_path / "a1" / "features.npy").is_file()  # the entry is left whole, not emptied around the file


def test_a_copied_run_config_does_not_make_a_folder_ours(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    """``legacy/`` holds a transferkit ``config.json`` copied in and the user's ``history.csv``:
    without the marker it is the user's, and fit refuses it before any compute."""
    run, data = run_dir
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_bytes((run / "config.json").read_bytes())
    (legacy / "history.csv").write_text("epoch,loss\n1,0.5\n")
    before = snapshot(legacy)
    with pytest.raises(TransferkitError, match="did not write"):
        transferkit.fit(data, out=legacy, **FIT)
    assert snapshot(legacy) == before


@pytest.mark.parametrize("writer", ["digits", "tasks"])
def test_demo_data_never_writes_into_a_users_folder_or_file(tmp_path: Path, writer: str) -> None:
    from transferkit.demos import write_digits_demo, write_digits_tasks_csv

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "0").mkdir()
    (mine / "0" / "0000.png").write_bytes(b"my picture")
    before = snapshot(tmp_path)
    with pytest.raises(TransferkitError):
        if writer == "digits":
            write_digits_demo(mine, per_class=2)
        else:
            write_digits_tasks_csv(mine, mine / "0" / "0000.png")
    assert snapshot(tmp_path) == before
    demo = write_digits_demo(tmp_path / "demo", per_class=2)
    write_digits_demo(demo, per_class=3)  # its own folder: replaced whole
    assert len(list(demo.glob("*/*.png"))) == 30 and is_owned(demo)
    with pytest.raises(TransferkitError, match="holds a transferkit demo dataset, not a run"):
        transferkit.fit(demo, out=demo, **FIT)  # a dataset of ours is still never replaced by a run
    (demo / "3" / "my-own-3.png").write_bytes(b"added by the user")
    with pytest.raises(TransferkitError, match="added or edited since"):
        write_digits_demo(demo, per_class=2)  # a folder of ours that holds a file of theirs is theirs too
    assert (demo / "3" / "my-own-3.png").read_bytes() == b"added by the user"
    (demo / "3" / "my-own-3.png").unlink()
    (demo / "0" / "0000.png").write_bytes(b"edited by the user")  # a file of ours, changed since
    with pytest.raises(TransferkitError, match="added or edited since"):
        write_digits_demo(demo, per_class=2)
    assert (demo / "0" / "0000.png").read_bytes() == b"edited by the user"


# --------------------------------------------------------------------------- export


def test_export_to_an_existing_folder_is_refused_and_the_folder_kept(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    from transferkit.deploy.export import export_onnx

    run, _ = run_dir
    folder = tmp_path / "my-folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(TransferkitError, match="is a folder"):
        export_onnx(run, folder, repeats=1)
    (folder / "model.onnx").write_bytes(b"my own onnx file")
    with pytest.raises(TransferkitError, match="not written by"):
        export_onnx(run, folder / "model.onnx", repeats=1)
    assert snapshot(tmp_path) == {**before, "my-folder/model.onnx": b"my own onnx file"}


def test_an_interrupted_export_leaves_the_earlier_export_in_place(
    run_dir: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.deploy import export as export_module

    run, data = run_dir
    target = tmp_path / "models" / "model.onnx"
    rows = export_module.export_onnx(run, target, repeats=1, data=data)
    by_evaluate = api.evaluate(run, data)["accuracy"]
    assert rows[1].accuracy == pytest.approx(by_evaluate)  # a labelled folder is scored on its own labels
    before = snapshot(tmp_path)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_module.export_onnx(run, target, repeats=1)
    assert snapshot(tmp_path) == before  # the old export, and no temporary left


def test_non_finite_weights_are_refused_at_load_and_before_export(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    from transferkit.deploy.export import export_onnx

    run = copy_run(run_dir[0], tmp_path / "nan")
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    with safe_open(str(run / "model.safetensors"), framework="pt") as handle:  # the class order record stays
        metadata = handle.metadata()
    save_file(state, str(run / "model.safetensors"), metadata=metadata)
    for action in (lambda: load_model(run), lambda: export_onnx(run, repeats=1)):
        with pytest.raises(TransferkitError, match="non-finite"):
            action()
    assert not (run / "model.onnx").exists()


# --------------------------------------------------------------------------- run files are input


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["preprocessing"].update(image_size=100000), "image_size"),
        (lambda c: c.update(backbone="hf:/etc"), "never a local path"),
        (lambda c: c.update(backbone="../../etc"), "never a local path"),
        (lambda c: c.update(classes=["a", "a", "b"]), "unique"),
        (lambda c: c.update(classes=["", "b", "c"]), "non-empty"),
        (lambda c: c["preprocessing"].update(mean=[0.5]), "mean"),
        (lambda c: c["preprocessing"].update(kind="video"), "kind"),
        (lambda c: c["head"].update(hidden=-4), "hidden"),
        (lambda c: c.update(strategy="rm -rf"), "strategy"),
        (lambda c: c.update(classes=[f"c{i}" for i in range(90_000)]), "head for 3 classes"),  # no huge head built
    ],
)
def test_an_edited_config_is_refused_before_any_tensor_is_built(
    run_dir: tuple[Path, Path], tmp_path: Path, edit: Any, message: str
) -> None:
    run = copy_run(run_dir[0], tmp_path / "edited")
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError, match=message):
        load_model(run)


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe not UTF-8", b"[1, 2]", b'{"classes": ', b""],
    ids=["nested-100k", "not-utf8", "a-list", "cut-short", "empty"],
)
@pytest.mark.parametrize("name", ["config.json", "split.json"])
def test_a_broken_run_file_is_one_line_at_every_reader(
    run_dir: tuple[Path, Path],
    tmp_path: Path,
    name: str,
    content: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_cli import run_cli

    run = copy_run(run_dir[0], tmp_path / "broken")
    (run / name).write_bytes(content)
    for args in (["evaluate", run], ["predict", run, next(run_dir[1].rglob("*.png"))]):
        code, _, err = run_cli(args, capsys, monkeypatch)
        if name == "split.json" and args[0] == "predict":
            assert code == 0  # predict never reads the split
            continue
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err[-500:]


def _interrupted_run(tiny_data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.conftest import interrupted_in_epoch

    with interrupted_in_epoch(2, monkeypatch):
        transferkit.fit(tiny_data, out=out, **{**FIT, "strategy": "two-phase", "epochs": 4})
    return out / RunFolder.CHECKPOINT


def _edit_metadata(path: Path, key: str, value: str) -> None:
    tensors = load_file(str(path))
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = dict(header["__metadata__"])
    meta[key] = value
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("loop", "position"),  # replaced below with phase 7, epoch -3
        ("rng", json.dumps({"python": [3, [1, 2], None], "numpy": ["x"]})),
        ("loop", "{not json"),
        ("fit_config", "[1, 2]"),
        ("scheduler", json.dumps({"optimizer": 5, "last_epoch": 0})),  # load_state_dict would copy any key
        ("optimizer", json.dumps({"param_groups": [], "scalars": {}})),
    ],
)
def test_a_tampered_checkpoint_is_refused_on_resume(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    checkpoint = _interrupted_run(tiny_data, tmp_path / "run", monkeypatch)
    if value == "position":
        loop = load_checkpoint(checkpoint).loop
        from dataclasses import asdict

        value = json.dumps({**asdict(loop), "phase_index": 7, "epoch": -3})
    _edit_metadata(checkpoint, key, value)
    with pytest.raises(TransferkitError, match=r"checkpoint|malformed|metadata|phase|does not fit"):
        transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **{**FIT, "strategy": "two-phase", "epochs": 4})


def test_a_checkpoint_beyond_the_plan_is_refused(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import asdict

    checkpoint = _interrupted_run(tiny_data, tmp_path / "run", monkeypatch)
    loop = asdict(load_checkpoint(checkpoint).loop)
    loop |= {"phase_index": 7}
    _edit_metadata(checkpoint, "loop", json.dumps(loop))
    vouched(checkpoint.parent)
    with pytest.raises(TransferkitError, match="does not have"):
        transferkit.fit(tiny_data, out=tmp_path / "run", resume=True, **{**FIT, "strategy": "two-phase", "epochs": 4})


def test_onnx_metadata_with_fewer_classes_than_outputs_is_refused(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    import onnx

    from transferkit.deploy.export import export_onnx
    from transferkit.deploy.onnx_model import METADATA_KEY, OnnxModel

    target = tmp_path / "m.onnx"
    export_onnx(run_dir[0], target, repeats=1)
    model = onnx.load(str(target))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    meta["classes"] = meta["classes"][:2]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(target))
    with pytest.raises(TransferkitError, match="outputs"):
        OnnxModel(target)


# --------------------------------------------------------------------------- federated messages


def _message(**changes: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from transferkit.config import FitConfig
    from transferkit.strategies import Phase

    message = {
        "fit_config": json.dumps(FitConfig(backbone=TINY, strategy="feature-extraction").to_dict()),
        "classes": json.dumps(["a", "b"]),
        "phase": json.dumps(asdict(Phase("head", 1, 0, 1e-3, 1e-4))),
        "round": 1,
    }
    return {**message, **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {"fit_config": json.dumps({"backbone": "hf:/etc", "modality": "text"})},
        {
            "fit_config": json.dumps({"backbone": "hf:bert-base-uncased", "modality": "text"})
        },  # the server picks a download
        {"phase": json.dumps({"name": "head", "epochs": 1, "unfreeze": 0, "head_lr": 1, "backbone_lr": 1, "x": 1})},
        {"fit_config": "not json"},
        {"round": "abc"},
        {"round": -1},
        {"classes": json.dumps(["a", "a"])},
        {"init": "x"},
    ],
)
def test_a_malformed_server_message_is_one_clear_refusal(changes: dict[str, Any]) -> None:
    from transferkit.workflows.federated.client import TransferClient, read_fit_message

    message = {k: v for k, v in _message(**changes).items()}
    client = TransferClient([], ["a", "b"])
    with pytest.raises(TransferkitError):
        read_fit_message(message)
        client._own_config(json.loads(message["fit_config"]))


def test_weights_of_the_wrong_shape_or_not_finite_are_refused() -> None:
    from transferkit.workflows.federated.client import set_arrays

    layer = torch.nn.Linear(3, 2)
    names = ["weight", "bias"]
    for arrays in (
        [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)],
        [np.full((2, 3), np.nan, np.float32), np.zeros(2, np.float32)],
        [np.zeros((2, 3), np.int64), np.zeros(2, np.float32)],
    ):
        with pytest.raises(TransferkitError):
            set_arrays(layer, names, arrays)


# --------------------------------------------------------------------------- data and disk


def test_tables_with_a_bom_and_huge_cells_read_and_claims_never_crash(tmp_path: Path) -> None:
    from transferkit.modalities import detect_modality
    from transferkit.modalities.common import read_table

    table = tmp_path / "t.csv"
    rows = [f"{'x' * 200_000} {i},{'ab'[i % 2]}" for i in range(8)]
    table.write_bytes(b"\xef\xbb\xbf" + ("text,label\n" + "\n".join(rows) + "\n").encode())
    assert list(read_table(table)[0]) == ["text", "label"]
    assert detect_modality(table).name == "text"


def test_a_class_folder_linked_outside_the_data_is_not_followed(tmp_path: Path) -> None:
    from transferkit.modalities.common import files_in_class_folders

    data = make_dataset(tmp_path / "data", classes=2, per_class=3)
    outside = make_dataset(tmp_path / "elsewhere", classes=1, per_class=4)
    (data / "class_9").symlink_to(outside / "class_0", target_is_directory=True)
    with pytest.warns(UserWarning, match="lead outside"):
        found = files_in_class_folders(data, ["class_0", "class_1", "class_9"])
    assert len(found) == 6 and all(p.resolve().is_relative_to(data.resolve()) for p, _ in found)


def test_a_full_cache_volume_computes_in_memory_instead_of_a_sigbus(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "posix_fallocate", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = transferkit.fit(tiny_data, **{**FIT, "strategy": "linear-probe"})
    assert any("disk full while caching" in str(w.message) for w in caught)
    assert result.metrics["val"]["accuracy"] >= 0


# --------------------------------------------------------------------------- serve


def _served(run: Path, max_upload_bytes: int = 200_000) -> Any:
    from fastapi.testclient import TestClient

    from transferkit.deploy.serve import create_app, load_predictor

    return TestClient(create_app(load_predictor(run), max_upload_bytes=max_upload_bytes))


def test_serve_refuses_a_chunked_upload_while_it_streams(run_dir: tuple[Path, Path]) -> None:
    pytest.importorskip("fastapi")
    from transferkit.deploy import serve

    client = _served(run_dir[0], max_upload_bytes=10_000)
    received = {"chunks": 0}

    def chunks() -> Any:
        yield b"--b\r\ncontent-disposition: form-data; name=file; filename=x.png\r\n\r\n"
        for _ in range(1_000):  # 1 MB in 1 KB chunks, no content-length: transfer-encoding chunked
            received["chunks"] += 1
            yield b"0" * 1_000

    answer = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    assert serve.MAX_JSON_DEPTH < 100


def test_serve_answers_deep_json_with_400_not_500(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from tests.conftest import TINY_TEXT, make_text_table

    table = make_text_table(tmp_path / "news.csv", per_class=6)
    api.fit(table, out=tmp_path / "run", backbone=TINY_TEXT, strategy="linear-probe", epochs=1)
    client = _served(tmp_path / "run")
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = client.post("/predict", content=deep, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "deeper" in answer.json()["detail"]
    tricky = json.dumps({"text": 'brackets "[[[[[[[[[[" and \\" quotes inside a string'}).encode()
    assert client.post("/predict", content=tricky, headers={"content-type": "application/json"}).status_code == 200


def test_the_serve_page_never_parses_labels_as_html() -> None:
    from transferkit.deploy.serve import PAGE

    assert "innerHTML" not in PAGE and "textContent" in PAGE


# --------------------------------------------------------------------------- a real full disk


@pytest.fixture
def full_volume(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    where = tmp_path / "volume"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs root and mount to make a small full volume")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_out_volume_is_one_line_and_exit_1(full_volume: Path, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import ROOT, cli_command, cli_env

    data = make_dataset(tmp_path / "data", per_class=6)
    (full_volume / "filler").write_bytes(b"\0" * (2 * 2**20 - 64 * 1024))  # leave less than the model needs
    args = ["fit", str(data), "--out", str(full_volume / "run"), "--backbone", TINY, "--image-size", "32",
            "--strategy", "linear-probe"]  # fmt: skip
    done = subprocess.run(cli_command(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "disk full" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_full_cache_volume_is_a_warning_and_the_run_goes_on(
    full_volume: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (full_volume / "filler").write_bytes(b"\0" * (2 * 2**20 - 16 * 1024))
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(full_volume / "cache"))
    with pytest.warns(UserWarning, match="disk full while caching"):  # where a write through a map was a SIGBUS
        transferkit.fit(tiny_data, **{**FIT, "strategy": "linear-probe"})


def test_a_split_file_naming_a_device_or_foreign_labels_is_refused(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    run = copy_run(run_dir[0], tmp_path / "split")
    record = json.loads((run / "split.json").read_text())
    for edit in ({"path": "/dev/zero", "label": 0}, {"path": str(tmp_path), "label": 0}, {"path": "x.png", "label": 7}):
        (run / "split.json").write_text(json.dumps({**record, "val": [edit]}))
        with pytest.raises(TransferkitError, match=r"split\.json"):
            api.evaluate(run)


def test_fit_nproc_refuses_a_users_folder_before_starting_processes(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import run_cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run_cli(["fit", tiny_data, "--nproc", "2", "--batch-size", "8", "--out", mine], capsys, monkeypatch)
    assert code == 2 and "did not write" in err and "torchrun" not in err.lower()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_best_out_as_a_link_is_refused_before_any_run(tiny_data: Path, tmp_path: Path) -> None:
    from transferkit.workflows.compare import CompareConfig, compare

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "best").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    base = quick_config(image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1, base=base)
    with pytest.raises(TransferkitError, match="symbolic link"):
        compare(tiny_data, cfg, out=tmp_path / "cmp", best_out=tmp_path / "best")
    assert not (tmp_path / "cmp").exists()  # refused before the comparison wrote anything


@pytest.mark.parametrize(
    "stored",
    [
        {"a/b": {"init_weights": "evil.pt", "trust_pickle": True}},  # options no suggestion sets
        {"a/b": {"lr": 1e300}},  # out of the rate's own bounds
        {"a/b": [1, 2]},
        [1, 2],
    ],
)
def test_a_kept_lr_auto_file_may_only_set_rates_within_bounds(tmp_path: Path, stored: Any) -> None:
    """``lr-auto.json`` is applied to every run of a resumed comparison: a received or edited one
    that names anything but the rates is measured again, never applied."""
    from transferkit.workflows.lr_find import stored_rates

    path = tmp_path / "lr-auto.json"
    path.write_text(json.dumps(stored))
    assert stored_rates(path) is None
    path.write_text(json.dumps({"a/b": {"lr": 3e-3, "backbone_lr": 1e-4}}))
    assert stored_rates(path) == {"a/b": {"lr": 3e-3, "backbone_lr": 1e-4}}


@pytest.mark.parametrize("planted", ["folder", "link"])
def test_a_look_alike_feature_cache_entry_is_neither_read_nor_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_data: Path, planted: str
) -> None:
    """The cache key is deterministic: a folder of that name the user made (or a link to one)
    holding a manifest.json and features.npy must not be trained on, overwritten or marked."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(cache))
    transferkit.fit(tiny_data, **{**FIT, "strategy": "linear-probe"})  # learns the key
    (entry,) = [p for p in cache.iterdir() if (p / "features.npy").is_file()]
    shutil.rmtree(entry)
    mine = tmp_path / "mine" if planted == "link" else entry
    mine.mkdir(parents=True)
    (mine / "manifest.json").write_text("{}")
    np.save(mine / "features.npy", np.full((1, 1), 7.0, dtype=np.float32))
    if planted == "link":
        entry.symlink_to(mine)
    before = snapshot(mine)
    transferkit.fit(tiny_data, **{**FIT, "strategy": "linear-probe"})
    assert snapshot(mine) == before and not is_owned(mine)


def test_a_head_width_edited_in_config_json_is_refused_before_the_head_is_built(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run = copy_run(run_dir[0], tmp_path / "wide")
    config = json.loads((run / "config.json").read_text())
    config["head"]["hidden"] = 65_536
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError, match="hidden width") as info:
        load_model(run)
    assert "\n" not in str(info.value)


def test_a_run_naming_a_hub_model_not_on_this_machine_is_refused_not_downloaded(
    run_dir: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A received run folder must not make this machine contact the hub (the federated rule:
    offline unless the user opts in); a hub model already in the cache still loads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were anything to try the network, it fails loudly here
    run = copy_run(run_dir[0], tmp_path / "hub")
    config = json.loads((run / "config.json").read_text())
    config["backbone"] = "hf:evil-org/not-cached-anywhere"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError, match="never makes transferkit download"):
        load_model(run)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["metrics"].update(bogus=float("inf")),
        lambda c: c["metrics"].update(bogus=7e300),
        lambda c: c["head"].update(dropout=float("nan")),
        lambda c: c.update(metrics=[[[[[[1]]]]]]),
    ],
)
def test_stored_figures_and_head_settings_are_bounded(run_dir: tuple[Path, Path], tmp_path: Path, edit: Any) -> None:
    run = copy_run(run_dir[0], tmp_path / "figures")
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError):
        load_model(run)


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_received_split_cannot_make_evaluate_read_files_outside_the_data(
    run_dir: tuple[Path, Path], tmp_path: Path, where: str
) -> None:
    """A run folder from elsewhere names its own items: evaluate without DATA reads them only
    when this machine's transferkit wrote the split (a signature with a key kept in the user's
    config folder), so a received or edited one cannot point it at the reader's files."""
    private = tmp_path / "private.png"
    private.write_bytes(next(run_dir[1].rglob("*.png")).read_bytes())
    run = copy_run(run_dir[0], tmp_path / "received")
    record = json.loads((run / "split.json").read_text())
    path = str(private) if where == "absolute" else "../private.png"
    (run / "split.json").write_text(json.dumps({**record, "val": [{"path": path, "label": 0}]}))
    with pytest.raises(TransferkitError, match="not written by transferkit on this machine"):
        api.evaluate(run)
    assert api.evaluate(run_dir[0])["num_items"] > 0  # the split this machine wrote still scores
