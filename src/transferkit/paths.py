"""Where transferkit keeps things between runs: one cache folder, and small JSON stores in it.

``$TRANSFERKIT_CACHE`` names the folder; else ``$XDG_CACHE_HOME/transferkit/features``
(``~/.cache/...``). Frozen-backbone features live in it (one folder per key), and so do the
scan verdicts (``verdicts/``), so ``transferkit cache clear`` frees everything at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from transferkit.errors import TransferkitError

CACHE_ENV = "TRANSFERKIT_CACHE"
MARKER = ".transferkit"  # the file that makes a folder transferkit's (see transferkit.ownership)
MAX_MARKER_BYTES = 1 << 20  # an export's marker lists its files; no marker of ours is larger


def mark(folder: Path, kind: str, files: list[str] | None = None, writing: bool = False) -> None:
    """Record that transferkit made ``folder`` (and what it is); with ``files``, every file it
    wrote there, so a later replacement can tell a file added since by someone else.
    ``writing``: the folder is being written now. From then on every file written into it
    through :func:`atomic_write` is recorded as it is written (its *journal*), so a run killed
    half-way still knows which files are its own and whether anyone edited them since; the
    journal carries over from an earlier run, or from the files a sealed one listed."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.is_symlink():
        raise TransferkitError(f"{marker} is a link; transferkit does not write through links")
    if files is not None or writing or not marker.is_file():
        record: dict[str, object] = {"kind": kind, "writer": "transferkit"}
        if files is not None:
            # each file's size and modification time too: a file edited since is no longer ours to replace
            record |= {"files": files, "stamps": {name: _stamp(folder / name) for name in files}}
        elif writing:
            record |= {"writing": True, "written": _journal_of(marker)}
        _write_marker(marker, record)


