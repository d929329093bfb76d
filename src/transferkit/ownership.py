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
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from transferkit.errors import TransferkitError
from transferkit.paths import (
    FOLDER_ENTRY,
    changed_since,
    current_umask,
    journal,
    leftover_temporaries,
    marker_record,
    parse_pending,
    pending_vouches,
    temporary_of,
)
from transferkit.paths import MARKER as MARKER  # re-exported: ownership is where callers look
from transferkit.paths import mark as mark
from transferkit.paths import owned_kind as owned_kind

LOCK = ".transferkit.lock"
STAGING = ".tk-incoming-"  # prefix of a temporary sibling (a hidden name: only a SIGKILL can leave one)


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (links included, not followed), relative, but the marker's own,
    and every folder that holds nothing, as ``name/``: a folder holding anything is implied by
    what it holds (:func:`_implied`), so none of a folder's own can go unlisted."""
    # only the folder's own marker, its lock and a marker being replaced (paths._write_marker) are
    # left out: one of those names deeper down is a file like any other (a user's, or a sub-run's
    # marker, whose change the seal must see too)
    found = [p for p in folder.rglob("*") if p.parent != folder or not _own_bookkeeping(p.name)]
    files = [str(p.relative_to(folder)) for p in found if p.is_symlink() or not p.is_dir()]
    empty = [f"{p.relative_to(folder)}/" for p in found if p.is_dir() and not p.is_symlink() and _holds_nothing(p)]
    return sorted(files + empty)


def _own_bookkeeping(name: str) -> bool:
    return name in (MARKER, LOCK) or re.fullmatch(rf"{re.escape(MARKER)}\.tmp-\d+", name) is not None


def _holds_nothing(folder: Path) -> bool:
    """Whether ``folder`` is empty; one that cannot be read counts as empty: it is then listed on
    its own, and so told apart from transferkit's unless a file transferkit wrote lies in it."""
    try:
        return not any(folder.iterdir())
    except OSError:
        return True


def _implied(listed: Iterable[str]) -> set[str]:
    """The folders (``name/``) that the files ``listed`` lie in: transferkit's, as the files are."""
    return {f"{parent}/" for name in listed for parent in Path(name.rstrip("/")).parents if parent.name}


def added_since(folder: Path) -> list[str]:
    """Files (and empty folders, ``name/``) in a folder transferkit wrote that it did not write,
    or that were edited since it wrote them: someone else's, so the folder is no longer
    transferkit's to write into or replace. A sealed folder answers from the list its seal
    made; one still being written (or left so by a kill) from its journal."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        listed, stamps = record.get("files"), record.get("stamps") or {}
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    written = journal(folder)
    if written is not None:
        return _unjournalled(folder, written)
    if not isinstance(listed, list):
        return []  # marked by an earlier version while being written: nothing recorded to check
    edited = changed_since(folder, {str(k): str(v) for k, v in stamps.items()}) if isinstance(stamps, dict) else []
    # An empty folder made since is someone's as a file is: replacing the whole would delete it
    ours = set(map(str, listed))
    return sorted((set(files_under(folder)) - ours - _implied(ours)) | set(edited))


def _unjournalled(folder: Path, written: dict[str, str]) -> list[str]:
    """In a folder being written (or left so by a kill): the files its journal does not name
    and those edited since it recorded them. A file it was writing when killed (``pending``)
    and that file's temporary sibling are its own; so is whatever lies in a folder under it
    that holds a marker of its own (a sub-run answers for itself)."""
    pending = {k: p for k, v in written.items() if (p := parse_pending(v)) is not None}
    stamps = {k: v for k, v in written.items() if k not in pending and v != FOLDER_ENTRY}
    # A file killed mid-write is ours as it was before that write or as written (or absent); its
    # temporary is ours by the exact name the journal gave it, not by looking like one.
    refused = {k for k, (accepted, _) in pending.items() if not pending_vouches(folder, k, accepted)}
    temporaries = {str(Path(k).parent / t).removeprefix("./") for k, (_, t) in pending.items() if temporary_of(k, t)}
    ours = (set(written) - refused) | _implied(written) | temporaries

    def journalled(name: str) -> bool:
        path = Path(name.rstrip("/"))
        if name in ours:
            return True
        return any(owned_kind(folder / parent) is not None for parent in [path, *path.parents][:-1])

    found = {name for name in files_under(folder) if not journalled(name)}
    return sorted(found | refused | set(changed_since(folder, stamps)))


def copy_owned(source: Path, target: Path, ignore: Callable[[str, list[str]], Iterable[str]] | None = None) -> None:
    """The one way a folder transferkit wrote is copied (a compared run to ``--best-out``,
    ``auto``'s best to ``OUT/best``): as transferkit wrote it. A folder with files added or
    edited since, or holding a link anywhere, is refused — a link is never followed, so a run
    someone planted a link to their secrets (or to /) in is not shipped with them inside."""
    extra = added_since(source)
    if extra:
        raise TransferkitError(
            f"{source} holds files added or edited since transferkit wrote it ({', '.join(extra[:5])}); "
            "it is not copied: rerun it into a new folder"
        )
    links = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_symlink()]  # rglob follows none
    if links:
        raise TransferkitError(f"{source} holds links ({', '.join(sorted(links)[:5])}); transferkit copies no links")
    shutil.copytree(source, target, ignore=ignore, symlinks=True, dirs_exist_ok=True)  # a later link stays a link


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` holds transferkit's marker."""
    return owned_kind(folder) is not None


def _user_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MARKER, LOCK))


