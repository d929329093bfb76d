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
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferkit.errors import DiskFullError, TransferkitError, shown
from transferkit.paths import atomic_write
from transferkit.records import MAX_PHASE_EPOCHS, RowError, check_history, check_phases
from transferkit.runfolder import FORMAT_VERSION, RunFolder, check_format_version
from transferkit.schema import Interval, SchemaError

# The loop's counters over all phases: as many epochs as --min-steps can stretch one phase to
# (records.MAX_PHASE_EPOCHS); a resume then holds them to this run's own plan exactly.
MAX_LOOP_EPOCHS = MAX_PHASE_EPOCHS


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
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # callbacks' tensors (an EMA's weights)


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
    """Write through :func:`~transferkit.paths.atomic_write`: the old file survives any failure,
    and nothing half-written is left behind."""
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except BaseException as exc:
        if disk_full(exc):
            raise DiskFullError(
                f"disk full while writing {path}; the previous file is intact. Free space and rerun"
                + (" with --resume" if path.name == RunFolder.CHECKPOINT else "")
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
    tensors |= {f"extra.{k}": v.detach().cpu().contiguous() for k, v in state.get("extra", {}).items()}
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
        "format_version": json.dumps(FORMAT_VERSION),
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
        return _from_parts(tensors, header, str(path))
    except SchemaError as exc:  # a field out of its bounds: the message names the file and the field
        raise TransferkitError(f"{exc}; delete it to start over") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # edited or foreign metadata
        raise TransferkitError(
            f"{path} has malformed metadata ({type(exc).__name__}: {exc}); delete it to start over"
        ) from None


def _from_parts(tensors: dict[str, torch.Tensor], header: Any, where: str) -> Checkpoint:
    meta = {k: json.loads(v) for k, v in dict(header.get("__metadata__") or {}).items()}
    check_format_version(meta.get("format_version"), where)  # a newer layout is refused in one line

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
        loop=loop_state(meta["loop"], where),
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
        extra=part("extra."),
    )


