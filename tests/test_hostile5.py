"""The fifth hostile round (2026-12-08, someone who had not seen the tests): each finding as
the class it belongs to — a file written over without asking whose it is, a folder copied
through its links, a bound read from one header and not another, a door that lets a name
through that is not one."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
from tests.tampering import vouched
from tests.test_cli import FAST, run_cli
from tests.test_hostile3_deploy import BlockingPredictor
from transferkit.deploy.serve_pool import ServeLimits
from transferkit.errors import TransferkitError
from transferkit.ownership import claim_output_dir, copy_owned, seal
from transferkit.workflows.compare import CompareConfig, compare


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("h5")
    data = make_dataset(root / "data", classes=2, per_class=6)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1, base=base)
    compare(data, cfg, out=root / "cmp")
    return root / "cmp"


# --------------------------------------------------------------------------- F1: report.html


@pytest.mark.parametrize("where", ["a plain folder with a copied results.json", "a sealed comparison, edited"])
def test_report_never_writes_over_a_report_html_it_did_not_write(
    where: str, comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "folder"
    if where.startswith("a plain"):
        folder.mkdir()
        shutil.copy(comparison / "results.json", folder / "results.json")
    else:
        shutil.copytree(comparison, folder)
    (folder / "report.html").write_text("my own report", encoding="utf-8")
    code, _, err = run_cli(["report", folder], capsys, monkeypatch)
    assert code == 2 and "not a file transferkit wrote" in err, err
    assert (folder / "report.html").read_text(encoding="utf-8") == "my own report"


def test_report_rebuilds_its_own_report_and_a_new_one(comparison: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(["report", comparison], capsys, monkeypatch)  # its own, unedited: rebuilt
    assert code == 0, err
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(comparison / "results.json", folder / "results.json")
    code, _, err = run_cli(["report", folder], capsys, monkeypatch)  # none there yet: nothing of anyone's to lose
    assert code == 0 and (folder / "report.html").is_file(), err


# --------------------------------------------------------------------------- F3: copies through links


def test_a_run_holding_a_link_is_never_copied_through_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET", encoding="utf-8")
    run = tmp_path / "run"
    claim_output_dir(run, "run", "--out")
    (run / "model.safetensors").write_bytes(b"weights")
    seal(run, "run")
    (run / "notes.txt").symlink_to(secret)
    with pytest.raises(TransferkitError, match=r"added or edited since"):
        copy_owned(run, tmp_path / "copy")
    vouched(run)  # even when its marker vouches for the link (a sender of the whole folder can)
    with pytest.raises(TransferkitError, match=r"holds links \(notes\.txt\)"):
        copy_owned(run, tmp_path / "copy")
    assert not (tmp_path / "copy" / "notes.txt").exists()


def test_best_out_refuses_a_reused_run_someone_planted_a_link_in(comparison: Path, tmp_path: Path) -> None:
    """The round's F3: a finished sub-run of a comparison "answered for itself" unchecked, and
    --best-out copied it with copytree's default, following links: files from outside the
    comparison became files of the model folder the user ships."""
    folder = tmp_path / "cmp"
    shutil.copytree(comparison, folder, symlinks=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET", encoding="utf-8")
    sub = next(p for p in (folder / "runs").iterdir() if p.is_dir())
    (sub / "notes.txt").symlink_to(secret)
    cfg = json.loads((folder / "results.json").read_text())["config"]
    data = comparison.parent / "data"
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    again = CompareConfig(backbones=(TINY,), strategies=tuple(cfg["strategies"]), budget_epochs=1, seeds=1, base=base)
    with pytest.raises(TransferkitError):
        compare(data, again, out=folder, best_out=tmp_path / "best")
    assert not (tmp_path / "best" / "notes.txt").exists()
    assert secret.read_text(encoding="utf-8") == "SECRET"


# --------------------------------------------------------------------------- F4: DICOM's pixels


def _post(predictor: Any, limits: ServeLimits, name: str, data: bytes) -> Any:
    from transferkit.deploy.serve import create_app

    app = create_app(predictor, limits=limits)

    async def scenario() -> Any:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/predict", files={"file": (name, data, "application/dicom")})

    try:
        return asyncio.run(scenario())
    finally:
        app.state.pool.shutdown()


def _dicom(path: Path, rows: int, columns: int, deflated: bool = False) -> bytes:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.test_medical import write_dicom

    write_dicom(path, np.zeros((8, 8)))  # a real file, then its header made to declare more
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = b"\0" * (2 * rows * columns) if rows * columns < 2**22 else b"\0" * 128
    if deflated:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.mark.parametrize(("rows", "deflated"), [(4_000, False), (1_000, True)])
def test_serve_holds_a_dicom_upload_to_max_pixels_before_decoding(rows: int, deflated: bool, tmp_path: Path) -> None:
    """The round's F4: --max-pixels read only Pillow's headers, so a 125 KB deflated DICOM
    declaring 8000² pixels was inflated and decoded (3.4 GB). Its rows × columns are read first;
    a deflated file, which cannot be bounded before it is inflated, is refused unread."""
    pytest.importorskip("pydicom")
    predictor = BlockingPredictor(literal_inputs=False)
    predictor.release.set()
    checked: list[Path] = []
    predictor.modality.check_file = lambda path: checked.append(path)  # type: ignore[attr-defined]
    answer = _post(
        predictor, ServeLimits(max_pixels=2**20), "big.dcm", _dicom(tmp_path / "x.dcm", rows, rows, deflated)
    )
    assert answer.status_code == 413, answer.text
    assert not checked and predictor.calls == 0


# --------------------------------------------------------------------------- F5: names that are not names


@pytest.mark.parametrize("key", ["1: 2", "null: 2", "? !!binary aGVsbG8=\n: 2"])
@pytest.mark.parametrize("command", ["fit", "compare", "lr-find"])
def test_a_yaml_key_that_is_not_a_name_is_one_line(
    key: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=3)
    config = tmp_path / "c.yaml"
    config.write_text(key + "\n", encoding="utf-8")
    out = [] if command == "lr-find" else ["--out", tmp_path / "o"]
    code, _, err = run_cli([command, data, "--config", config, *FAST, *out], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and "not" in err, err


def test_a_python_dict_with_a_key_that_is_not_a_name_is_refused() -> None:
    from transferkit.config import from_dict

    with pytest.raises(TransferkitError, match="not a name"):
        from_dict({1: 2})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- F6: checkpoint words, serve's socket


@pytest.mark.parametrize(
    "edit",
    [
        lambda rng: rng["numpy"].__setitem__(2, 2**70),
        lambda rng: rng["numpy"].__setitem__(2, 99_999),
        lambda rng: rng["python"][1].__setitem__(0, 2**70),
        lambda rng: rng["python"][1].__setitem__(624, 10_000),
        lambda rng: rng["numpy"][1].__setitem__(5, -1),
    ],
    ids=["numpy pos 2**70", "numpy pos 99999", "python word 2**70", "python pos 10000", "numpy key -1"],
)
def test_random_states_out_of_range_are_refused_before_they_are_set(edit: Any) -> None:
    from transferkit.checkpoint import _check_rng, capture_rng

    meta, _ = capture_rng()
    meta = json.loads(json.dumps(meta))
    _check_rng(meta)  # as saved: accepted
    edit(meta)
    with pytest.raises(ValueError, match="random state is malformed"):
        _check_rng(meta)


@pytest.mark.parametrize("host", ["a" * 300, "bad host"])
def test_serve_refuses_a_host_that_is_no_name_in_one_line(host: str) -> None:
    from transferkit.deploy.serve_http import listening_socket

    with pytest.raises(TransferkitError, match="--host"):
        listening_socket(host, 8000)


def test_serve_on_a_port_in_use_is_one_line() -> None:
    from transferkit.deploy.serve_http import listening_socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(TransferkitError, match="cannot listen"):
            listening_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


# --------------------------------------------------------------------------- F7: one bad cache entry


def test_one_deeply_nested_manifest_does_not_hide_the_whole_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.paths import mark

    cache = tmp_path / "cache"
    entry = cache / "0123456789abcdef0123456789abcdef"
    mark(entry, "feature cache")
    (entry / "manifest.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(cache))
    code, out, err = run_cli(["cache", "list"], capsys, monkeypatch)
    assert code == 0 and "?" in out, err
    code, out, err = run_cli(["cache", "clear"], capsys, monkeypatch)
    assert code == 0 and not entry.exists(), err


# --------------------------------------------------------------------------- sixth round


@pytest.mark.parametrize("cell", ["class_0/000\x00.png", "class_0/" + "a" * 300 + ".png"], ids=["NUL", "too long"])
def test_a_table_cell_that_names_no_file_is_skipped_not_a_traceback(cell: str, tmp_path: Path) -> None:
    import transferkit
    from transferkit.config import FitConfig

    data = make_dataset(tmp_path / "data", classes=2, per_class=5)
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.glob("*/*.png"))]
    (data / "labels.csv").write_text("path,label\n" + "\n".join([*rows, f"{cell},class_0"]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning):
        splits = transferkit.load_data(data / "labels.csv", FitConfig(backbone=TINY, image_size=TINY_IMAGE))
    assert len(splits.skipped) == 1 and len(splits.train) + len(splits.val) == 10


def test_a_last_training_batch_of_one_through_batchnorm_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sixth round: `--strategy scratch` at a small input leaves BatchNorm one value a
    channel in a last batch of one item: torch's ValueError was a traceback."""
    from transferkit.training import batch_loss

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(4))
    net.train()

    class Flat:
        def loss(self, logits: Any, labels: Any) -> Any:
            return logits.sum(), torch.tensor(1.0)

    from transferkit.runtime import Amp

    with pytest.raises(TransferkitError, match="batch-size"):
        batch_loss(net, torch.zeros(1, 3, 8, 8), torch.zeros(1), Flat(), Amp(torch.device("cpu")), torch.device("cpu"))  # type: ignore[arg-type]
