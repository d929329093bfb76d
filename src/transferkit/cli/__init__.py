"""The ``transferkit`` command: parse options, build a config, call the library, print.

User mistakes (:class:`TransferkitError`) print one line on stderr and exit with code 2.
Each command module registers its commands on the one Typer app.
"""

from __future__ import annotations

import errno
import signal
import sys
import warnings

import typer

from transferkit.cli import federated, info, train  # noqa: F401  (registers the commands)
from transferkit.cli.app import app, err
from transferkit.errors import TransferkitError

__all__ = ["app", "main"]


def _format_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"warning: {message}\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser_errors() -> tuple[type[Exception], ...]:
    """The parser's usage errors: click's (typer < 0.21, which Flower pins) and typer's own (later
    typers vendor click and may not install it)."""
    found: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


_PARSER_ERRORS = _parser_errors()


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    warnings.formatwarning = _format_warning  # documented hook: one plain line per warning
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: end like Ctrl-C, checkpoint kept
    try:
        code = app(standalone_mode=False)
    except TransferkitError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        err.print(
            f"[red]error:[/] disk full ({exc.filename or exc}); files already written are intact", highlight=False
        )
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted; finished epochs are checkpointed: rerun the same command with --resume")
        sys.exit(130)
    except _PARSER_ERRORS as exc:  # bad option, missing argument: the parser's own message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)
