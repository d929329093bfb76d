"""Constraints on what transferkit reads back: run files, checkpoints, ONNX metadata, messages.

Everything read from disk or the network is untrusted input. Each field is checked against an
inspectable constraint (as scikit-learn's ``_param_validation``: intervals, choices, types)
before any tensor is built, and a violation is one :class:`SchemaError` that names the file,
the field, the value and what was expected — never a traceback, never a 23 GB allocation.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from transferkit.errors import TransferkitError, shown
from transferkit.params import UNPRINTABLE, Constraint

MAX_CLASSES = 100_000
MAX_NAME = 1_000  # characters of one class name


class SchemaError(TransferkitError):
    """A file or message transferkit reads does not have the shape it must have."""

    def __init__(self, where: str, field: str, value: object, expected: str) -> None:
        super().__init__(f"{where}: {field}={shown(value)} is invalid: {expected}")


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) in [low, high]; finite, never a bool."""

    kind: type
    low: float
    high: float

    def check(self, where: str, field: str, value: Any) -> Any:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(value, float):  # never float() of an int: 10**400 would overflow
            ok = math.isfinite(value) and (self.kind is float or value.is_integer())
        if not ok or not self.low <= value <= self.high:  # int and float compare exactly, any size
            raise SchemaError(where, field, value, f"expected {self.describe()}")
        return self.kind(value)

    def describe(self) -> str:
        return f"{'a whole number' if self.kind is int else 'a number'} in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def check(self, where: str, field: str, value: Any) -> str:
        if value not in self.choices:
            raise SchemaError(where, field, value, f"expected {self.describe()}")
        return str(value)

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}"


def check_mapping(where: str, field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(where, field, type(value).__name__, "expected a JSON object")
    return value


def check_fields(where: str, values: Any, constraints: Mapping[str, Interval | OneOf | Constraint]) -> dict[str, Any]:
    """Every field of ``constraints`` present in ``values`` and valid; the checked values."""
    values = check_mapping(where, "(the whole)", values)
    out: dict[str, Any] = {}
    for name, constraint in constraints.items():
        if name not in values:
            raise SchemaError(where, name, "(missing)", f"expected {constraint.describe()}")
        value = values[name]
        if isinstance(constraint, Constraint):  # an option's own declaration, read back from a file
            if not constraint.ok(value):
                raise SchemaError(where, name, value, f"expected {constraint.describe()}")
            out[name] = value
        else:
            out[name] = constraint.check(where, name, value)
    return out


def check_floats(where: str, field: str, value: Any, length: int, low: float, high: float) -> tuple[float, ...]:
    """A list of ``length`` finite numbers in [low, high] (e.g. a normalisation mean)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length:
        raise SchemaError(where, field, value, f"expected a list of {length} numbers")
    return tuple(Interval(float, low, high).check(where, f"{field}[{i}]", v) for i, v in enumerate(value))


def check_names(where: str, field: str, value: Any, at_least: int = 1) -> list[str]:
    """Class (or task) names: unique, non-empty strings without control characters."""
    if not isinstance(value, list) or not at_least <= len(value) <= MAX_CLASSES:
        raise SchemaError(where, field, value, f"expected a list of {at_least} to {MAX_CLASSES:,} names")
    for i, name in enumerate(value):  # the item's place is named: `classes=0` read as the whole list
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or _CONTROL.search(name):
            expected = f"each name must be a non-empty string of at most {MAX_NAME} characters"
            raise SchemaError(where, f"{field}[{i}]", name, expected)
        if any(unicodedata.category(c) == "Cf" for c in name):  # zero-width, right-to-left override…
            raise SchemaError(where, f"{field}[{i}]", name, "a name must not hold invisible formatting characters")
    # 'é' composed and decomposed print alike: two classes no reader could tell apart
    places: dict[str, list[int]] = {}
    for i, name in enumerate(value):
        places.setdefault(unicodedata.normalize("NFC", name), []).append(i)
    twice = [at for at in places.values() if len(at) > 1]
    if twice:  # each repeated name once, with its count: ten 'a's are not "classes=['a']"
        alike = " (spelt differently, printed alike)"  # same text once normalised: by Unicode form alone
        said = [
            f"{shown(value[at[0]], 40)} appears {len(at)} times" + alike * (len({value[i] for i in at}) > 1)
            for at in twice[:3]
        ]
        more = f"; and {len(twice) - 3:,} more" if len(twice) > 3 else ""
        first = twice[0][1]
        raise SchemaError(where, f"{field}[{first}]", value[first], f"names must be unique: {'; '.join(said)}{more}")
    return list(value)


_CONTROL = UNPRINTABLE  # params' one pattern: names and paths read back are options' kind of text
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def _in_hub_cache(ident: str) -> bool:
    """Whether a hub model's config is in this machine's Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id=ident, filename="config.json"), str)


