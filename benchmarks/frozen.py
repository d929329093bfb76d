"""What computing frozen layers once buys: the cut-point cache, and the frozen forward itself.

    .venv/bin/python benchmarks/frozen.py [--data digits few-shot] [--seeds 0 1 2] [--epochs 4]
                                          [--pairs 2] [--out runs/frozen]

On the offline digits demo (and its few-shot version, 20 images per class), with the offline
EfficientNet-Lite0 and every other option at its default (so `--image-size auto`):

1. **cut-point cache**: `partial` (top 2 of 8 groups train) with the cache and without it
   (the limit set to 0, so the frozen groups run every step, as before): seconds per epoch
   (median over epochs), the whole fit, and validation accuracy, mean ± 95% t-interval over
   --seeds. No augmentation, so both train on the same inputs.
2. **frozen forward**: images per second of transferkit's feature extraction, as `fit` runs
   it with the default `--cache` (features written to the cache; the frozen graph exported by
   an earlier run, with onnxruntime installed), against a hand-written eager PyTorch loop
   over the same images (PIL decode and resize, the model's normalisation, one
   `torch.inference_mode` forward at batch 32) — each in its own process, alternated, median
   of --pairs.

Prints two Markdown tables and writes frozen.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BACKBONE = "efficientnet_lite0.offline"


def interval(values: list[float]) -> str:
    """mean ± the half-width of a 95% t-interval (± 0 for one value)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return f"{mean:.3f} ± {half:.3f}"


def make_data(kind: str, root: Path, per_class: int | None) -> Path:
    from transferkit.demos import write_digits_demo

    path = root / kind
    if not path.exists():
        few = 20 if kind == "few-shot" else None
        write_digits_demo(path, per_class=min(n for n in (few, per_class, 10**9) if n is not None))
    return path


def partial_runs(data: Path, seeds: list[int], epochs: int, backbone: str, out: Path, size: Any,
                 **options: Any) -> dict[str, Any]:  # fmt: skip
    import transferkit
    from transferkit import cutpoint

    rows: dict[str, Any] = {}
    limit = cutpoint.CUT_CACHE_LIMIT
    for label, cut_limit in (("cut cache", limit), ("recomputed", 0)):
        cutpoint.CUT_CACHE_LIMIT = cut_limit
        epoch_s, totals, accs = [], [], []
        for seed in seeds:
            start = time.perf_counter()
            result = transferkit.fit(
                data, backbone=backbone, strategy="partial", epochs=epochs, augment=False, cache=False, seed=seed,
                image_size=size, out=out / f"{data.name}-{label}-{seed}".replace(" ", "-"), **options,
            )  # fmt: skip
            totals.append(time.perf_counter() - start)
            epoch_s.append(statistics.median(h["seconds"] for h in result.history))
            accs.append(result.metrics["val"]["accuracy"])
        rows[label] = {"epoch_seconds": epoch_s, "fit_seconds": totals, "val_accuracy": accs}
    cutpoint.CUT_CACHE_LIMIT = limit
    rows["speed-up per epoch"] = statistics.mean(rows["recomputed"]["epoch_seconds"]) / statistics.mean(
        rows["cut cache"]["epoch_seconds"]
    )
    return rows


HAND_LOOP = """
import sys, time, numpy as np, torch
from PIL import Image
from pathlib import Path
import transferkit.modalities  # registers the offline zoo
from transferkit.backbones import create_backbone
files = sorted(p for p in Path(sys.argv[1]).rglob("*.png"))
size = int(sys.argv[2])
model = create_backbone(sys.argv[3]).eval()
mean = np.array([0.5, 0.5, 0.5], np.float32); std = np.array([0.5, 0.5, 0.5], np.float32)
start = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(files), 32):
        batch = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 255
                 for f in files[i:i + 32]]
        x = torch.from_numpy((np.stack(batch) - mean) / std).permute(0, 3, 1, 2).contiguous()
        model(x)
print(len(files) / (time.perf_counter() - start))
"""

