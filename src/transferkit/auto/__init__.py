"""``transferkit auto``: data → a shipped model within a time budget (see :mod:`.search`)."""

from transferkit.auto.ship import auto

__all__ = ["auto"]
