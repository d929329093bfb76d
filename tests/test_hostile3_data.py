"""Third hostile trial, data side: what a user's data, a cache entry or a folder of theirs may hold.

A label column of IDs must be refused at once, naming the likely cause (a split that rescanned
every sample once per class hung for many minutes on 200,000 rows); a corrupt feature cache is
a miss, recomputed, never a traceback nor an allocation its header asks for; a folder the user
made inside a folder transferkit replaces whole is theirs, as a file is; and each message names
what the user gave (the file, the argument) as they know it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import run_cli
from transferkit.errors import TransferkitError
from transferkit.ownership import remove_owned, staged_folder

# --------------------------------------------------------------------------- folders of the user's


def _staged(target: Path, files: dict[str, str], empty: tuple[str, ...] = ()) -> None:
    with staged_folder(target, "demo dataset", "DIR") as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
        for name in empty:
            (staging / name).mkdir(parents=True)


@pytest.mark.parametrize("made", ["userdir", "a/inner", "userdir/deeper/still"])
def test_an_empty_folder_the_user_made_is_never_replaced_away(tmp_path: Path, made: str) -> None:
    target = tmp_path / "out"
    _staged(target, {"a/1.txt": "one", "b/2.txt": "two"})
    (target / made).mkdir(parents=True)
    with pytest.raises(TransferkitError, match=f"DIR {target} holds files added.*{made}/"):
        _staged(target, {"a/1.txt": "one", "b/2.txt": "two"})
    assert (target / made).is_dir()
    assert not remove_owned(target) and (target / made).is_dir()


def test_a_folder_transferkit_left_empty_is_its_own_and_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _staged(target, {"a/1.txt": "one"}, empty=("logs", "b/nothing"))
    _staged(target, {"a/1.txt": "again"})  # its own empty folders do not make the folder the user's
    assert (target / "a/1.txt").read_text() == "again" and not (target / "logs").exists()
    (target / "a/1.txt").unlink()  # the user deleting a file of ours leaves an empty folder of ours
    _staged(target, {"a/1.txt": "third"})
    assert (target / "a/1.txt").read_text() == "third"


def test_demo_data_keeps_an_empty_folder_the_user_made_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = tmp_path / "d10"
    args = ["demo-data", str(demo), "--per-class", "2", "--size", "8"]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    (demo / "emptyuserdir").mkdir()
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and (demo / "emptyuserdir").is_dir()
    assert err.count("\n") == 1 and "emptyuserdir/" in err and "Traceback" not in err
    (demo / "emptyuserdir").rmdir()
    assert run_cli(args, capsys, monkeypatch)[0] == 0  # nothing of the user's left: ours to replace again