TRANSFERKIT_LOOP = """
import sys, tempfile, time, torch
from pathlib import Path
import transferkit
from transferkit.backbones import create_backbone
from transferkit.config import FitConfig
from transferkit.features import extract_features
from transferkit.modalities import get_modality
from transferkit.pipeline import load_data
cfg = FitConfig(image_size=int(sys.argv[2]), val_fraction=0.2)
splits = load_data(sys.argv[1], cfg)
samples = list(splits.train) + list(splits.val)
model = create_backbone(sys.argv[3]).eval()
image = get_modality("image")
pre = image.preprocessing(model, cfg)
views = [image.transform(pre, False)]
cache = Path(tempfile.mkdtemp())
# As with the default --cache: the frozen graph was exported by an earlier run, the features were not.
extract_features(model, image, samples[:256], views, batch_size=32, device=torch.device("cpu"), cache_dir=cache)
start = time.perf_counter()
extract_features(model, image, samples, views, batch_size=32, device=torch.device("cpu"), cache_dir=cache)
print(len(samples) / (time.perf_counter() - start))
"""


def forward_rates(data: Path, size: int, pairs: int, backbone: str) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"hand-written eager loop": [], "transferkit extraction": []}
    for _ in range(pairs):
        for name, script in (("hand-written eager loop", HAND_LOOP), ("transferkit extraction", TRANSFERKIT_LOOP)):
            done = subprocess.run([sys.executable, "-c", script, str(data), str(size), backbone],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            rates[name].append(float(done.stdout.strip().splitlines()[-1]))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"images_per_second": rates, "median": medians,
            "ratio": medians["transferkit extraction"] / medians["hand-written eager loop"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "few-shot"], choices=["digits", "few-shot"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument(
        "--image-size", default="auto", help="input side of the fits (auto) and forward rates (auto: 128)"
    )
    parser.add_argument("--per-class", type=int, default=None, help="fewer images per class (smoke runs)")
    parser.add_argument("--min-steps", type=int, default=None, help="(smoke runs: 0, epochs alone, no stretch)")
    parser.add_argument("--forward-only", action="store_true", help="only the frozen-forward rates")
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--out", type=Path, default=Path("runs/frozen"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {kind: make_data(kind, Path(tmp), args.per_class) for kind in args.data}
        size = int(args.image_size) if args.image_size.isdigit() else "auto"
        options = {} if args.min_steps is None else {"min_steps": args.min_steps}
        result: dict[str, Any] = {
            "partial": {k: partial_runs(d, args.seeds, args.epochs, args.backbone, Path(tmp) / "runs", size, **options)
                        for k, d in datasets.items() if not args.forward_only},
            "forward": forward_rates(datasets[args.data[0]], 128 if size == "auto" else size, args.pairs,
                                     args.backbone),
        }  # fmt: skip
    (args.out / "frozen.json").write_text(json.dumps(result, indent=2))
    print("| data | frozen layers | s / epoch | whole fit, s | val accuracy |\n|---|---|---|---|---|")
    for kind, rows in result["partial"].items():
        for label in ("recomputed", "cut cache"):
            r = rows[label]
            print(f"| {kind} | {label} | {interval(r['epoch_seconds'])} | {interval(r['fit_seconds'])} | "
                  f"{interval(r['val_accuracy'])} |")  # fmt: skip
        print(f"| {kind} | speed-up per epoch | {rows['speed-up per epoch']:.1f}× | | |")
    forward = result["forward"]
    print(f"\n| {128 if size == 'auto' else size} px, images/s | median |\n|---|---|")
    for name, rate in forward["median"].items():
        print(f"| {name} | {rate:.0f} |")
    print(f"| ratio | {forward['ratio']:.2f}× |")


if __name__ == "__main__":
    main()
