"""How fast is transferkit, against the bare backbone and a hand-written loop?

    .venv/bin/python benchmarks/speed.py [--image-size 64] [--repeats 3] [--out runs/speed]

Measures on the offline digits demo with the offline EfficientNet-Lite0, each figure the
median of --repeats runs, printed with its target and saved as speed.json:

1. feature-extraction throughput from PNG files on disk vs the bare backbone forward on
   pre-decoded tensors (pipeline overhead);
2. a 10-epoch feature-extraction fit with cached features vs the same fit running the
   frozen backbone every epoch (as Keras and fastai do), with both accuracies;
3. one fine-tuning epoch of transferkit's loop vs a minimal hand-written loop (same model,
   batch size, AdamW, data in memory);
4. extraction time and peak RSS at 500, 2,000 and 8,000 images (each in a fresh process);
5. ``two-phase`` vs fastai's ``vision_learner(...).fine_tune(...)`` on the same split, the same
   timm architecture and ImageNet weights, image size, batch size and epochs. fastai is
   installed into its own virtual environment (``--fastai-venv``), never into transferkit's.
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

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit
from transferkit.backbones import create_backbone
from transferkit.demos import write_digits_demo
from transferkit.features import extract_features
from transferkit.freezing import freeze_for_phase
from transferkit.heads import ClassifierHead
from transferkit.layers import layer_groups
from transferkit.modalities import get_modality
from transferkit.modalities.image import image_preprocessing as preprocessing_for
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.modalities.image_io import eval_transform, open_rgb
from transferkit.model import TransferModel
from transferkit.optim import build_optimizer, warmup_cosine
from transferkit.pipeline import SingleLabel, fit_to_data, prepare_model, sample_loader
from transferkit.runtime import Amp as _Amp
from transferkit.runtime import seed_everything
from transferkit.scoring import evaluate as evaluate_model
from transferkit.strategies import Phase, get_strategy
from transferkit.training import Classification, Loaders, LoopSettings, train, train_one_epoch

IMAGE = get_modality("image")

BACKBONE = "efficientnet_lite0.offline"


def median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline_overhead(data: Path, size: int, repeats: int) -> dict[str, float]:
    samples = load_splits(data).train
    backbone = create_backbone(BACKBONE).eval()
    pre = preprocessing_for(backbone, size)
    device = torch.device("cpu")
    tensors = torch.stack([eval_transform(pre)(open_rgb(s.path)) for s in samples])

    @torch.inference_mode()
    def bare() -> None:
        for batch in tensors.split(32):
            backbone(batch)

    def from_disk() -> None:
        extract_features(backbone, IMAGE, samples, [eval_transform(pre)], batch_size=32, device=device)

    # Interleaved, so drift in this shared machine's speed hits both sides alike.
    disk_times, bare_times = [], []
    for _ in range(max(repeats, 5)):
        disk_times.append(median_time(from_disk, 1))
        bare_times.append(median_time(bare, 1))
    n = len(samples)
    disk, forward = statistics.median(disk_times), statistics.median(bare_times)
    return {
        "images": n,
        "disk_images_per_s": n / disk,
        "bare_images_per_s": n / forward,
        "ratio": forward / disk,
    }


def keras_style_clean(data: Path, size: int) -> float:
    """Validation accuracy of feature-extraction without augmentation where the frozen backbone
    runs on every batch of every epoch (Keras ``model.fit`` on a frozen base, fastai
    ``freeze()``): transferkit's own loop with the feature path switched off."""
    cfg = transferkit.FitConfig(backbone=BACKBONE, strategy="feature-extraction", epochs=10, image_size=size)
    splits = load_splits(data)
    cfg = fit_to_data(cfg, splits)
    seed_everything(cfg.seed)
    model, phases = prepare_model(cfg, get_strategy(cfg.strategy), SingleLabel(len(splits.classes)))
    pre = preprocessing_for(model.backbone, size)
    device = torch.device("cpu")
    loaders = Loaders(
        sample_loader(IMAGE, splits.train, eval_transform(pre), cfg, device, shuffle=True),
        sample_loader(IMAGE, splits.val, eval_transform(pre), cfg, device),
    )
    train(
        model, layer_groups(model.backbone), phases, loaders, Classification(len(splits.classes)),
        LoopSettings(cfg.weight_decay, cfg.warmup), device=device,
    )  # fmt: skip
    return evaluate_model(model, loaders.val, len(splits.classes), device).accuracy


