"""The README's tour on the core install alone (``pip install -e .``, no extras) (#42, point 7).

Building a real venv would copy gigabytes of torch; instead the test assembles a site folder of
links to exactly the distributions the core install brings — transferkit's requirements without
an ``extra ==`` marker, and theirs, transitively — and runs the tour with ``python -S`` (no
site-packages) and that folder on ``PYTHONPATH``. No extra's package is importable there, as on
a user's core install; the commands that need one must say which, in one line, with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from transferkit.extras import EXTRAS

SRC = Path(__file__).resolve().parents[1] / "src"


def _core_closure() -> set[str]:
    """Names of the distributions ``pip install -e .`` installs, transferkit's own included."""
    seen: set[str] = set()
    todo = ["transferkit"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # a platform-only requirement not installed here
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _core_site(folder: Path) -> Path:
    """Links to every top-level module and metadata folder of the core distributions."""
    folder.mkdir()
    for dist in metadata.distributions():
        if dist.metadata["Name"].lower().replace("_", "-") not in _core_closure():
            continue
        for file in dist.files or []:
            top = Path(str(file)).parts[0]
            source = Path(str(dist.locate_file(top)))
            if top in ("..", "__pycache__") or top.endswith(".pth") or top.startswith("__editable__"):
                continue
            link = folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return folder


def _run(site: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{site}", "TRANSFERKIT_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-S", "-m", "transferkit", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_the_readme_tour_runs_on_the_core_install(tmp_path: Path) -> None:
    site = _core_site(tmp_path / "site")
    check = subprocess.run(
        [sys.executable, "-S", "-c", "import importlib.util as u, sys; "
         f"sys.exit(any(u.find_spec(m) for m in {sorted({m for ms in EXTRAS.values() for m in ms})!r}))"],
        env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert check.returncode == 0, "an extra's package is importable in the core site"
    small = ["--image-size", "64", "--min-steps", "0"]  # the tour's commands, each at its smallest
    tour = [
        ["demo-data", "demo", "--per-class", "8"],
        ["auto", "demo", "--budget", "30s", "--out", "runs/a"],
        ["rank", "demo", "--image-size", "64"],
        ["compare", "demo", "--seeds", "1", "--budget-epochs", "2", "--strategies", "linear-probe,partial", *small,
         "--out", "runs/c"],
        ["fit", "demo", "--strategy", "partial", "--unfreeze", "2", "--epochs", "1", *small, "--out", "runs/p"],
        ["lr-find", "demo", "--steps", "10", "--image-size", "64"],
        ["evaluate", "runs/p", "demo"],
        ["predict", "runs/p", "demo/3/0003.png"],
    ]  # fmt: skip
    for args in tour:
        done = _run(site, args, tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr[-2000:])
    for args, extra in ((["export", "runs/p"], "export"), (["serve", "runs/p"], "serve")):
        done = _run(site, args, tmp_path, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        assert done.stderr.count("\n") == 1 and f"transferkit[{extra}]" in done.stderr, done.stderr
