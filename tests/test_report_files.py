"""A report reads only files inside its comparison's folder (#42, point 5).

``transferkit report DIR`` on a folder received from someone else must never embed the
recipient's own files, whatever an edited ``results.json`` names or a planted link points at:
thumbnails are stored when the comparison runs, and every stored name goes through
:func:`transferkit.schema.inside`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
from tests.tampering import vouched
from tests.test_cli import run_cli
from transferkit.errors import TransferkitError
from transferkit.modalities import get_modality
from transferkit.records import Predictions
from transferkit.reports.html import most_confused, write_report
from transferkit.reports.previews import FOLDER, preview_name, store_previews
from transferkit.schema import SchemaError, inside
from transferkit.workflows.compare import CompareConfig, compare, load_record


def _received(tiny_compare: tuple[Path, Path, Any], tmp_path: Path) -> Path:
    """A copy of the shared comparison, as it would arrive from someone else."""
    folder = tmp_path / "received"
    shutil.copytree(tiny_compare[0] / "out", folder, symlinks=True)
    return folder


def _secret(tmp_path: Path) -> Path:
    """The recipient's own picture, outside the comparison folder."""
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    Image.new("RGB", (20, 20), (250, 10, 200)).save(path)
    return path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file PIL opens while the test runs."""
    seen: list[str] = []
    original = Image.open

    def spy(fp: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(fp))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return seen


def _edit_items(folder: Path, names: list[str]) -> None:
    """Every record and attention row of ``results.json`` now names ``names``."""
    path = folder / "results.json"
    data = json.loads(path.read_text())
    for record in data["records"]:
        pred = record["predictions"]
        pred["items"] = [names[i % len(names)] for i in range(len(pred["items"]))]
        pred["y_pred"] = [(t + 1) % len(data["classes"]) for t in pred["y_true"]]  # every item in the gallery
    for r, row in enumerate((data.get("attention") or {}).get("rows", [])):
        row["item"] = names[r % len(names)]
    path.write_text(json.dumps(data))


def _gallery(page: str) -> str:
    return page[page.index('<div id="most-confused">') :]


def test_the_report_shows_the_thumbnails_stored_when_the_comparison_ran(
    tiny_compare: tuple[Path, Path, Any], opened: list[str]
) -> None:
    out = tiny_compare[0] / "out"
    assert sorted((out / FOLDER).glob("*.png")), "compare stores the previewed items' thumbnails"
    page = write_report(out).read_text()
    assert not opened, "a report opens no picture: the thumbnails are read as bytes"
    rows = json.loads((out / "results.json").read_text())["attention"]["rows"]
    section = page[page.index('<table id="attention">') :]
    assert section.count('<tr><td><img alt="') == len(rows) and "no preview" not in page


def test_most_confused_shows_each_stored_thumbnail(tiny_data: Path, tmp_path: Path) -> None:
    items = [str(p) for p in sorted(tiny_data.rglob("*.png"))[:3]]
    out = tmp_path / "out"
    store_previews(out, items, get_modality("image"), allowed=set(items))
    pred = Predictions(items=items, y_true=[0, 0, 1], y_pred=[1, 1, 0], confidence=[0.9, 0.8, 0.7])
    gallery = most_confused(pred, ["a", "b"], get_modality("image"), folder=out)
    assert gallery.count("<figure") == 3 and gallery.count("data:image/png;base64,") == 3


def test_an_edited_results_json_never_embeds_files_outside_the_folder(
    tiny_compare: tuple[Path, Path, Any], tmp_path: Path, opened: list[str]
) -> None:
    folder, secret = _received(tiny_compare, tmp_path), _secret(tmp_path)
    (folder / "linked.png").symlink_to(secret)
    names = ["/etc/passwd", str(secret), "../private/secret.png", "linked.png", str(folder / "linked.png")]
    _edit_items(folder, names)
    (folder / preview_name(str(secret))).symlink_to(secret)  # the thumbnail an absolute name would use
    page = write_report(folder).read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert not [p for p in opened if "secret" in p or "passwd" in p or "linked" in p]
    gallery = _gallery(page)
    assert gallery.count("<figure") >= len(names) and "data:image/png;base64," not in gallery[: gallery.index("</div>")]
    assert "leads outside the comparison folder" in gallery and "no preview stored" in gallery


def test_a_previews_folder_linked_elsewhere_is_not_read(
    tiny_compare: tuple[Path, Path, Any], tmp_path: Path, opened: list[str]
) -> None:
    """The sender plants previews/ (or attention/) as a link to the recipient's pictures."""
    folder, secret = _received(tiny_compare, tmp_path), _secret(tmp_path)
    elsewhere = tmp_path / "pictures"
    shutil.copytree(folder / FOLDER, elsewhere)
    for png in elsewhere.glob("*.png"):
        shutil.copy(secret, png)  # what the recipient's folder would hold under those names
    shutil.rmtree(folder / FOLDER)
    (folder / FOLDER).symlink_to(elsewhere, target_is_directory=True)
    if (folder / "attention").is_dir():
        shutil.rmtree(folder / "attention")
        (folder / "attention").symlink_to(elsewhere, target_is_directory=True)
        for r in range(6):
            for c in range(8):
                shutil.copy(secret, elsewhere / f"r{r}-c{c}.png")
    page = write_report(folder).read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert "leads outside the comparison folder" in page
    assert not opened