def check_stored_name(where: str, field: str, name: Any, registered: Sequence[str], hub_ids: bool) -> str:
    """A backbone name read from a file or a message: a registered name, a plain model name
    (timm's, which names code, not files) or, with ``hub_ids``, ``prefix:<hub id>`` — never a
    path, so a run file or a server cannot make this machine open a folder it names (``hf:/etc``).
    Messages from a federated server pass ``hub_ids=False``: the server never picks what a client
    downloads or opens; a hub id in a file is accepted only when the model is already in this
    machine's cache (the run was made here, or the user fetched it), never downloaded."""
    if not isinstance(name, str) or not name or len(name) > 200 or _CONTROL.search(name):
        raise SchemaError(where, field, name, "expected a backbone name")
    if name in registered:
        return name
    _, sep, rest = name.partition(":")
    if sep and not hub_ids:
        raise SchemaError(
            where, field, name, "a hub id is not accepted here: only registered backbones and model names"
        )
    ident = rest if sep else name
    looks_like_path = ".." in ident or ident.startswith(("/", "~", ".")) or "\\" in ident or (not sep and "/" in ident)
    # A hub loader opens a local folder of that name first: an id that exists here is a path.
    if looks_like_path or not _HUB_ID.fullmatch(ident) or (sep and Path(ident).expanduser().exists()):
        raise SchemaError(
            where, field, name, "a file may name a registered backbone, a timm model or a hub id, never a local path"
        )
    if sep and not _in_hub_cache(ident):
        raise SchemaError(
            where,
            field,
            name,
            "is not on this machine, and a run file never makes transferkit download: fetch it "
            f"yourself (huggingface-cli download {ident}) if you trust whoever sent the file",
        )
    return name


def inside(folder: Path, name: Any, where: str | None = None, field: str = "file") -> Path:
    """The file ``name`` (read from a run or comparison file, or made from one) names in
    ``folder``, resolved: a relative name below ``folder`` — never absolute, never through ``..``,
    never through a link that leads out of it. A folder received from someone else must not make
    this machine read (and embed, or train on) the recipient's own files."""
    where = where or str(folder)
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or _CONTROL.search(name):
        raise SchemaError(where, field, name, f"expected the name of a file inside {folder}")
    # Either separator: a name written on Windows and read here is still checked part by part.
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (
        not parts
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).anchor
        or name.startswith("~")
        or ".." in parts
    ):
        raise SchemaError(where, field, name, f"a stored name must be relative to {folder}, without '..'")
    try:
        root, path = folder.resolve(), (folder / name).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop (RuntimeError before Python 3.13)
        raise SchemaError(where, field, name, f"cannot be resolved inside {folder} ({exc})") from None
    if not path.is_relative_to(root):
        raise SchemaError(where, field, name, f"leads out of {folder} through a link")
    return path


MAX_JSON_BYTES = 64 << 20  # a run or comparison file of transferkit's is far smaller


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file transferkit wrote and someone may have edited or replaced:
    bounded in size, an object at the top, and any failure one :class:`SchemaError`."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise SchemaError(str(path), "(the whole)", f"{path.stat().st_size:,} bytes", "expected a small JSON file")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, nested too deep
        raise SchemaError(str(path), "(the whole)", type(exc).__name__, "expected a readable JSON object") from None
    return dict(check_mapping(str(path), "(the whole)", value))


def check_numbers(where: str, field: str, value: Any, depth: int = 4) -> None:
    """A small tree of figures (a run's stored metrics): objects and lists at most ``depth``
    deep and 10,000 wide, every number finite and within ±1e15 — an accuracy of inf or 7e300 is
    not shown as if it were measured."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        if (isinstance(value, float) and not math.isfinite(value)) or not -1e15 <= value <= 1e15:
            raise SchemaError(where, field, value, "expected a finite figure")
        return
    items = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else None
    )
    if items is None or depth == 0 or len(items) > 10_000:
        raise SchemaError(where, field, type(value).__name__, "expected a small tree of figures")
    for key, item in items:
        check_numbers(where, f"{field}.{key}", item, depth - 1)
