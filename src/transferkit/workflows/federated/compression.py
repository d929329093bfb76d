"""Compressed updates: what travels is a change from weights both sides hold, quantised to 8 or
4 bits or sparsified to its largest entries, with error feedback.

Flower ships no update compression (its mods clip, add noise, aggregate securely and log
sizes), so this sits between transferkit's client and server and Flower's lists of arrays:
each tensor goes out as a few arrays (codes and scales, or indices and values), and what comes
in is checked before any arithmetic — shapes, dtypes, counts, index bounds, finite scales.

- ``int8`` / ``int4``: symmetric codes with one scale per output channel where a channel has
  at least 64 entries (a depthwise 3 × 3 kernel's 9 would pay 4 bytes of scale for 9 codes),
  else one per tensor, rounded stochastically (QSGD, Alistarh et al. 2017: unbiased, so rounding errors
  average out over clients); int4 codes are packed two to a byte.
- ``topk:F``: the share F of entries largest in magnitude, as int32 indices and float16 values.
- A change that is exactly zero travels as two empty arrays: at a phase's start the blocks it
  unfreezes are the pre-trained ones every party built, so their first change costs nothing.
- Error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD): the sender keeps what
  it did not send and adds it to the next change, so nothing is lost, only late.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from transferkit.errors import ConfigError

SCHEMES = ("none", "int8", "int4", "topk:F")
CHOICES = "none, int8, int4 or topk:F with 0 < F < 1"  # what every refusal of a name says
MIN_CHANNEL = 64  # entries per output channel below which one scale serves the whole tensor


@dataclass(frozen=True)
class Codec:
    """One way to put a float tensor on the wire. ``name``: none, int8, int4 or topk:F."""

    name: str
    bits: int | None = None
    keep: float | None = None

    @classmethod
    def parse(cls, text: str) -> Codec:
        if text in ("none", "int8", "int4"):
            return cls(text, bits={"none": None, "int8": 8, "int4": 4}[text])
        if text.startswith("topk:"):
            try:
                keep = float(text[5:])
            except ValueError:
                keep = math.nan
            if 0 < keep < 1:
                return cls(f"topk:{keep:g}", keep=keep)
        raise ConfigError("compress", text, f"choose {CHOICES} (e.g. topk:0.1)")

    @property
    def active(self) -> bool:
        return self.name != "none"

    @property
    def per_tensor(self) -> int:
        """Wire arrays a tensor takes: codes (or indices) and scales (or values)."""
        return 2 if self.active else 1

    # ----------------------------------------------------------------------- one tensor

    def _dtypes(self) -> tuple[type, type]:
        """The two wire arrays' types: codes or indices, then scales or values."""
        if self.keep is not None:
            return np.int32, np.float16
        return (np.uint8 if self.bits == 4 else np.int8), np.float32

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if self.active and not x.any():  # no change (blocks a phase unfreezes, as both sides built them)
            return [np.zeros(0, dtype) for dtype in self._dtypes()]
        if self.keep is not None:
            flat = x.reshape(-1)
            k = max(1, math.ceil(self.keep * flat.size))
            index = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]).astype(np.int32)
            return [index, flat[index].astype(np.float16)]
        if self.bits is None:
            return [x]
        top = 2 ** (self.bits - 1) - 1
        rows = x.reshape(_channels(x.shape), -1)
        scale = (np.abs(rows).max(axis=1) / top).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        codes = np.clip(np.floor(rows / safe + rng.random(rows.shape, dtype=np.float32)), -top, top).astype(np.int8)
        codes = codes.reshape(-1)
        if self.bits == 4:
            nibbles = (codes + 8).astype(np.uint8)
            nibbles = np.concatenate([nibbles, np.zeros(nibbles.size % 2, np.uint8)])
            codes = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
        return [codes, scale]

    def decode(self, wire: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """The tensor of ``shape`` that ``wire`` holds; ``WireError`` if it is not one."""
        size = math.prod(shape)
        if self.active and len(wire) == 2 and all(np.asarray(a).size == 0 for a in wire):
            for array, dtype in zip(wire, self._dtypes(), strict=True):
                _expect(np.asarray(array), dtype, (0,), "an empty change")
            return np.zeros(shape, np.float32)
        if self.keep is not None:
            index, values = (np.asarray(a) for a in wire)
            k = max(1, math.ceil(self.keep * size))
            _expect(index, np.int32, (k,), "indices")
            _expect(values, np.float16, (k,), "values")
            if k and (index.min() < 0 or index.max() >= size or np.unique(index).size != k):
                raise WireError(f"top-k indices outside 0..{size - 1} or repeated")
            out = np.zeros(size, np.float32)
            out[index] = values.astype(np.float32)
            return _finite(out.reshape(shape))
        if self.bits is None:
            (dense,) = wire
            _expect(np.asarray(dense), np.float32, shape, "weights")
            return _finite(np.asarray(dense))
        codes, scale = (np.asarray(a) for a in wire)
        channels = _channels(shape)
        _expect(scale, np.float32, (channels,), "scales")
        if not (np.isfinite(scale).all() and (scale >= 0).all()):
            raise WireError("scales must be finite and non-negative")
        if self.bits == 4:
            _expect(codes, np.uint8, ((size + 1) // 2,), "int4 codes")
            values = np.stack([codes & 15, codes >> 4], axis=1).reshape(-1)[:size].astype(np.int8) - 8
        else:
            _expect(codes, np.int8, (size,), "int8 codes")
            values = codes
        rows: np.ndarray = values.reshape(channels, -1).astype(np.float32) * scale[:, None]
        return rows.reshape(shape)

    # ----------------------------------------------------------------------- many tensors

    def encode_all(self, tensors: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return [array for x in tensors for array in self.encode(x, rng)]

    def decode_all(self, wire: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        per = self.per_tensor
        if len(wire) != per * len(shapes):
            raise WireError(f"received {len(wire)} arrays for {len(shapes)} tensors ({self.name}: {per} each)")
        return [self.decode(wire[per * i : per * i + per], tuple(s)) for i, s in enumerate(shapes)]


def _channels(shape: tuple[int, ...]) -> int:
    """How many scales a tensor of ``shape`` gets: one per output channel of ≥ 64 entries."""
    size = math.prod(shape)
    return shape[0] if len(shape) >= 2 and shape[0] and size // shape[0] >= MIN_CHANNEL else 1


def digest(arrays: Sequence[np.ndarray]) -> int:
    """A checksum of weights, so a receiver can tell it holds what the sender thinks it holds."""
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(array, dtype=np.float32).tobytes(), value)
    return value


NO_COMPRESSION = Codec("none")


class WireError(ValueError):
    """Arrays that do not decode to the tensors expected: refused whole."""


def _expect(array: np.ndarray, dtype: type, shape: tuple[int, ...], what: str) -> None:
    if array.dtype != dtype or tuple(array.shape) != tuple(shape):
        raise WireError(f"{what}: expected {np.dtype(dtype).name}{list(shape)}, got {array.dtype}{list(array.shape)}")


def _finite(x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        raise WireError("non-finite values (NaN or inf)")
    return x


def send_change(
    codec: Codec,
    names: Sequence[str],
    held: dict[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    residual: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """The wire arrays for ``current − held``, by ``names``; ``held`` moves to what the
    receiver decodes, so both ends hold the same weights bit for bit.

    Error feedback comes in two forms. Where ``held`` is the receiver's own copy (the server's
    broadcast), what was not sent stays in ``current − held`` and goes out with the next change.
    Where the reference does not follow what was sent (a client's reply is decoded on top of the
    server's broadcast, a new one each round), pass ``residual``: the part not sent is kept
    there and added to the next change.
    """
    wire: list[np.ndarray] = []
    for name in names:
        change = current[name].astype(np.float32) - held[name]
        if residual is not None:
            change = change + residual.get(name, 0.0)
        arrays = codec.encode(change, rng)
        sent = codec.decode(arrays, change.shape)
        if residual is not None:
            residual[name] = change - sent
        held[name] = held[name] + sent
        wire += arrays
    return wire


def apply_change(
    codec: Codec, held: Mapping[str, np.ndarray], names: Sequence[str], wire: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """The receiver's side: ``held`` plus the decoded change, for ``names`` (``WireError`` if
    the arrays do not decode to exactly those tensors)."""
    changes = codec.decode_all(wire, [held[n].shape for n in names])
    return {n: held[n] + c for n, c in zip(names, changes, strict=True)}


__all__ = ["CHOICES", "NO_COMPRESSION", "SCHEMES", "Codec", "WireError", "apply_change", "digest", "send_change"]