def _write_marker(marker: Path, record: Mapping[str, object]) -> None:
    """Replace the marker at one rename: a kill never leaves half of one (which would make the
    folder look like no one's)."""
    tmp = marker.with_name(f"{MARKER}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def _read_marker(marker: Path) -> dict[str, object] | None:
    try:
        if marker.is_symlink() or marker.stat().st_size > MAX_MARKER_BYTES:
            return None
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("writer") == "transferkit" else None


def marker_record(folder: Path) -> dict[str, object] | None:
    """``folder``'s marker as transferkit wrote it (bounded in size, parsed), else ``None``."""
    return _read_marker(folder / MARKER)


def _journal_of(marker: Path) -> dict[str, str]:
    """What an earlier command recorded as written into the folder: its journal, or the files
    its seal listed (already checked unedited by whoever claims the folder again)."""
    record = _read_marker(marker) or {}
    written, stamps, files = record.get("written"), record.get("stamps"), record.get("files")
    if isinstance(written, dict):
        return {str(k): str(v) for k, v in written.items()}  # pending entries carried: they still vouch
    journal = {str(k): str(v) for k, v in stamps.items()} if isinstance(stamps, dict) else {}
    if isinstance(files, list):  # the folders it left empty
        journal |= {str(name): FOLDER_ENTRY for name in files if str(name).endswith("/")}
    return journal


def leftover_temporaries(folder: Path) -> list[Path]:
    """The temporaries of writes killed half-way that the folder's journal names: removed by
    :func:`transferkit.ownership.seal`, which runs under the folder's lock (a claim does not: a
    second command claiming the folder before the lock refuses it must not delete the running
    one's temporary). A name the journal gives that is absolute or climbs out is never used."""
    found = []
    for name, entry in (journal(folder) or {}).items():
        pending = parse_pending(entry)
        parts = Path(name).parts
        if pending is None or Path(name).is_absolute() or ".." in parts or not temporary_of(name, pending[1]):
            continue
        leftover = folder / Path(name).parent / pending[1]
        inside = leftover.parent.resolve().is_relative_to(folder.resolve())  # not through a linked folder
        if inside and leftover.is_file() and not leftover.is_symlink():
            found.append(leftover)
    return found


def pending_vouches(folder: Path, name: str, accepted: frozenset[str]) -> bool:
    """Whether a file killed mid-write is still one its entry vouched for: absent (nothing of
    anyone's), or the version before the write, or the one written (the rename is atomic)."""
    return not os.path.lexists(folder / name) or _stamp(folder / name) in accepted


def temporary_of(name: str, temporary: str) -> bool:
    """Whether ``temporary`` is a name :func:`atomic_write` gives a temporary of ``name``'s file:
    its sibling ``.FILE.<8 hex>[.ext]`` — never a path, never another file's name."""
    base = re.escape(Path(name).name)
    return re.fullmatch(rf"\.{base}\.[0-9a-f]{{8}}(?:\.[a-z]+)?", temporary) is not None


PENDING = "pending"  # a journal entry for a file being written now (a kill may leave it half-done)
FOLDER_ENTRY = "folder"  # a journal entry for a folder it left empty
ABSENT = "-"  # a pending file's stamp before its write, when there was no file


def pending_entry(before: str, after: str, temporary: str) -> str:
    """The journal entry of a file being written: ``pending|<stamp before>|<stamp written>|<temporary>``
    (:data:`ABSENT` where there is no such file yet). The written stamp is recorded from the
    temporary before the rename, which keeps it: a kill at any moment leaves the file as it was
    before, or as written, beside at most a temporary of that exact name — each vouched for.
    Any other file under that name afterwards is someone's: refused, never replaced."""
    return "|".join((PENDING, before, after, temporary))


def parse_pending(entry: str) -> tuple[frozenset[str], str] | None:
    """(the stamps the file may have, its temporary's name) of a pending entry; ``None`` for any
    other entry. An entry of an older journal (``pending`` alone) vouches for nothing."""
    if entry == PENDING:
        return frozenset(), ""
    parts = entry.split("|")
    if len(parts) != 4 or parts[0] != PENDING:
        return None
    return frozenset(parts[1:3]) - {ABSENT}, parts[3]


def journal(folder: Path) -> dict[str, str] | None:
    """The journal of a folder being written (name → size:time, or :data:`PENDING`); ``None``
    when ``folder`` is not one transferkit is writing."""
    record = _read_marker(folder / MARKER)
    if record is None or not record.get("writing") or not isinstance(record.get("written"), dict):
        return None
    return {str(k): str(v) for k, v in dict(record["written"]).items()}  # type: ignore[call-overload]


def _writing_owner(path: Path) -> Path | None:
    """The innermost folder above ``path`` that holds a marker, when it is being written."""
    for folder in path.parents:
        if (folder / MARKER).is_file():
            return folder if journal(folder) is not None else None
    return None


def _record(owner: Path, name: str, stamp: str) -> None:
    record = _read_marker(owner / MARKER)
    if record is None or not isinstance(record.get("written"), dict):
        return
    written = dict(record["written"])  # type: ignore[call-overload]
    written[name] = stamp
    with contextlib.suppress(OSError):  # unrecorded, the file only counts as someone else's: refused, never lost
        _write_marker(owner / MARKER, {**record, "written": written})


def atomic_write(path: Path, write: Callable[[Path], object], *, suffix: str = "", sync: bool = True) -> None:
    """The one door to a file transferkit writes: ``write`` fills a uniquely named temporary
    sibling, which is then flushed, given the usual mode and renamed over ``path``. Readers never
    see half a file, a crash never leaves one, two processes never share a temporary, and a link
    planted at ``path`` is replaced, not followed. In a folder transferkit is writing, the file is
    journalled as it is written (:func:`mark`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _writing_owner(path)
    name = str(path.relative_to(owner)) if owner is not None else ""
    # The temporary's name is chosen before it exists, so the journal can name it first.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
    # the file there now is vouched for only when the journal already holds it as written: a
    # file someone put there during the run is not made transferkit's by being written over
    before = _stamp(path) if os.path.lexists(path) and owner is not None and _journalled(owner, name, path) else ABSENT
    if owner is not None:  # before the file changes: a kill from here on leaves files known to be ours
        _record(owner, name, pending_entry(before, ABSENT, tmp.name))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # never an existing file, never a link
    try:
        write(Path(tmp))
        if sync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; a written file is not
        if owner is not None:  # what the rename will leave, vouched for before it happens
            _record(owner, name, pending_entry(before, _stamp(tmp), tmp.name))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if owner is not None:
        _record(owner, name, _stamp(path))


def _journalled(owner: Path, name: str, path: Path) -> bool:
    entry = (journal(owner) or {}).get(name)
    if entry is None:
        return False
    pending = parse_pending(entry)
    return _stamp(path) in (pending[0] if pending is not None else {entry})


def _stamp(path: Path) -> str:
    """A file as it was written: its size and modification time (a link: its own)."""
    info = path.lstat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def changed_since(folder: Path, stamps: Mapping[str, str]) -> list[str]:
    """The files ``stamps`` lists whose size or modification time differ now (edited since)."""
    changed = []
    for name, stamp in stamps.items():
        try:
            if _stamp(folder / name) != stamp:
                changed.append(name)
        except OSError:  # gone: nothing of anyone's to lose
            continue
    return sorted(changed)


def owned_kind(folder: Path) -> str | None:
    """What transferkit made ``folder`` as (``"run"``, ``"demo dataset"``…), from its marker (a
    regular file, not a link); ``None`` when transferkit did not make it."""
    marker = folder / MARKER
    if folder.is_symlink() or not marker.is_file():
        return None
    record = _read_marker(marker)  # a huge marker, or one nested 100,000 deep, is not ours
    return None if record is None else str(record.get("kind", ""))


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE``, else ``$XDG_CACHE_HOME/transferkit/features`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transferkit" / "features"


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


VERDICTS = "scan verdicts"
VERDICTS_FOLDER = "scan-verdicts"
MAX_VERDICT_BYTES = 256 << 20  # a store of verdicts (~100 bytes an item) that large is not ours


class VerdictStore:
    """Content hash → why the file cannot be used (``""``: it can), kept between runs.

    A folder scan decodes every file to catch truncated data; with the verdicts kept, the
    next scan of the same files only hashes them. Keyed by content, so an edited file is
    checked again whatever its name or time stamp. A store that cannot be read or written
    (read-only home, a broken file) only costs the decoding it would have saved.
    """

    def __init__(self, kind: str, version: str) -> None:
        # A folder name of its own, marked when made: earlier versions kept verdicts in an unmarked
        # `verdicts/`, which may as well be the user's, so that one is neither read nor written.
        self.path = default_cache_dir() / VERDICTS_FOLDER / f"{kind}.json"
        self.version = version  # of the decoder: a new Pillow may read what an old one could not
        self.known: dict[str, str] = {}
        try:
            if owned_kind(self.path.parent) != VERDICTS or self.path.stat().st_size > MAX_VERDICT_BYTES:
                return
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(stored, dict) and stored.get("version") == version:
                self.known = {str(k): str(v) for k, v in dict(stored.get("verdicts", {})).items()}
        except (OSError, ValueError, RecursionError, TypeError, AttributeError):
            pass

    def get(self, digest: str) -> str | None:
        """The stored verdict (``""``: fine), or ``None`` when this content was never checked."""
        return self.known.get(digest)

    def add(self, verdicts: Mapping[str, str]) -> None:
        new = {k: v for k, v in verdicts.items() if k and self.known.get(k) != v}
        if not new:
            return
        self.known.update(new)
        with contextlib.suppress(OSError, TransferkitError):
            folder = self.path.parent
            if not folder.exists():
                mark(folder, VERDICTS)
            if owned_kind(folder) != VERDICTS:  # a folder of the user's by that name: never written into
                return
            atomic_write_text(self.path, json.dumps({"version": self.version, "verdicts": self.known}))
