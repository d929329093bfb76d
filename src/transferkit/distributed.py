"""Multi-process training with torch.distributed: `torchrun --nproc-per-node K -m transferkit fit …`.

Every helper here is a no-op in a single process, so the training loop calls them
unconditionally and reads the same either way. What changes under torchrun:

- ``batch_size`` stays the *global* batch: each of K ranks takes its 1/K share of every
  batch a single process would have drawn (same shuffle, same seed), and DDP averages the
  gradients, so K processes take the same steps as one, up to float rounding;
- validation is sharded and the predictions gathered, so every rank sees the same scores
  (and makes the same early-stopping decision);
- frozen-backbone features are extracted in shards and gathered; the tiny head on them then
  trains on the gathered features in every rank alike;
- only rank 0 prints, writes checkpoints and saves the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Sampler

from transferkit.errors import ConfigError
from transferkit.launch import launched_by_torchrun

T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_as_main() -> bool:
    """Rank 0 as torchrun numbers it, also before the process group is joined."""
    return os.environ.get("RANK", "0") in ("", "0")


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes in the environment; return this rank's device.

    gloo on CPU, nccl on CUDA (one GPU per local rank). Without torchrun, nothing happens.
    """
    if not launched_by_torchrun() or active():
        return _local_device(device) if active() else device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if backend == "nccl":  # metrics and features are gathered as CPU tensors, which NCCL cannot carry
        group = dist.new_group(backend="gloo")
        if isinstance(group, dist.ProcessGroup):  # every rank is a member, so never the non-member marker
            _CPU_GROUP.append(group)
    return _local_device(device)


_CPU_GROUP: list[dist.ProcessGroup] = []  # a gloo group beside NCCL, for CPU-side collectives


def _cpu_group() -> dist.ProcessGroup | None:
    return _CPU_GROUP[0] if _CPU_GROUP else None  # None: the default group, gloo on CPU


def teardown() -> None:
    if active():
        dist.destroy_process_group()
        _CPU_GROUP.clear()


def _local_device(device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(local)
    return local


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise ConfigError(
            "batch_size", batch_size, f"must be a multiple of the {world_size()} processes (it is the global batch)"
        )


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around a module whose trainable set is final for this phase (DDP records it once)."""
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def sum_across(*values: float) -> list[float]:
    """Element-wise sums over ranks (train loss, correct, seen)."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, group=_cpu_group())
    return tensor.tolist()


def gather_rows(local: np.ndarray, total: int) -> np.ndarray:
    """Rows that rank r computed for items r, r+K, r+2K, … back in item order, on every rank."""
    if not active():
        return local
    k = world_size()
    per_rank = math.ceil(total / k)
    padded = np.zeros((per_rank, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.empty_like(torch.from_numpy(padded)) for _ in range(k)]
    dist.all_gather(parts, torch.from_numpy(padded), group=_cpu_group())
    out = np.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, total, k))
        out[r::k] = part[:count].numpy()
    return out


def barrier() -> None:
    if active():
        dist.barrier(group=_cpu_group())


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items r, r+K, r+2K, … (see :func:`gather_rows`)."""
    return list(items[rank() :: world_size()])


class ShardSampler(Sampler[int]):
    """Items r, r+K, … in order: for sharded evaluation."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return len(range(rank(), self.n, world_size()))

    def __iter__(self) -> Iterator[int]:
        return iter(range(rank(), self.n, world_size()))


class GlobalBatchShard(Sampler[list[int]]):
    """This rank's slice of each global batch, cut from the very shuffle a single process draws.

    The order comes from a ``RandomSampler`` on the loader's own generator, so K processes
    see the batches one process would, and checkpoints (which save that generator) resume
    alike. A last batch that does not divide by K is topped up so every rank steps together,
    but with *marked* repeats: index ``n + i`` is item ``i`` again, which :class:`Padded`
    hands out without its label, so the loss and the accuracy never count it.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size = n, batch_size
        self.order = RandomSampler(range(n), generator=generator)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.order)
        k, r = world_size(), rank()
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            share = math.ceil(len(batch) / k)
            batch = batch + [self.n + i for i in (batch * k)[len(batch) : share * k]]
            yield batch[r * share : (r + 1) * share]


class Padded:
    """A dataset whose indices ``n + i`` (the repeats :class:`GlobalBatchShard` tops up with)
    give item ``i`` with every label set to ``no_label``: it fills a rank's batch and counts
    for nothing."""

    def __init__(self, dataset: Any, no_label: int) -> None:  # any map-style dataset of (inputs, label)
        self.dataset, self.no_label = dataset, no_label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < len(self.dataset):
            item: tuple[torch.Tensor, torch.Tensor] = self.dataset[index]
            return item
        inputs, label = self.dataset[index - len(self.dataset)]
        return inputs, torch.full_like(torch.as_tensor(label), self.no_label)


def global_mean(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """This rank's part of the global batch's weighted mean loss: ``total / weight`` in one
    process. Under DDP the weight is summed over every rank first, and the result scaled by K
    because DDP *averages* gradients: then K ranks step exactly as one process on the whole
    batch, whatever the class weights and however unevenly the items fall."""
    if active():
        weight = weight.detach().clone()
        dist.all_reduce(weight)  # on the loss's device: NCCL on GPUs, gloo on CPU
        return total / weight.clamp_min(1e-12) * world_size()
    return total / weight.clamp_min(1e-12)