def cached_vs_recomputed(data: Path, size: int, repeats: int, views: list[int]) -> dict[str, float]:
    """10-epoch feature-extraction: the backbone every epoch vs cached features, with and without
    augmentation; with it, the accuracy cost of caching only K augmented views."""
    common = {"backbone": BACKBONE, "strategy": "feature-extraction", "epochs": 10, "image_size": size, "seed": 0}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRANSFERKIT_CACHE"] = cache
        runs: dict[str, Any] = {"recomputed, clean (Keras/fastai style)": None}
        runs["cached, clean"] = {"augment": False}
        runs["recomputed, augmented"] = {"augment": True, "cache_views": 0}
        runs |= {f"cached, {k} augmented views": {"augment": True, "cache_views": k} for k in views}
        for name, options in runs.items():
            accuracies: list[float] = []

            def run(options: dict[str, Any] | None = options, accuracies: list[float] = accuracies) -> None:
                if options is None:
                    accuracies.append(keras_style_clean(data, size))
                else:
                    result = transferkit.fit(data, cache=False, **common, **options)
                    accuracies.append(result.metrics["val"]["accuracy"])

            results[f"{name}: seconds"] = median_time(run, repeats)
            results[f"{name}: val accuracy"] = statistics.median(accuracies)
            print(
                f"   {name}: {results[f'{name}: seconds']:.1f} s, val {results[f'{name}: val accuracy']:.4f}",
                flush=True,
            )
    clean = results["recomputed, clean (Keras/fastai style): seconds"]
    augmented = results["recomputed, augmented: seconds"]
    results["speed-up, clean (same computation)"] = clean / results["cached, clean: seconds"]
    results["accuracy change, clean"] = (
        results["cached, clean: val accuracy"] - results["recomputed, clean (Keras/fastai style): val accuracy"]
    )
    for k in views:
        results[f"speed-up, {k} augmented views"] = augmented / results[f"cached, {k} augmented views: seconds"]
        results[f"accuracy change, {k} augmented views"] = (
            results[f"cached, {k} augmented views: val accuracy"] - results["recomputed, augmented: val accuracy"]
        )
    return results


def loop_overhead(size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    images, labels = torch.randn(512, 3, size, size), torch.randint(0, 10, (512,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
    phase = Phase("full", 1, None, 1e-3, 1e-4)

    def model() -> TransferModel:
        backbone = create_backbone(BACKBONE)
        m = TransferModel(backbone, ClassifierHead(int(backbone.num_features), 10))
        freeze_for_phase(m, layer_groups(m.backbone), phase)
        return m

    def ours() -> None:
        m = model()
        optimizer = build_optimizer(m, phase, 0.01)
        scheduler = warmup_cosine(optimizer, len(loader), 0.1)
        train_one_epoch(
            m, loader, Classification(10), optimizer, scheduler, _Amp(torch.device("cpu")), torch.device("cpu"), None
        )

    def hand_written() -> None:
        m = model()
        m.train()
        optimizer = torch.optim.AdamW(m.parameters(), lr=1e-4)
        loss_fn = nn.CrossEntropyLoss()
        for x, y in loader:
            loss = loss_fn(m(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    a, b = median_time(ours, repeats), median_time(hand_written, repeats)
    return {"transferkit_seconds": a, "hand_written_seconds": b, "overhead": a / b - 1}


def compile_payoff(size: int) -> dict[str, float]:
    """Whether ``--compile`` pays on CPU: two fine-tuning epochs of 512 images, eager vs compiled."""
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(512, 3, size, size), torch.randint(0, 10, (512,))), batch_size=32)
    phase = Phase("full", 1, None, 1e-3, 1e-4)
    results: dict[str, float] = {}
    for compiled in (False, True):
        backbone = create_backbone(BACKBONE)
        m = TransferModel(backbone, ClassifierHead(int(backbone.num_features), 10))
        freeze_for_phase(m, layer_groups(m.backbone), phase)
        if compiled:
            m.compile()
        optimizer = build_optimizer(m, phase, 0.01)
        scheduler = warmup_cosine(optimizer, 2 * len(loader), 0.1)
        name = "compiled" if compiled else "eager"
        for epoch in (1, 2):
            start = time.perf_counter()
            train_one_epoch(
                m,
                loader,
                Classification(10),
                optimizer,
                scheduler,
                _Amp(torch.device("cpu")),
                torch.device("cpu"),
                None,
            )
            results[f"{name} epoch {epoch} seconds"] = time.perf_counter() - start
    saved = results["eager epoch 2 seconds"] - results["compiled epoch 2 seconds"]
    cost = results["compiled epoch 1 seconds"] - results["eager epoch 1 seconds"] - saved
    results["break-even epochs"] = cost / saved if saved > 0 else float("inf")
    return results


SCALE_CHILD = """
import resource, sys, time, torch
from transferkit.backbones import create_backbone
from transferkit.features import extract_features
from transferkit.modalities import get_modality
from transferkit.modalities.image import image_preprocessing as preprocessing_for
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.modalities.image_io import eval_transform
samples = load_splits(sys.argv[1]).train + load_splits(sys.argv[1]).val
backbone = create_backbone("efficientnet_lite0.offline")
pre = preprocessing_for(backbone, int(sys.argv[2]))
start = time.perf_counter()
extract_features(backbone, get_modality("image"), samples, [eval_transform(pre)], batch_size=32, device=torch.device("cpu"))
print(len(samples), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def make_scaled(root: Path, digits: Path, n: int) -> Path:
    """``n`` distinct images: the digits, shifted by a few pixels per copy."""
    files = sorted(digits.rglob("*.png"))
    for i in range(n):
        source = files[i % len(files)]
        shift = i // len(files)
        folder = root / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        image = np.roll(np.asarray(Image.open(source)), shift, axis=1)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def scaling(work: Path, digits: Path, size: int) -> list[dict[str, float]]:
    rows = []
    for n in (500, 2000, 8000):
        data = make_scaled(work / f"scaled-{n}", digits, n)
        out = subprocess.run(
            [sys.executable, "-c", SCALE_CHILD, str(data), str(size)], capture_output=True, text=True, check=True
        )
        images, seconds, rss = out.stdout.split()[-3:]
        rows.append({"images": int(images), "seconds": float(seconds), "peak_rss_mib": int(rss) / 2**20})
    return rows


FASTAI_CHILD = """
import json, sys, time, timm, torch
from fastai.vision.all import *
from safetensors.torch import load_file
spec = json.loads(open(sys.argv[1]).read())
val = set(spec["val"])
block = DataBlock(
    blocks=(ImageBlock, CategoryBlock), get_items=lambda _: [Path(p) for p in spec["train"] + spec["val"]],
    splitter=FuncSplitter(lambda p: str(p) in val), get_y=parent_label,
    item_tfms=Resize(spec["size"], method="squish"),
    batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3),  # the weights' own preprocessing
)
torch.manual_seed(0)
dls = block.dataloaders("", bs=spec["batch_size"], num_workers=0, device="cpu")
learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=False, metrics=accuracy)
learn.model[0].model.load_state_dict(load_file(spec["weights"]))
start = time.perf_counter()
with learn.no_bar(), learn.no_logging():
    learn.fine_tune(spec["fine_tune_epochs"], freeze_epochs=spec["head_epochs"])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "val_accuracy": float(learn.validate()[1])}))
