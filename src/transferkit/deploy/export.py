"""``transferkit export``: a run → ONNX (fp32), optionally int8, each checked against PyTorch.

The dynamo exporter writes the graph with a dynamic batch axis; the file's metadata holds
the classes (or tasks), the preprocessing and the run's metrics, and a text model's tokenizer
is saved beside it. Every file written is then run with onnxruntime on the run's validation
items and compared with the PyTorch model on the same inputs: fp32 must agree on ≥ 99.9% of
top-1 labels or the export is refused and its files removed. Sizes, latencies (single item
and batch 32, torch and onnxruntime in this one process) and accuracies are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from transferkit.api import held_out_samples, load
from transferkit.config import from_dict, read_back
from transferkit.deploy.onnx_model import METADATA_KEY, OnnxModel, assets_folder, softmax
from transferkit.errors import TransferkitError
from transferkit.extras import EXTRAS, ensure, require
from transferkit.modalities import Modality, Preprocessing, Sample
from transferkit.modalities.common import class_digest
from transferkit.ownership import STAGING, added_since, files_under, mark, owned_kind, remove_owned, resealed, swap_in
from transferkit.pipeline import load_data
from transferkit.workflows.multitask import is_multitask_run, load_multitask

FP32_AGREEMENT = 0.999  # below this the exported graph computes something else: refused
QUANTIZE = ("dynamic", "static")
CALIBRATION_ITEMS = 300


@dataclass
class FormatRow:
    format: str
    file: str
    bytes: int
    latency_1_ms: float
    latency_32_ms: float
    accuracy: float | None
    agreement: float | None  # top-1 agreement with PyTorch on the check items
    max_delta: float | None  # max |Δ probability| against PyTorch


@dataclass
class Exported:
    """The pieces of a run that export needs, whatever kind of run it is."""

    module: nn.Module  # takes the ONNX inputs, returns one logits tensor per output
    modality: Modality
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    output_names: list[str]
    example: tuple[torch.Tensor, ...]  # inputs to trace with (batch 2)
    dynamic_axes: list[tuple[int, ...]]  # per input


class TaskOutputs(nn.Module):
    """A multi-task model's concatenated logits as one ONNX output per task."""

    def __init__(self, model: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        self.model, self.sizes = model, list(sizes)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # multi-task data are files: one input
        return tuple(torch.split(self.model(inputs), self.sizes, dim=1))


PURPOSE = "ONNX export"


def _from_run(run_dir: Path) -> Exported:
    if is_multitask_run(run_dir):
        trained_mt = load_multitask(run_dir)
        module, example, names, axes = trained_mt.modality.export_signature(trained_mt.model, trained_mt.preprocessing)
        sizes = [len(c) for c in trained_mt.tasks.values()]
        meta = {
            "tasks": trained_mt.tasks, "classes_digest": class_digest(trained_mt.tasks),
            "preprocessing": trained_mt.preprocessing.to_dict(), "input_names": names,
        }  # fmt: skip
        wrapped = TaskOutputs(module, sizes).eval()
        outputs = list(trained_mt.tasks)
        return Exported(wrapped, trained_mt.modality, trained_mt.preprocessing, meta, outputs, example, axes)
    trained = load(run_dir)
    module, example, names, axes = trained.modality.export_signature(trained.model, trained.preprocessing)
    card = trained.config
    meta = {
        "classes": trained.classes, "classes_digest": class_digest(trained.classes),
        "preprocessing": trained.preprocessing.to_dict(), "input_names": names,
        "backbone": card.get("backbone"), "strategy": card.get("strategy"), "metrics": card.get("metrics", {}),
        "fit_config": card.get("fit_config", {}),
    }  # fmt: skip
    return Exported(module.eval(), trained.modality, trained.preprocessing, meta, ["logits"], example, axes)


def _save_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], outputs: list[str], path: Path,
    dynamic_axes: Sequence[tuple[int, ...]],
) -> None:  # fmt: skip
    """The dynamo exporter (``torch.onnx.export(dynamo=True)``); the batch axis (and a text's
    length) stay dynamic."""
    dynamic = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example, dynamo=True, input_names=names, output_names=outputs,
            dynamic_shapes=tuple(dict.fromkeys(axes, dynamic) for axes in dynamic_axes), optimize=True, verbose=False,
        )  # fmt: skip
    if program is None:
        raise TransferkitError("torch.onnx.export returned no program")
    program.save(str(path))


def _write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    onnx = require("onnx", PURPOSE)

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(model, str(path))