def check_output_dir(path: Path, kind: str, option: str) -> None:
    """Refuse, before any compute, an output folder transferkit may not write into: a file, a
    link, a folder with anything in it that transferkit did not make, or one it made as
    something else (a demo dataset is never replaced by a run). Ownership is the marker alone:
    a folder that merely looks like a run (a copied ``config.json`` beside the user's own
    ``history.csv``) is the user's."""
    if path.is_symlink():
        raise TransferkitError(f"{option} {path} is a symbolic link; give a real folder")
    if path.exists() and not path.is_dir():
        raise TransferkitError(f"{option} {path} is a file; give a folder")
    made_as = owned_kind(path) if path.is_dir() else None
    if made_as is not None and made_as != kind:
        article = "an" if kind[:1] in "aeiou" else "a"  # "not an explanation"
        raise TransferkitError(
            f"{option} {path} holds a transferkit {made_as}, not {article} {kind}; give another folder"
        )
    extra = added_since(path) if made_as is not None else []
    if extra:
        shown = ", ".join(extra[:3]) + (", …" if len(extra) > 3 else "")
        raise TransferkitError(
            f"{option} {path} holds files added or edited since transferkit wrote it ({shown}); give another folder"
        )
    if not path.is_dir() or made_as is not None:
        return
    entries = _user_entries(path)
    if entries:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise TransferkitError(
            f"{option} {path} holds files transferkit did not write ({shown}); it never overwrites them: "
            "give a new or empty folder"
        )


def claim_output_dir(path: Path, kind: str, option: str) -> Path:
    """Check ``path`` (:func:`check_output_dir`), create it and mark it as ours, being written:
    :func:`seal` lists its files once the command has written them."""
    check_output_dir(path, kind, option)
    mark(path, kind, writing=True)
    return path


def _lists_files(folder: Path) -> bool:
    """Whether ``folder``'s marker lists the files a command wrote there (a seal)."""
    record = marker_record(folder)
    return record is not None and isinstance(record.get("files"), list)


def _sealed(folder: Path) -> bool:
    """Whether ``folder``'s marker lists its files (a command ended there), unedited since."""
    return _lists_files(folder) and not added_since(folder)


