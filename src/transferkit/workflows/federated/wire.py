"""What crosses the federated wire, bounded before it is decoded or used.

Both sides are untrusted: a server's arrays and instructions reach every client, a client's
reply reaches the average. Every array is checked by its serialised header before anything is
allocated for it (NumPy's reader allocates what a header claims, before reading the bytes),
every weight is checked *after* the cast to float32 (1e300 is a finite float64 and ``inf`` in
float32), and a reply's metrics are brought to the one schema Flower's aggregators demand of
all replies (one odd reply would otherwise end the round with ``InconsistentMessageReplies``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib import format as npy

from transferkit.errors import TransferkitError, shown
from transferkit.workflows.federated.flower import Array, ArrayRecord, MetricRecord

# Weights travel as floats; a compressed link's codes, scales and indices as these integers.
WIRE_DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int32"})
FLOATS = frozenset({"float16", "float32", "float64"})
MAX_ARRAYS = 100_000  # tensors a message may carry: more than any backbone has, far fewer than a flood
MAX_ARRAY_BYTES = 2**31  # one array, when the receiver cannot yet say what it expects
# No trained weight of a network comes near this; the average of float32 values within it cannot
# overflow, whatever the item counts weighting it.
MAX_WEIGHT = 1e6
EXAMPLES = "num-examples"  # the reply's item count, the key Flower's aggregators weight by
REPLY_METRICS = frozenset({EXAMPLES, "train_loss", "train_accuracy"})
MAX_LOSS = 1e9


class WireRefusal(TransferkitError):
    """A message that fails its bounds: refused whole, with the reason in one line."""


def decode(record: ArrayRecord, limits: Sequence[int] | None = None) -> list[np.ndarray]:
    """The record's arrays, in order, each read only once its header is bounded: a dtype of
    :data:`WIRE_DTYPES`, the shape and dtype Flower declares equal to the serialised ones, and
    exactly the bytes that shape needs, at most ``limits[i]`` (else :data:`MAX_ARRAY_BYTES`)."""
    if len(record) > MAX_ARRAYS:
        raise WireRefusal(f"a message of {len(record)} arrays; at most {MAX_ARRAYS} are read")
    if limits is not None and len(limits) != len(record):
        raise WireRefusal(f"received {len(record)} arrays, not the {len(limits)} expected")
    return [_array(key, array, MAX_ARRAY_BYTES if limits is None else limits[i])
            for i, (key, array) in enumerate(record.items())]  # fmt: skip


def _array(key: str, array: Array, limit: int) -> np.ndarray:
    data = array.data
    if not isinstance(data, bytes) or len(data) > limit or array.stype != "numpy.ndarray":
        size = len(data) if isinstance(data, bytes) else "?"
        raise WireRefusal(f"array {shown(key)} is {size} bytes ({shown(array.stype)}); at most {limit} are read")
    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read(stream, max_header_size=1_000)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise WireRefusal(f"array {shown(key)} has no valid header: {shown(str(exc))}") from None
    count = math.prod(int(n) for n in shape)  # Python ints: a claimed 2**40 × 2**40 does not wrap
    if any(int(n) < 0 for n in shape) or dtype.name not in WIRE_DTYPES or dtype.hasobject:
        raise WireRefusal(
            f"array {shown(key)} is {shown(str(dtype))}; expected one of {', '.join(sorted(WIRE_DTYPES))}"
        )
    if count * dtype.itemsize != len(data) - stream.tell() or (array.dtype, tuple(array.shape)) != (dtype.name, shape):
        raise WireRefusal(f"array {shown(key)} declares {shown(tuple(array.shape))} {shown(array.dtype)}; "
                          f"its {len(data)} bytes do not hold that")  # fmt: skip
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), copy=True)


def as_float32(name: str, array: np.ndarray) -> np.ndarray:
    """A weight array as the model holds it, refused unless every value is finite and within
    ±:data:`MAX_WEIGHT` after the cast."""
    if array.dtype.name not in FLOATS:
        raise WireRefusal(f"received {array.dtype} weights for {name}; expected floats")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(np.float32, copy=False)
        if not np.isfinite(cast).all():
            raise WireRefusal(f"received non-finite weights (NaN or inf as float32) for {name}; refused")
        if cast.size and float(np.abs(cast).max()) > MAX_WEIGHT:
            raise WireRefusal(f"received weights beyond ±{MAX_WEIGHT:g} for {name}; refused")
    return cast


def reply_metrics(metrics: Mapping[str, object], max_items: int) -> MetricRecord:
    """A client's metrics in the one schema every reply is aggregated in: exactly
    :data:`REPLY_METRICS`, a whole item count in [1, ``max_items``], a finite loss and an
    accuracy in [0, 1]. Anything else refuses the reply (the round goes on without it)."""
    keys = set(metrics.keys())
    if keys != REPLY_METRICS:
        raise WireRefusal(f"metrics {shown(sorted(keys))}; expected exactly {', '.join(sorted(REPLY_METRICS))}")
    count, loss, accuracy = metrics[EXAMPLES], metrics["train_loss"], metrics["train_accuracy"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= max_items:
        raise WireRefusal(f"an item count of {shown(count)}; expected a whole number in [1, {max_items}]")
    for name, value, high in (("train_loss", loss, MAX_LOSS), ("train_accuracy", accuracy, 1.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
            raise WireRefusal(f"{name} of {shown(value)}; expected a number in [0, {high:g}]")
    return MetricRecord({EXAMPLES: count, "train_loss": float(loss), "train_accuracy": float(accuracy)})  # type: ignore[arg-type]


def one_line(text: str, limit: int = 300) -> str:
    """A reason as one line of at most ``limit`` characters: what a refusal prints and sends."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
