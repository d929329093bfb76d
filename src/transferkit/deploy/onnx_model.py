"""An exported ``.onnx`` file, run with onnxruntime and NumPy only (torch is never imported).

The file carries what inference needs in its metadata (``transferkit``: classes or tasks,
preprocessing, the run's metrics), and a text model's tokenizer lies in a folder beside it,
so ``evaluate``, ``predict`` and ``serve`` read one file the way they read a run directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import FitConfig
from transferkit.deploy.onnx_graph import check_feed, check_graph, check_outputs, run_error
from transferkit.errors import ConfigError, TransferkitError
from transferkit.extras import require
from transferkit.metrics import detailed_report, score
from transferkit.modalities import Sample, get_modality, modality_names
from transferkit.modalities.common import Prediction, class_digest, shown
from transferkit.params import check_stored
from transferkit.schema import OneOf, check_mapping, check_names

METADATA_KEY = "transferkit"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


def assets_folder(onnx_file: Path) -> Path:
    """Where the files beside an export go (a text model's tokenizer): ``model.onnx`` → ``model.assets``."""
    return onnx_file.with_suffix(".assets")


class OnnxModel:
    """An exported model: ``probabilities(samples)``, ``predict(items)``, ``evaluate(data)``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = require("onnxruntime", "running .onnx files")
        self.path = Path(path)
        if not self.path.is_file():
            raise TransferkitError(f"{self.path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            self.meta: dict[str, Any] = json.loads(stored or "null")
        except Exception as exc:  # onnxruntime raises its own types for every broken-file case
            raise TransferkitError(f"{self.path} is not a usable ONNX model ({type(exc).__name__}: {exc})") from exc
        if not isinstance(self.meta, dict):
            raise TransferkitError(f"{self.path} was not exported by `transferkit export` (no transferkit metadata)")
        where = f"{self.path} metadata"
        pre = check_mapping(where, "preprocessing", self.meta.get("preprocessing"))
        kind = OneOf(modality_names()).check(where, "preprocessing.kind", pre.get("kind"))
        self.modality = get_modality(kind)
        self.preprocessing = self.modality.preprocessing_from_dict(pre)
        self.tasks: dict[str, list[str]] | None = None
        if "tasks" in self.meta:
            tasks = check_mapping(where, "tasks", self.meta["tasks"])
            self.tasks = {str(t): check_names(where, f"tasks.{t}", c, at_least=2) for t, c in tasks.items()}
        self.classes: list[str] = [] if self.tasks else check_names(where, "classes", self.meta.get("classes"), 2)
        digest = self.meta.get("classes_digest")  # no "older file" fallback: without it the order is unknown
        if digest != class_digest(self.tasks or self.classes):
            raise TransferkitError(
                f"{where}: the class list differs from (or is in another order than) the one exported with the "
                "model's outputs, or the file carries no record of it (edited, or exported before transferkit "
                "kept one); export the run again"
            )
        try:  # the run's options ride along (a text column, a clip length): held to their declarations
            check_stored(FitConfig, self.meta.get("fit_config", {}), "fit_config")
        except ConfigError as exc:
            raise TransferkitError(f"{where}: {exc}") from None
        self.sizes = [len(c) for c in self.tasks.values()] if self.tasks else [len(self.classes)]
        # the metadata decides the arrays built and how scores are read; the graph what it takes
        check_graph(self.session, self.preprocessing.to_dict(), self.sizes, where)
        self._graph_inputs = list(self.session.get_inputs())
        self.input_names = [i.name for i in self._graph_inputs]

    def inputs(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return self.modality.onnx_inputs(self.preprocessing, samples, assets_folder(self.path))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Softmax probabilities per output (one output; one per task for multi-task models).
        :class:`InferenceError` (one line) when the graph refuses the inputs or answers other
        shapes than the metadata says: the load-time check covers the inputs it has rules for."""
        feed = check_feed(self._graph_inputs, inputs, str(self.path))
        try:
            outputs = self.session.run(None, feed)
        except MemoryError:
            raise  # serve answers 413 to an input too large to run, as to one too large to decode
        except Exception as exc:  # onnxruntime's own types (InvalidArgument, Fail, RuntimeException…)
            raise run_error(exc, str(self.path)) from None
        items = len(next(iter(feed.values()))) if feed else 0
        return [softmax(o) for o in check_outputs(outputs, items, self.sizes, str(self.path))]

    def probabilities(self, samples: Sequence[Sample], batch_size: int = 32) -> list[np.ndarray]:
        parts = [self.run(self.inputs(samples[i : i + batch_size])) for i in range(0, len(samples), batch_size)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []

    def predict_samples(self, samples: Sequence[Sample], top_k: int = 3) -> list[dict[str, Any]]:
        """Per sample: ``{"path", "top": [{"label", "probability"}…]}``; multi-task: ``{"path", "labels",
        "probabilities"}`` (the best label of each task)."""
        if not samples:
            raise TransferkitError("nothing to predict")
        probs = self.probabilities(samples)
        rows: list[dict[str, Any]] = []
        for i, sample in enumerate(samples):
            name = shown(sample)
            if self.tasks is not None:
                best = {t: int(p[i].argmax()) for t, p in zip(self.tasks, probs, strict=True)}
                labels = {t: self.tasks[t][k] for t, k in best.items()}
                chances = {t: float(p[i][best[t]]) for t, p in zip(self.tasks, probs, strict=True)}
                rows.append({"path": name, "labels": labels, "probabilities": chances})
                continue
            order = np.argsort(-probs[0][i])[: min(top_k, len(self.classes))]
            probabilities = [float(probs[0][i][k]) for k in order]
            rows.append(Prediction(name, [self.classes[k] for k in order], probabilities).row())
        return rows

    def predict(self, items: Sequence[str | Path], top_k: int = 3) -> list[dict[str, Any]]:
        return self.predict_samples(self.modality.read_inputs(items), top_k)

    def evaluate(self, data: str | Path) -> dict[str, Any]:
        """The report ``transferkit evaluate`` prints for a run, for the exported file."""
        if self.tasks is not None:
            raise TransferkitError("evaluate scores single-task models; use predict for a multi-task export")
        fit_config = self.meta.get("fit_config", {})
        samples = self.modality.load_eval_samples(Path(data), self.classes, fit_config)
        probs = self.probabilities(samples)[0]
        truth = np.array([int(s.label) for s in samples])  # type: ignore[arg-type]
        return detailed_report(score(truth, probs.argmax(axis=1), len(self.classes)), self.classes, self.modality.unit)
