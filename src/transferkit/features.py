"""Frozen-backbone features: computed once (cached on disk), and the heads trained on them.

A frozen backbone maps an image to the same features every epoch, so frozen phases run it
once and train on the stored result. With augmentation, K augmented views per image are
stored and each epoch samples one view per image (``cache_views``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from transferkit import distributed
from transferkit.allocator import keep_freed_memory, release_freed_memory
from transferkit.errors import shown
from transferkit.fastforward import frozen_forward
from transferkit.heads import ClassifierHead, load_linear_model
from transferkit.modalities import Modality, Preprocessing, Sample
from transferkit.ownership import mark, owned_kind
from transferkit.paths import atomic_write_text


def weights_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# Bump when the image pipeline changes what pixels reach the backbone, so old caches are not reused.
PIPELINE_VERSION = 2


def feature_settings(backbone: str, pre: Preprocessing, augment: dict[str, Any] | None = None) -> dict[str, Any]:
    """What besides the weights and the files decides the features. ``fit``, ``compare`` and
    ``rank`` build it the same way, so one command's cache serves the others."""
    settings: dict[str, Any] = {"backbone": backbone, "preprocessing": pre.to_dict(), "augment": augment is not None}
    return settings | (augment or {})


def cache_key(fingerprint: str, settings: dict[str, Any], samples: Sequence[Sample], modality: Modality) -> str:
    """Changes when the weights, preprocessing, views or any sample (as its modality keys it) change."""
    header = {"weights": fingerprint, "pipeline": PIPELINE_VERSION, **settings}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for s in samples:
        digest.update(modality.sample_key(s) + f"\0{s.label}\n".encode())
    return digest.hexdigest()[:32]


@dataclass
class Features:
    """Backbone features of ``views`` versions of each image: ``values[view, image]``."""

    values: np.ndarray  # [views, images, dim], a read-only memory map when cached on disk
    labels: np.ndarray  # [images] class indices, or [images, tasks] for multi-task labels
    reused: bool = False


@torch.inference_mode()
def _extract_into(
    out: np.ndarray,
    backbone: Callable[[torch.Tensor], torch.Tensor],
    modality: Modality,
    samples: Sequence[Sample],
    transform: Any,
    view: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    console: Console | None,
    num_workers: int = 0,
) -> None:
    """Fill ``out[view]`` batch by batch, so memory stays flat however many images there are."""
    if not samples:  # a rank with no shard (fewer images than processes)
        return
    if device.type == "cpu":
        keep_freed_memory()  # activations stay in the heap between batches: 1.7-2x (transferkit.allocator)
    dataset = modality.dataset(samples, transform)
    pin = device.type == "cuda"
    batches = math.ceil(len(samples) / batch_size)
    start = 0
    # Augmented views draw from torch's RNG: seed each view so a cache rebuild is identical.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000 + view)
        # Worker processes pay off with cores to spare (a GPU box); on 2 cores one decoding thread wins.
        loader: Iterable[tuple[torch.Tensor, Any]] = (
            DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
            if num_workers > 0
            else prefetched_batches(dataset, batch_size, pin)
        )
        for i, (images, _) in enumerate(loader, start=1):
            batch = backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
            out[view, start : start + len(batch)] = batch
            start += len(batch)
            if console is not None and (i % 20 == 0 or i == batches):
                console.print(f"  features (view {view + 1}): batch {i}/{batches}", highlight=False)


