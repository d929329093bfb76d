"""How much does each compression lever save in a federation, and what does it cost in accuracy?

    .venv/bin/python benchmarks/federated.py [--rows two-phase:none,two-phase:int8,...]
                                             [--partitions iid,dirichlet] [--seeds 2]
                                             [--rows two-phase:none@dp=0.01,lora:none@secagg ...]
                                             [--out runs/bench-federated] [--smoke]

The digits demo, 4 clients, IID and Dirichlet(0.5) label skew, 6 rounds at 64 px (what
`transferkit federated demo-data --clients 4 --rounds 6 --strategy two-phase --image-size 64`
runs), once per row and seed: ``strategy:compress``, where compress is none, int8, int4 or
topk:F (quantised or sparsified changes, error feedback, both ways) and the strategy says what
travels at all (``partial``: only the unfrozen top blocks); ``@dp=M`` adds Flower's server-side
clipping differential privacy with noise multiplier M (clip norm 1; M=0 clips only), ``@secagg``
Flower's SecAgg+ secure aggregation. Bytes are what crossed Flower's wire (for SecAgg+, every
message of its four stages).

Writes federated-bench.json into --out and prints the table. ``--smoke``: a tiny random
backbone on a few images, two rounds, in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROWS = "two-phase:none,two-phase:int8,two-phase:int4,two-phase:topk:0.1,partial:none,partial:int8"


def run_row(
    splits: Any, strategy: str, compress: str, partition: str, seed: int, smoke: bool, extras: dict[str, Any]
) -> dict[str, Any]:
    from transferkit.config import FitConfig
    from transferkit.workflows.federated import FederatedConfig, simulate

    base = FitConfig(
        strategy=strategy, augment=False, image_size=32 if smoke else 64, seed=seed,
        backbone="resnet10t.random" if smoke else "efficientnet_lite0.offline",
    )  # fmt: skip
    cfg = FederatedConfig(
        clients=2 if smoke else 4, rounds=2 if smoke else 6, partition=partition, compress=compress, base=base,
        dp_noise=extras.get("dp"), secure_aggregation=extras.get("secagg", False),
    )  # fmt: skip
    started = time.perf_counter()
    result = simulate(splits, cfg)
    return {
        "strategy": strategy, "compress": compress + "".join(_suffix(k, v) for k, v in extras.items()),
        "partition": partition,
        "seed": seed,
        "accuracy": result.rounds[-1].accuracy, "bytes": result.bytes_total, "seconds": time.perf_counter() - started,
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Mean over seeds per (strategy, compress, partition), bytes against the same strategy's none."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["compress"], row["partition"]), []).append(row)
    lines = [
        "| strategy | compress | partition | accuracy (mean over seeds) | Δ vs none (pt) | sent in total | share of none |",
        "|---|---|---|---|---|---|---|",
    ]
    for (strategy, compress, partition), runs in groups.items():
        acc = statistics.mean(r["accuracy"] for r in runs)
        sent = statistics.mean(r["bytes"] for r in runs)
        plain = groups.get((strategy, "none", partition))
        delta = share = "–"
        if plain and compress != "none":
            delta = f"{100 * (acc - statistics.mean(r['accuracy'] for r in plain)):+.2f}"
            share = f"1/{statistics.mean(r['bytes'] for r in plain) / sent:.1f}"
        seeds = ", ".join(f"{r['accuracy']:.4f}" for r in runs)
        lines.append(
            f"| {strategy} | {compress} | {partition} | {acc:.4f} ({seeds}) | {delta} | {sent / 1e6:.1f} MB | {share} |"
        )
    return "\n".join(lines)


def _row(item: str) -> tuple[str, str, dict[str, Any]]:
    """``strategy:compress``, optionally ``@dp=M`` (Flower's central DP) and/or ``@secagg``."""
    pair, *options = item.split("@")
    strategy, compress = pair.split(":", 1)
    extras: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        extras[key] = float(value) if key == "dp" else True
    return strategy, compress, extras


def _suffix(key: str, value: Any) -> str:
    return f" dp={value:g}" if key == "dp" else f" {key}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=ROWS, help="strategy:compress pairs, comma-separated")
    parser.add_argument("--partitions", default="iid,dirichlet")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-federated"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()

    import transferkit
    from transferkit.demos import write_digits_demo

    args.out.mkdir(parents=True, exist_ok=True)
    data = write_digits_demo(args.out / "digits", per_class=6 if args.smoke else None)
    pairs = [_row(item) for item in args.rows.split(",")]
    rows = []
    for seed in range(args.seeds):
        splits = transferkit.load_data(data, transferkit.FitConfig(seed=seed))
        for partition in args.partitions.split(","):
            for strategy, compress, extras in pairs:
                rows.append(run_row(splits, strategy, compress, partition, seed, args.smoke, extras))
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "federated-bench.json").write_text(json.dumps({"rows": rows}, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
