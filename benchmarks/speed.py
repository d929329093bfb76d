"""How fast is transferkit, against a bare PyTorch loop, fastai, and itself under DDP?

    .venv/bin/python benchmarks/speed.py [--device auto] [--image-size 224] [--epochs 3]
                                         [--skip fastai ddp compile scaling] [--out runs/speed]

On the offline digits demo with the offline EfficientNet-Lite0 (public API only), each figure
the median of --repeats runs, printed as a table and saved as speed.json:

1. **fit vs a bare loop**: `fit(strategy="full")` for --epochs, PNG files decoded every epoch,
   against a hand-written PyTorch loop over the same images pre-decoded in memory (same model,
   batch, AdamW, a validation pass per epoch; on CUDA both in bf16 autocast and channels_last
   with pinned memory). With 0 and --workers DataLoader workers.
2. **feature extraction**: a linear probe (every image through the frozen backbone once, then
   the logistic regression) against the bare backbone forward on the in-memory images.
3. **torch.compile**: the same fine-tuning fit eager and compiled (does `--compile` pay?).
4. **DDP**: the same `fit` under torchrun (NCCL on CUDA, one process per GPU; gloo and two
   processes on CPU) against one process: time, and the largest weight difference.
5. **peak memory** of a linear probe at 500, 2,000 and 8,000 images (each a fresh process).
6. **fastai**: `two-phase` against fastai's `vision_learner(...).fine_tune(...)` on the same
   split, weights, image size, batch and epochs; fastai lives in its own venv (--fastai-venv,
   created with pip on first use) and runs on the CPU.
7. **defaults**: `fit` with every default (input size and flips from the data) against
   fastai's `fine_tune` at the size the defaults chose and the same epochs, wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import transferkit

BACKBONE = "efficientnet_lite0.offline"
SECTIONS = ("loop", "extract", "ddp", "scaling", "compile", "fastai", "defaults")


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median wall time, the last call's value) over ``repeats`` calls."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def in_memory(data: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The demo's train and val images decoded once, resized and scaled to [-1, 1]."""
    splits = transferkit.load_data(data, transferkit.FitConfig())

    def stack(samples: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = [np.asarray(Image.open(s.path).convert("RGB").resize((size, size))) for s in samples]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return x, torch.tensor([s.label for s in samples])

    return *stack(splits.train), *stack(splits.val)


def bare_loop(data: Path, args: argparse.Namespace, device: torch.device) -> float:
    """Validation accuracy of a hand-written fine-tuning loop; the caller times it."""
    x, y, vx, vy = in_memory(data, args.image_size)
    cuda = device.type == "cuda"
    if cuda:
        x, y, vx, vy = (t.pin_memory() for t in (x, y, vx, vy))
    torch.manual_seed(0)
    backbone = transferkit.create_backbone(args.backbone)
    model = nn.Sequential(backbone, nn.Linear(int(backbone.num_features), 10)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cuda)
    correct = 0
    for _ in range(args.epochs):
        model.train()
        for i in torch.randperm(len(x)).split(args.batch_size):
            inputs = x[i].to(device, non_blocking=True)
            inputs = inputs.contiguous(memory_format=torch.channels_last) if cuda else inputs
            with autocast:
                loss = nn.functional.cross_entropy(model(inputs).float(), y[i].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.inference_mode(), autocast:
            for i in torch.arange(len(vx)).split(args.batch_size):
                correct += int((model(vx[i].to(device)).argmax(1).cpu() == vy[i]).sum())
    return correct / len(vx)


def fit_kwargs(args: argparse.Namespace, device: str, **changes: Any) -> dict[str, Any]:
    options = {"backbone": args.backbone, "strategy": "full", "epochs": args.epochs, "image_size": args.image_size,
               "batch_size": args.batch_size, "augment": False, "cache": False, "probe_init": False,
               "device": device, "seed": 0, "min_steps": 0}  # fmt: skip
    # min_steps 0: exactly --epochs, the work the bare loop does (small data would stretch to 50 steps)
    return options | changes


def loop_vs_bare(data: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    n = len(transferkit.load_data(data, transferkit.FitConfig()).train) * args.epochs
    rows: dict[str, Any] = {}
    for workers in sorted({0, args.workers}):
        seconds, result = median_seconds(
            lambda w=workers: transferkit.fit(data, **fit_kwargs(args, device.type, num_workers=w)), args.repeats
        )
        rows[f"transferkit, {workers} workers"] = {
            "seconds": seconds, "images_per_s": n / seconds, "val_accuracy": result.metrics["val"]["accuracy"]
        }  # fmt: skip
    seconds, accuracy = median_seconds(lambda: bare_loop(data, args, device), args.repeats)
    rows["bare PyTorch loop, images in memory"] = {"seconds": seconds, "images_per_s": n / seconds,
                                                   "val_accuracy": accuracy}  # fmt: skip
    return rows


def extraction(data: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    x, _, vx, _ = in_memory(data, args.image_size)
    images = torch.cat([x, vx])
    backbone = transferkit.create_backbone(args.backbone).to(device).eval()

    @torch.inference_mode()
    def bare() -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            for batch in images.split(args.batch_size):
                backbone(batch.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    probe = fit_kwargs(args, device.type, strategy="linear-probe")
    ours, result = median_seconds(lambda: transferkit.fit(data, **probe), args.repeats)
    forward, _ = median_seconds(bare, args.repeats)
    return {"images": len(images), "linear_probe_seconds": ours, "bare_forward_seconds": forward,
            "val_accuracy": result.metrics["val"]["accuracy"]}  # fmt: skip


def compile_payoff(data: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rows = {}
    for compiled in (False, True):
        seconds, result = median_seconds(
            lambda c=compiled: transferkit.fit(data, **fit_kwargs(args, device.type, compile=c)), 1
        )
        rows["compiled" if compiled else "eager"] = {
            "seconds": seconds,
            "val_accuracy": result.metrics["val"]["accuracy"],
        }
    return rows


def ddp(data: Path, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    """`fit` in one process vs under torchrun; class weights on, so the global mean is tested too."""
    procs = max(torch.cuda.device_count(), 1) if device.type == "cuda" else 2
    fit = [sys.executable, "-m", "transferkit", "fit", str(data), "--backbone", args.backbone, "--strategy", "full",
           "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--no-augment", "--no-cache", "--no-probe-init", "--class-weights", "--device", device.type]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    rows: dict[str, Any] = {"processes": procs, "backend": "nccl" if device.type == "cuda" else "gloo"}
    for name, command in (("one process", fit), ("torchrun", [*launch, *fit[1:]])):
        out = work / f"ddp-{name.replace(' ', '-')}"
        start = time.perf_counter()
        done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"ddp ({name}) failed:\n{done.stderr[-3000:]}")
        config = json.loads((out / "config.json").read_text())
        rows[name] = {"seconds": time.perf_counter() - start, "val_accuracy": config["metrics"]["val"]["accuracy"]}
    from safetensors.torch import load_file

    a, b = (load_file(work / f"ddp-{n}" / "model.safetensors") for n in ("one-process", "torchrun"))
    rows["max_weight_difference"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return rows


SCALE_CHILD = """
import json, resource, sys, transferkit
result = transferkit.fit(sys.argv[1], **json.loads(sys.argv[2]))
print(result.seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def scaling(data: Path, args: argparse.Namespace, device: torch.device, work: Path) -> list[dict[str, Any]]:
    rows = []
    files = sorted(data.rglob("*.png"))
    options = json.dumps(fit_kwargs(args, device.type, strategy="linear-probe"))
    for n in args.scaling:
        folder = work / f"scaled-{n}"
        for i in range(n):  # n distinct images: the digits, shifted a few pixels per copy
            source = files[i % len(files)]
            (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
            shifted = np.roll(np.asarray(Image.open(source)), i // len(files), axis=1)
            Image.fromarray(shifted).save(folder / source.parent.name / f"{i:05d}.png")
        done = subprocess.run([sys.executable, "-c", SCALE_CHILD, str(folder), options], capture_output=True,
                              text=True, check=True)  # fmt: skip
        seconds, rss = done.stdout.split()[-2:]
        rows.append({"images": n, "seconds": float(seconds), "peak_rss_mib": int(rss) / 2**20})
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
torch.manual_seed(spec["seed"])
dls = block.dataloaders("", bs=spec["batch_size"], num_workers=spec["workers"], device=spec["device"])
learn = vision_learner(dls, spec["arch"], pretrained=False, metrics=accuracy)
learn.model[0].model.load_state_dict(load_file(spec["weights"]))
start = time.perf_counter()
with learn.no_bar(), learn.no_logging():
    learn.fine_tune(spec["epochs"] - spec["head_epochs"], freeze_epochs=spec["head_epochs"])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "val_accuracy": float(learn.validate()[1])}))
"""


def fastai_python(venv: Path) -> Path:
    """fastai in its own venv (its pins must never touch transferkit's)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = ["torch==2.14.1", "torchvision==0.29.1", "fastai==2.8.*", "timm", "safetensors"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def fastai_fine_tune(
    venv: Path, data: Path, work: Path, arch: str, size: int, epochs: int, seed: int, split: int | None = None
) -> dict[str, float]:
    """fastai's fine_tune(epochs − head, freeze_epochs=head) on transferkit's own split and weights.

    `split` is the seed that drew the split (default: `seed`), as compare's seeds share one split.
    """
    import torch
    from safetensors.torch import save_file

    splits = transferkit.load_data(data, transferkit.FitConfig(seed=seed if split is None else split))
    gpu = torch.cuda.is_available()
    weights = work / "backbone.safetensors"
    if not weights.exists():
        save_file({k: v.contiguous() for k, v in transferkit.create_backbone(BACKBONE).state_dict().items()}, weights)
    spec = {"train": [str(s.path.resolve()) for s in splits.train], "val": [str(s.path.resolve()) for s in splits.val],
            "size": size, "batch_size": 32, "epochs": epochs, "head_epochs": max(1, epochs // 2),
            "weights": str(weights), "arch": arch, "seed": seed,
            "device": "cuda" if gpu else "cpu", "workers": 8 if gpu else 0}  # fmt: skip
    (work / "fastai-spec.json").write_text(json.dumps(spec))
    done = subprocess.run([str(fastai_python(venv)), "-c", FASTAI_CHILD, str(work / "fastai-spec.json")],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"fastai failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def against_fastai(data: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    epochs = 2 * max(1, args.epochs // 2)
    theirs = fastai_fine_tune(args.fastai_venv, data, work, "tf_efficientnet_lite0", args.image_size, epochs, 0)
    ours = transferkit.fit(data, backbone=BACKBONE, strategy="two-phase", epochs=epochs, image_size=args.image_size,
                           augment=False, cache=False, device="cpu")  # fmt: skip
    return {"epochs": epochs, "transferkit": {"seconds": ours.seconds, "val_accuracy": ours.metrics["val"]["accuracy"]},
            "fastai": theirs}  # fmt: skip


def defaults_vs_fastai(data: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`transferkit fit` with every default against fastai's fine_tune at the input size the
    defaults chose and the same epochs (half of them head-only), on the same split."""
    started = time.perf_counter()
    ours = transferkit.fit(data, device="cpu")
    wall = time.perf_counter() - started
    size = int(ours.model.preprocessing.image_size)  # type: ignore[attr-defined]
    epochs = ours.config.epochs
    theirs = fastai_fine_tune(args.fastai_venv, data, work, "tf_efficientnet_lite0", size, epochs, 0)
    return {"epochs": epochs, "image_size": size, "fastai": theirs,
            "transferkit": {"seconds": wall, "val_accuracy": ours.metrics["val"]["accuracy"]}}  # fmt: skip


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | seconds | images/s | val accuracy |", "|---|---|---|---|"]
    for name, row in results.get("loop", {}).items():
        lines.append(
            f"| fit `full`: {name} | {row['seconds']:.1f} | {row['images_per_s']:.0f} | {row['val_accuracy']:.4f} |"
        )
    if "extract" in results:
        e = results["extract"]
        lines.append(
            f"| linear probe (extract + fit) | {e['linear_probe_seconds']:.1f} | "
            f"{e['images'] / e['linear_probe_seconds']:.0f} | {e['val_accuracy']:.4f} |"
        )
        lines.append(
            f"| bare backbone forward | {e['bare_forward_seconds']:.1f} | "
            f"{e['images'] / e['bare_forward_seconds']:.0f} | |"
        )
    for name, row in results.get("compile", {}).items():
        lines.append(f"| fit `full`, {name} | {row['seconds']:.1f} | | {row['val_accuracy']:.4f} |")
    if "ddp" in results:
        d = results["ddp"]
        for name in ("one process", "torchrun"):
            label = f"{name} ({d['processes']} × {d['backend']})" if name == "torchrun" else name
            lines.append(f"| DDP check, {label} | {d[name]['seconds']:.1f} | | {d[name]['val_accuracy']:.4f} |")
        lines.append(f"| DDP check, largest weight difference | {d['max_weight_difference']:.2e} | | |")
    for row in results.get("scaling", []):
        lines.append(
            f"| linear probe, {row['images']} images: peak RSS {row['peak_rss_mib']:.0f} MiB | "
            f"{row['seconds']:.1f} | {row['images'] / row['seconds']:.0f} | |"
        )
    if "fastai" in results:
        f = results["fastai"]
        for name in ("transferkit", "fastai"):
            lines.append(
                f"| `two-phase` vs fastai `fine_tune`, {f['epochs']} epochs: {name} | "
                f"{f[name]['seconds']:.1f} | | {f[name]['val_accuracy']:.4f} |"
            )
    if "defaults" in results:
        f = results["defaults"]
        for name, label in (("transferkit", "`fit` with every default"), ("fastai", "fastai `fine_tune`")):
            lines.append(
                f"| {label}, {f['epochs']} epochs at {f['image_size']} px | {f[name]['seconds']:.1f} | | "
                f"{f[name]['val_accuracy']:.4f} |"
            )
    return "\n".join(lines)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers to try")
    parser.add_argument("--per-class", type=int, default=None, help="digits per class [default: all 1,797]")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scaling", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--fastai-venv", type=Path, default=Path("runs/fastai-venv"))
    parser.add_argument("--out", type=Path, default=Path("runs/speed"))
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    data = transferkit.write_digits_demo(args.out / "digits", per_class=args.per_class)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "options": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRANSFERKIT_CACHE"] = cache  # nothing from an earlier run
        sections: dict[str, Callable[[], Any]] = {
            "loop": lambda: loop_vs_bare(data, args, device),
            "extract": lambda: extraction(data, args, device),
            "ddp": lambda: ddp(data, args, device, args.out),
            "scaling": lambda: scaling(data, args, device, args.out),
            "compile": lambda: compile_payoff(data, args, device),
            "fastai": lambda: against_fastai(data, args, args.out),
            "defaults": lambda: defaults_vs_fastai(data, args, args.out),
        }
        for name, run in sections.items():
            if name not in args.skip:
                results[name] = run()
                print(f"{name}: {json.dumps(results[name])}", flush=True)
                (args.out / "speed.json").write_text(json.dumps(results, indent=2))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\n{results['device']}, torch {torch.__version__}, {results['threads']} threads (peak RSS {peak:.0f} MiB)")
    print(table(results))


if __name__ == "__main__":
    main()
