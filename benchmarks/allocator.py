"""Does keeping freed memory in glibc's heap speed up the frozen forward on a CPU?

    .venv/bin/python benchmarks/allocator.py [--sizes 128 224] [--pairs 3] [--out runs/allocator]

What a user waits for: whole ``transferkit fit DATA --strategy linear-probe --no-cache
--image-size S`` processes on the offline digits demo (1,797 images; the backbone runs once
over every image, then a logistic regression), alternating glibc's default malloc
(``TRANSFERKIT_MALLOC=default``) with transferkit's tuned one (``transferkit.allocator``), so
both see the same machine load. Each figure is the median of ``--pairs`` runs: the fitting
time ``fit --json`` reports, the wall time, and the images per second of the fit. Saved as
``allocator.json``.

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
SETTINGS = {"glibc default": "default", "transferkit (heap kept)": ""}


def one_fit(data: Path, size: int, backbone: str, malloc: str, work: Path) -> dict[str, float]:
    env = {**os.environ, "TRANSFERKIT_MALLOC": malloc, "TRANSFERKIT_CACHE": str(work / "cache")}
    args = ["fit", str(data), "--strategy", "linear-probe", "--no-cache", "--image-size", str(size),
            "--backbone", backbone, "--json", "--quiet"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fit failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return {"fit_s": float(result["seconds"]), "wall_s": wall, "accuracy": result["metrics"]["val"]["accuracy"]}


def measure(data: Path, sizes: list[int], pairs: int, backbone: str, work: Path, images: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for size in sizes:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        for _ in range(pairs):  # alternated: both settings see the same load
            for name, malloc in SETTINGS.items():
                runs[name].append(one_fit(data, size, backbone, malloc, work))
        row = {}
        for name, results in runs.items():
            fit_s = statistics.median(r["fit_s"] for r in results)
            row[name] = {
                "fit_s": fit_s, "wall_s": statistics.median(r["wall_s"] for r in results),
                "images_per_s": images / fit_s, "accuracy": results[0]["accuracy"], "runs": results,
            }  # fmt: skip
        base, tuned = (row[name]["fit_s"] for name in SETTINGS)
        row["speed-up"] = base / tuned
        table[str(size)] = row
        print(f"{size} px: default {base:.1f} s, tuned {tuned:.1f} s -> {base / tuned:.2f}x", flush=True)
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = ["| input | malloc | fit (median) | whole command | images/s | val accuracy |", "|---|---|---|---|---|---|"]
    for size, row in table.items():
        for name in SETTINGS:
            r = row[name]
            lines.append(f"| {size} px | {name} | {r['fit_s']:.1f} s | {r['wall_s']:.1f} s | "
                         f"{r['images_per_s']:.0f} | {r['accuracy']:.4f} |")  # fmt: skip
        lines.append(f"| {size} px | speed-up | **{row['speed-up']:.2f}x** | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0.offline")
    parser.add_argument("--per-class", type=int, default=0, help="digits per class (0: all 1,797)")
    parser.add_argument("--out", type=Path, default=Path("runs/allocator"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        demo = [
            *COMMAND,
            "demo-data",
            str(work / "digits"),
            *(["--per-class", str(args.per_class)] if args.per_class else []),
        ]
        subprocess.run(demo, check=True, capture_output=True)
        images = sum(1 for _ in (work / "digits").glob("*/*.png"))
        table = measure(work / "digits", args.sizes, args.pairs, args.backbone, work, images)
    report = {"images": images, "backbone": args.backbone, "pairs": args.pairs, "sizes": table, "cpus": os.cpu_count()}
    (args.out / "allocator.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(table))


if __name__ == "__main__":
    main()
