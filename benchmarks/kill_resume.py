"""Kill a real `transferkit fit` with SIGKILL at random moments, resume it, and check that the
final model equals an uninterrupted run's, bit for bit.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--seed 0] [--out runs/kill-resume]

Uses the offline EfficientNet-Lite0 on a 300-image digits subset at 32 px with `two-phase`
(so kills land in both phases and on the boundary). Prints a table and writes
`kill_resume.json` into --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from transferkit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from transferkit.demos import write_digits_demo

# Long enough (60 short epochs) that 20 kills land before it can finish.
FIT = ["--strategy", "two-phase", "--epochs", "60", "--head-epochs", "10", "--image-size", "32", "--seed", "0"]


def fit_command(data: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "transferkit", "fit", str(data), "--out", str(out), *FIT] + (
        ["--resume"] if resume else []
    )


def checkpoint_epoch(run: Path) -> int | None:
    path = run / CHECKPOINT_FILE
    return load_checkpoint(path).loop.epoch if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kill-resume"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    data = write_digits_demo(args.out / "digits", size=32, per_class=30)

    start = time.perf_counter()
    subprocess.run(fit_command(data, args.out / "reference", False), check=True, capture_output=True)
    reference_seconds = time.perf_counter() - start
    print(f"uninterrupted run: {reference_seconds:.1f}s")

    run = args.out / "killed"
    kills: list[dict[str, object]] = []
    while len(kills) < args.kills:
        before = checkpoint_epoch(run)
        process = subprocess.Popen(
            fit_command(data, run, resume=before is not None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Start-up and feature extraction take a good part of a run: kill anywhere up to well
        # past them, so kills land before, inside and between epochs of both phases.
        delay = rng.uniform(0.5, min(20.0, reference_seconds * 0.3))
        time.sleep(delay)
        if process.poll() is not None:
            print(f"the run finished before kill {len(kills) + 1}")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        after = checkpoint_epoch(run)
        kills.append({"kill": len(kills) + 1, "after_seconds": round(delay, 2), "epochs_checkpointed": after})
        print(f"kill {len(kills):>2} after {delay:5.1f}s: checkpoint at epoch {after}")
    if checkpoint_epoch(run) is not None or not (run / "model.safetensors").is_file():
        final = subprocess.run(fit_command(data, run, resume=True), capture_output=True, text=True)
        if final.returncode != 0:
            sys.exit(f"the final resume failed:\n{final.stderr}")

    a = load_file(args.out / "reference" / "model.safetensors")
    b = load_file(run / "model.safetensors")
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    ref_cfg = json.loads((args.out / "reference" / "config.json").read_text())
    run_cfg = json.loads((run / "config.json").read_text())
    summary = {
        "kills": len(kills),
        "identical_weights": identical,
        "max_abs_difference": max_diff,
        "reference_val_accuracy": ref_cfg["metrics"]["val"]["accuracy"],
        "resumed_val_accuracy": run_cfg["metrics"]["val"]["accuracy"],
        "history": kills,
    }
    (args.out / "kill_resume.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{len(kills)} SIGKILLs survived; final weights identical to the uninterrupted run: {identical} "
        f"(max |diff| {max_diff:g}); val accuracy {summary['reference_val_accuracy']:.4f} vs "
        f"{summary['resumed_val_accuracy']:.4f}"
    )
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
