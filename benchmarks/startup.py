"""How fast does the command line answer, and how much does a warm feature cache save?

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--out runs/startup]

Whole-process wall time (what a user waits for), each figure the median of --repeats runs,
printed next to its goal and saved as startup.json:

1. ``transferkit --help`` (goal ≤ 1.0 s), ``transferkit fit /nonexistent/data`` (an error on
   a missing folder, ≤ 1.5 s) and ``transferkit list`` (≤ 1.5 s);
2. on the offline digits demo: ``fit --strategy feature-extraction --epochs 10 --no-augment``
   with an empty feature cache, then again with the cache warm; the fitting time each run
   reports (``fit --json``: seconds) and their ratio (goal ≥ 5×).

Public interface only: the ``transferkit`` command as a user types it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMMAND = [sys.executable, "-m", "transferkit"]
GOALS = {"--help": 1.0, "fit /nonexistent/data": 1.5, "list": 1.5}


def timed(args: list[str], env: dict[str, str], expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}, expected {expect}:\n{done.stderr}")
    return seconds


def startup(repeats: int, env: dict[str, str]) -> dict[str, Any]:
    rows = {}
    for label, goal in GOALS.items():
        expect = 2 if label.startswith("fit") else 0
        times = [timed(label.split(), env, expect) for _ in range(repeats)]
        rows[label] = {"median_s": statistics.median(times), "goal_s": goal, "runs": times}
        print(f"transferkit {label:<24} {rows[label]['median_s']:6.2f} s   goal ≤ {goal:.1f} s", flush=True)
    return rows


def fit_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([*COMMAND, *args, "--json"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fit failed:\n{done.stderr}")
    return dict(json.loads(done.stdout))


def warm_cache(env: dict[str, str], work: Path, size: int, epochs: int, fit_options: list[str]) -> dict[str, Any]:
    data = work / "digits"
    subprocess.run([*COMMAND, "demo-data", str(data), "--size", str(size)], env=env, check=True, capture_output=True)
    args = ["fit", str(data), "--strategy", "feature-extraction", "--epochs", str(epochs), "--no-augment", *fit_options]
    env = {**env, "TRANSFERKIT_CACHE": str(work / "cache")}  # empty: the first run extracts
    cold = fit_json([*args, "--out", str(work / "cold")], env)
    warm = fit_json([*args, "--out", str(work / "warm")], env)
    ratio = cold["seconds"] / warm["seconds"]
    print(
        f"fit feature-extraction, {epochs} epochs: cold cache {cold['seconds']:.1f} s, warm {warm['seconds']:.1f} s "
        f"→ {ratio:.1f}× (goal ≥ 5×); val accuracy {cold['metrics']['val']['accuracy']:.4f} / "
        f"{warm['metrics']['val']['accuracy']:.4f}",
        flush=True,
    )
    return {"cold_s": cold["seconds"], "warm_s": warm["seconds"], "ratio": ratio, "goal_ratio": 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64, help="side of the demo PNGs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/startup"))
    parser.add_argument("--backbone", help="fit's --backbone [default: the demo's default, EfficientNet-Lite0]")
    parser.add_argument("--fit-image-size", type=int, help="fit's --image-size [default: the backbone's own]")
    args = parser.parse_args()
    fit_options = [*(["--backbone", args.backbone] if args.backbone else [])]
    fit_options += ["--image-size", str(args.fit_image_size)] if args.fit_image_size else []
    env = {**os.environ, "COLUMNS": "120"}
    results: dict[str, Any] = {"cpu_cores": os.cpu_count(), "startup": startup(args.repeats, env)}
    with tempfile.TemporaryDirectory() as work:
        results["warm_cache"] = warm_cache(env, Path(work), args.image_size, args.epochs, fit_options)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"numbers: {args.out / 'startup.json'}")


if __name__ == "__main__":
    main()
