"""``transferkit lr-find``: the learning-rate range test on the user's data, with a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from transferkit import config
from transferkit.cli.app import Json, Quiet, app, emit_json, existing, out, speaker
from transferkit.cli.options import config_options
from transferkit.config import FitConfig

Opt = typer.Option


@app.command("lr-find")
@config_options(FitConfig)
def lr_find(
    data: Annotated[Path, typer.Argument(help="The data, as for `fit`.")],
    plot: Annotated[Path, Opt(help="Where to write the loss-vs-LR plot (PNG).")] = Path("lr_find.png"),
    steps: Annotated[int, Opt(help="Optimiser steps per phase's sweep.", min=10, max=100_000)] = 100,
    config_file: Annotated[Path | None, Opt("--config", help="YAML file of `fit` options.")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Sweep the learning rate over each training phase of --strategy; suggest --lr / --backbone-lr."""
    cfg = config.resolve(config_file, **(options or {}))
    existing(data)
    from transferkit.ownership import check_output_file, is_transferkit_png

    check_output_file(plot, "--plot", is_transferkit_png)  # never over a picture of the user's
    from transferkit.reports.lr_find import plot_sweeps
    from transferkit.workflows.lr_find import lr_find as sweep
    from transferkit.workflows.lr_find import suggested_options

    sweeps = sweep(data, cfg, steps=steps, console=speaker(as_json, quiet))
    suggested = suggested_options(sweeps, cfg)
    plot_sweeps([s.to_dict() for s in sweeps], plot)
    if as_json:
        emit_json({"sweeps": [s.to_dict() for s in sweeps], "suggested_options": suggested, "plot": str(plot)})
        return
    for s in sweeps:
        found = f"suggested {s.suggestion:.2g} ({s.factor:.2g}× the configured rates)" if s.suggestion else (
            "the loss never fell: try a lower --lr or more --steps"
        )  # fmt: skip
        out.print(f"phase {s.phase}: head LR {s.head_lr:g}, backbone {s.backbone_lr:g} → {found}")
    if suggested:
        flags = " ".join(f"--{k.replace('_', '-')} {v:.2g}" for k, v in suggested.items())
        out.print(f"try: transferkit fit {data} --strategy {cfg.strategy} {flags}", markup=False)
    out.print(f"plot: {plot}", markup=False)
