"""Errors a user can cause, and the helper that suggests what they meant.

Anything raised as a :class:`TransferkitError` is a user mistake (a bad value, a missing
folder): the CLI prints its message on stderr and exits non-zero, never a traceback.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

MAX_SHOWN = 100  # characters of a value an error message quotes


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters without building the whole repr first: a YAML
    alias bomb (a list of 9 lists of 9… sharing one object) is small in memory and gigabytes as
    text, and an error message must not be what expands it."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 8, 8, 8, 8
    short.maxstring = short.maxother = short.maxlong = limit
    try:
        text = short.repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit on conversion to text
        text = f"<a whole number of {value.bit_length() if isinstance(value, int) else '?'} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TransferkitError(Exception):
    """A problem with the user's input; the message says what and how to fix it."""


class ConfigError(TransferkitError, ValueError):
    """A configuration value is invalid. The message names the field and the value."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}={shown(value)} is invalid: {fix}")


class DiskFullError(TransferkitError):
    """A write ran out of space; the message names the file and says what survived. Exit 1
    (not a mistake in the command), one line, no traceback."""


class DataError(TransferkitError):
    """The dataset on disk cannot be used as given."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Names from ``candidates`` that look like ``name`` (typos, wrong separators)."""
    pool = list(candidates)
    # Users often type dashes where timm uses underscores and vice versa.
    normalised = {c.replace("-", "_").lower(): c for c in pool}
    hits = difflib.get_close_matches(name.replace("-", "_").lower(), list(normalised), n=n, cutoff=0.6)
    return [normalised[h] for h in hits]


def unknown_name_message(kind: str, name: str, candidates: Iterable[str], listing_hint: str) -> str:
    """'unknown backbone 'x'; did you mean: a, b? (see `transferkit list`)'."""
    matches = close_matches(name, candidates) if len(name) <= MAX_SHOWN else []  # difflib is quadratic
    hint = f"; did you mean: {', '.join(matches)}?" if matches else ""
    return f"unknown {kind} {shown(name)}{hint} ({listing_hint})"
