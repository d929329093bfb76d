"""A name → object registry, shared by backbones and strategies."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from transferkit.errors import TransferkitError, unknown_name_message


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Entries keyed by their explicit ``name``; an unknown name lists close matches.

    ``builtins`` names the module that registers the built-in entries; it is imported on the
    first lookup, so ``import transferkit`` alone finds them and nobody imports a module only
    for its side effects.
    """

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None  # first: the module registers through us
            importlib.import_module(module)

    def register(self, entry: T) -> T:
        self._load()  # a clash with a built-in name is reported now, not at some later lookup
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise TransferkitError(
                unknown_name_message(self.kind, name, self._entries, "see `transferkit list`")
            ) from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))