def _torch_probabilities(module: nn.Module, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(inputs[n]) for n in names))
    outputs = out if isinstance(out, tuple) else (out,)
    return [softmax(o.double().numpy()) for o in outputs]


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _batch(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``size`` items, repeating the check items when there are fewer."""
    n = len(next(iter(inputs.values())))
    index = np.arange(size) % n
    return {k: np.ascontiguousarray(v[index]) for k, v in inputs.items()}


UNLABELLED = -1  # a check item read from plain files: no accuracy, only agreement


def _accuracy(probs: list[np.ndarray], samples: Sequence[Sample]) -> float | None:
    labels = [s.label for s in samples]
    if not labels or not all(isinstance(label, int) and label >= 0 for label in labels):
        return None
    return float((probs[0].argmax(axis=1) == np.array(labels)).mean())


def _measure(
    name: str, path: Path, model: OnnxModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
    samples: Sequence[Sample], repeats: int,
) -> FormatRow:  # fmt: skip
    probs = [np.concatenate(p) for p in zip(*(model.run(_slice(inputs, i)) for i in _chunks(inputs)), strict=True)]
    agreement = min(float((p.argmax(1) == r.argmax(1)).mean()) for p, r in zip(probs, reference, strict=True))
    delta = max(float(np.abs(p - r).max()) for p, r in zip(probs, reference, strict=True))
    one, many = _batch(inputs, 1), _batch(inputs, 32)
    return FormatRow(
        name, str(path), path.stat().st_size, _median_ms(lambda: model.run(one), repeats),
        _median_ms(lambda: model.run(many), max(3, repeats // 4)), _accuracy(probs, samples), agreement, delta,
    )  # fmt: skip


def _chunks(inputs: dict[str, np.ndarray], size: int = 32) -> range:
    return range(0, len(next(iter(inputs.values()))), size)


def _slice(inputs: dict[str, np.ndarray], start: int, size: int = 32) -> dict[str, np.ndarray]:
    return {k: v[start : start + size] for k, v in inputs.items()}


def _check_items(run_dir: Path, exported: Exported, data: Path | None, split: str = "val") -> list[Sample]:
    """The items the export is checked on, less those that cannot be read (skipped with one
    warning, never replaced by others: the agreement would be measured on other items)."""
    return exported.modality.scorable(_given_items(run_dir, exported, data, split))[0]


def _given_items(run_dir: Path, exported: Exported, data: Path | None, split: str) -> list[Sample]:
    if data is not None:
        classes = exported.metadata.get("classes")
        if classes is not None and data.is_dir() and {p.name for p in data.iterdir() if p.is_dir()} & set(classes):
            # a labelled folder: score each item against its own label, as `evaluate` does
            return exported.modality.load_eval_samples(data, classes, exported.metadata.get("fit_config", {}))
        return [replace(s, label=UNLABELLED) for s in exported.modality.read_inputs([data])]
    samples = held_out_samples(run_dir, split, classes=exported.metadata.get("classes"))
    if not samples:
        what = "validation" if split == "val" else split
        raise TransferkitError(f"{run_dir} holds no {what} items to check the export on: pass --data DATA")
    return samples


def _calibration(calibrate: Path, exported: Exported) -> list[Sample]:
    if "classes" not in exported.metadata:
        raise TransferkitError("--quantize static calibrates single-task runs; use --quantize dynamic here")
    cfg = from_dict({**read_back(exported.metadata.get("fit_config", {})), "strict": False})
    train = list(load_data(calibrate, cfg).train)
    step = max(1, len(train) // CALIBRATION_ITEMS)
    return train[::step][:CALIBRATION_ITEMS]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over in-memory batches."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = 16) -> None:
        n = len(next(iter(inputs.values())))  # whole batches only: some calibrators stack them
        self.batches = iter([_slice(inputs, i, batch) for i in range(0, n - batch + 1, batch)] or [inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


PASS_THROUGH = {"Add", "Concat", "Flatten", "Identity", "Reshape", "Split", "Squeeze"}


def head_nodes(path: Path) -> list[str]:
    """The classifier layers: the first Gemm/MatMul met walking back from each output.

    They stay in float: a head fitted on standardised features (probe init) has weights that
    int8 cannot hold — measured on the digits demo, quantising it cost 10 points of accuracy,
    the backbone alone 0.3. (Keeping the last layer in float is the usual int8 recipe.)"""
    onnx = require("onnx", PURPOSE)

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    found, frontier, seen = [], [o.name for o in graph.output], set()
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            found.append(node.name)
        elif node.op_type in PASS_THROUGH:
            frontier += list(node.input)
    return found


def _fed_by(graph: Any, producers: tuple[str, ...], op_type: str) -> list[str]:
    """The ``op_type`` nodes whose first input comes from one of ``producers``."""
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return [n.name for n in graph.node if n.op_type == op_type and made_by.get(n.input[0]) in producers]


def _integer_ops(path: Path) -> int:
    onnx = require("onnx", PURPOSE)

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.op_type in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QuantizeLinear") for n in graph.node)


def _quantize(kind: str, source: Path, target: Path, calibration: dict[str, np.ndarray] | None) -> None:
    onnx = require("onnx", PURPOSE)
    quantization = require("onnxruntime.quantization", "quantising ONNX files")
    shape_inference = require("onnxruntime.quantization.shape_inference", "quantising ONNX files")

    prepared = target.with_suffix(".prep.onnx")
    try:
        shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        keep = head_nodes(prepared)
        if kind == "dynamic":  # MatMul weights int8, activations quantised on the fly (transformers, LSTMs)
            # Convolutions stay float: dynamic ConvInteger was 10x slower and lost 75 points on the digits.
            # Asymmetric uint8 weights: MiniLM on BBC News lost 0.5 points with them, 1.6 with int8.
            keep += [f"{name}_MatMul" for name in keep]  # dynamic quantisation rewrites Gemm as MatMul + Add
            quantization.quantize_dynamic(
                str(prepared), str(target), weight_type=quantization.QuantType.QUInt8, nodes_to_exclude=keep,
                op_types_to_quantize=["MatMul", "Gemm", "Attention", "LSTM"],
            )  # fmt: skip
        else:  # weights and activations int8, activation ranges from calibration items
            assert calibration is not None
            # A transformer's LayerNorm, Softmax and residual Adds do not survive int8 activations
            # (MiniLM on BBC News: 20% accuracy), nor do the outliers GELU feeds the feed-forward
            # output projections (Bondarenko et al., EMNLP 2021): with them in float, −0.2 points
            # instead of −1.6. Conv nets: everything but the head.
            graph = onnx.load(str(prepared), load_external_data=False).graph
            ops = None if any(n.op_type == "Conv" for n in graph.node) else ["MatMul", "Gemm"]
            if ops is not None:
                keep += _fed_by(graph, ("Gelu", "FastGelu"), "MatMul")
            quantization.quantize_static(
                str(prepared), str(target), _Reader(calibration), quant_format=quantization.QuantFormat.QDQ,
                per_channel=True, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, nodes_to_exclude=keep, op_types_to_quantize=ops,
            )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    quantize: Sequence[str] = (),
    calibrate: str | Path | None = None,
    data: str | Path | None = None,
    repeats: int = 20,
    console: Console | None = None,
    split: str = "val",
) -> list[FormatRow]:
    """Export, check and measure; the rows of the report (PyTorch first, then each file).
    Without ``data`` the check items are the run's saved ``split`` (``auto``: the held-out test)."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / "model.onnx"
    unknown = sorted(set(quantize) - set(QUANTIZE))
    if unknown:
        raise TransferkitError(f"--quantize {unknown[0]!r} is invalid: choose dynamic or static")
    if "static" in quantize and calibrate is None:
        raise TransferkitError("--quantize static needs --calibrate DATA (a few hundred training items)")
    ensure(EXTRAS["export"], PURPOSE)  # torch's exporter needs onnx and onnxscript: refused before any work
    _check_targets(target, quantize)
    exported = _from_run(run_dir)
    samples = _check_items(run_dir, exported, Path(data) if data is not None else None, split)
    calibration = _calibration(Path(calibrate), exported) if "static" in quantize and calibrate else None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Into a run (or an auto search's best) as transferkit sealed it: the export joins the seals,
    # so a later `fit --out` or `auto` there is not refused for a file transferkit wrote.
    with resealed(target.parent):
        # Everything is written into a temporary sibling folder and moved into place only once the
        # export is checked: a failure, a refusal or Ctrl-C leaves the files that were there before.
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING}"))
        try:
            rows = _export_all(exported, staging / target.name, quantize, calibration, samples, repeats, console)
            for row in rows[1:]:
                row.file = str(_move_into_place(Path(row.file), target.parent))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return rows


def _outputs(target: Path, quantize: Sequence[str]) -> list[Path]:
    """Every path an export to ``target`` writes: the files and their assets folders."""
    files = [target, *(target.with_name(f"{target.stem}.int8-{kind}.onnx") for kind in quantize)]
    return [*files, *(assets_folder(f) for f in files)]


def _check_targets(target: Path, quantize: Sequence[str]) -> None:
    """Refuse, before any compute, to replace anything transferkit did not write."""
    if target.is_dir() or str(target).endswith(("/", "\\")):
        raise TransferkitError(f"--out {target} is a folder; give the file to write, e.g. {target / 'model.onnx'}")
    if target.suffix.lower() != ".onnx":
        raise TransferkitError(f"--out {target} must end in .onnx")
    for path in _outputs(target, quantize):
        if path.is_symlink():
            raise TransferkitError(f"{path} is a symbolic link; transferkit does not write through links")
        if path.is_dir() and any(path.iterdir()) and (owned_kind(path) != "export assets" or added_since(path)):
            raise TransferkitError(f"{path} holds files transferkit did not write; give another --out")
        if path.is_file() and not _exported_by_transferkit(path):
            raise TransferkitError(f"{path} exists and was not written by `transferkit export`; give another --out")


def _exported_by_transferkit(path: Path) -> bool:
    onnx = require("onnx", PURPOSE)

    try:
        props = onnx.load(str(path), load_external_data=False).metadata_props
    except Exception:  # anything onnx cannot parse is not one of ours
        return False
    return any(p.key == METADATA_KEY for p in props)


def _move_into_place(staged: Path, folder: Path) -> Path:
    """Move a finished file (and its assets folder) from the staging folder into ``folder``."""
    final = folder / staged.name
    assets = assets_folder(staged)
    if assets.is_dir():
        mark(assets, "export assets", files=files_under(assets))
        swap_in(assets, assets_folder(final))
    else:
        remove_owned(assets_folder(final))  # an earlier export's assets this one no longer needs
    os.replace(staged, final)
    return final


def _export_all(
    exported: Exported, target: Path, quantize: Sequence[str], calibration_items: list[Sample] | None,
    samples: Sequence[Sample], repeats: int, console: Console | None,
) -> list[FormatRow]:  # fmt: skip
    names = list(exported.metadata["input_names"])
    target.parent.mkdir(parents=True, exist_ok=True)
    assets = assets_folder(target)
    assets.mkdir(exist_ok=True)
    exported.modality.export_assets(exported.preprocessing, assets)
    if console:
        console.print(f"exporting to {target} (torch.onnx, dynamo) …", highlight=False)
    _save_onnx(exported.module, exported.example, names, exported.output_names, target, exported.dynamic_axes)
    _write_metadata(target, exported.metadata)
    inputs = exported.modality.onnx_inputs(exported.preprocessing, samples, assets)
    calibration = None
    if calibration_items:
        calibration = exported.modality.onnx_inputs(exported.preprocessing, calibration_items, assets)
    parts = [_torch_probabilities(exported.module, _slice(inputs, i), names) for i in _chunks(inputs)]
    reference = [np.concatenate(p) for p in zip(*parts, strict=True)]
    one, many = _batch(inputs, 1), _batch(inputs, 32)
    rows = [FormatRow(
        "PyTorch fp32", "", 0, _median_ms(lambda: _torch_probabilities(exported.module, one, names), repeats),
        _median_ms(lambda: _torch_probabilities(exported.module, many, names), max(3, repeats // 4)),
        _accuracy(reference, samples), 1.0, 0.0,
    )]  # fmt: skip
    fp32 = _measure("ONNX fp32", target, OnnxModel(target), inputs, reference, samples, repeats)
    rows.append(fp32)
    if fp32.agreement is not None and fp32.agreement < FP32_AGREEMENT:
        raise TransferkitError(
            f"export refused: the ONNX model agrees with PyTorch on {fp32.agreement:.2%} of top-1 labels "
            f"(needs {FP32_AGREEMENT:.1%}; max |Δp| {fp32.max_delta:.3g}); no files were kept"
        )
    for kind in quantize:
        path = target.with_name(f"{target.stem}.int8-{kind}.onnx")
        _quantize(kind, target, path, calibration)
        if console and not _integer_ops(path):
            console.print(
                f"[yellow]warning:[/] int8 {kind} found nothing to quantise in this model"
                + (" (a conv net: use --quantize static)" if kind == "dynamic" else ""),
                highlight=False,
            )
        _write_metadata(path, exported.metadata)
        shutil.copytree(assets, assets_folder(path), dirs_exist_ok=True)
        rows.append(_measure(f"ONNX int8 {kind}", path, OnnxModel(path), inputs, reference, samples, repeats))
    for folder in (assets, *(assets_folder(Path(r.file)) for r in rows[2:])):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    rows[0].bytes = sum(p.numel() * p.element_size() for p in exported.module.state_dict().values())
    return rows


def rows_as_dicts(rows: Sequence[FormatRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