def extract_features(
    backbone: nn.Module,
    modality: Modality,
    samples: Sequence[Sample],
    transforms: Sequence[Any],
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    cache_dir: Path | None = None,
    settings: dict[str, Any] | None = None,
    console: Console | None = None,
    num_workers: int = 0,
    item_shape: tuple[int, ...] | None = None,
    dtype: type[np.floating[Any]] = np.float32,
) -> Features:
    """Outputs of ``backbone`` (pooled features, or a cut's activations of ``item_shape`` in
    ``dtype``) for every sample under each transform (one view per transform).

    With ``cache_dir`` they are written to ``cache_dir/KEY/`` as a memory-mapped ``.npy`` and
    a manifest (written last, atomically), and a later call with the same key reuses them.
    """
    backbone.eval()
    labels = np.array([s.label for s in samples], dtype=np.int64)
    item = item_shape if item_shape is not None else (int(backbone.num_features),)  # type: ignore[arg-type]
    shape = (len(transforms), len(samples), *item)
    fingerprint = cache(partial(weights_fingerprint, backbone))  # the cache key and the frozen graph: hashed once
    extract = partial(
        _extract_all, backbone=backbone, modality=modality, samples=samples, transforms=transforms, seed=seed,
        batch_size=batch_size, device=device, console=console, num_workers=num_workers,
        graph_dir=graph_folder(cache_dir) if cache_dir is not None else None, fingerprint=fingerprint,
    )  # fmt: skip
    if cache_dir is None or not samples:
        values = np.empty(shape, dtype=dtype)
        extract(values)
        return Features(values, labels)
    if distributed.world_size() > 1 and (settings or {}).get("augment"):
        settings = {**(settings or {}), "shards": distributed.world_size()}  # random views depend on the sharding
    keyed = {**(settings or {}), "views": len(transforms)} | (
        {"dtype": np.dtype(dtype).name} if dtype != np.float32 else {}
    )
    key = cache_key(fingerprint(), keyed, samples, modality)
    folder = cache_dir / key
    if folder.is_symlink() or (folder.exists() and owned_kind(folder) != "feature cache"):
        # A folder of that name transferkit did not mark (or a link) is not a cache entry: its
        # files are neither trained on nor overwritten; the features are computed in memory.
        values = np.empty(shape, dtype=dtype)
        extract(values)
        return Features(values, labels)
    stored = _cached(folder, shape, dtype)
    if stored is not None:
        if console:
            console.print(f"  features: reusing cache {folder}", highlight=False)
        return Features(stored, labels, reused=True)
    if not distributed.is_main():  # rank 0 writes the cache; the other ranks keep their gathered copy
        values = np.empty(shape, dtype=dtype)
        extract(values)
        return Features(values, labels)
    try:
        return _extract_to_cache(folder, key, shape, settings, extract, labels, dtype)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # A full cache volume costs the reuse, not the run: features are computed in memory.
        warnings.warn(f"disk full while caching features in {folder}; computing them in memory instead "
                      "(free space, or `transferkit cache clear`)", stacklevel=2)  # fmt: skip
        values = np.empty(shape, dtype=dtype)
        extract(values)
        return Features(values, labels)


def _cached(folder: Path, shape: tuple[int, ...], dtype: type[np.floating[Any]]) -> np.ndarray | None:
    """The cached array when it is complete and what this call expects (shape, dtype); a file
    changed on disk, truncated, corrupt or of another version is a miss (recomputed, said once),
    never trained on and never a traceback: the cache only ever saves time."""
    if not (folder / "manifest.json").is_file():
        return None  # not an entry yet (or one whose writer was interrupted): nothing to say
    path = folder / "features.npy"
    try:
        problem = _npy_problem(path, shape, np.dtype(dtype))
        if problem is None:  # the header is what we expect: now mapping it allocates nothing unplanned
            values: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
            if values.shape == shape and values.dtype == np.dtype(dtype):  # the file swapped meanwhile
                return values
            problem = "it changed while being read"
    # Any failure at all is a miss: numpy's header parser alone raises ValueError, SyntaxError,
    # tokenize.TokenError, MemoryError or RecursionError on a garbled header.
    except Exception as exc:
        problem = f"{type(exc).__name__}: {shown(str(exc), 120)}"
    warnings.warn(
        f"feature cache entry {folder} cannot be used ({problem}); computing the features again", stacklevel=3
    )
    return None


NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 4096  # numpy writes a feature array's header in 128 bytes; anything longer is not ours


