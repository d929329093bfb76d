"""The guide cannot rot: the MkDocs site builds strictly (links, anchors, API references), the
README stays a short front page, and every page the site lists exists."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="needs mkdocs (the docs extra)")
def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    options = (tmp_path / "site" / "options" / "index.html").read_text()
    assert "<code>--cache-views</code>" in options and "<code>--budget-epochs</code>" in options  # generated


def test_the_readme_is_a_front_page_that_links_into_the_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for link in [part.split(")")[0] for part in readme.split("](docs/")[1:]]:
        assert (ROOT / "docs" / link).is_file(), link
