"""A run folder as a hostile sender delivers it: edited files *and* a marker rewritten to vouch
for them. Ownership (the journal, the seal) refuses a folder edited after transferkit wrote
it; these helpers let a test get past that door, as an attacker who controls the whole folder
can, to reach the field-by-field checks behind it."""

from __future__ import annotations

import json
from pathlib import Path

from transferkit.ownership import MARKER, files_under


def vouched(folder: Path) -> Path:
    """Rewrite ``folder``'s marker as a run still being written whose journal names every file
    in it as it is now (the marker's own ``kind`` kept)."""
    record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    written = {}
    for name in files_under(folder):
        if name.endswith("/"):
            written[name] = "folder"  # an empty folder
        else:
            info = (folder / name).lstat()
            written[name] = f"{info.st_size}:{info.st_mtime_ns}"
    record = {"kind": record["kind"], "writer": "transferkit", "writing": True, "written": written}
    (folder / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return folder
