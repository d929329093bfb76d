"""Smoke runs of the benchmark scripts at tiny settings, so they cannot rot (their figures come
from full runs; see docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, cli_env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False)


def test_kill_resume_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/kill_resume.py", "--fast", "--kills", "1", "--scenarios", "compare", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "kill_resume.json").read_text())
    assert result["scenario"] == "compare" and result["kills"] == 1 and result["identical_weights"]
    assert result["models"] == 3  # linear-probe, two-phase and full, one seed each


def test_speed_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/speed.py", "--backbone", "resnet10t.random", "--image-size", "32", "--epochs", "1",
                "--per-class", "4", "--workers", "0", "--skip", "ddp", "scaling", "compile", "fastai", "defaults",
                "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "speed.json").read_text())
    assert set(result["loop"]) == {"transferkit, 0 workers", "bare PyTorch loop, images in memory"}
    assert result["extract"]["images"] == 40 and "| bare backbone forward |" in done.stdout


def test_quality_benchmark_smoke(tmp_path: Path) -> None:
    tiny = "--backbone resnet10t.random --image-size 32 --strategies linear-probe,full --min-steps 0"
    done = _run("benchmarks/quality.py", "--datasets", "fewshot", "--fast", "--seeds", "1", "--no-fastai",
                "--extra", tiny, "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "quality.json").read_text())["fewshot"]
    assert set(result["per_seed"]) == {"linear-probe", "full"}
    assert "full ≥ linear-probe − 1 pt" in result["rules"] and "### fewshot" in done.stdout


def test_allocator_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/allocator.py", "--sizes", "32", "--pairs", "1", "--backbone", "resnet10t.random",
                "--per-class", "3", "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "allocator.json").read_text())
    assert result["images"] == 30 and "speed-up" in result["sizes"]["32"] and "| 32 px | speed-up |" in done.stdout


def test_frozen_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/frozen.py", "--data", "few-shot", "--seeds", "0", "--epochs", "1", "--pairs", "1",
                "--per-class", "3", "--image-size", "32", "--backbone", "resnet10t.random", "--min-steps", "0",
                "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "frozen.json").read_text())
    assert set(result["partial"]["few-shot"]) == {"cut cache", "recomputed", "speed-up per epoch"}
    assert result["forward"]["ratio"] > 0 and "| transferkit extraction |" in done.stdout


def test_auto_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/auto.py", "--smoke", "--parts", "budgets", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "auto-bench.json").read_text())["budgets"]
    assert row["budget"] == "30s" and row["predict_ok"] and 0 <= row["held_out"]["accuracy"] <= 1


def test_federated_benchmark_smoke(tmp_path: Path) -> None:
    # One simulation (each starts Ray), with SecAgg+: Ray's ClientApps keep its keys in their
    # context between the protocol's stages. A codec's bytes are checked in test_compression.py,
    # DP clipping against a fake grid in test_federated.py, the SecAgg+ mean in process.
    done = _run(
        "benchmarks/federated.py", "--smoke", "--seeds", "1", "--partitions", "iid",
        "--rows", "feature-extraction:none@secagg", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "federated-bench.json").read_text())["rows"]
    assert row["bytes"] > 0 and 0 <= row["accuracy"] <= 1
    assert "| feature-extraction | none secagg | iid |" in done.stdout


def test_cam_benchmark_smoke(tmp_path: Path) -> None:
    done = _run("benchmarks/cam.py", "--backbones", "resnet10t.random", "--seeds", "0", "--per-class", "3",
                "--images", "2", "--image-size", "64", "--methods", "gradcam", "eigencam", "eigencam-signed",
                "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "cam.json").read_text())["resnet10t.random"][0]
    assert row["grid"] == [2, 2] and len(row["gradcam"]["inside"]) == 2 and 0 < row["perfect"] <= 1
    assert "| resnet10t.random | 2×2 | eigencam |" in done.stdout and len(row["eigencam-signed"]["inside"]) == 2
