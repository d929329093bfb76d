"""Does `transferkit auto` hold its budget and match `compare`, as a user would run them?

    .venv/bin/python benchmarks/auto.py [--parts budgets,versus,kills] [--budgets 1m,5m,20m]
                                        [--kills 10] [--out runs/bench-auto] [--smoke]

- ``budgets``: the digits demo, `auto --budget B` for each B, each with a cold feature cache:
  wall time (the whole command), held-out accuracy and interval, the ONNX file's accuracy
  on the same items, and `predict` on OUT/best.
- ``versus``: few-shot digits (20 per class) and BBC News, split once into train/val/test
  (60/20/20, stratified): `auto --budget 5m` (mean over ``--versus-seeds``) against every
  `compare` strategy at its defaults (its 2 seeds), both scored on the same test items (auto
  holds out test/ when the data has one).
- ``kills``: one search SIGKILLed at random moments; after each, OUT/best must load; the last
  rerun must end within the budget left (+10%).

Writes auto-bench.json and prints the tables. ``--smoke`` runs each part on tiny data in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SMOKE_BACKBONE = "resnet10t.random"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, env=env)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return (json.loads(done.stdout) if "--json" in args else {}), wall


def cold(root: Path, name: str) -> dict[str, str]:
    """A fresh feature cache, as a new user has."""
    folder = root / "caches" / name
    shutil.rmtree(folder, ignore_errors=True)
    return {**os.environ, "TRANSFERKIT_CACHE": str(folder)}


def split_copy(source: Path, target: Path, seed: int = 0) -> Path:
    """``source`` (any layout transferkit reads) as train/val/test, 60/20/20 stratified."""
    import transferkit
    from transferkit.modalities.common import stratified_split

    if target.exists():
        return target
    splits = transferkit.load_data(source, transferkit.FitConfig(seed=seed))
    pool = [*splits.train, *splits.val, *splits.test]
    rest, test = stratified_split(pool, 0.2, seed + 1)
    train, val = stratified_split(rest, 0.25, seed + 2)
    for name, part in (("train", train), ("val", val), ("test", test)):
        if splits.modality == "text":
            import csv

            target.mkdir(parents=True, exist_ok=True)
            with (target / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows([s.text, splits.classes[s.label]] for s in part)
        else:
            for s in part:
                folder = target / name / splits.classes[s.label]
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s.path, folder / s.path.name)
    return target


def demo(root: Path, kind: str, smoke: bool) -> Path:
    folder = root / "data" / kind
    if not folder.exists():
        small = ["--per-class", "6"] if smoke else []
        if kind == "digits":
            cli("demo-data", str(folder), *small)
        elif kind == "fewshot":
            cli("demo-data", str(folder), "--per-class", "6" if smoke else "20")
        else:
            cli("demo-text", str(folder), *small)
    return folder


def auto(data: Path, out: Path, budget: str, env: dict[str, str], extra: list[str]) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    result, wall = cli("auto", str(data), "--out", str(out), "--budget", budget, "--json", *extra, env=env)
    onnx = next((r["accuracy"] for r in result["exports"] if r["format"] == "ONNX fp32"), None)
    item = next(p for p in data.rglob("*") if p.is_file() and p.suffix in (".png", ".csv"))
    predicted = cli("predict", str(out / "best"), str(item), "--json")[0] if item.suffix == ".png" else {}
    return {"budget": budget, "wall": wall, "held_out": result["held_out"], "onnx_accuracy": onnx,
            "plan": result["label"], "predict_ok": bool(predicted) or item.suffix != ".png"}  # fmt: skip


def budgets(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = demo(args.out, "digits", args.smoke)
    rows = []
    for budget in args.budgets:
        row = auto(data, args.out / f"digits-{budget}", budget, cold(args.out, f"digits-{budget}"), args.extra)
        limit = seconds(budget) * 1.1
        row |= {"within_budget": row["wall"] <= limit}
        rows.append(row)
        print(f"digits · {budget}: held-out {row['held_out']['accuracy']:.4f} ({row['held_out']['low']:.3f}–"
              f"{row['held_out']['high']:.3f}, {row['held_out']['items']} items), ONNX {row['onnx_accuracy']}, "
              f"wall {row['wall']:.0f}s (limit {limit:.0f}s), {row['plan']}", flush=True)  # fmt: skip
    return rows


def versus(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every `auto` run first (they hold a wall-clock budget: the machine must be quiet), then
    the `compare` runs (fixed epochs: their accuracy does not depend on the machine's load)."""
    kinds = ("fewshot",) if args.smoke else tuple(args.versus_data.split(","))
    rows = []
    for kind in kinds:
        data = split_copy(demo(args.out, kind, args.smoke), args.out / "data" / f"{kind}-split")
        mine = [auto(data, args.out / f"{kind}-auto-seed{seed}", args.versus_budget, cold(args.out, f"{kind}-{seed}"),
                     [*args.extra, "--seed", str(seed)]) for seed in range(args.versus_seeds)]  # fmt: skip
        mean = sum(m["held_out"]["accuracy"] for m in mine) / len(mine)
        rows.append({"data": kind, "auto": mine, "auto_mean": mean})
        print(f"{kind}: auto {[round(m['held_out']['accuracy'], 4) for m in mine]} (mean {mean:.4f}) in "
              f"{[round(m['wall']) for m in mine]}s, {[m['plan'] for m in mine]}", flush=True)  # fmt: skip
    for row in rows:
        data = args.out / "data" / f"{row['data']}-split"
        compare, wall = cli("compare", str(data), "--out", str(args.out / f"{row['data']}-compare"), "--json",
                            "--seeds", str(args.versus_seeds), *args.compare_extra,
                            env=cold(args.out, f"{row['data']}-compare"))  # fmt: skip
        strategies = {f"{r['backbone']} · {r['strategy']}": r.get("test_accuracy_mean") for r in compare["rows"]}
        best = max(v for v in strategies.values() if v is not None)
        row |= {"compare_test": strategies, "compare_wall": wall, "best_compare": best,
                "met": row["auto_mean"] >= best - 0.01}  # fmt: skip
        print(f"{row['data']}: auto mean {row['auto_mean']:.4f} · best compare strategy {best:.4f} in {wall:.0f}s · "
              f"{strategies} · met: {row['met']}", flush=True)  # fmt: skip
    return rows


