"""``transferkit auto``: data → a shipped model within a time budget (see :mod:`.search`)."""

from typing import Any

__all__ = ["auto"]


def __getattr__(name: str) -> Any:  # loaded on first use: the command line reads `auto.config` alone
    if name != "auto":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transferkit.auto.ship import auto

    return auto
