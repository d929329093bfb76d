"""A name → object registry, shared by backbones and strategies."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from transferkit.errors import TransferkitError, unknown_name_message

PLUGINS = "TRANSFERKIT_PLUGINS"  # comma-separated modules that register parts (like PYTEST_PLUGINS)
_plugins: list[str] | None = None  # the modules imported so far; None: not yet


def load_plugins() -> None:
    """Import the modules ``$TRANSFERKIT_PLUGINS`` names, once per process, before the first
    lookup: a strategy or backbone registered in a user's module then exists in every process
    transferkit starts for them too (federated clients, DDP workers), which inherit the variable."""
    global _plugins
    if _plugins is not None:
        return
    _plugins = [m.strip() for m in os.environ.get(PLUGINS, "").split(",") if m.strip()]
    for module in _plugins:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure of the user's module (RecursionError too): one line
            _plugins = None  # and again at the next lookup: never carry on half-loaded
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise TransferkitError(
                f"${PLUGINS} names {module[:100]!r}, which failed to load ({type(exc).__name__}: {first})"
            ) from None


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

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None  # first: the module registers through us
            importlib.import_module(module)

    def _load(self) -> None:
        self._load_builtins()
        load_plugins()  # at the first lookup, not at a registration: a plugin imports the registering module

    def register(self, entry: T) -> T:
        self._load_builtins()  # a clash with a built-in name is reported now, not at some later lookup
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

    def unregister(self, name: str) -> T:
        """Take an entry out again (a test's, or a plugin's being replaced)."""
        self._load()
        return self._entries.pop(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))
