"""The LR range test's plot: smoothed training loss against the learning rate, per phase."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit.ownership import PNG_SOFTWARE
from transferkit.paths import atomic_write


def plot_sweeps(sweeps: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per phase (log LR axis), the suggested LR marked; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 3.6), squeeze=False)
    for axis, sweep in zip(axes[0], sweeps, strict=True):
        axis.plot(sweep["lrs"], sweep["losses"])
        axis.set_xscale("log")
        axis.set_xlabel("head learning rate (other groups scaled alike)")
        axis.set_ylabel("smoothed training loss")
        title = f"phase {sweep['phase']}"
        if sweep["suggestion"] is not None:
            axis.axvline(sweep["suggestion"], color="tab:red", linestyle="--")
            title += f": suggested {sweep['suggestion']:.2g}"
        axis.set_title(title)
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)


def save_png(figure: Any, path: Path) -> None:
    """Through a temporary sibling, renamed into place, marked as transferkit's (so a rerun may
    replace it and nothing else is ever overwritten)."""
    atomic_write(
        path, lambda tmp: figure.savefig(tmp, dpi=110, format="png", metadata={"Software": PNG_SOFTWARE}), suffix=".png"
    )
