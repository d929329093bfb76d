"""Resumable training state, in one file written atomically after every epoch.

``checkpoint.safetensors`` holds tensors (current and best weights, optimizer moments, the
torch and data-loader random states) and, in its string metadata, JSON for the rest (loop
position, history, scheduler, Python and NumPy random states, the fit config). One file,
renamed into place, so a kill at any moment leaves either the previous checkpoint or the
new one, never half of each. Nothing in it is pickled.
"""

from __future__ import annotations

import errno
import json
import os
import random
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferkit.errors import DiskFullError, TransferkitError
from transferkit.paths import current_umask

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class LoopState:
    """Where the loop is: enough to continue as if it had never stopped."""

    phase_index: int = 0
    epoch_in_phase: int = 0  # epochs finished in the current phase
    epoch: int = 0  # epochs finished over all phases
    best_value: float = float("-inf")
    best_epoch: int = 0
    best_val: dict[str, float] | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Checkpoint:
    loop: LoopState
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    generators: dict[str, torch.Tensor]
    fit_config: dict[str, Any]
    scaler: dict[str, Any] | None = None  # AMP's loss scale and growth tracker (CUDA float16)


# --------------------------------------------------------------------------- random state


def capture_rng() -> tuple[dict[str, Any], torch.Tensor]:
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],  # type: ignore[index]
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # GPU dropout
        meta["cuda"] = [state.tolist() for state in torch.cuda.get_rng_state_all()]
    return meta, torch.get_rng_state()


def restore_rng(meta: dict[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)
    cuda = meta.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


# --------------------------------------------------------------------------- optimizer state


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# --------------------------------------------------------------------------- save / load


def disk_full(exc: BaseException) -> bool:
    """Whether a write failed for lack of space: an ``OSError`` (ENOSPC), or safetensors' own
    ``SafetensorError`` wrapping the Rust I/O error (``Os { code: 28, kind: StorageFull }``)."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    text = str(exc)
    return isinstance(exc, SafetensorError) and any(
        sign in text for sign in ("code: 28", "StorageFull", "os error 28", "No space left on device")
    )


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write through a uniquely named temporary file (fsync, rename): the old file survives any
    failure, and nothing half-written is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; a written file is not
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(exc):
            raise DiskFullError(
                f"disk full while writing {path}; the previous file is intact. Free space and rerun"
                + (" with --resume" if path.name == CHECKPOINT_FILE else "")
            ) from exc
        raise


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write the whole training state to ``path`` atomically (temporary file, fsync, rename).

    ``state`` is one mapping (as Lightning Fabric's ``save(path, state)``): ``loop`` (a
    :class:`LoopState`), ``model`` and ``best`` (state dicts), ``optimizer`` and ``scheduler``
    (objects or ``None`` at a phase boundary), ``generators`` (name → torch.Generator) and
    ``resume_key`` (the settings the checkpoint is valid for) and ``scaler`` (AMP's state).
    """
    loop, model, best = state["loop"], state["model"], state["best"]
    optimizer, scheduler = state.get("optimizer"), state.get("scheduler")
    generators: Mapping[str, torch.Generator] = state.get("generators", {})
    rng_meta, torch_rng = capture_rng()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()}
    tensors["rng.torch"] = torch_rng
    tensors |= {f"generator.{name}": g.get_state() for name, g in generators.items()}
    optimizer_meta = None
    if optimizer is not None:
        optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
        tensors |= {k: v.detach().cpu().contiguous() for k, v in optimizer_tensors.items()}
    metadata = {
        "loop": json.dumps(asdict(loop)),
        "optimizer": json.dumps(optimizer_meta),
        "scheduler": json.dumps(scheduler.state_dict() if scheduler is not None else None),
        "rng": json.dumps(rng_meta),
        "fit_config": json.dumps(state.get("resume_key", {})),
        "scaler": json.dumps(state.get("scaler")),
    }
    write_safetensors(tensors, path, metadata)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TransferkitError(f"{path} is not a readable checkpoint ({exc}); delete it to start over") from exc
    try:
        return _from_parts(tensors, header)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # edited or foreign metadata
        raise TransferkitError(
            f"{path} has malformed metadata ({type(exc).__name__}: {exc}); delete it to start over"
        ) from None


