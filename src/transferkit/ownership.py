"""What transferkit may delete or overwrite: only what it can prove it wrote.

Every folder transferkit makes (a run, a comparison, a cache entry, an export's assets, a demo
dataset) gets a small marker file, ``.transferkit``. A folder is *ours* when it holds that
marker; a path created in this invocation is ours too. Everything else — a folder of the
user's, a file that was there before — is refused before any compute, never replaced.

Outputs that are written whole (demo data, export folders) go to a uniquely named temporary
sibling first and are renamed into place only when complete (:func:`staged_folder`), so an
error, Ctrl-C or SIGKILL leaves the previous output, or nothing, never half of one. A lock
file per output folder (:func:`output_lock`) refuses a second writer at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from transferkit.errors import TransferkitError
from transferkit.paths import current_umask

MARKER = ".transferkit"
LOCK = ".transferkit.lock"
STAGING = ".tk-incoming-"  # prefix of a temporary sibling (a hidden name: only a SIGKILL can leave one)


def mark(folder: Path, kind: str, files: list[str] | None = None) -> None:
    """Record that transferkit made ``folder`` (and what it is); with ``files``, every file it
    wrote there, so a later replacement can tell a file added since by someone else."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.is_symlink():
        raise TransferkitError(f"{marker} is a link; transferkit does not write through links")
    if files is not None or not marker.is_file():
        record = {"kind": kind, "writer": "transferkit", **({"files": files} if files is not None else {})}
        marker.write_text(json.dumps(record) + "\n", encoding="utf-8")


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (links included, not followed), relative, but the marker's own."""
    found = (p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
    return sorted(str(p.relative_to(folder)) for p in found if p.name not in (MARKER, LOCK))


def added_since(folder: Path) -> list[str]:
    """Files in a folder transferkit replaced whole that its marker does not list: someone
    else's, so the folder is no longer transferkit's to replace."""
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    return [] if not isinstance(listed, list) else sorted(set(files_under(folder)) - set(map(str, listed)))


def owned_kind(folder: Path) -> str | None:
    """What transferkit made ``folder`` as (``"run"``, ``"demo dataset"``…), from its marker (a
    regular file, not a link); ``None`` when transferkit did not make it."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file() or folder.is_symlink():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("writer") != "transferkit":
        return None
    return str(record.get("kind", ""))


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` holds transferkit's marker."""
    return owned_kind(folder) is not None


# What a run folder holds (fit, fit-multitask, federated, a compare run): the names a run from
# before the marker may have, so such a folder is still transferkit's to replace.
RUN_FILES = (
    "config.json", "model.safetensors", "history.json", "history.csv", "split.json", "checkpoint.safetensors",
    "rounds.json", "result.json",
)  # fmt: skip


def is_legacy_run(path: Path) -> bool:
    """A run folder written before the ownership marker: only transferkit's own file names,
    and a ``config.json`` in transferkit's format (or a checkpoint alone)."""
    names = {p.name for p in path.iterdir()} - {LOCK}
    if not names <= set(RUN_FILES):
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return names == {"checkpoint.safetensors"}
    return isinstance(config, dict) and isinstance(config.get("format_version"), int) and "backbone" in config


def _user_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MARKER, LOCK))


def check_output_dir(path: Path, kind: str, option: str, legacy: Callable[[Path], bool] = lambda p: False) -> None:
    """Refuse, before any compute, an output folder transferkit may not write into: a file, a
    link, a folder with anything in it that transferkit did not make, or one it made as
    something else (a demo dataset is never replaced by a run). ``legacy`` accepts folders
    written by versions from before the marker (a run, a comparison)."""
    if path.is_symlink():
        raise TransferkitError(f"{option} {path} is a symbolic link; give a real folder")
    if path.exists() and not path.is_dir():
        raise TransferkitError(f"{option} {path} is a file; give a folder")
    made_as = owned_kind(path) if path.is_dir() else None
    if made_as is not None and made_as != kind:
        raise TransferkitError(f"{option} {path} holds a transferkit {made_as}, not a {kind}; give another folder")
    extra = added_since(path) if made_as is not None else []
    if extra:
        shown = ", ".join(extra[:3]) + (", …" if len(extra) > 3 else "")
        raise TransferkitError(
            f"{option} {path} holds files added since transferkit wrote it ({shown}); give another folder"
        )
    if not path.is_dir() or made_as is not None:
        return
    entries = _user_entries(path)
    if entries and not legacy(path):
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise TransferkitError(
            f"{option} {path} holds files transferkit did not write ({shown}); it never overwrites them: "
            "give a new or empty folder"
        )


def claim_output_dir(path: Path, kind: str, option: str, legacy: Callable[[Path], bool] = lambda p: False) -> Path:
    """Check ``path`` (:func:`check_output_dir`), create it and mark it as ours."""
    check_output_dir(path, kind, option, legacy)
    mark(path, kind)
    return path


@contextlib.contextmanager
def output_lock(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block: a second transferkit process writing
    the same output is refused at once instead of interleaving files with the first."""
    folder.mkdir(parents=True, exist_ok=True)
    try:  # never through a link planted under the lock's name
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise TransferkitError(f"{option} {folder}: cannot create its lock file ({exc.strerror})") from None
    handle: IO[str] = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransferkitError(
                f"{option} {folder} is being written by another transferkit process; wait for it to end "
                "or give another folder"
            ) from None
        yield
    finally:
        handle.close()  # closing releases the lock; the empty lock file stays (removing it would race)


def remove_owned(path: Path) -> bool:
    """Delete ``path`` only if it is a folder transferkit marked and nobody has added a file to
    since; ``True`` if it went."""
    if path.is_dir() and not path.is_symlink() and is_owned(path) and not added_since(path):
        shutil.rmtree(path)
        return True
    return False


def swap_in(staging: Path, target: Path) -> None:
    """Rename a finished ``staging`` folder to ``target``; an old ``target`` of ours is removed
    only after the new one is complete, and never one that is not ours."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise TransferkitError(f"{target} is not a folder transferkit made; left untouched")
    if target.is_dir():
        if (not is_owned(target) and _user_entries(target)) or added_since(target):
            raise TransferkitError(f"{target} now holds files transferkit did not write; left untouched")
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING}old-"))
        old.rmdir()
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


@contextlib.contextmanager
def staged_folder(target: Path, kind: str, option: str) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write a whole output into; on success it is
    marked and renamed to ``target``, on any error or interrupt only the temporary goes."""
    check_output_dir(target, kind, option)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING}"))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the output gets the usual mode
    try:
        yield staging
        mark(staging, kind, files=files_under(staging))
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_file(path: Path, option: str, ours: Callable[[Path], bool]) -> None:
    """Refuse, before any compute, to replace a file transferkit did not write: ``ours`` says
    whether an existing file is one of its own (a report's keys, a plot's PNG metadata)."""
    if path.is_symlink() or path.is_dir():
        raise TransferkitError(f"{option} {path} is a folder or a link; give a file path")
    if path.exists() and not ours(path):
        raise TransferkitError(f"{option} {path} exists and was not written by transferkit; give a new path")


PNG_SOFTWARE = "transferkit"  # the PNG text chunk every plot carries, so a rerun may replace it


def is_transferkit_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.info.get("Software") == PNG_SOFTWARE
    except (OSError, ValueError):
        return False


def is_transferkit_json(*keys: str) -> Callable[[Path], bool]:
    """An existing JSON file with all of ``keys``: a report an earlier run wrote."""

    def ours(path: Path) -> bool:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(value, dict) and all(k in value for k in keys)

    return ours
