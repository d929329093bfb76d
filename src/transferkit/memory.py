"""Memory accounting: what a phase should need before it runs, and what a run really took.

The estimate splits a phase's training memory into weights, gradients, optimizer state and
activations, because that is where frozen and trainable layers differ: frozen layers cost
their weights and a passing activation, trainable ones also a gradient, two AdamW moments
and every activation kept for the backward pass.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from transferkit.allocator import release_freed_memory
from transferkit.layers import LayerGroup
from transferkit.strategies import Phase

BYTES_PER_VALUE = 4  # float32 weights, gradients and optimizer state
ADAMW_STATES = 2  # first and second moments per trainable parameter


@dataclass(frozen=True)
class MemoryEstimate:
    phase: str
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


@torch.no_grad()
def activation_sizes(
    backbone: nn.Module, groups: Sequence[LayerGroup], example: torch.Tensor | int
) -> list[tuple[int, int]]:
    """(group index, output values per input) for each leaf module, in forward order.

    ``example`` is one input (``Preprocessing.example()``), or an image side in pixels."""
    if isinstance(example, int):
        example = torch.zeros(1, 3, example, example)
    group_of = {name.rsplit(".", 1)[0]: g.index for g in groups for name in g.param_names}
    sizes: list[tuple[int, int]] = []
    current = [0]

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            current[0] = group_of.get(name, current[0])  # parameter-free layers join the last group seen
            if isinstance(output, torch.Tensor):
                sizes.append((current[0], output.numel()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in backbone.named_modules() if n and not any(m.children())]
    was_training = backbone.training
    try:
        backbone.eval()
        backbone(example.to(next(backbone.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        backbone.train(was_training)
    return sizes


def estimate_phase_memory(
    phase: Phase,
    groups: Sequence[LayerGroup],
    sizes: Sequence[tuple[int, int]],
    total_params: int,
    head_params: int,
    buffers: int,
    batch_size: int,
) -> MemoryEstimate:
    """Bytes a training step of ``phase`` needs, from the backbone's measured layer outputs.

    Activations from the lowest trainable group up are kept for backward; below it only the
    largest input/output pair is alive at once.
    """
    trainable_groups = list(phase.trainable_groups(len(groups)))
    trainable = head_params + sum(groups[i].num_params for i in trainable_groups)
    lowest = min(trainable_groups) if trainable_groups else len(groups)
    if phase.adapters:  # adapters sit in every layer: gradients flow back through the whole backbone
        trainable += sum(g.adapter_params for g in groups)
        lowest = 0
    kept = sum(n for g, n in sizes if g >= lowest)
    passing = 2 * max((n for g, n in sizes if g < lowest), default=0)
    return MemoryEstimate(
        phase=phase.name,
        weights=(total_params + buffers) * BYTES_PER_VALUE,
        gradients=trainable * BYTES_PER_VALUE,
        optimizer=ADAMW_STATES * trainable * BYTES_PER_VALUE,
        activations=(kept + passing) * batch_size * BYTES_PER_VALUE,
    )


def default_memory_limit() -> int:
    """Half of this machine's physical memory: what a job another party sizes (a federated
    server's round) may take here unless the operator says otherwise."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a cautious 4 GiB
        return 4 * 2**30


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class PeakMemory:
    """Peak process RSS (CPU) or peak allocated CUDA memory while the block runs.

    On Linux a thread samples ``/proc/self/statm`` every 20 ms; elsewhere the process's
    lifetime peak from ``getrusage`` stands in, which can only over-state a run's peak.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self.start = 0  # memory in use when the block began: ``growth`` is what the run added
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
        elif _rss_bytes() is not None:
            release_freed_memory()  # the kept heap of an earlier run is not this run's memory
            self.start = _rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
