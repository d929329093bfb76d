"""What an exported graph must take and give, checked against the metadata that rides with it.

The ``transferkit`` metadata (``preprocessing``, the classes) decides the arrays inference
builds; the graph declares the shapes it accepts. Both live in one file a user can edit, so
they can disagree: an ``image_size`` of 64 over a graph traced at 32 px once reached
onnxruntime, which answered an INVALID_ARGUMENT traceback (predict) or a bare 500 (serve).
:func:`check_graph` refuses such a file when it is loaded, from the graph's declared static
dimensions; :func:`check_feed` and :func:`check_outputs` hold every call to the same contract,
for what the load-time check cannot know (inputs no rule below describes).

The rules are keyed by the input names ``transferkit export`` writes: they are the file
format's contract, the way the metadata's fields are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from transferkit.errors import TransferkitError

BATCH = -1  # a dimension that must stay dynamic: the number of items in a call (1 to 32)
LENGTH = -2  # a dimension that must stay dynamic: a text's length in tokens, per batch
_WORDS = {BATCH: "batch", LENGTH: "length"}
MAX_SHOWN_ERROR = 300  # characters of an onnxruntime message an error quotes


class InferenceError(TransferkitError):
    """The model failed on inputs built as its metadata says (a graph that disagrees with its
    metadata, a file edited by hand): ``predict`` exits 2 with the line, ``serve`` answers 500
    with ``reason`` in ``detail`` (the reason alone: a client has no business with the path)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason


# (ONNX element type, dimensions, the metadata fields the dimensions come from)
Expected = tuple[str, tuple[int, ...], str]


def _images(pre: Mapping[str, Any]) -> Expected:
    side = int(pre["image_size"])  # RGB always: every image is converted to 3 channels when read
    return "tensor(float)", (BATCH, 3, side, side), f"preprocessing.image_size {side}"


def _waveforms(pre: Mapping[str, Any]) -> Expected:
    rate, seconds = int(pre["sample_rate"]), float(pre["clip_seconds"])
    why = f"preprocessing.sample_rate {rate} × clip_seconds {seconds:g}"
    return "tensor(float)", (BATCH, round(rate * seconds)), why


def _tokens(pre: Mapping[str, Any]) -> Expected:
    return "tensor(int64)", (BATCH, LENGTH), f"preprocessing.max_length {int(pre['max_length'])}"


RULES: dict[str, Callable[[Mapping[str, Any]], Expected]] = {
    "images": _images,
    "waveforms": _waveforms,
    "input_ids": _tokens,
    "attention_mask": _tokens,
}


def shape_text(dims: Sequence[Any]) -> str:
    """``(batch, 3, 32, 32)``: symbolic dimensions by name, unnamed ones as ``?``."""
    words = [_WORDS.get(d, str(d)) if isinstance(d, int) else str(d or "?") for d in dims]
    return f"({', '.join(words)})"


def _static(dim: object) -> int | None:
    # onnxruntime reports a static dimension as an int, a symbolic one as its name, an unknown one as None
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _input_problem(name: str, kind: str, dims: Sequence[Any], expected: Expected) -> str | None:
    want_kind, want, source = expected
    if kind != want_kind:
        return f"the graph's input {name!r} holds {kind}, where the metadata's preprocessing makes {want_kind}"
    if len(dims) != len(want):
        return f"the graph's input {name!r} has shape {shape_text(dims)}, where {source} makes {shape_text(want)}"
    for dim, wanted in zip(dims, want, strict=True):
        fixed = _static(dim)
        if fixed is None or fixed == wanted:
            continue
        if wanted < 0:  # batch or length: inference sends any number of these
            return (
                f"the graph's input {name!r} has shape {shape_text(dims)}: a fixed {_WORDS[wanted]} of {fixed}, "
                f"where inference sends a varying one {shape_text(want)}"
            )
        return f"the graph's input {name!r} has shape {shape_text(dims)}, where {source} makes {shape_text(want)}"
    return None


def check_graph(session: Any, preprocessing: Mapping[str, Any], sizes: Sequence[int], where: str) -> None:
    """Refuse (one line) a graph whose declared inputs or outputs disagree with the metadata:
    ``preprocessing`` (as its modality wrote it back: checked) and the class count per output."""
    for spec in session.get_inputs():
        rule = RULES.get(spec.name)
        if rule is None:  # an input no rule describes: each call is checked instead (check_feed)
            continue
        problem: str | None
        try:
            expected = rule(preprocessing)
        except (KeyError, TypeError, ValueError):
            kind = preprocessing.get("kind")
            problem = f"the graph takes {spec.name!r}, which {kind} preprocessing does not make"
        else:
            problem = _input_problem(spec.name, spec.type, list(spec.shape or []), expected)
        if problem is not None:
            raise TransferkitError(f"{where}: {problem}: the metadata disagrees with the model; export the run again")
    outputs = [list(o.shape or []) for o in session.get_outputs()]
    scores = [_static(o[-1]) if o else None for o in outputs]
    wrong = len(outputs) != len(sizes) or any(o and len(o) != 2 for o in outputs)
    if wrong or any(s is not None and s != n for s, n in zip(scores, sizes, strict=True)):
        shown = ", ".join(shape_text(o) for o in outputs) or "none"
        raise TransferkitError(
            f"{where}: classes: {len(sizes)} output(s) of {list(sizes)} scores per item, but the graph's outputs "
            f"have shape {shown}: the metadata disagrees with the model; export the run again"
        )


def check_feed(session_inputs: Sequence[Any], inputs: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The arrays to hand onnxruntime, one per graph input, each fitting the graph's static
    dimensions; :class:`InferenceError` naming the first that does not (before onnxruntime, whose
    message names none of this)."""
    feed: dict[str, np.ndarray] = {}
    for spec in session_inputs:
        array = inputs.get(spec.name)
        if array is None:
            made = ", ".join(sorted(inputs)) or "nothing"
            raise InferenceError(where, f"the graph takes an input {spec.name!r}, but inference makes {made}")
        dims = list(spec.shape or [])
        fits = len(dims) == array.ndim and all(
            _static(d) is None or _static(d) == n for d, n in zip(dims, array.shape, strict=True)
        )
        if not fits:
            raise InferenceError(
                where,
                f"the graph's input {spec.name!r} has shape {shape_text(dims)}, but inference made "
                f"{shape_text(array.shape)} from the metadata's preprocessing: export the run again",
            )
        feed[spec.name] = array
    return feed


def check_outputs(outputs: Sequence[Any], items: int, sizes: Sequence[int], where: str) -> list[np.ndarray]:
    """The graph's outputs as float64 arrays of ``items`` rows by the class count of each, or
    :class:`InferenceError` (a graph with symbolic output shapes can still give anything)."""
    arrays = [np.asarray(o, dtype=np.float64) for o in outputs]
    got = [a.shape for a in arrays]
    want = [(items, n) for n in sizes]
    if got != want:
        raise InferenceError(
            where,
            f"the model answered {', '.join(shape_text(g) for g in got) or 'nothing'} scores for "
            f"{items} item(s), where its metadata says {', '.join(shape_text(w) for w in want)}: export the run again",
        )
    return arrays


def run_error(exc: Exception, where: str) -> InferenceError:
    """onnxruntime's failure (its own exception types, a message of many lines) as one line."""
    lines = str(exc).strip().splitlines()
    first = (lines[0] if lines else "")[:MAX_SHOWN_ERROR]
    return InferenceError(where, f"onnxruntime could not run the model ({type(exc).__name__}: {first})")