"""


def ensure_fastai(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = ["torch==2.14.1", "torchvision==0.29.1", "fastai==2.8.*", "timm", "safetensors"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def against_fastai(digits: Path, size: int, repeats: int, venv: Path, work: Path) -> dict[str, float]:
    from safetensors.torch import save_file

    python = ensure_fastai(venv)
    splits = load_splits(digits)
    weights = work / "lite0-headless.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone(BACKBONE).state_dict().items()}, str(weights))
    spec = {
        "train": [str(s.path.resolve()) for s in splits.train],
        "val": [str(s.path.resolve()) for s in splits.val],
        "size": size,
        "batch_size": 32,
        "head_epochs": 3,
        "fine_tune_epochs": 3,
        "weights": str(weights),
    }
    (work / "fastai-spec.json").write_text(json.dumps(spec))
    theirs = [
        json.loads(
            subprocess.run(
                [str(python), "-c", FASTAI_CHILD, str(work / "fastai-spec.json")],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(repeats)
    ]
    ours = []
    for _ in range(repeats):
        result = transferkit.fit(
            splits, strategy="two-phase", epochs=6, head_epochs=3, image_size=size, augment=False, cache=False
        )
        ours.append({"seconds": result.seconds, "val_accuracy": result.metrics["val"]["accuracy"]})
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {
        "transferkit_seconds": med(ours, "seconds"),
        "transferkit_val_accuracy": med(ours, "val_accuracy"),
        "fastai_seconds": med(theirs, "seconds"),
        "fastai_val_accuracy": med(theirs, "val_accuracy"),
        "time_ratio": med(ours, "seconds") / med(theirs, "seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/speed"))
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["pipeline", "cache", "loop", "compile", "scaling", "fastai"]
    )
    parser.add_argument("--views", type=int, nargs="+", default=[1, 3, 5], help="cached augmented views to try")
    parser.add_argument("--fastai-venv", type=Path, default=Path("runs/speed/fastai-venv"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    digits = write_digits_demo(args.out / "digits")
    results: dict[str, Any] = {
        "image_size": args.image_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    if "pipeline" not in args.skip:
        results["pipeline"] = pipeline_overhead(digits, args.image_size, args.repeats)
        print("1. pipeline:", json.dumps(results["pipeline"]), "target ratio ≥ 0.85", flush=True)
    if "cache" not in args.skip:
        results["cache"] = cached_vs_recomputed(digits, args.image_size, args.repeats, args.views)
        print("2. cache:", json.dumps(results["cache"], indent=1), "target ≥ 6× within 1 point", flush=True)
    if "loop" not in args.skip:
        results["loop"] = loop_overhead(args.image_size, args.repeats)
        print("3. loop:", json.dumps(results["loop"]), "target overhead ≤ 5%", flush=True)
    if "compile" not in args.skip:
        results["compile"] = compile_payoff(args.image_size)
        print("3b. torch.compile:", json.dumps(results["compile"]), "(off by default unless it pays)", flush=True)
    if "scaling" not in args.skip:
        results["scaling"] = scaling(args.out, digits, args.image_size)
        print("4. scaling:", json.dumps(results["scaling"]), "target peak RSS at 8,000 ≤ 1.3× at 500", flush=True)
    if "fastai" not in args.skip:
        results["fastai"] = against_fastai(digits, args.image_size, args.repeats, args.fastai_venv, args.out)
        print("5. fastai:", json.dumps(results["fastai"]), "target: accuracy ≥ fastai − 0.01, time ≤ 0.7×", flush=True)
    (args.out / "speed.json").write_text(json.dumps(results, indent=2))
    print_summary(results)


def print_summary(r: dict[str, Any]) -> None:
    """One line per figure with its target and whether it was met."""
    rows: list[tuple[str, str, str, bool | None]] = []
    if "pipeline" in r:
        p = r["pipeline"]
        rows.append(
            (
                "extraction from files / bare forward",
                f"{p['disk_images_per_s']:.0f} / {p['bare_images_per_s']:.0f} img/s = {p['ratio']:.2f}",
                "≥ 0.85",
                p["ratio"] >= 0.85,
            )
        )
    if "cache" in r:
        c = r["cache"]
        rows.append(
            (
                "10-epoch FE clean: cached vs recomputed",
                f"{c['speed-up, clean (same computation)']:.1f}×, accuracy {c['accuracy change, clean']:+.3f}",
                "≥ 6×, within 0.01",
                c["speed-up, clean (same computation)"] >= 6 and abs(c["accuracy change, clean"]) <= 0.01,
            )
        )
        for key in sorted(k for k in c if k.startswith("speed-up, ") and "augmented" in k):
            views = key.removeprefix("speed-up, ")
            change = c[f"accuracy change, {views}"]
            rows.append(
                (
                    f"10-epoch FE augmented: {views} cached",
                    f"{c[key]:.1f}×, accuracy {change:+.3f}",
                    "≥ 6×, within 0.01",
                    c[key] >= 6 and abs(change) <= 0.01,
                )
            )
    if "loop" in r:
        rows.append(
            (
                "fine-tune epoch vs hand-written loop",
                f"{r['loop']['overhead']:+.1%}",
                "≤ +5%",
                r["loop"]["overhead"] <= 0.05,
            )
        )
    if "compile" in r:
        k = r["compile"]
        rows.append(
            (
                "torch.compile, fine-tune epoch 2 (eager vs compiled)",
                f"{k['eager epoch 2 seconds']:.1f} vs {k['compiled epoch 2 seconds']:.1f} s; compile {k['compiled epoch 1 seconds'] - k['eager epoch 1 seconds']:.0f} s",
                "off unless it pays",
                None,
            )
        )
    if "scaling" in r:
        s = r["scaling"]
        growth = s[-1]["peak_rss_mib"] / s[0]["peak_rss_mib"]
        times = " / ".join(f"{x['seconds']:.1f}" for x in s)
        rows.append(
            ("peak RSS at 8,000 vs 500 images", f"{growth:.2f}× (extraction {times} s)", "≤ 1.3×", growth <= 1.3)
        )
    if "fastai" in r:
        f = r["fastai"]
        ok = f["time_ratio"] <= 0.7 and f["transferkit_val_accuracy"] >= f["fastai_val_accuracy"] - 0.01
        rows.append(
            (
                "two-phase vs fastai fine_tune",
                f"{f['transferkit_seconds']:.1f} s / {f['transferkit_val_accuracy']:.3f} vs {f['fastai_seconds']:.1f} s / {f['fastai_val_accuracy']:.3f} = {f['time_ratio']:.2f}×",
                "≤ 0.7×, accuracy ≥ fastai − 0.01",
                ok,
            )
        )
    print("\nsummary")
    for name, result, target, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"  {name:<52} {result:<48} target {target:<32} {verdict}")


if __name__ == "__main__":
    main()