def test_results_json_linked_from_elsewhere_is_refused(
    tiny_compare: tuple[Path, Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    folder = _received(tiny_compare, tmp_path)
    (folder / "results.json").rename(tmp_path / "theirs.json")
    (folder / "results.json").symlink_to(tmp_path / "theirs.json")
    code, _, err = run_cli(["report", folder], capsys, monkeypatch)
    assert code == 2 and "leads out of" in err and len(err.strip().splitlines()) == 1


def test_a_reused_run_must_name_the_data_s_own_validation_items(
    tiny_compare: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    """compare reuses a finished run only if its record names this data's items: a received
    run folder naming other files is run again, never drawn (Grad-CAM) or previewed."""
    run = next(p for p in sorted((tiny_compare[0] / "out" / "runs").iterdir()) if (p / "result.json").is_file())
    values = json.loads((run / "result.json").read_text())
    items = values["predictions"]["items"]
    assert load_record(run, items) is not None
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    values["predictions"]["items"] = ["/etc/passwd", *items[1:]]
    (copy / "result.json").write_text(json.dumps(values))
    assert load_record(copy) is None  # edited since its run: not the run it describes
    vouched(copy)  # a sender of the whole folder can vouch for the edit in its marker
    assert load_record(copy, items) is None  # then the items are what give it away
    assert load_record(copy) is not None  # without the data to check against: only its shape


def test_compare_runs_again_a_received_run_that_names_other_files(tmp_path: Path, opened: list[str]) -> None:
    data, secret = make_dataset(tmp_path / "data", classes=2, per_class=6), _secret(tmp_path)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1, base=base)
    first = compare(data, cfg, out=tmp_path / "out")
    result = Path(first.records[0].run_dir) / "result.json"
    values = json.loads(result.read_text())
    values["predictions"]["items"] = [str(secret)] * len(values["predictions"]["items"])
    result.write_text(json.dumps(values))
    opened.clear()
    # an edited file makes the sealed comparison the user's: refused whole, their edit kept, nothing opened
    with pytest.raises(TransferkitError, match="added or edited since"):
        compare(data, cfg, out=tmp_path / "out")
    assert str(secret) in result.read_text() and not [p for p in opened if "secret" in p]
    # a comparison killed half-way whose marker vouches for the edit: the tampered run is not trusted, it is run again
    vouched(result.parent)
    vouched(tmp_path / "out")
    again = compare(data, cfg, out=tmp_path / "out")
    assert again.executed == [Path(first.records[0].run_dir).name] and not again.skipped
    assert str(secret) not in result.read_text() and not [p for p in opened if "secret" in p]


def test_previews_are_stored_only_for_the_data_s_own_items(tmp_path: Path) -> None:
    secret, mine = _secret(tmp_path), tmp_path / "mine.png"
    Image.new("RGB", (8, 8)).save(mine)
    out = tmp_path / "out"
    store_previews(out, [str(secret), str(mine)], get_modality("image"), allowed={str(mine)})
    assert (out / preview_name(str(mine))).is_file()
    assert [p.name for p in (out / FOLDER).iterdir()] == [Path(preview_name(str(mine))).name]


def test_without_a_folder_a_preview_opens_no_file(tmp_path: Path, opened: list[str]) -> None:
    secret = _secret(tmp_path)
    pred = Predictions(items=[str(secret)], y_true=[0], y_pred=[1], confidence=[0.9])
    shown = most_confused(pred, ["a", "b"], get_modality("image"))
    assert "secret.png: no preview" in shown and not opened
    text = most_confused(pred, ["a", "b"], get_modality("text"))  # a text's preview is the text itself
    assert "<blockquote>" in text


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x.png", "a/../../x.png", "C:\\x.png", "..\\x.png", "~/x.png", "", "a\0b", 3]
)
def test_inside_refuses_names_that_leave_the_folder(tmp_path: Path, name: Any) -> None:
    with pytest.raises(SchemaError) as caught:
        inside(tmp_path, name)
    assert isinstance(caught.value, TransferkitError) and "\n" not in str(caught.value)


def test_inside_follows_links_only_within_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cmp"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(b"x")
    os.symlink("sub", folder / "near")
    os.symlink(tmp_path, folder / "far")
    os.symlink("loop", folder / "loop")
    assert inside(folder, "near/a.png") == (folder / "sub" / "a.png").resolve()
    assert inside(folder, "far/cmp/sub/a.png") == (folder / "sub" / "a.png").resolve()  # out and back in
    for name in ("far/x.png", "loop"):
        with pytest.raises(SchemaError):
            inside(folder, name)


def test_a_record_whose_items_are_not_one_name_per_score_is_refused(tiny_compare: tuple[Path, Path, Any]) -> None:
    from transferkit.records import RunRecord

    values = tiny_compare[2].records[0].to_dict()
    assert RunRecord.from_dict(values) is not None
    for items in ([1] * len(values["predictions"]["items"]), values["predictions"]["items"][:-1]):
        assert RunRecord.from_dict({**values, "predictions": {**values["predictions"], "items": items}}) is None
