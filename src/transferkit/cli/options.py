"""Command-line options generated from the configs that own them, as LightningCLI builds its
parser from signatures.

``@config_options(FitConfig)`` adds one option per field of the config (help, default and
bounds from its :func:`transferkit.params.param`) to a Typer command and hands the command a
mapping of field → value, ``None`` where the user gave nothing, so YAML (``--config``) and the
defaults decide. A command declares by hand only what no config holds (``--out``, ``--json``)
and what it extends (``--lr auto``); a field it declares itself is not generated again.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, TypeVar

import typer

from transferkit.params import help_text, params_of

F = TypeVar("F", bound=Callable[..., Any])

# A field's annotation (as written in the config) → the type the command line parses.
_CLI_TYPES: dict[str, Any] = {
    "int": int | None, "int | None": int | None,
    "float": float | None, "float | None": float | None,
    "str": str | None, "str | None": str | None,
    "int | str | None": str | None,  # --image-size 128 or auto: config.image_side makes the number
    "tuple[str, ...]": str | None,  # names separated by commas (or, with repeat, the option once per name)
    "tuple[float, ...] | None": str | None,  # numbers separated by commas, read by the config that owns them
}  # fmt: skip
_FLAGS = ("bool", "bool | str")  # a switch; the str is "auto", what leaving it unset means


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def generated_fields(cls: Any, exclude: Collection[str] = (), only: Collection[str] | None = None) -> list[str]:
    """The fields of ``cls`` that become options (``exclude``: those another config owns)."""
    return [
        f.name
        for f, p in params_of(cls)
        if p.command_line and f.name not in exclude and (only is None or f.name in only)
    ]


def _parameter(f: Any, p: Any, defaults: Mapping[str, Any]) -> inspect.Parameter:
    help = help_text(f, p, defaults.get(f.name, dataclasses.MISSING))
    if f.type in _FLAGS:
        decl = p.cli or f"{option_name(f.name)}/--no-{f.name.replace('_', '-')}"
        kind: Any = bool | None
    else:
        decl = p.cli or option_name(f.name)
        kind = list[str] | None if p.repeat else _CLI_TYPES[f.type]
    option = typer.Option(decl, help=help, show_default=False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])


def given(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options the user gave (a generated option left out arrives as ``None``)."""
    return {k: v for k, v in (options or {}).items() if v is not None}


def _value(kind: str, value: Any) -> Any:
    if kind == "tuple[str, ...]" and value is not None:
        items = [value] if isinstance(value, str) else value
        return tuple(n.strip() for v in items for n in v.split(",") if n.strip())
    return value


def config_options(
    cls: Any,
    *,
    exclude: Collection[str] = (),
    only: Collection[str] | None = None,
    into: str = "options",
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[F], F]:
    """Add ``cls``'s fields (``only`` these, or all but ``exclude``) as options of the decorated
    command; it receives them as ``into``. ``defaults``: where the command starts from other
    values than the config's (``--help`` shows them)."""

    def decorate(command: F) -> F:
        own = inspect.signature(command, eval_str=True)
        declared = set(own.parameters) - {into}
        names = set(generated_fields(cls, {*exclude, *declared}, only))
        chosen = [(f, p) for f, p in params_of(cls) if f.name in names]
        kinds = {f.name: str(f.type) for f, _ in chosen}

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            options = {name: _value(kinds[name], kwargs.pop(name)) for name in kinds}
            return command(**kwargs, **{into: options})

        mine = [q for q in own.parameters.values() if q.name != into]
        generated = [_parameter(f, p, defaults or {}) for f, p in chosen]
        first_flag = next((i for i, q in enumerate(mine) if q.name in ("as_json", "quiet")), len(mine))
        parameters = [*mine[:first_flag], *generated, *mine[first_flag:]]  # --json / --quiet stay last
        run.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[q.replace(kind=inspect.Parameter.KEYWORD_ONLY) for q in parameters]
        )
        run.__annotations__ = {q.name: q.annotation for q in parameters}
        del run.__wrapped__  # typer reads the signature above, not the command's
        return run  # type: ignore[return-value]

    return decorate
