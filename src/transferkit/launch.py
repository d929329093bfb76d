"""Whether torchrun started this process: read from the environment alone, so the command line
can ask before importing torch."""

from __future__ import annotations

import os

__all__ = ["launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """Under torchrun (which sets TORCHELASTIC_RUN_ID), also with one process: then the process
    group, DDP and the collectives run exactly as with K, which is how one GPU tests NCCL."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
