"""Export, compress and time the guide's digits run and a BBC News text run.

    .venv/bin/python benchmarks/deploy.py [--out runs/deploy]      # ~10 min on 2 CPU cores

For each run: ``transferkit export RUN --quantize dynamic,static --calibrate DATA --json``,
which writes ONNX fp32 and int8 files, checks each against the PyTorch model on the run's
validation items and times both runtimes in one process (median of --repeats). Prints one
Markdown table per run (docs/deploy.md's) and saves deploy.json. Only the ``transferkit``
command is used, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

COMMAND = [sys.executable, "-m", "transferkit"]


def tk(*args: str) -> str:
    done = subprocess.run([*COMMAND, *args], capture_output=True, text=True, check=False, env=os.environ)
    if done.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def export(run: Path, data: Path, repeats: int) -> list[dict[str, Any]]:
    out = tk("export", str(run), "--quantize", "dynamic,static", "--calibrate", str(data), "--repeats",
             str(repeats), "--json")  # fmt: skip
    return list(json.loads(out)["formats"])


def table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"**{title}**", "", "| format | size | 1 item | batch 32 | val accuracy | top-1 agreement |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(
            f"| {r['format']} | {r['bytes'] / 2**20:.1f} MiB | {r['latency_1_ms']:.1f} ms | "
            f"{r['latency_32_ms']:.0f} ms | {accuracy} | {r['agreement']:.2%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/deploy"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--digits-fit", default="--strategy two-phase --epochs 6 --image-size 96 --no-augment",
                        help="fit options of the digits run (the guide's digits run)")  # fmt: skip
    parser.add_argument("--digits-per-class", type=int, default=0, help="images per digit (0: all 1,797)")
    parser.add_argument("--text-fit", default="--strategy two-phase --epochs 4 --max-length 128 --lr 0.005",
                        help="fit options of the BBC News run")  # fmt: skip
    parser.add_argument("--text-per-class", type=int, default=60, help="BBC News articles per topic (0: all 2,225)")
    parser.add_argument("--no-text", action="store_true", help="digits only")
    parser.add_argument("--no-digits", action="store_true", help="text only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpu_cores": os.cpu_count()}
    digits = args.out / "digits"
    if args.no_digits:
        pass
    elif not digits.is_dir():
        tk("demo-data", str(digits))
        if args.digits_per_class:  # keep the first N images of each digit
            for folder in (d for d in digits.iterdir() if d.is_dir()):
                for extra in sorted(folder.iterdir())[args.digits_per_class :]:
                    extra.unlink()
    if not args.no_digits:
        tk("fit", str(digits), *args.digits_fit.split(), "--out", str(args.out / "digits-run"), "--quiet")
        results["digits"] = export(args.out / "digits-run", digits, args.repeats)
        print(table(f"digits demo, fit {args.digits_fit}", results["digits"]), "\n", flush=True)
    if not args.no_text:
        news = args.out / "news"
        if not news.is_dir():
            tk("demo-text", str(news), "--per-class", str(args.text_per_class))
        tk("fit", str(news), *args.text_fit.split(), "--out", str(args.out / "news-run"), "--quiet")
        results["news"] = export(args.out / "news-run", news, args.repeats)
        print(table(f"BBC News, fit {args.text_fit}", results["news"]), "\n", flush=True)
    (args.out / "deploy.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"numbers: {args.out / 'deploy.json'}")


if __name__ == "__main__":
    main()
