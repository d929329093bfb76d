"""The Typer app, its consoles and the option helper every command uses.

Commands take their config options from ``transferkit.cli.options.config_options``;
``fit_option(name)`` is the single-option form of it (help and bounds from the config).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from transferkit.config import help_of
from transferkit.errors import DataError

app = typer.Typer(
    help="Transfer learning and fine-tuning of pre-trained networks on your own data (images, text, audio).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: …]" literally; rich markup would eat it
)
# Piped into a log, rich would squeeze tables to 80 columns; logs are read wide.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


# Output modes every result-printing command takes: one JSON object on stdout, or quiet.
Json = Annotated[bool, typer.Option("--json", help="Print one JSON result object on stdout; progress goes to stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or per-epoch lines: the result only.")]


def speaker(as_json: bool, quiet: bool) -> Console | None:
    """Where the library reports progress: nowhere with --quiet, stderr with --json (stdout
    carries only the JSON object, so ``transferkit fit … --json | jq`` works)."""
    if quiet:
        return None
    return err if as_json else out


def emit_json(result: Any) -> None:
    """The one JSON object of a command's result, on stdout."""
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fit_option(name: str, *flags: str) -> Any:
    """A ``fit`` option: help and default from the config field ``name`` (value None = unset)."""
    return typer.Option(*flags, help=help_of(name), show_default=False)


def names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def existing(path: Path, what: str = "data path") -> Path:
    """Refuse a path that does not exist before any library (torch) is loaded: a mistyped
    folder is answered in a second, not after the imports a run needs."""
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
    return path