def loop_state(values: Any, where: str = "checkpoint") -> LoopState:
    """The loop position a checkpoint saved, every field within the bounds of what the loop
    writes: counters whole numbers no larger than the epochs the options can plan, history
    and phase rows of the loop's own shapes (:mod:`transferkit.records`), scores numbers."""
    if not isinstance(values, dict) or set(values) - set(LoopState.__dataclass_fields__):
        raise ValueError(f"loop state must be an object with the keys {', '.join(LoopState.__dataclass_fields__)}")
    state = LoopState(**values)
    for name in ("phase_index", "epoch_in_phase", "epoch", "best_epoch", "since_best"):
        value = getattr(state, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOOP_EPOCHS:
            raise ValueError(f"loop.{name}={shown(value)} must be a whole number from 0 to {MAX_LOOP_EPOCHS:,}")
    try:
        check_history("loop.history", state.history, most=MAX_LOOP_EPOCHS)
        check_phases("loop.phases", state.phases)
    except RowError as exc:
        raise SchemaError(where, exc.field, exc.value, exc.expected) from None
    # -inf until an epoch scores (a NaN score never counts as best); else a monitored score
    if state.best_value != float("-inf"):
        Interval(float, -1e15, 1e15).check(where, "loop.best_value", state.best_value)
    best = state.best_val
    if best is not None:
        if not isinstance(best, dict) or len(best) > 64 or not all(isinstance(k, str) and len(k) <= 100 for k in best):
            raise ValueError("loop.best_val must be a small object of scores")
        for key, value in best.items():  # NaN where the validation split was empty
            if not (isinstance(value, float) and math.isnan(value)):
                Interval(float, -1e15, 1e15).check(where, f"loop.best_val.{key}", value)
    if state.epoch_in_phase > state.epoch or state.best_epoch > state.epoch or len(state.history) != state.epoch:
        raise ValueError(f"loop counters disagree (epoch {state.epoch}, {len(state.history)} history rows)")
    return state


def _check_rng(meta: Any) -> None:
    """The Python and NumPy random states, in the shapes ``restore_rng`` puts back."""
    version, internal, gauss = meta["python"]
    # Mersenne Twister: 624 words of 32 bits and a position 0..624 (Python keeps it as the 625th
    # word). Bounded here, or 2**70 is an OverflowError and a NumPy position past 624 a segfault.
    words = internal[:-1] if isinstance(internal, list) else None
    if not isinstance(version, int) or words is None or len(internal) != 625 or not _words(words):
        raise ValueError("the Python random state is malformed")
    if not isinstance(internal[-1], int) or not 0 <= internal[-1] <= 624 or not isinstance(gauss, float | None):
        raise ValueError("the Python random state is malformed")
    name, keys, pos, has_gauss, cached = meta["numpy"]
    if name != "MT19937" or not isinstance(keys, list) or len(keys) != 624 or not _words(keys):
        raise ValueError("the NumPy random state is malformed")
    if not isinstance(pos, int) or not 0 <= pos <= 624 or has_gauss not in (0, 1) or not isinstance(cached, float):
        raise ValueError("the NumPy random state is malformed")


def _words(values: list[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values)


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


def check_phase_rows(state: LoopState, plan: Sequence[tuple[str, int]], checkpoint: Path | None) -> None:
    """The checkpoint's phase and history rows as this run's plan makes them (same options, so
    the same plan): one row per phase begun, its name and planned epochs the plan's, the epochs
    run adding up to the loop's count, each history row in the phase that ran it. Nothing else
    is copied into config.json or history.csv of the finished run."""
    begun = state.phase_index + (1 if state.epoch_in_phase > 0 else 0)  # a boundary checkpoint: none begun
    rows = state.phases
    problem = None
    if len(rows) != begun:
        problem = f"{len(rows)} phase rows where the loop has begun {begun} phase(s)"
    elif any((r["name"], r["epochs_planned"]) != tuple(p) for r, p in zip(rows, plan, strict=False)):
        problem = f"phase rows {[(r['name'], r['epochs_planned']) for r in rows]} where the plan has {list(plan)}"
    elif sum(r["epochs_run"] for r in rows) != state.epoch or (
        begun > state.phase_index and rows[-1]["epochs_run"] != state.epoch_in_phase  # the phase under way
    ):
        problem = f"epochs run per phase {[r['epochs_run'] for r in rows]} where the loop counts {state.epoch}"
    elif [h["phase"] for h in state.history] != [r["name"] for r in rows for _ in range(r["epochs_run"])]:
        problem = "history rows in other phases than the phase rows say"
    elif state.since_best > state.epoch_in_phase:
        problem = f"{state.since_best} epochs without a gain in a phase {state.epoch_in_phase} epochs old"
    if problem:
        raise TransferkitError(f"{checkpoint} does not fit this run's plan ({problem}); delete it to start over")


# --------------------------------------------------------------------------- states put back


def check_scheduler(saved: Any, own: Mapping[str, Any], steps: int) -> None:
    """A saved learning-rate schedule this run's own could have become: the same keys, types
    and base rates (the same options made both), its position within the phase's ``steps``,
    the rates it last set no higher than the base ones (warm-up and cosine only scale down)."""
    # load_state_dict copies any key onto the scheduler: only its own keys, alike in type
    if (
        not isinstance(saved, dict)
        or set(saved) != set(own)
        or any(type(saved[k]) is not type(own[k]) and own[k] is not None for k in own)
    ):
        raise ValueError("scheduler state has other keys or types")
    mine = json.loads(json.dumps(dict(own)))  # as it reads back: tuples are lists
    for key in ("base_lrs", "lr_lambdas"):
        if key in mine and saved[key] != mine[key]:
            raise ValueError(f"scheduler.{key}={shown(saved[key])} is not this run's {mine[key]}")
    position = Interval(int, 0, steps).check("scheduler", "last_epoch", saved.get("last_epoch"))
    if "_step_count" in mine and saved["_step_count"] != position + 1:  # one count per step, from the first
        raise ValueError(f"scheduler._step_count={shown(saved['_step_count'])} is not last_epoch + 1")
    last = saved.get("_last_lr", [])
    if len(last) != len(mine.get("_last_lr", [])):
        raise ValueError("scheduler._last_lr has another number of rates")
    for i, (rate, base) in enumerate(zip(last, mine.get("base_lrs", last), strict=False)):
        Interval(float, 0, float(base) * (1 + 1e-6)).check("scheduler", f"_last_lr[{i}]", rate)


def check_optimizer(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Saved optimizer groups and moments this run's optimizer could have: the groups' settings
    its own (the same options made them) but the rate the schedule moves, which stays in
    [0, its initial rate]; each moment a finite tensor of its parameter's shape."""
    groups, mine = saved["param_groups"], json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
    if not isinstance(groups, list) or len(groups) != len(mine):
        raise ValueError("optimizer state has another number of parameter groups")
    for i, (group, ref) in enumerate(zip(groups, mine, strict=True)):
        if not isinstance(group, dict) or set(group) != set(ref):
            raise ValueError(f"optimizer group {i} has other settings")
        changed = [k for k in ref if k != "lr" and group[k] != ref[k]]
        if changed:
            raise ValueError(
                f"optimizer group {i}: {changed[0]}={shown(group[changed[0]])}, this run has {ref[changed[0]]}"
            )
        Interval(float, 0, float(ref.get("initial_lr", ref["lr"])) * (1 + 1e-6)).check(
            "optimizer", f"group {i} lr", group["lr"]
        )
    # the indices state_dict() gives the parameters: in order, group after group
    shapes = dict(enumerate(p.shape for g in optimizer.param_groups for p in g["params"]))
    for index, values in saved["state"].items():
        if index not in shapes or not isinstance(values, dict):
            raise ValueError(f"optimizer state for parameter {index}, which this run does not have")
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                Interval(float, -1e15, 1e15).check("optimizer", f"state.{index}.{name}", value)
            elif value.shape not in (shapes[index], torch.Size([])) or not bool(torch.isfinite(value).all()):
                raise ValueError(f"optimizer state.{index}.{name} is not a finite tensor of its parameter's shape")


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
