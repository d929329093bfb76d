"""A folder transferkit wrote is sealed when the command ends: each file's size and time are in
its marker, so a file the user edits, replaces by a link or adds afterwards makes the folder
theirs — a later run into it is refused in one line and their change survives. A run killed
half-way is not sealed: the rerun continues into it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import transferkit
from tests.conftest import make_dataset
from tests.test_trust import FIT, snapshot
from transferkit.errors import TransferkitError
from transferkit.ownership import check_output_dir, claim_output_dir, seal
from transferkit.paths import atomic_write


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sealed") / "data", classes=3, per_class=8)


def _fit(data: Path, out: Path) -> None:
    transferkit.fit(data, out=out, strategy="feature-extraction", **FIT)


def _edit(run: Path, name: str) -> None:
    with (run / name).open("a", encoding="utf-8") as f:
        f.write("\n# mine\n")


def _link(run: Path, name: str) -> None:
    mine = run.parent / f"my-{name}"
    mine.write_bytes(b"the user's own file")
    (run / name).unlink()
    (run / name).symlink_to(mine)


def _add(run: Path, name: str) -> None:
    (run / "notes.txt").write_text("my notes", encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "name"),
    [(_edit, "history.json"), (_edit, "history.csv"), (_edit, "config.json"), (_link, "model.safetensors"),
     (_link, "split.json"), (_add, "")],
)  # fmt: skip
def test_a_run_changed_after_it_ended_is_never_overwritten(data: Path, tmp_path: Path, change, name: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    _fit(data, run)
    _fit(data, run)  # untouched since: its own folder, written again
    change(run, name)
    before = snapshot(tmp_path)
    with pytest.raises(TransferkitError, match="added or edited since"):
        _fit(data, run)
    assert snapshot(tmp_path) == before


def test_a_comparison_edited_after_it_ended_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    claim_output_dir(out, "comparison", "--out")
    (out / "results.json").write_text("{}", encoding="utf-8")
    from transferkit.ownership import seal

    seal(out, "comparison")
    check_output_dir(out, "comparison", "--out")  # as written: ours
    os.utime(out / "results.json", ns=(1, 1))  # touched since (same size, another time)
    with pytest.raises(TransferkitError, match="added or edited since"):
        check_output_dir(out, "comparison", "--out")


def test_a_run_killed_half_way_is_continued_not_refused(tmp_path: Path) -> None:
    """Claimed, written to, never sealed (SIGKILL): its files are transferkit's own half-work."""
    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    atomic_write(out / "checkpoint.safetensors", lambda tmp: tmp.write_bytes(b"half a checkpoint"))
    check_output_dir(out, "run", "--out")
    claim_output_dir(out, "run", "--out")


KILLED_RUN_EDITS = {
    "a file it wrote, edited": lambda out: (out / "history.csv").write_text("my notes\n"),
    "a file it wrote, replaced by a link": lambda out: _linked(out / "history.csv"),
    "a file added beside": lambda out: (out / "notes.txt").write_text("mine\n"),
    "a file added under a folder of its": lambda out: (out / "previews" / "mine.png").write_bytes(b"x"),
    "an empty folder added": lambda out: (out / "keep").mkdir(),
    "a file it was writing, then edited": lambda out: (out / "model.safetensors").write_bytes(b"mine now"),
}  # fmt: skip


@pytest.mark.parametrize("edit", KILLED_RUN_EDITS, ids=list(KILLED_RUN_EDITS))
def test_a_killed_run_edited_since_is_refused_not_overwritten(edit: str, tmp_path: Path) -> None:
    """The fourth hostile round's F2: a run killed before its seal was open to any rerun, so an
    edit made to it afterwards was overwritten. Each file is journalled in the marker as it is
    written (and marked pending before it changes), so a killed run still tells its own files,
    as written, from anyone's change."""
    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    atomic_write(out / "history.csv", lambda tmp: tmp.write_text("epoch\n"))
    atomic_write(out / "previews" / "a.png", lambda tmp: tmp.write_bytes(b"png"))
    _record_pending(out, "model.safetensors", ".model.safetensors.0123abcd")  # killed while writing it
    (out / ".model.safetensors.0123abcd").write_bytes(b"half")  # atomic_write fills the temporary, not the file
    check_output_dir(out, "run", "--out")  # as killed: continued, not refused
    KILLED_RUN_EDITS[edit](out)
    with pytest.raises(TransferkitError, match="added or edited since"):
        check_output_dir(out, "run", "--out")


