"""``transferkit explain``: what a saved model looked at (transferkit.explain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from transferkit.cli.app import Json, app, emit_json, existing, out

Opt = typer.Option


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit` (or auto's OUT/best).")],
    inputs: Annotated[list[Path], typer.Argument(help="Files or folders of them (text models: also the texts).")],
    out_dir: Annotated[Path, Opt("--out", "-o", help="A new folder for the overlays and explain.json.")] = Path(
        "runs/explain"
    ),
    method: Annotated[
        str,
        Opt(
            help="Images: gradcam, scorecam (gradient-free), eigencam (gradient-free, class-agnostic); "
            "comma-separated for several side by side. Text: integrated gradients; audio: gradient × input."
        ),
    ] = "gradcam",
    as_json: Json = False,
) -> None:
    """Class-activation overlays (images), token attributions (text) or the spectrogram's (audio)."""
    from transferkit.explain import explain as run_explain

    existing(run_dir, "run directory")
    methods = tuple(m.strip() for m in method.split(",") if m.strip())
    result = run_explain(run_dir, [str(p) for p in inputs], out_dir, methods)
    if as_json:
        emit_json(result)
        return
    for row in result["items"]:
        out.print(
            f"{row['input']}: {row['predicted']} ({row['probability']:.3f}) → {row['file']}",
            highlight=False,
            markup=False,
        )
    out.print(
        f"explanations in {out_dir} ({', '.join(result['methods'])}); explain.json lists them",
        highlight=False,
        markup=False,
    )