def _npy_problem(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> str | None:
    """What makes the ``.npy`` file at ``path`` not an array of ``shape`` and ``dtype``, read from
    its header alone, bounded before any read (numpy's own reader reads whatever length the
    header claims, up to 4 GiB, before checking it); ``None`` when it is one, whole."""
    with path.open("rb") as f:
        prefix = f.read(len(NPY_MAGIC) + 2)
        if len(prefix) < len(NPY_MAGIC) + 2 or not prefix.startswith(NPY_MAGIC):
            return "not a .npy file"
        version = (prefix[-2], prefix[-1])
        if version not in ((1, 0), (2, 0)):
            return f"format version {version}"
        width = 2 if version == (1, 0) else 4
        length_bytes = f.read(width)
        length = int.from_bytes(length_bytes, "little")
        if len(length_bytes) < width or length > MAX_NPY_HEADER:
            return f"a header of {length:,} bytes" if len(length_bytes) == width else "cut short"
        header = length_bytes + f.read(length)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    stored, fortran, stored_dtype = reader(io.BytesIO(header), max_header_size=MAX_NPY_HEADER)
    if stored != shape or fortran or stored_dtype != dtype:
        return f"holds {shown(stored, 60)} {stored_dtype}{' (Fortran order)' * fortran}, expected {shape} {dtype}"
    size, expected = path.stat().st_size, len(prefix) + len(header) + math.prod(shape) * dtype.itemsize
    return None if size == expected else f"{size:,} bytes where the header means {expected:,}"


def _extract_to_cache(
    folder: Path, key: str, shape: tuple[int, ...], settings: dict[str, Any] | None,
    extract: Callable[[np.ndarray], None], labels: np.ndarray, dtype: type[np.floating[Any]] = np.float32,
) -> Features:  # fmt: skip
    mark(folder, "feature cache")  # `cache clear` deletes only folders with this marker
    # A name of its own: two runs extracting the same key at once each write a whole file, and
    # the rename makes one of them the cache (a reader's memory map keeps the file it opened).
    fd, name = tempfile.mkstemp(dir=folder, prefix="features.", suffix=".partial.npy")
    os.close(fd)
    partial_file = Path(name)
    try:
        values = np.lib.format.open_memmap(partial_file, mode="w+", dtype=dtype, shape=shape)
        # Reserve every block before writing through the map: on a full disk a write to a page
        # of a sparse file is a SIGBUS that kills the process; this raises ENOSPC instead.
        with open(partial_file, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.path.getsize(partial_file))
        extract(values)
        values.flush()
        del values
        os.replace(partial_file, folder / "features.npy")
    except BaseException:  # interrupted or failed: no orphaned partial file
        partial_file.unlink(missing_ok=True)
        raise
    manifest = {"shape": list(shape), "settings": settings, "images": len(labels), "key": key}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2))
    return Features(np.load(folder / "features.npy", mmap_mode="r"), labels)


def _extract_all(
    out: np.ndarray,
    *,
    backbone: nn.Module,
    modality: Modality,
    samples: Sequence[Sample],
    transforms: Sequence[Any],
    seed: int,
    batch_size: int,
    device: torch.device,
    console: Console | None,
    num_workers: int,
    graph_dir: Path | None,
    fingerprint: Callable[[], str],
) -> None:
    """Fill ``out[view]`` for every view; under torchrun each rank runs its shard and all gather."""
    mine = distributed.shard(samples)
    forward: Callable[[torch.Tensor], torch.Tensor] = backbone
    if len(mine) * len(transforms) >= FAST_FORWARD_ITEMS:
        forward = frozen_forward(backbone, fingerprint(), graph_dir, device)
    local = out if len(mine) == len(samples) else np.empty((len(transforms), len(mine), *out.shape[2:]), out.dtype)
    for view, transform in enumerate(transforms):
        _extract_into(local, forward, modality, mine, transform, view, seed, batch_size, device, console, num_workers)
        if local is not out:
            out[view] = distributed.gather_rows(local[view], len(samples))
    release_freed_memory()  # the activations' heap goes back: training needs its own


class FeatureViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item ``view * n + i`` is view ``view`` of image ``i`` (see :class:`ViewSampler`)."""

    def __init__(self, features: Features) -> None:
        self.features = features
        self.n = features.values.shape[1]

    def __len__(self) -> int:
        return int(self.features.values.shape[0] * self.n)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        view, i = divmod(index, self.n)
        values = torch.from_numpy(np.array(self.features.values[view, i], dtype=np.float32))
        return values, torch.as_tensor(self.features.labels[i])


class TensorBatches:
    """Batches of features already in memory, indexed a batch at a time.

    A DataLoader over :class:`FeatureViews` pays Python per item (index, copy, collate): on
    the digits demo ten head epochs took 2 s for 1,438 vectors. Here a batch is one fancy
    index, so warm-cache runs spend their time in the optimiser. Same order as the sampler
    (the loader's generator drives it, and checkpoints save that generator)."""

    def __init__(self, features: Features, batch_size: int, sampler: Sampler[int] | None = None) -> None:
        self.values = torch.from_numpy(np.array(features.values))  # a copy: the memmap is read-only
        self.labels = torch.from_numpy(np.asarray(features.labels)).long()
        self.batch_size, self.sampler = batch_size, sampler
        self.generator = getattr(sampler, "generator", None)
        self.n = self.values.shape[1]

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else self.values.shape[0] * self.n  # type: ignore[arg-type]
        return math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.long)
        else:
            order = torch.arange(self.values.shape[0] * self.n)
        for batch in torch.split(order, self.batch_size):
            view, i = batch // self.n, batch % self.n
            yield self.values[view, i].float(), self.labels[i]  # fp16 activations train in fp32