def _linked(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def _record_pending(out: Path, name: str, temporary: str, before: str | None = None) -> None:
    from transferkit.paths import ABSENT, _record, pending_entry

    _record(out, name, pending_entry(before or ABSENT, ABSENT, temporary))


def test_a_temporary_left_by_a_kill_mid_write_is_the_runs_own(tmp_path: Path) -> None:
    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    _record_pending(out, "checkpoint.safetensors", ".checkpoint.safetensors.ab12cd90")
    (out / ".checkpoint.safetensors.ab12cd90").write_bytes(b"half")  # the name the journal gave it
    (out / ".transferkit.tmp-4242").write_text("{")  # a marker being replaced
    check_output_dir(out, "run", "--out")
    for stranger in (".checkpoint.safetensors.ffffffff", ".notes.txt.ab12cd90"):  # look like one, named by none
        (out / stranger).write_bytes(b"someone's")
        with pytest.raises(TransferkitError, match=re.escape(stranger)):
            check_output_dir(out, "run", "--out")
        (out / stranger).unlink()
    claim_output_dir(out, "run", "--out")  # claimed again: kept (a claim may race a running writer)
    assert (out / ".checkpoint.safetensors.ab12cd90").exists()
    seal(out, "run")  # the run's end, under its lock: the killed write's temporary is removed
    assert not (out / ".checkpoint.safetensors.ab12cd90").exists()


def test_a_file_killed_mid_write_is_ours_only_as_it_was_before(tmp_path: Path) -> None:
    """The fifth hostile round's F2: a journal entry "pending" made any file under that name the
    run's own, so a user's file put there after a kill was deleted by the rerun (and would have
    been loaded by --resume). A pending entry now vouches for the file as it was before the
    write — its stamp, or no file — and for the one temporary it names."""
    from transferkit.paths import _stamp

    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    atomic_write(out / "checkpoint.safetensors", lambda tmp: tmp.write_bytes(b"epoch 1"))
    before = _stamp(out / "checkpoint.safetensors")
    _record_pending(out, "checkpoint.safetensors", ".checkpoint.safetensors.0000beef", before)
    check_output_dir(out, "run", "--out")  # killed while writing epoch 2: epoch 1's file is still ours
    (out / "checkpoint.safetensors").unlink()
    (out / "checkpoint.safetensors").write_bytes(b"my precious thesis")
    with pytest.raises(TransferkitError, match="checkpoint"):
        check_output_dir(out, "run", "--out")
    assert (out / "checkpoint.safetensors").read_bytes() == b"my precious thesis"
    _record_pending(out, "model.safetensors", ".model.safetensors.0000beef")  # there was no file before
    (out / "checkpoint.safetensors").unlink()
    (out / "model.safetensors").write_bytes(b"mine")
    with pytest.raises(TransferkitError, match="model"):
        check_output_dir(out, "run", "--out")


def test_the_seal_carries_into_the_journal_of_the_next_run(tmp_path: Path) -> None:
    """A sealed run claimed again (a rerun): its files, as sealed, are the new run's journal."""
    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    atomic_write(out / "config.json", lambda tmp: tmp.write_text("{}"))
    (out / "empty").mkdir()
    seal(out, "run")
    claim_output_dir(out, "run", "--out")
    (out / "config.json").write_text('{"mine": 1}')
    with pytest.raises(TransferkitError, match=r"config\.json"):
        check_output_dir(out, "run", "--out")


def test_an_edited_backbone_name_is_refused_before_the_model_is_built(data: Path, tmp_path: Path) -> None:
    """The third hostile trial: `"backbone": "vit_giant_patch14_dinov2"` built a 5.4 GB model for
    32 s before the weights refused it. The architecture is built on the meta device first."""
    import json

    from transferkit.model import load_model

    run = tmp_path / "run"
    _fit(data, run)
    card = json.loads((run / "config.json").read_text(encoding="utf-8"))
    card["backbone"] = "resnet50"
    (run / "config.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(TransferkitError, match="tensors differ"):
        load_model(run)


def test_a_marker_nested_too_deeply_is_not_ours_and_no_traceback(tmp_path: Path) -> None:
    from transferkit.ownership import added_since
    from transferkit.paths import MARKER, owned_kind

    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / MARKER).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert owned_kind(folder) is None and added_since(folder) == []


def test_a_later_write_through_resealed_keeps_every_sealed_folder_above_sealed(tmp_path: Path) -> None:
    """A review of the change: a result.json written beside a sealed run (compare's record), an
    export into an auto search's best, a rebuilt report — each made its own folder and every
    sealed folder above it refuse their own rerun."""
    from transferkit.ownership import resealed, seal

    search, best = tmp_path / "auto", tmp_path / "auto" / "best"
    claim_output_dir(search, "auto search", "--out")
    claim_output_dir(best, "run", "--out")
    (best / "config.json").write_text("{}", encoding="utf-8")
    seal(best, "run")
    seal(search, "auto search")
    with resealed(best):
        (best / "model.onnx").write_bytes(b"exported")
    check_output_dir(best, "run", "--out")
    check_output_dir(search, "auto search", "--out")
    (best / "config.json").write_text('{"mine": 1}', encoding="utf-8")  # the user's edit: theirs from now on
    with resealed(best):
        (best / "model.onnx").write_bytes(b"exported again")
    with pytest.raises(TransferkitError, match="added or edited since"):
        check_output_dir(search, "auto search", "--out")


def test_a_comparison_refused_for_other_settings_stays_sealed(data: Path, tmp_path: Path) -> None:
    from tests.conftest import TINY, TINY_IMAGE, quick_config
    from transferkit.workflows.compare import CompareConfig, compare

    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False)
    cfg = CompareConfig(backbones=(TINY,), strategies=("linear-probe",), budget_epochs=1, seeds=1, base=base)
    compare(data, cfg, out=tmp_path / "cmp")
    with pytest.raises(TransferkitError):
        compare(data, CompareConfig(**{**cfg.__dict__, "seeds": 2}), out=tmp_path / "cmp")
    (tmp_path / "cmp" / "report.html").write_text("my notes", encoding="utf-8")
    with pytest.raises(TransferkitError, match="added or edited since"):
        compare(data, cfg, out=tmp_path / "cmp")  # the refusal before did not drop the seal
    assert (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8") == "my notes"


def test_a_kill_between_the_rename_and_its_record_leaves_a_file_still_ours(tmp_path: Path) -> None:
    """SIGKILL right after a write's rename, before the journal's next entry (a multi-task run
    killed at its first checkpoint was refused its own --resume): the entry vouched for the
    written version before the rename, so the file is the run's own; anyone's edit is not."""
    from transferkit.paths import _record, _stamp, pending_entry

    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    atomic_write(out / "history.json", lambda tmp: tmp.write_text("[1]"))
    temporary = out / ".history.json.0000abcd"
    temporary.write_text("[1, 2]")
    _record(out, "history.json", pending_entry(_stamp(out / "history.json"), _stamp(temporary), temporary.name))
    os.replace(temporary, out / "history.json")  # renamed; killed before the entry after it
    check_output_dir(out, "run", "--out")
    claim_output_dir(out, "run", "--out")  # claimed again: the entry still vouches for it
    check_output_dir(out, "run", "--out")
    (out / "history.json").write_text("[1, 2, 3] mine")
    with pytest.raises(TransferkitError, match=r"history\.json"):
        check_output_dir(out, "run", "--out")


def test_a_second_claim_never_deletes_a_running_writers_temporary(tmp_path: Path) -> None:
    """The review's finding: a claim settled the journal before the lock refused it, deleting the
    temporary a running command was filling. Only the seal, under the lock, removes leftovers;
    a journal naming a temporary outside the folder is never followed."""
    from transferkit.paths import ABSENT, _record, pending_entry

    out = tmp_path / "run"
    claim_output_dir(out, "run", "--out")
    _record(out, "checkpoint.safetensors", pending_entry(ABSENT, ABSENT, ".checkpoint.safetensors.0123abcd"))
    (out / ".checkpoint.safetensors.0123abcd").write_bytes(b"being written")
    claim_output_dir(out, "run", "--out")  # a second command, before its lock would refuse it
    assert (out / ".checkpoint.safetensors.0123abcd").read_bytes() == b"being written"
    outside = tmp_path / ".x.0123abcd"
    outside.write_bytes(b"someone's")
    _record(out, "../x", pending_entry(ABSENT, ABSENT, ".x.0123abcd"))  # a forged entry climbing out
    seal(out, "run")
    assert outside.read_bytes() == b"someone's"