def _from_parts(tensors: dict[str, torch.Tensor], header: Any) -> Checkpoint:
    meta = {k: json.loads(v) for k, v in dict(header.get("__metadata__") or {}).items()}

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer_meta = meta["optimizer"]
    if optimizer_meta is not None and not isinstance(optimizer_meta, dict):
        raise TypeError("optimizer metadata must be an object")
    fit_config = meta["fit_config"]
    if not isinstance(fit_config, dict):
        raise TypeError("fit_config must be an object")
    _check_rng(meta["rng"])
    return Checkpoint(
        loop=loop_state(meta["loop"]),
        model=part("model."),
        best=part("best."),
        optimizer=_unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optimizer.")}, optimizer_meta)
        if optimizer_meta is not None
        else None,
        scheduler=meta["scheduler"],
        rng={"meta": meta["rng"], "torch": tensors["rng.torch"]},
        generators=part("generator."),
        fit_config=fit_config,
        scaler=meta.get("scaler"),
    )


def loop_state(values: Any) -> LoopState:
    """The loop position a checkpoint saved, with every counter a non-negative whole number."""
    if not isinstance(values, dict) or set(values) - set(LoopState.__dataclass_fields__):
        raise ValueError(f"loop state must be an object with the keys {', '.join(LoopState.__dataclass_fields__)}")
    state = LoopState(**values)
    for name in ("phase_index", "epoch_in_phase", "epoch", "best_epoch", "since_best"):
        value = getattr(state, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
            raise ValueError(f"loop.{name}={value!r} must be a whole number >= 0")
    if not isinstance(state.history, list) or not isinstance(state.phases, list):
        raise ValueError("loop.history and loop.phases must be lists")
    if not isinstance(state.best_value, int | float) or isinstance(state.best_value, bool):
        raise ValueError("loop.best_value must be a number")
    best = state.best_val
    if best is not None and not (
        isinstance(best, dict) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in best.values())
    ):
        raise ValueError("loop.best_val must be an object of numbers")
    if state.epoch_in_phase > state.epoch or state.best_epoch > state.epoch or len(state.history) != state.epoch:
        raise ValueError(f"loop counters disagree (epoch {state.epoch}, {len(state.history)} history rows)")
    return state


def _check_rng(meta: Any) -> None:
    """The Python and NumPy random states, in the shapes ``restore_rng`` puts back."""
    version, internal, _ = meta["python"]
    if not isinstance(version, int) or len(internal) != 625 or not all(isinstance(i, int) for i in internal):
        raise ValueError("the Python random state is malformed")
    name, keys, pos, _, _ = meta["numpy"]
    if name != "MT19937" or len(keys) != 624 or not isinstance(pos, int):
        raise ValueError("the NumPy random state is malformed")


def check_position(state: LoopState, phase_epochs: list[int], checkpoint: Path | None) -> None:
    """A checkpoint's place in this run's plan: a phase that exists, no more epochs than it has."""
    in_plan = state.phase_index <= len(phase_epochs) and state.epoch <= sum(phase_epochs)
    if in_plan and state.phase_index < len(phase_epochs):
        in_plan = state.epoch_in_phase <= phase_epochs[state.phase_index]
    if not in_plan:
        raise TransferkitError(
            f"{checkpoint} says phase {state.phase_index}, epoch {state.epoch}, which this run's plan "
            f"({len(phase_epochs)} phases, {sum(phase_epochs)} epochs) does not have; delete it to start over"
        )


def check_finite(state: Mapping[str, torch.Tensor], where: Path | str, fix: str = "retrain it") -> None:
    """Refuse weights with NaN or infinity: they score as a silent 10% instead of an error."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TransferkitError(
            f"{where} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}; "
            f"the model cannot be used: {fix}"
        )


def check_tensors(saved: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], checkpoint: Path) -> None:
    """A checkpoint's weights: this model's tensor names and shapes, finite values."""
    if {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(v.shape) for k, v in own.items()}:
        raise TransferkitError(f"{checkpoint} holds weights of another model; delete it to start over")
    check_finite(saved, checkpoint, fix="delete it to start over")
