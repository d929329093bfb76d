"""The tuned glibc malloc (transferkit.allocator): on by default on Linux, off on request."""

from __future__ import annotations

import sys

import pytest


def test_the_allocator_can_be_left_at_glibcs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from transferkit import allocator

    monkeypatch.setitem(allocator._state, "tuned", False)
    monkeypatch.setenv(allocator.ENV, "default")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv(allocator.ENV)
    assert allocator.keep_freed_memory() is sys.platform.startswith("linux")
