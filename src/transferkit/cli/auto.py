"""``transferkit auto``: data → a shipped model within a time budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from transferkit.auto.config import AutoConfig
from transferkit.cli.app import Json, Quiet, app, emit_json, err, existing, out, speaker
from transferkit.cli.options import config_options, given
from transferkit.cli.train import ConfigFile, Data

Opt = typer.Option
EXIT_RESUMABLE = 3  # docs/scripting.md: interrupted, the work so far kept for a rerun (as `fit`, `compare`)


@app.command()
@config_options(AutoConfig)
def auto(
    data: Data,
    out_dir: Annotated[Path, Opt("--out", "-o", help="Search folder (rerun with it to continue).")] = Path("runs/auto"),
    as_json: Json = False,
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Rank, search and ship within --budget: the best model in OUT/best, the trail in OUT/report.html."""
    from transferkit.config import load_yaml  # the YAML's keys are auto's options; the command line wins

    cfg = AutoConfig.from_dict({**_keys(load_yaml(config_file) if config_file else {}), **given(options)})
    existing(data)
    from transferkit.auto import auto as run_auto
    from transferkit.auto.clock import process_started

    # the user waits from the moment they pressed enter: the imports count against the budget
    try:
        result = run_auto(data, cfg, out=out_dir, console=speaker(as_json, quiet), started=process_started())
    except BaseException as exc:
        _interrupted(exc, out_dir)
        raise
    if as_json:
        emit_json({"out": str(out_dir), **{k: v for k, v in result.items() if k != "held_out"},
                   "held_out": {k: result["held_out"][k] for k in ("accuracy", "low", "high", "items")}})  # fmt: skip
        return
    held = result["held_out"]
    out.print(
        f"[bold green]held-out accuracy {held['accuracy']:.4f} (95% CI {held['low']:.3f}–{held['high']:.3f}, "
        f"{held['items']} items)[/] · {result['label']} in {result['seconds']:.0f}s",
        soft_wrap=True,
    )
    best = Path(result["model"])
    onnx = next((r["file"] for r in result["exports"] if r["format"] == "ONNX fp32"), None)
    out.print(f"  model: {best}  ·  report: {out_dir / 'report.html'}", soft_wrap=True, highlight=False, markup=False)
    out.print(f"  serve it: transferkit serve {onnx or best}", soft_wrap=True, highlight=False, markup=False)


def _keys(values: dict[str, Any]) -> dict[str, Any]:
    """YAML may spell an option as on the command line (``max-latency-ms``) or as in Python."""
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _interrupted(exc: BaseException, out_dir: Path) -> None:
    """Ctrl-C or SIGTERM once the search has begun: ``OUT/auto.json`` (and ``OUT/best`` after the
    first probe) are kept and a rerun continues, so say how and exit 3; before that, nothing is
    kept and the interrupt goes on to end the command as any other (130)."""
    from transferkit.auto.trail import AUTO_FILE
    from transferkit.cli import Interrupted  # here: the package imports this module first

    if not isinstance(exc, Interrupted | KeyboardInterrupt) or not (out_dir / AUTO_FILE).is_file():
        return
    best = out_dir / "best"
    kept = f"{best} holds the best model so far; " if best.is_dir() else ""
    err.print(f"interrupted; {kept}rerun the same command to continue the search in {out_dir}",
              soft_wrap=True, highlight=False, markup=False)  # fmt: skip
    raise typer.Exit(EXIT_RESUMABLE) from None
