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
from rich.text import Text

from transferkit.allocator import keep_freed_memory
from transferkit.cli.app import app, err
from transferkit.errors import DiskFullError, TransferkitError
from transferkit.registry import load_plugins

try:  # $TRANSFERKIT_PLUGINS, before the commands' options ask the registries (at import): one line, exit 2
    load_plugins()
except TransferkitError as _exc:
    err.print(Text.assemble(("error:", "red"), " ", str(_exc)), soft_wrap=True)
    sys.exit(2)

from transferkit.cli import auto, deploy, explain, federated, info, lr_find, system, train  # noqa: F401  (registers the commands)

__all__ = ["EXIT_RESUMABLE", "app", "main"]

# Exit codes (docs/scripting.md): 0 done, 1 a bug (a traceback) or a full disk, 2 a user
# mistake (one line on stderr), 3 interrupted with the work so far kept for a rerun, 130
# interrupted with nothing to resume.
EXIT_RESUMABLE = 3
RESUMABLE = {
    "fit": "finished epochs are checkpointed: rerun the same command with --resume",
    "fit-multitask": "finished epochs are checkpointed: rerun the same command with --resume",
    "compare": "finished runs are kept: rerun the same command to continue",
}


def _command() -> str | None:
    """The subcommand being run (the first argument that is not an option)."""
    return next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)


def _error(message: str) -> None:
    """``error: message`` on stderr as one line: the message is text, never markup (a path with
    ``[old]`` in it stays whole), and never wrapped at the console's width (stderr that is not a
    terminal is 80 columns to rich)."""
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def _format_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"warning: {message}\n"


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. Not a KeyboardInterrupt: Typer turns that into a silent exit 130
    before ``main`` could say what was kept and how to continue."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted


def _interrupted() -> None:
    hint = RESUMABLE.get(_command() or "")
    if hint is None:
        err.print("interrupted")
        sys.exit(130)
    err.print(f"interrupted; {hint}", soft_wrap=True)
    sys.exit(EXIT_RESUMABLE)


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
    keep_freed_memory()  # every CPU forward (features, validation, predict) 1.7-2x faster: transferkit.allocator
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: end like Ctrl-C, checkpoint kept
    try:
        code = app(standalone_mode=False)
        if code == 130:  # a KeyboardInterrupt raised by code itself, turned into 130 by Typer
            _interrupted()
    except TransferkitError as exc:
        _error(str(exc))
        sys.exit(1 if isinstance(exc, DiskFullError) else 2)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _error(f"disk full ({exc.filename or exc}); files already written are intact")
            sys.exit(1)
        if exc.filename is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        # a path the user named cannot be written or read: permissions, a file where a folder goes…
        _error(f"{exc.strerror or exc}: {exc.filename}")
        sys.exit(2)
    except RecursionError:  # where every reader meets: only input nested thousands deep (YAML, JSON) gets here
        _error("an input file is nested too deeply to read (a list or mapping thousands of levels down)")
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt, typer.Abort):
        _interrupted()
    except _PARSER_ERRORS as exc:  # bad option, missing argument: the parser's own message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            _error(str(exc))
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)