def kills(args: argparse.Namespace) -> dict[str, Any]:
    from transferkit import load

    data = demo(args.out, "fewshot", args.smoke)
    out = args.out / "kills"
    shutil.rmtree(out, ignore_errors=True)
    env = cold(args.out, "kills")
    command = [sys.executable, "-m", "transferkit", "auto", str(data), "--out", str(out), "--budget",
               args.kill_budget, "--quiet", *args.extra]  # fmt: skip
    rng = random.Random(0)
    moments, loads = [], []
    for _ in range(args.kills):
        run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moment = rng.uniform(3, args.kill_within)
        time.sleep(moment)
        if run.poll() is not None:
            break  # it finished before the kill: the search is over
        run.send_signal(signal.SIGKILL)
        run.wait()
        moments.append(round(moment, 1))
        best = out / "best"
        try:
            loads.append("absent" if not best.exists() else (load(best) and "loads"))
        except Exception as exc:
            loads.append(f"broken: {exc}")
    from transferkit.auto.clock import spent_before

    left = seconds(args.kill_budget) - spent_before(out)
    started = time.time()
    subprocess.run(command, env=env, check=True)
    wall = time.time() - started
    result = json.loads((out / "auto.json").read_text())["result"]
    row = {"kills": len(moments), "moments": moments, "best_after_each": loads, "left_before_rerun": left,
           "rerun_wall": wall, "rerun_within": wall <= max(left, 0) * 1.1 + 5, "final": result["held_out"]}  # fmt: skip
    print(f"kills: {row['kills']} at {moments}s; OUT/best after each: {loads}; rerun {wall:.0f}s of {left:.0f}s left; "
          f"held-out {result['held_out']['accuracy']:.4f}", flush=True)  # fmt: skip
    return row


def seconds(budget: str) -> float:
    from transferkit.auto.config import seconds as parse

    return parse(budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="budgets,versus,kills")
    parser.add_argument("--budgets", default="1m,5m,20m")
    parser.add_argument("--versus-budget", default="5m")
    parser.add_argument("--versus-data", default="fewshot,text", help="datasets of the versus part")
    parser.add_argument("--versus-seeds", type=int, default=2, help="seeds of auto and of compare per dataset")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kill-budget", default="3m")
    parser.add_argument("--kill-within", type=float, default=20.0, help="each kill comes 3..this many seconds in")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-auto"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    args.budgets = args.budgets.split(",")
    args.extra, args.compare_extra = [], []
    if args.smoke:  # tiny data, a random backbone: every part in seconds, for the test suite
        args.budgets, args.versus_budget, args.kill_budget, args.kills, args.kill_within = ["30s"], "30s", "30s", 1, 4
        args.versus_seeds = 1
        args.extra = ["--backbone", SMOKE_BACKBONE, "--no-zoo", "--deploy", "none"]
        args.compare_extra = ["--backbone", SMOKE_BACKBONE, "--strategies", "linear-probe"]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    parts = args.parts.split(",")
    if "budgets" in parts:
        report["budgets"] = budgets(args)
    if "kills" in parts:
        report["kills"] = kills(args)
    if "versus" in parts:  # last: its compare runs may share the machine
        report["versus"] = versus(args)
    (args.out / "auto-bench.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
