"""Where and how a run computes: device choice, seeding, mixed precision."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from transferkit.errors import TransferkitError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TransferkitError("device='cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader workers: as asked, else none on CPU (decoding would take cores from training)
    and up to 8 per GPU process, where decoding in the main process starves the GPU (an H200
    fine-tuning Lite0 at 224 px: 69 images/s with 0 workers, 461 with 8, 467 for a bare loop
    on images already in memory; benchmarks/speed.py)."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // per_node))


class Amp:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); off on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device_type = device.type
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)
