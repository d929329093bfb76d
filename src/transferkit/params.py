"""Options as inspectable objects: help, constraints and command-line form in one place.

A config is a frozen dataclass whose fields are made with :func:`param`; one validator
(:func:`validate`) checks every field against its annotation and its constraints, as
scikit-learn's ``utils/_param_validation`` does with ``Interval`` and ``StrOptions``. The
same objects print the bounds in ``--help`` (:func:`help_text`), build the command-line
options (``transferkit.cli.options``) and generate invalid values for the tests
(:meth:`Constraint.invalid`), so a bound is written once.

Every number has an upper bound as well as a lower one, and the same constraint objects check a
value wherever it enters: the command line and YAML (through the config's validator), a run's
``config.json`` and ONNX metadata (:func:`check_stored`, :func:`transferkit.schema.check_fields`)
and a federated server's message (the client builds its config through the same validator).
``tests/test_bounds.py`` walks every declared option through every door.
"""

from __future__ import annotations

import dataclasses
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from transferkit.errors import ConfigError, shown

INF = math.inf
MAX_TEXT = 4_096  # characters of any string option: a name, a path, a column
MAX_ITEMS = 256  # items of any list option (backbones, strategies, loggers)
# control characters and lone surrogates (which cannot even be printed back or encoded as a path);
# schema's names and stored paths are held to the same pattern
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class Constraint(ABC):
    """One way a value may be valid. A field holds if any of its constraints does."""

    @abstractmethod
    def ok(self, value: Any) -> bool: ...

    @abstractmethod
    def describe(self) -> str:
        """The bound as ``--help`` shows it: ``≥ 1``, ``in (0, 1]``, ``auto``."""

    @abstractmethod
    def invalid(self) -> list[Any]:
        """Values of the right type that this constraint refuses (the tests feed them)."""


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Interval(Constraint):
    """A number in [low, high], each end closed or open; ``kind`` int also demands a whole number."""

    kind: type
    low: float = -INF
    high: float = INF
    closed: str = "both"  # both, left, right or neither
    fix: str | None = None  # the message a field bounded by this alone names, when not "must be ≥ 1"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # an int is finite (and may not fit a float)
            return False
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        return above and below

    def describe(self) -> str:
        if self.high == INF:
            return f"{'≥' if self.closed in ('both', 'left') else '>'} {_number(self.low)}"
        if self.low == -INF:
            return f"{'≤' if self.closed in ('both', 'right') else '<'} {_number(self.high)}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"

    def invalid(self) -> list[Any]:
        step = 1 if self.kind is int else 1e-3
        out: list[Any] = []
        if self.low != -INF:
            out.append(self.kind(self.low) if self.closed in ("right", "neither") else self.kind(self.low - step))
        if self.high != INF:
            out.append(self.kind(self.high) if self.closed in ("left", "neither") else self.kind(self.high + step))
        if self.kind is float:
            out += [math.nan, 1e300, -1e300]
        else:  # past any machine word: a seed of 2**70, a width of a googol
            out += [2**70, -(2**70)]
        return [v for v in out if not self.ok(v)]


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set, or of a registry's names (``choices`` a function, read when checked)."""

    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]]

    def values(self) -> tuple[Any, ...]:
        return self.choices() if callable(self.choices) else self.choices

    def ok(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.values())

    def describe(self) -> str:
        return " | ".join(str(c) for c in self.values())

    def invalid(self) -> list[Any]:
        return ["not-a-choice"] if any(isinstance(c, str) for c in self.values()) else []