@contextlib.contextmanager
def resealed(folder: Path, replacing: Iterable[str] = ()) -> Iterator[None]:
    """Write into ``folder`` from a later command (export into a run, a report rebuilt, a record
    beside a run): every folder from it upwards that transferkit sealed and nobody has changed
    since stays sealed with the new files (a later `--out` there is not refused for transferkit's
    own file); one the user changed stays theirs, and one still being written stays unsealed.
    Each of ``replacing`` (names in ``folder``) that exists must be a file transferkit wrote
    there, unedited since: a user's ``report.html`` beside a copied ``results.json`` is refused."""
    for name in replacing:
        if os.path.lexists(folder / name) and not written_by_transferkit(folder / name):
            raise TransferkitError(
                f"{folder / name} exists and is not a file transferkit wrote there (or was edited since); "
                "move it away first"
            )
    chain = [folder, *folder.parents]
    owners = []
    for candidate in chain:
        kind = owned_kind(candidate) if candidate.is_dir() else None
        if kind is None:
            break
        owners.append((candidate, kind, _sealed(candidate)))
    yield
    for candidate, kind, was_sealed in owners:  # innermost first: its marker is a file of the next
        if was_sealed:
            seal(candidate, kind)


def written_by_transferkit(path: Path) -> bool:
    """Whether ``path`` is a file the innermost transferkit folder above it lists as its own, as
    written (its seal's or its journal's stamp): never by its name or its looks."""
    for owner in path.parents:
        if owned_kind(owner) is not None:
            name = str(path.relative_to(owner))
            # a marker that lists nothing (a cache's, an older version's) vouches for nothing
            listed = journal(owner) is not None or _lists_files(owner)
            return listed and path.is_file() and not path.is_symlink() and name not in added_since(owner)
    return False


def seal(path: Path, kind: str) -> None:
    """Record every file a command wrote into ``path`` with its size and time, once it ends:
    a file the user edits, replaces by a link or adds afterwards makes the folder theirs
    (:func:`check_output_dir` refuses it) — a later run into it never overwrites their change."""
    for leftover in leftover_temporaries(path):  # a killed write's, journalled: junk of its own
        leftover.unlink(missing_ok=True)
    mark(path, kind, files=files_under(path))


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


def clear_owned(folder: Path, ours: re.Pattern[str]) -> bool:
    """Remove a folder transferkit marked whose every file has a name it gives them (``ours``);
    one holding anything else (a file someone added, a folder) is left whole, nothing deleted.
    ``True`` if the folder went; a folder that cannot be written (read-only) is left, ``False``."""
    if folder.is_symlink() or not is_owned(folder):
        return False
    try:
        entries = [f for f in folder.iterdir() if f.name not in (MARKER, LOCK)]
        if any(not ours.fullmatch(f.name) or not (f.is_symlink() or f.is_file()) for f in entries):
            return False  # someone keeps a file of theirs here: the whole folder is left as it is
        for f in entries:
            f.unlink()
        for name in (MARKER, LOCK):
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        return False
    return True


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
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(value, dict) and all(k in value for k in keys)

    return ours


# --------------------------------------------------------------------------- written on this machine

SIGNATURE = "signature"


def _machine_key(create: bool) -> bytes | None:
    """A random key kept in the user's config folder (0600), made on first use: what tells a run
    file this machine's transferkit wrote from one received or edited."""
    folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "transferkit"
    path = folder / "machine.key"
    try:
        if not path.is_file() and create:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        key = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    except OSError:  # a read-only home: nothing is signed, so saved items are never trusted
        return None
    return key if len(key) == 32 else None


def _digest(key: bytes, record: dict[str, object]) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != SIGNATURE}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def signed(record: dict[str, object]) -> dict[str, object]:
    """``record`` with this machine's signature (unchanged where no key can be kept)."""
    key = _machine_key(create=True)
    return record if key is None else {**record, SIGNATURE: _digest(key, record)}


def signed_here(record: dict[str, object]) -> bool:
    """Whether this machine's transferkit wrote ``record`` and nobody changed it since: a file
    whose items name paths (``split.json``) is read only then, so a received run folder cannot
    make this machine read and score the files it names."""
    key = _machine_key(create=False)
    stored = record.get(SIGNATURE)
    return key is not None and isinstance(stored, str) and hmac.compare_digest(stored, _digest(key, record))
