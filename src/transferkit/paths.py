"""Where transferkit keeps things between runs: one cache folder, and small JSON stores in it.

``$TRANSFERKIT_CACHE`` names the folder; else ``$XDG_CACHE_HOME/transferkit/features``
(``~/.cache/...``). Frozen-backbone features live in it (one folder per key), and so do the
scan verdicts (``verdicts/``), so ``transferkit cache clear`` frees everything at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from transferkit.errors import TransferkitError

CACHE_ENV = "TRANSFERKIT_CACHE"
MARKER = ".transferkit"  # the file that makes a folder transferkit's (see transferkit.ownership)
MAX_MARKER_BYTES = 1 << 20  # an export's marker lists its files; no marker of ours is larger


def mark(folder: Path, kind: str, files: list[str] | None = None, writing: bool = False) -> None:
    """Record that transferkit made ``folder`` (and what it is); with ``files``, every file it
    wrote there, so a later replacement can tell a file added since by someone else.
    ``writing``: the folder is being written now — its files are about to change, so a list
    of them from an earlier run is dropped (kept, a run killed half-way would find its own
    files "edited since" and be refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.is_symlink():
        raise TransferkitError(f"{marker} is a link; transferkit does not write through links")
    if files is not None or writing or not marker.is_file():
        # each file's size and modification time too: a file edited since is no longer ours to replace
        stamps = {name: _stamp(folder / name) for name in files or []}
        listed = {"files": files, "stamps": stamps} if files is not None else {}
        record = {"kind": kind, "writer": "transferkit", **listed}
        marker.write_text(json.dumps(record) + "\n", encoding="utf-8")


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
    if marker.is_symlink() or not marker.is_file() or folder.is_symlink():
        return None
    try:
        if marker.stat().st_size > MAX_MARKER_BYTES:  # a marker is a line of JSON: a huge one is not ours
            return None
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # a marker nested 100,000 deep is not ours
        return None
    if not isinstance(record, dict) or record.get("writer") != "transferkit":
        return None
    return str(record.get("kind", ""))


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
    """Write ``text`` to ``path`` through a uniquely named temporary file in the same folder
    (flushed, fsynced, renamed): readers never see half a file, a crash never leaves one, and
    two processes never write the same temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; a written file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
