"""The federated report: per-round accuracy and bytes, as Markdown and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferkit.paths import atomic_write


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def report_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    base = cfg["base"]
    lines = [
        f"# Federated vs centralised: {base['strategy']} on {base['backbone']}",
        "",
        f"{cfg['clients']} clients, {cfg['rounds']} rounds × {cfg['local_epochs']} local epoch(s), "
        f"{cfg['aggregator']}; Dirichlet alpha {cfg['alpha']} for the non-IID split. Centralised: `fit` on the "
        f"pooled training images for {cfg['rounds'] * cfg['local_epochs']} epochs. Accuracy on the same central "
        "validation split.",
        "",
        "| run | final val accuracy | macro-F1 | sent in total | whole model both ways | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for scheme, run in report["runs"].items():
        lines.append(
            f"| federated, {scheme} (images per client {run['client_sizes']}) | {run['final_accuracy']:.4f} | "
            f"{run['final_macro_f1']:.4f} | {_mb(run['bytes_total'])} | {_mb(run['full_model_bytes_total'])} | "
            f"{run['seconds']:.0f} |"
        )
    if "centralised" in report:
        c = report["centralised"]
        lines.append(f"| centralised | {c['accuracy']:.4f} | {c['macro_f1']:.4f} | — | — | {c['seconds']:.0f} |")
    lines += ["", "Accuracy after each round, and what the round sent (all clients, both ways):", ""]
    lines.append("| round | phase | " + " | ".join(report["runs"]) + " | sent (first run) |")
    lines.append("|---|---|" + "---|" * len(report["runs"]) + "---|")
    runs = list(report["runs"].values())
    for i, first in enumerate(runs[0]["rounds"]):
        accs = " | ".join(f"{run['rounds'][i]['accuracy']:.4f}" for run in runs)
        sent = _mb(first["bytes_down"] + first["bytes_up"])
        lines.append(f"| {first['round']} | {first['phase']} | {accs} | {sent} |")
    return "\n".join(lines) + "\n"


def plot_rounds(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme, run in report["runs"].items():
        rounds = [r["round"] for r in run["rounds"]]
        ax.plot(rounds, [r["accuracy"] for r in run["rounds"]], marker="o", label=f"federated, {scheme}")
    if "centralised" in report:
        ax.axhline(report["centralised"]["accuracy"], color="black", linestyle="--", label="centralised")
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    plt.close(fig)
