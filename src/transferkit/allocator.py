"""glibc's malloc, kept from handing big blocks back to the kernel during a CPU forward pass.

A forward pass allocates and frees one large activation tensor per layer. glibc serves blocks
over its (dynamic, at most 32 MiB) threshold with ``mmap`` and returns them with ``munmap``,
so every batch faults its activations in afresh: on 2 cores about 40% of an eager
EfficientNet-Lite0 forward was kernel time. Serving them from the heap and keeping freed
memory (``M_MMAP_MAX`` 0, a 1 GiB trim threshold) makes the same forward 1.7-2.0x faster at
128 and 224 px (``benchmarks/allocator.py``); training steps keep their activations for the
backward pass and neither gain nor lose. The cost: the heap keeps its high-water mark, so
:func:`release_freed_memory` hands it back where a measurement starts (each run's peak memory
in ``compare``) and after a feature extraction.

Torch-free, and a no-op off glibc (macOS, musl) or with ``TRANSFERKIT_MALLOC=default``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys

ENV = "TRANSFERKIT_MALLOC"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters (malloc.h)
_state = {"tuned": False}


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc once for this process (see the module's docstring); whether it is."""
    if _state["tuned"]:
        return True
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "") == "default":
        return False
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 256 * 2**20))
    _state["tuned"] = all(mallopt(option, value) == 1 for option, value in settings)
    return _state["tuned"]


def release_freed_memory() -> None:
    """Give the heap's free memory back to the kernel (glibc's ``malloc_trim``): a peak-memory
    measurement then starts from what is in use, not from an earlier run's high-water mark."""
    if not _state["tuned"]:
        return
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)