# Fewer items than this run eagerly: exporting the frozen graph (~2 s for Lite0) would not pay.
FAST_FORWARD_ITEMS = 256


def graph_folder(cache_dir: Path) -> Path:
    """Where the frozen graphs of :mod:`transferkit.fastforward` are kept (``cache clear`` removes it)."""
    return cache_dir / "frozen-graphs"


# Features up to this size train from memory (TensorBatches); bigger ones stream from the memmap.
IN_MEMORY_BYTES = 1 << 30


def feature_batches(features: Features, batch_size: int, sampler: Sampler[int] | None = None) -> Any:
    """Batches over cached features: from memory when they fit, else a DataLoader on the memmap."""
    if features.values.nbytes <= IN_MEMORY_BYTES:
        return TensorBatches(features, batch_size, sampler)
    generator = getattr(sampler, "generator", None)
    return DataLoader(FeatureViews(features), batch_size=batch_size, sampler=sampler, generator=generator)


def prefetched_batches(
    dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, the next one decoded in a thread while the caller runs the current one.

    Pillow and NumPy release the GIL, so decoding overlaps the forward pass without the
    pickling cost of DataLoader worker processes (which were slower on 2 cores). One thread
    consumes the random transforms in order, so seeded augmentation stays reproducible.
    """

    def load(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]  # type: ignore[arg-type]
        images = torch.stack([image for image, _ in items])
        labels = torch.stack([torch.as_tensor(label) for _, label in items])
        return (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)

    starts = range(0, len(dataset), batch_size)  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0]) if starts else None
        for next_start in [*starts[1:], None]:
            batch = pending.result()  # type: ignore[union-attr]
            pending = pool.submit(load, next_start) if next_start is not None else None
            yield batch


class ViewSampler(Sampler[int]):
    """Each epoch: every image once, in shuffled order, each as one of its cached views.

    Draws only from the loader's generator, which checkpoints save: a resume picks alike.
    """

    def __init__(self, n: int, views: int, generator: torch.Generator) -> None:
        self.n, self.views, self.generator = n, views, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator)
        if self.views == 1:
            return iter(order.tolist())
        view = torch.randint(self.views, (self.n,), generator=self.generator)
        return iter((view * self.n + order).tolist())


def fit_linear_probe(
    head: ClassifierHead,
    features: np.ndarray,
    labels: np.ndarray,
    classifier: str,
    c: float = 1.0,
    seed: int = 0,
    class_weights: bool = False,
) -> None:
    """Fit logistic regression or a linear SVM on standardised features, into ``head``.

    No feature is scaled up beyond the median feature's spread: many ReLU features barely vary
    on a small dataset (Lite0 on 160 digits: a tenth of them never fire, the median spread is
    0.03), and dividing by such a spread gives the folded head weights that turn any small
    change of that feature — an augmented view, a fine-tuned backbone — into a huge logit
    (fine-tuning from such a head started at a training loss of 8.6 and fell from 0.85 to 0.3).
    """
    mean = features.mean(axis=0)
    spread = features.std(axis=0)
    floor = float(np.median(spread[spread > 0])) if (spread > 0).any() else 1.0
    scale = np.maximum(spread, floor)
    x = (features - mean) / scale
    weight = "balanced" if class_weights else None
    model: LogisticRegression | LinearSVC
    if classifier == "svm":
        model = LinearSVC(C=c, class_weight=weight, random_state=seed, max_iter=5000)
    else:
        model = LogisticRegression(C=c, class_weight=weight, random_state=seed, max_iter=2000)
    model.fit(x, labels)
    load_linear_model(head, np.asarray(model.coef_), np.asarray(model.intercept_), mean, scale)
