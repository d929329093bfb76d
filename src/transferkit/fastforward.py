"""A faster frozen forward on CPU: the frozen network run by ONNX Runtime.

Frozen image layers (feature extraction, the bottom of a cut) run in inference only, where a
graph runtime pays: ONNX Runtime fuses each convolution with its BatchNorm and activation
and plans its memory once, where eager PyTorch allocates every activation afresh.
The graph is exported once per weights and input shape (torch's TorchScript exporter, about
2 s for EfficientNet-Lite0) and kept beside the feature cache; each session is checked
against the eager forward on the first batch and dropped (eager it is) when they disagree.
On CUDA, and without ``onnxruntime`` installed, the eager forward runs: nothing changes.
``TRANSFERKIT_FROZEN_FORWARD=eager`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.extras import installed, require
from transferkit.ownership import mark, owned_kind

# The largest difference from the eager forward a session may show on the first batch,
# relative to the outputs' scale (fp32 kernels that sum in another order differ by ~1e-6).
TOLERANCE = 1e-3

Forward = Callable[[torch.Tensor], torch.Tensor]


def _runtime() -> Any | None:
    if os.environ.get("TRANSFERKIT_FROZEN_FORWARD", "").lower() == "eager":
        return None
    if not installed("onnxruntime"):  # an optional speed-up: without it, the eager forward
        return None
    return require("onnxruntime", "the ONNX Runtime frozen forward")


def frozen_forward(module: nn.Module, fingerprint: str, folder: Path | None, device: torch.device) -> Forward:
    """``module``'s eval-mode forward, through ONNX Runtime where that is available and exact."""
    runtime = _runtime()
    eager: Forward = module
    if runtime is None or device.type != "cpu":
        return eager
    state: dict[str, Any] = {}

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if "session" not in state:
            # Images only: a text or audio encoder's forward may depend on the data (a text's
            # shared padding is trimmed per batch), which a traced graph would freeze.
            is_image = batch.dim() == 4 and batch.is_floating_point()
            state["session"] = _session(runtime, module, fingerprint, folder, batch) if is_image else None
            if state["session"] is not None and not _agrees(state["session"], module, batch):
                state["session"] = None
        session = state["session"]
        if session is None:
            return eager(batch)
        (out,) = session.run(None, {"x": batch.contiguous().numpy()})
        return torch.from_numpy(out)

    return forward


def _session(runtime: Any, module: nn.Module, fingerprint: str, folder: Path | None, batch: torch.Tensor) -> Any:
    shape = "x".join(str(d) for d in batch.shape[1:])
    key = hashlib.sha256(f"{fingerprint}\0{shape}\0{torch.__version__}".encode()).hexdigest()[:24]
    with tempfile.TemporaryDirectory() as scratch:
        # A folder of that name that transferkit did not make is not claimed (marked, it would go
        # with `cache clear`): the graph is then exported for this run only.
        ours = folder is not None and (not folder.exists() or owned_kind(folder) == "feature cache")
        base = folder if ours and folder is not None else Path(scratch)
        path = base / f"frozen-{key}.onnx"
        if not path.is_file() and not _export(module, batch, path):
            return None
        options = runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            return runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:
            return None


def _export(module: nn.Module, batch: torch.Tensor, path: Path) -> bool:
    """Write the graph atomically (a name of its own, then renamed); whether it worked."""
    mark(path.parent, "feature cache")  # ours: `cache clear` removes it with the features
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".frozen.", suffix=".partial.onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (batch[:1].clone(),), name, dynamo=False, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
            )  # fmt: skip
        os.replace(name, path)
        return True
    except Exception:
        return False
    finally:
        Path(name).unlink(missing_ok=True)


def _agrees(session: Any, module: nn.Module, batch: torch.Tensor) -> bool:
    (fast,) = session.run(None, {"x": batch.contiguous().numpy()})
    with torch.inference_mode():
        exact = module(batch).float().numpy()
    scale = max(float(np.abs(exact).max()), 1e-6)
    return fast.shape == exact.shape and float(np.abs(fast - exact).max()) <= TOLERANCE * scale