@dataclass(frozen=True)
class Check(Constraint):
    """A predicate the types above cannot say (a file that exists), with values it refuses."""

    predicate: Callable[[Any], bool]
    description: str
    refused: tuple[Any, ...] = ()
    local: bool = False  # true of this machine only (a file exists here): not checked in a stored run

    def ok(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.description

    def invalid(self) -> list[Any]:
        return list(self.refused)


@dataclass(frozen=True)
class Param:
    """What a config field means to a user: help, constraints, the fix an error names, its flag."""

    help: str
    constraints: tuple[Constraint, ...] = ()
    fix: str | None = None
    cli: str | None = None  # the option's spelling when it is not --field-name (e.g. "--strict")
    command_line: bool = True  # False: YAML and Python only
    repeat: bool = False  # a list option given once per item (--backbone a --backbone b), else comma-separated

    def problem(self, value: Any) -> str | None:
        if not self.constraints or any(c.ok(value) for c in self.constraints):
            return None
        if self.fix:
            return self.fix
        if len(self.constraints) == 1 and isinstance(self.constraints[0], Interval) and self.constraints[0].fix:
            return self.constraints[0].fix
        if len(self.constraints) == 1 and isinstance(self.constraints[0], Options):
            return "choose one of " + ", ".join(str(c) for c in self.constraints[0].values())
        return "must be " + " or ".join(c.describe() for c in self.constraints)

    def invalid(self) -> list[Any]:
        return [v for c in self.constraints for v in c.invalid() if self.problem(v)]


# The bounds most fields share. Each is closed above too: a value from a command line, a YAML
# file or another party must never size an allocation, a process count or a loop by itself.
def whole(high: int, low: int = 1) -> Interval:
    """A whole number in [low, high], with the fix that says both ends."""
    return Interval(int, low, high, fix=f"must be a whole number from {low:,} to {high:,}")


def positive(high: float) -> Interval:
    """A number in (0, high]."""
    return Interval(float, 0, high, closed="right", fix=f"must be a positive number up to {_number(high)}, e.g. 1e-3")


WHOLE = whole(10_000)  # epochs, rounds, seeds per strategy…: no run needs more
POSITIVE = positive(1e6)
SEED = whole(2**32 - 1, low=0)  # what numpy's and torch's generators accept
BATCH = whole(65_536)  # items per batch (a probe on cached features takes large ones)


def param(default: Any, help: str, *constraints: Constraint, fix: str | None = None, **form: Any) -> Any:
    """A config field: its default and its :class:`Param` (``default_factory`` for containers)."""
    meta = {"param": Param(help, constraints, fix, **form)}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def owned(cls: Any, name: str) -> Any:
    """A run config's field declared by the part that owns it (a modality's or a strategy's
    options class): the same default and :class:`Param`, and the owner's name beside them."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, metadata={**f.metadata, "owner": cls.__name__})


def as_tuples(cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each list-valued field of ``cls`` as a tuple: YAML and JSON give lists,
    the command line and a YAML scalar a comma-separated string."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if str(f.type).startswith("tuple[") and isinstance(value, str):
            out[f.name] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif str(f.type).startswith("tuple[") and isinstance(value, list):
            out[f.name] = tuple(value)
    return out


def params_of(cls: Any) -> Iterator[tuple[dataclasses.Field[Any], Param]]:
    """Each field of a config class made with :func:`param`, with its description."""
    for f in dataclasses.fields(cls):
        if "param" in f.metadata:
            yield f, f.metadata["param"]


def help_text(f: dataclasses.Field[Any], p: Param, default: Any = dataclasses.MISSING) -> str:
    """``--help``'s line: the help, the default (unless the help states it; ``default`` when a
    command starts from another) and the bounds."""
    parts = []
    value = f.default if default is dataclasses.MISSING else default
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    if default is None:
        shown = "none"
    if "[default:" not in p.help and not isinstance(shown, bool) and shown not in (None, "", dataclasses.MISSING):
        parts.append(f"default: {shown}")
    switch = any(isinstance(v, bool) for c in p.constraints if isinstance(c, Options) for v in c.values())
    bounds = "" if switch else " or ".join(c.describe() for c in p.constraints)  # a switch shows its --no- form
    if bounds:
        parts.append(bounds)
    return p.help + (f" [{'; '.join(parts)}]" if parts else "") + "."


_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "tuple[str, ...]": ("a list of names", lambda v: isinstance(v, tuple) and all(isinstance(s, str) for s in v)),
    "tuple[float, ...]": (
        "a list of numbers",
        lambda v: isinstance(v, tuple) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v),
    ),
}


def problem_of(f: dataclasses.Field[Any], p: Param, value: Any, stored: bool = False) -> str | None:
    """What is wrong with ``value`` for field ``f``: its type, its length, its constraints;
    ``stored``: a value read from a run file, where checks true of this machine only are skipped."""
    kinds = [k.strip() for k in str(f.type).split("|")]
    if value is None and "None" in kinds:
        return None
    checks = [_TYPES[k] for k in kinds if k in _TYPES]
    if checks and not any(check(value) for _, check in checks):
        return "must be " + " or ".join(name for name, _ in checks) + (" or null" if "None" in kinds else "")
    texts = (
        [value]
        if isinstance(value, str)
        else [t for t in value if isinstance(t, str)]
        if isinstance(value, tuple)
        else []
    )
    if isinstance(value, tuple) and len(value) > MAX_ITEMS:
        return f"must be at most {MAX_ITEMS} names"
    if any(len(t) > MAX_TEXT for t in texts):
        return f"must be at most {MAX_TEXT:,} characters"
    if any(UNPRINTABLE.search(t) for t in texts):
        return "must be printable text (no control characters or lone surrogates)"
    if stored and any(isinstance(c, Check) and c.local for c in p.constraints):
        return None
    return p.problem(value)


def validate(obj: Any) -> None:
    """Every :func:`param` field of ``obj`` against its annotation, then its constraints."""
    for f, p in params_of(obj):
        value = getattr(obj, f.name)
        problem = problem_of(f, p, value)
        if problem:
            raise ConfigError(f.name, value, problem)


def check_stored(cls: Any, values: Any, where: str) -> None:
    """A config a run file or a message carries (``config.json``'s ``fit_config``, an export's),
    each field it holds against the same declaration as the command line; an unknown key is
    refused. Only checks true of this machine alone (a weights file that exists) are skipped."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}", shown(values, 40), "must be a JSON object of options")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"{where}.{shown(unknown[0], 40)}", values[unknown[0]], "is not an option of this version")
    for f, p in params_of(cls):
        if f.name in values:
            problem = problem_of(f, p, as_tuples(cls, {f.name: values[f.name]})[f.name], stored=True)
            if problem:
                raise ConfigError(f"{where}.{f.name}", values[f.name], problem)
