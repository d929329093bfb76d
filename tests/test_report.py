"""The HTML report as a person sees it: rendered in headless Chromium, screenshot taken."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from transferkit.demos import write_digits_demo
from transferkit.reports.html import write_report
from transferkit.workflows.compare import CompareConfig, compare

PLOTS = ["plot-accuracy-time", "plot-learning-curves", "plot-confusion", "plot-memory"]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM or "chromium", *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(tiny_compare: tuple[Path, Path, Any]) -> None:
    html = (tiny_compare[0] / "out" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for plot in PLOTS:
        assert f'id="{plot}"' in html
    assert 'id="comparison"' in html and 'id="recommendation"' in html and 'id="most-confused"' in html


def test_the_report_shows_where_each_strategy_looks(tiny_compare: tuple[Path, Path, Any]) -> None:
    """Per picked validation image, each strategy's Grad-CAM, read from files named by position."""
    pytest.importorskip("pytorch_grad_cam")
    out = tiny_compare[0] / "out"
    attention = json.loads((out / "results.json").read_text())["attention"]
    assert attention["columns"] == ["linear-probe", "feature-extraction", "two-phase", "scratch"]
    assert 1 <= len(attention["rows"]) <= 6 and {r["kind"] for r in attention["rows"]} <= {"error", "correct"}
    for r, row in enumerate(attention["rows"]):
        assert len(row["cells"]) == 4
        for c in range(4):
            with Image.open(out / "attention" / f"r{r}-c{c}.png") as im:
                assert im.size == (112, 112)
    page = (out / "report.html").read_text()
    section = page[page.index('<table id="attention">') :]
    assert section.count("<tr>") == 1 + len(attention["rows"])
    assert section.count("data:image/png;base64,") == len(attention["rows"]) * 5  # the image + 4 overlays


def test_an_edited_attention_entry_names_no_file_and_injects_nothing(tmp_path: Path) -> None:
    from transferkit.modalities import get_modality
    from transferkit.reports.attention import attention_section

    (tmp_path / "secret.png").write_bytes(b"not yours")
    edited = {"columns": ["<script>x</script>"], "seed": "<b>", "rows": [
        {"item": "../secret.png", "truth": "<i>", "kind": "error", "cells": [{"predicted": "../secret.png"}]},
        "not a row", {"cells": "nope"},
    ]}  # fmt: skip
    page = attention_section(edited, tmp_path, get_modality("image"))
    assert "<script>" not in page and "<i>" not in page and "seed &lt;b&gt;" in page
    assert "bm90IHlvdXJz" not in page  # base64 of the other file: never read
    assert page.count("<td>–</td>") == 2  # no overlay file at either position


def test_report_rebuilds_from_results_json(tiny_compare: tuple[Path, Path, Any]) -> None:
    out = tiny_compare[0] / "out"
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    write_report(out)
    assert (out / "report.html").read_text() == before


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it: apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(tiny_compare: tuple[Path, Path, Any], tmp_path: Path) -> None:
    report = (tiny_compare[0] / "out" / "report.html").resolve()
    shot = tmp_path / "report.png"
    done = _chromium(["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], tmp_path / "p1")
    assert shot.is_file() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    dom = _chromium(["--dump-dom", report.as_uri()], tmp_path / "p2").stdout
    assert '<table id="comparison">' in dom
    for plot in PLOTS:
        assert f'id="{plot}"' in dom and "data:image/png;base64," in dom
    table = dom[dom.index('<table id="comparison">') : dom.index("</table>")]
    assert table.count("<tr") == 1 + 4  # header + one row per strategy
    assert '<table id="attention">' in dom or "pytorch_grad_cam" not in sys.modules


@pytest.mark.offline_weights
def test_digits_two_phase_shows_no_negative_transfer(tmp_path: Path) -> None:
    """Real ImageNet weights on real digits: pre-training helps, and the report says nothing else."""
    data = write_digits_demo(tmp_path / "digits", size=32, per_class=30)
    base = CompareConfig().base.replace(image_size=32, augment=False)
    cfg = CompareConfig(strategies=("two-phase", "scratch"), budget_epochs=2, seeds=1, base=base)
    result = compare(data, cfg, out=tmp_path / "out")
    rows = {r["strategy"]: r for r in result.rows}
    assert rows["two-phase"]["val_accuracy_mean"] > rows["scratch"]["val_accuracy_mean"]
    assert not [w for w in result.warnings if "two-phase" in w or "Negative" in w]
