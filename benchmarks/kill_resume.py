"""Kill real transferkit runs with SIGKILL at random moments, resume them, and check that the
final models equal an uninterrupted run's, bit for bit.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--scenarios fit,compare,multitask,text]
                                               [--seed 0] [--out runs/kill-resume]

Scenarios (each on offline weights and data, small enough for a CPU):

- ``fit``: EfficientNet-Lite0, `two-phase` on 300 digits at 32 px (kills land in both phases
  and on the boundary);
- ``compare``: three strategies × two seeds on the same digits (kills land inside runs and
  between them; the rerun of the same command picks up where it stopped);
- ``multitask``: `fit-multitask` of digit, parity and greater-than-4 on the same digits;
- ``text``: all-MiniLM-L6-v2, `two-phase` on 50 BBC News articles (needs the `text` extra).

Every ``model.safetensors`` the killed run leaves must equal the reference's. Prints a table
and writes ``kill_resume.json`` into --out. ``--fast`` shrinks every scenario (the test
suite's smoke run).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from transferkit.checkpoint import load_checkpoint
from transferkit.runfolder import RunFolder


@dataclass(frozen=True)
class Scenario:
    """How to make the data (into a folder) and the command that trains on it into ``out``."""

    data: Callable[[Path, bool], list[str]]  # (folder, fast) -> the command's data arguments
    command: Callable[[bool], list[str]]  # fast -> the rest of the command (without --out)
    resumes_with_flag: bool = True  # fit and fit-multitask take --resume; compare reuses --out


def digits(folder: Path, fast: bool) -> list[str]:
    path = folder / "digits"
    if not path.is_dir():
        _cli("demo-data", str(path), "--size", "32", "--per-class", "8" if fast else "30")
    return [str(path)]


def digit_tasks(folder: Path, fast: bool) -> list[str]:
    path, table = folder / "digits-tasks", folder / "tasks.csv"
    if not path.is_dir():
        _cli("demo-data", str(path), "--size", "32", "--per-class", "8" if fast else "30", "--tasks-csv", str(table))
    return [str(table), "--images", str(path)]


def news(folder: Path, fast: bool) -> list[str]:
    path = folder / "news"
    if not path.is_dir():
        _cli("demo-text", str(path), "--per-class", "6" if fast else "10")
    return [str(path)]


def _epochs(fast: bool, full: int) -> list[str]:
    return ["--epochs", "3" if fast else str(full)]


SCENARIOS = {
    "fit": Scenario(digits, lambda fast: ["fit", "--strategy", "two-phase", *_epochs(fast, 60), "--head-epochs",
                                         "1" if fast else "10", "--image-size", "32", "--seed", "0"]),
    "compare": Scenario(digits, lambda fast: ["compare", "--strategies", "linear-probe,two-phase,full", "--seeds",
                                             "1" if fast else "2", "--budget-epochs", "2" if fast else "12",
                                             "--image-size", "32"], resumes_with_flag=False),
    "multitask": Scenario(digit_tasks, lambda fast: ["fit-multitask", "--tasks", "digit,parity,greater_than_4",
                                                    *_epochs(fast, 40), "--image-size", "32", "--seed", "0"]),
    "text": Scenario(news, lambda fast: ["fit", "--strategy", "two-phase", *_epochs(fast, 30), "--head-epochs",
                                        "1" if fast else "8", "--max-length", "64", "--seed", "0"]),
}  # fmt: skip


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "transferkit", *args], check=True, capture_output=True)


def command(scenario: Scenario, data: list[str], fast: bool, out: Path, resume: bool) -> list[str]:
    head, *rest = scenario.command(fast)
    again = ["--resume"] if resume and scenario.resumes_with_flag else []
    # --fast checks the script in seconds: a tiny network, and epochs alone (no --min-steps stretch)
    tiny = (
        ["--min-steps", "0"] + (["--backbone", "resnet10t.random"] if scenario.data is not news else []) if fast else []
    )
    return [sys.executable, "-m", "transferkit", head, *data, *rest, *tiny, "--out", str(out), *again]


def progress(run: Path) -> str:
    """What a killed run kept: finished runs (compare) and the epoch of each checkpoint."""
    epochs = sorted(load_checkpoint(p).loop.epoch for p in run.rglob(RunFolder.CHECKPOINT))
    finished = len(list(run.rglob("result.json")))
    return f"{finished} runs finished, " * bool(finished) + f"checkpoints at epochs {epochs or '–'}"


def models(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(run)): load_file(p) for p in sorted(run.rglob("model.safetensors"))}


def identical(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> tuple[bool, float]:
    if a.keys() != b.keys() or any(a[f].keys() != b[f].keys() for f in a):
        return False, float("inf")
    diffs = [float((a[f][k].float() - b[f][k].float()).abs().max()) for f in a for k in a[f]]
    return all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f]), max(diffs, default=0.0)


def kill_and_resume(name: str, kills: int, fast: bool, root: Path, rng: random.Random) -> dict[str, object]:
    scenario = SCENARIOS[name]
    data = scenario.data(root / "data", fast)
    reference, run = root / name / "reference", root / name / "killed"
    start = time.perf_counter()
    done = subprocess.run(command(scenario, data, fast, reference, False), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: the uninterrupted run failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    print(f"\n{name}: uninterrupted run {seconds:.1f}s")
    history: list[dict[str, object]] = []
    finished = False
    while len(history) < kills:
        resume = any(run.rglob(RunFolder.CHECKPOINT)) if run.is_dir() else False
        process = subprocess.Popen(
            command(scenario, data, fast, run, resume), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Start-up and feature extraction take a good part of a run: kill anywhere up to well
        # past them, so kills land before, inside and between epochs (and runs).
        delay = rng.uniform(0.5, min(20.0, max(1.0, seconds * 0.3)))
        time.sleep(delay)
        if process.poll() is not None:
            finished = process.returncode == 0
            print(f"  the run finished before kill {len(history) + 1}")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kept = progress(run)
        history.append({"kill": len(history) + 1, "after_seconds": round(delay, 2), "kept": kept})
        print(f"  kill {len(history):>2} after {delay:5.1f}s: {kept}")
    if not finished:
        resume = any(run.rglob(RunFolder.CHECKPOINT))
        final = subprocess.run(command(scenario, data, fast, run, resume), capture_output=True, text=True)
        if final.returncode != 0:
            sys.exit(f"{name}: the final resume failed:\n{final.stderr[-3000:]}")
    expected = models(reference)
    same, diff = identical(expected, models(run))
    return {"scenario": name, "kills": len(history), "models": len(expected), "identical_weights": same,
            "max_abs_difference": diff, "uninterrupted_seconds": round(seconds, 1), "history": history}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="tiny data and epochs: checks the script, not resume")
    parser.add_argument("--out", type=Path, default=Path("runs/kill-resume"))
    args = parser.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    results = [kill_and_resume(name, args.kills, args.fast, args.out, rng) for name in names]
    (args.out / "kill_resume.json").write_text(json.dumps(results, indent=2))
    print("\n| scenario | SIGKILLs | models compared | bit-identical | max abs diff | uninterrupted |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {r['kills']} | {r['models']} | {r['identical_weights']} | "
              f"{r['max_abs_difference']:g} | {r['uninterrupted_seconds']} s |")  # fmt: skip
    if not all(r["identical_weights"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
