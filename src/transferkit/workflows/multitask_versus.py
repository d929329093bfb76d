"""One multi-task model against one single-task ``fit`` per task, on the same split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from transferkit.api import fit
from transferkit.errors import ConfigError
from transferkit.freezing import count_params
from transferkit.memory import PeakMemory
from transferkit.runtime import resolve_device
from transferkit.workflows.multitask import MultiTaskConfig, MultiTaskData, fit_multitask


def versus_single_task(
    data: MultiTaskData,
    cfg: MultiTaskConfig,
    console: Console | None = None,
    out: str | Path | None = None,
    seeds: int = 1,
) -> dict[str, Any]:
    """One multi-task model vs one single-task ``fit`` per task: same split, strategy, epochs
    and seeds; accuracies as mean and sd over ``seeds`` (one seed moved them by ~1 point here).

    The feature cache is off for both, so neither side reuses the other's backbone passes.
    The multi-task model of the first seed is saved to ``out``.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError("seeds", seeds, "must be a positive whole number")
    runs = [_versus_once(data, cfg, cfg.base.seed + k, console, out if k == 0 else None) for k in range(seeds)]
    summary: dict[str, Any] = {
        "tasks": list(data.tasks), "strategy": cfg.base.strategy, "epochs": cfg.base.epochs,
        "weighting": cfg.weighting, "seeds": seeds, "runs": runs,
    }  # fmt: skip
    for side in ("multi_task", "single_task"):
        summary[side] = {
            "per_task": {
                t: {f"{m}_{stat}": fn([r[side]["per_task"][t][m] for r in runs])
                    for m in ("accuracy", "macro_f1") for stat, fn in (("mean", np.mean), ("sd", np.std))}
                for t in data.tasks
            },
            "seconds": float(np.mean([r[side]["seconds"] for r in runs])),
            "params": runs[0][side]["params"],
            "peak_memory_bytes": max(r[side]["peak_memory_bytes"] for r in runs),
        }  # fmt: skip
        for row in summary[side]["per_task"].values():
            row.update({k: float(v) for k, v in row.items()})
    return summary


def _versus_once(
    data: MultiTaskData, cfg: MultiTaskConfig, seed: int, console: Console | None, out: str | Path | None
) -> dict[str, Any]:
    base = cfg.base.replace(cache=False, seed=seed)
    if console:
        console.rule(f"multi-task: one shared backbone (seed {seed})")
    multi = fit_multitask(data, replace(cfg, base=base), out=out, console=console)
    single: dict[str, dict[str, float]] = {}
    for task in data.tasks:
        if console:
            console.rule(f"single-task: {task} (seed {seed})")
        with PeakMemory(resolve_device(base.device)) as memory:
            result = fit(data.single_task(task), base, console=console)
        single[task] = {
            "accuracy": result.metrics["val"]["accuracy"],
            "macro_f1": result.metrics["val"]["macro_f1"],
            "seconds": result.seconds,
            "params": count_params(result.model.model),
            "peak_memory_bytes": memory.peak,
        }
    return {
        "seed": seed,
        "multi_task": {
            "per_task": multi.metrics, "seconds": multi.seconds, "params": multi.total_params,
            "peak_memory_bytes": multi.peak_memory_bytes, "task_weights": multi.task_weights,
        },
        "single_task": {
            "per_task": single,
            "seconds": sum(s["seconds"] for s in single.values()),
            "params": sum(int(s["params"]) for s in single.values()),
            "peak_memory_bytes": max(int(s["peak_memory_bytes"]) for s in single.values()),
        },
    }  # fmt: skip


def print_versus(console: Console, table_data: dict[str, Any]) -> None:
    from rich.table import Table

    multi, single = table_data["multi_task"], table_data["single_task"]
    seeds = table_data["seeds"]
    table = Table(
        f"mean ± sd over {seeds} seed(s)", "multi-task (1 model)", f"single-task ({len(table_data['tasks'])} models)"
    )
    for task in table_data["tasks"]:
        m, s = multi["per_task"][task], single["per_task"][task]
        for metric, label in (("accuracy", "val accuracy"), ("macro_f1", "macro-F1")):
            table.add_row(
                f"{task}: {label}",
                f"{m[f'{metric}_mean']:.4f} ± {m[f'{metric}_sd']:.4f}",
                f"{s[f'{metric}_mean']:.4f} ± {s[f'{metric}_sd']:.4f}",
            )
    table.add_row("parameters (all models)", f"{multi['params']:,}", f"{single['params']:,}")
    table.add_row("training time per seed (all models)", f"{multi['seconds']:.1f} s", f"{single['seconds']:.1f} s")
    table.add_row(
        "peak memory (process RSS)", f"{multi['peak_memory_bytes'] / 2**20:,.0f} MiB",
        f"{single['peak_memory_bytes'] / 2**20:,.0f} MiB (largest run)",
    )  # fmt: skip
    console.print(table)
