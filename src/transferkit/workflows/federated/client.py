"""One data owner: trains the round's travelling weights on its own data, in the one loop."""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.backbones import registered_names
from transferkit.config import FitConfig, from_dict
from transferkit.errors import DataError, TransferkitError, shown
from transferkit.freezing import freeze_for_phase
from transferkit.layers import LayerGroup, layer_groups
from transferkit.loaders import feature_loaders, sample_loader
from transferkit.memory import activation_sizes, default_memory_limit, estimate_phase_memory
from transferkit.modalities import DatasetSplits, Sample, get_modality
from transferkit.model import TransferModel
from transferkit.objectives import Classification
from transferkit.params import Constraint
from transferkit.pipeline import SingleLabel, prepare_model
from transferkit.plan import batches
from transferkit.runtime import seed_everything
from transferkit.schema import Interval, SchemaError, check_fields, check_mapping, check_names, check_stored_name
from transferkit.strategies import Phase, get_strategy
from transferkit.training import FrozenInputs, Loaders, LoopSettings, Shortcut, train
from transferkit.workflows.federated.compression import (
    CHOICES,
    NO_COMPRESSION,
    Codec,
    WireError,
    apply_change,
    digest,
    send_change,
)
from transferkit.workflows.federated.config import FederatedConfig
from transferkit.workflows.federated.flower import Array, ArrayRecord
from transferkit.workflows.federated.wire import EXAMPLES as EXAMPLES  # where tests and older code import it
from transferkit.workflows.federated.wire import FLOATS, WireRefusal, as_float32, decode

# --------------------------------------------------------------------------- weights that travel


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_arrays(model: nn.Module, names: Sequence[str]) -> list[np.ndarray]:
    params = dict(model.named_parameters())
    return [params[n].detach().cpu().numpy().copy() for n in names]


def checked_weights(model: nn.Module, names: Sequence[str], arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Weights received for ``names`` as the model holds them (float32), refused whole unless the
    count and every shape fit, and every value is finite and bounded *after* the cast: weights
    arrive over the wire, either way: untrusted."""
    if len(arrays) != len(names):
        raise WireRefusal(f"received {len(arrays)} weight arrays for {len(names)} trainable tensors")
    params = dict(model.named_parameters())
    out = []
    for name, array in zip(names, map(np.asarray, arrays), strict=True):
        if tuple(array.shape) != tuple(params[name].shape) or array.dtype.name not in FLOATS:
            raise WireRefusal(
                f"received weights for {name} of shape {tuple(array.shape)} ({array.dtype}); "
                f"the model has {tuple(params[name].shape)} (float)"
            )
        out.append(as_float32(name, array))
    return out


def wire_problem(model: nn.Module, names: Sequence[str], arrays: Sequence[np.ndarray]) -> str | None:
    """What is wrong with weights received for ``names`` (``None``: nothing); see :func:`checked_weights`."""
    try:
        checked_weights(model, names, arrays)
    except WireRefusal as exc:
        return str(exc)
    return None


def _keys(names: Sequence[str], per: int) -> list[str]:
    """A compressed tensor travels as several arrays (codes and scales): ``name#0``, ``name#1``."""
    return list(names) if per == 1 else [f"{n}#{k}" for n in names for k in range(per)]


def to_record(names: Sequence[str], arrays: Sequence[np.ndarray]) -> ArrayRecord:
    """The arrays named by tensor; ``per`` arrays a tensor when there are that many more."""
    per = len(arrays) // len(names) if names else 1  # no tensors: an empty record, not an error
    if per < 1 or per * len(names) != len(arrays):
        raise TransferkitError(f"{len(arrays)} arrays cannot be {len(names)} tensors' wire arrays")
    keys = _keys(names, per)
    return ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, arrays, strict=True)})


def from_record(
    record: ArrayRecord, names: Sequence[str], per: int = 1, limits: Sequence[int] | None = None
) -> list[np.ndarray]:
    """The arrays for ``names``, in that order; an error unless the record holds exactly those,
    each within its tensor's byte limit (``limits``, by tensor) before it is decoded."""
    if len(record) != per * len(names) or list(record.keys()) != _keys(names, per):
        raise WireRefusal(f"received {len(record)} arrays, not the {per * len(names)} expected ones")
    return decode(record, None if limits is None else [n for n in limits for _ in range(per)])


def record_names(record: ArrayRecord) -> list[str]:
    """The tensor names a record's keys stand for, in order (``name#k`` counted once)."""
    names = [k.rpartition("#")[0] or k for k in record]
    return list(dict.fromkeys(names))


def record_bytes(record: ArrayRecord) -> int:
    """What Flower puts on the wire for these arrays: their serialised bytes."""
    return sum(len(array.data) for array in record.values())


def set_arrays(model: nn.Module, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """Put received weights in place, refused whole unless :func:`checked_weights` passes them."""
    checked = checked_weights(model, names, arrays)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, checked, strict=True):
            params[name].copy_(torch.from_numpy(array))


# --------------------------------------------------------------------------- what a server may send

SERVER = "the server's fit instruction"
# Ours, and the two Flower's aggregators add: the round, and FedProx's weight.
FIT_KEYS = frozenset({"fit_config", "classes", "phase", "round", "server-round", "proximal-mu", "compress", "digest"})


@dataclass(frozen=True)
class FitMessage:
    """A server's ``fit`` instruction, every field checked (see :func:`read_fit_message`)."""

    fit_config: dict[str, Any]
    classes: list[str]
    phase: Phase
    round: int
    proximal_mu: float
    codec: Codec = NO_COMPRESSION
    digest: int = 0  # of the weights a compressed link's receiver must hold after this message


def _json_field(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    if not isinstance(value, str) or len(value) > 1_000_000:
        raise SchemaError(SERVER, key, value, "expected a JSON text")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise SchemaError(SERVER, key, value, "expected valid JSON") from None


def read_fit_message(config: Mapping[str, Any]) -> FitMessage:
    """Check what arrives over the wire before any of it is used: known keys only, JSON where
    JSON belongs, class names, a phase with its own fields and bounds, a whole round number."""
    unknown = sorted(set(config) - FIT_KEYS)
    if unknown:
        raise SchemaError(SERVER, "keys", unknown, f"expected only {', '.join(sorted(FIT_KEYS))}")
    fit_config = dict(check_mapping(SERVER, "fit_config", _json_field(config, "fit_config")))
    classes = check_names(SERVER, "classes", _json_field(config, "classes"), at_least=2)
    sent = check_mapping(SERVER, "phase", _json_field(config, "phase"))
    fields = {f.name for f in dataclass_fields(Phase)}
    if set(sent) - fields or not {"name", "epochs", "unfreeze", "head_lr", "backbone_lr"} <= set(sent):
        raise SchemaError(SERVER, "phase", sorted(sent), f"expected the keys {', '.join(sorted(fields))}")
    bounds: dict[str, Interval | Constraint] = {
        "epochs": FederatedConfig.bound("local_epochs"),  # the server's own option's bound
        "head_lr": Interval(float, 0, 10),
        "backbone_lr": Interval(float, 0, 10),
    }
    checked = check_fields(SERVER + " phase", sent, bounds)
    unfreeze = (
        None if sent["unfreeze"] is None else Interval(int, 0, 1_000).check(SERVER, "phase.unfreeze", sent["unfreeze"])
    )
    if not isinstance(sent["name"], str) or not isinstance(sent.get("adapters", False), bool):
        raise SchemaError(SERVER, "phase", sent, "name must be a string and adapters true or false")
    phase = Phase(sent["name"], checked["epochs"], unfreeze, checked["head_lr"], checked["backbone_lr"],
                  sent.get("adapters", False))  # fmt: skip
    round_ = Interval(int, 0, 1_000_000).check(SERVER, "round", config.get("round"))
    mu = Interval(float, 0, 1e6).check(SERVER, "proximal-mu", config.get("proximal-mu", 0.0))
    compress = config.get("compress", "none")
    try:
        codec = Codec.parse(compress if isinstance(compress, str) else "?")
    except TransferkitError:
        raise SchemaError(SERVER, "compress", compress, f"expected {CHOICES}") from None
    check = Interval(int, 0, 2**32 - 1).check(SERVER, "digest", config.get("digest", 0))
    return FitMessage(fit_config, classes, phase, round_, mu, codec, check)


def derived_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of one client's round: distinct per round and client, and within the seed bound
    [0, 2**32) whatever the run's seed (a seed of 2**32 - 1 plus an offset would be refused)."""
    return (seed + 1000 * round_ + client_id) % 2**32


# --------------------------------------------------------------------------- the client


class TransferClient:
    """One data owner: trains the round's travelling weights on its own images.

    The model is built once per client object, from the ``fit`` config the server sends,
    with the same pre-trained backbone and seed on every party.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        client_id: int = 0,
        init_weights: str | None = None,
        state: Any = None,
        allow_download: bool = False,
        max_memory: int | None = None,
    ) -> None:
        self.samples, self.classes, self.client_id = tuple(samples), tuple(classes), client_id
        self.init_weights = init_weights  # this client's own copy of the starting weights, if any
        self.allow_download = allow_download  # the operator lets a server name a backbone to download
        self.max_memory = default_memory_limit() if max_memory is None else max_memory
        self._model: TransferModel | None = None
        self.memory = LinkMemory(state)

    def fit(
        self, parameters: list[np.ndarray], config: Mapping[str, Any], sent_names: Sequence[str] | None = None
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """One round: the weights (or change) the server sent for the travelling tensors
        (named ``sent_names``, when the wire names them), trained here; returns what goes back."""
        message = read_fit_message(config)
        cfg = self._own_config(message.fit_config)
        self._align_classes(tuple(message.classes))
        phase = message.phase
        model = self._build(cfg)
        groups = layer_groups(model.backbone)
        if phase.unfreeze is not None and phase.unfreeze > len(groups):  # within the message's bound, not the model's
            raise TransferkitError(
                f"the server's phase unfreezes {phase.unfreeze} layer groups; {cfg.backbone} has {len(groups)}"
            )
        freeze_for_phase(model, groups, phase)
        self._check_memory(model, groups, phase, cfg)
        names = trainable_names(model)
        if sent_names is not None and list(sent_names) != names:
            raise TransferkitError(
                f"the server sent weights for {len(sent_names)} tensors, not this phase's {len(names)} trainable ones"
            )
        codec = message.codec
        set_arrays(model, names, self._received(model, names, parameters, message) if codec.active else parameters)
        # A new shuffle every round and client, reproducible from the run's seed.
        cfg = cfg.replace(seed=derived_seed(cfg.seed, message.round, self.client_id))
        loaders, features = self._loaders(model, cfg)
        mu = message.proximal_mu
        settings = LoopSettings(cfg.weight_decay, warmup=0.0, monitor="loss", restore_best=False, decay=False)
        result = train(
            model, groups, [phase], loaders, Classification(len(self.classes), label_smoothing=cfg.label_smoothing),
            settings, device=torch.device("cpu"), frozen=features,
            penalty=_proximal(model, names, mu) if mu > 0 else None,
        )  # fmt: skip
        last = result.history[-1]
        metrics = {"train_loss": last.train_loss, "train_accuracy": last.train_accuracy}
        trained = get_arrays(model, names)
        if codec.active:  # the change from what both sides hold, with what earlier rounds did not send
            held, residual = self.memory.get("held"), self.memory.get("residual")
            current = dict(zip(names, trained, strict=True))
            trained = send_change(codec, names, held, current, np.random.default_rng(cfg.seed), residual)
            self.memory.put("residual", residual)  # held is not: it stays what the server sent
        return trained, len(self.samples), metrics

    def _received(
        self, model: nn.Module, names: list[str], wire: list[np.ndarray], message: FitMessage
    ) -> list[np.ndarray]:
        """A compressed round: the server sent a change from the weights this client holds (its
        own build's, for tensors it never received), and their checksum after the change."""
        held = self.memory.get("held")
        missing = [n for n in names if n not in held]  # newly unfrozen: this client's own pre-trained weights
        held |= dict(zip(missing, get_arrays(model, missing), strict=True))
        try:
            now = apply_change(message.codec, held, names, wire)
        except WireError as exc:
            raise TransferkitError(f"the server's compressed weights do not fit the model: {exc}") from None
        if digest([now[n] for n in names]) != message.digest:
            raise TransferkitError(
                f"client {self.client_id} is out of step with the server's compressed weights (it missed a round, "
                "or the two built different models): compressed rounds need every client every round"
            )
        self.memory.put("held", {**held, **now})
        return [now[n] for n in names]

    def _own_config(self, sent: dict[str, Any]) -> FitConfig:
        """The server says how to train, never what to load or trust: a server that could name a
        file and ``trust_pickle`` could make this machine unpickle (run) it. Starting weights come
        from the client's own ``--init-weights`` (safetensors, or tensors-only pickles). Every
        value is checked by the one validator of `fit`'s options (``from_dict``: types and bounds)
        before anything is built; a backbone must be one this client holds offline."""
        if sent.get("init_weights") and not self.init_weights:
            raise TransferkitError(
                f"the server's model starts from a weights file ({shown(sent['init_weights'])}); a client never "
                f"loads files the server names: start client {self.client_id} with --init-weights and its own copy"
            )
        name = check_stored_name(SERVER, "fit_config.backbone", sent.get("backbone"), registered_names(), hub_ids=False)
        cfg = from_dict({**sent, "init_weights": self.init_weights if sent.get("init_weights") else None,
                         "trust_pickle": False})  # fmt: skip
        # Offline: a registered backbone, or an architecture built from code with this client's own weights.
        if name not in registered_names() and cfg.init_weights is None and not self.allow_download:
            raise TransferkitError(
                f"the server names backbone {shown(name)}, which client {self.client_id} does not hold offline "
                "(a registered backbone, or its own --init-weights); start the client with --allow-download "
                "to let a server choose a model it downloads"
            )
        # The server cannot know this machine's cores: loader workers are at most one per core here.
        return cfg.replace(num_workers=min(cfg.num_workers, os.cpu_count() or 1)) if cfg.num_workers else cfg

    def _check_memory(self, model: TransferModel, groups: Sequence[LayerGroup], phase: Phase, cfg: FitConfig) -> None:
        """The server chooses the batch, the input side and what trains; this machine's memory is
        the client's. Every value may be within its bound and their product still more than the
        machine holds (1024 px × a batch of 65,536 × every layer: 20 GB, then the kernel's kill,
        which no handler sees): the round's need is estimated from one input first, refused in
        one line when it is over ``max_memory``."""
        pre = get_modality(cfg.modality).preprocessing(model.backbone, cfg)
        example = pre.example()
        sizes = activation_sizes(model.backbone, groups, example)
        head = sum(p.numel() for p in model.head.parameters())
        total = sum(p.numel() for p in model.parameters())
        buffers = sum(b.numel() for b in model.buffers())
        batch = min(cfg.batch_size, len(self.samples))  # a batch is never larger than the data
        need = estimate_phase_memory(phase, groups, sizes, total, head, buffers, batch).total
        if need > self.max_memory:
            raise TransferkitError(
                f"the server's round needs about {need / 2**30:.1f} GiB here (batch {batch}, input "
                f"{tuple(example.shape[1:])}, phase {shown(phase.name)}), over client {self.client_id}'s limit "
                f"of {self.max_memory / 2**30:.1f} GiB; refused (the limit: --max-memory)"
            )

    def _align_classes(self, server_classes: tuple[str, ...]) -> None:
        """Real label skew: a client may hold only some of the server's classes; its labels are
        renumbered to the server's list once. A class the server does not know is an error."""
        if self.classes == server_classes:
            return
        unknown = sorted(set(self.classes) - set(server_classes))
        if unknown:
            raise DataError(f"client {self.client_id} has classes the server does not: {', '.join(unknown)}")
        index = [server_classes.index(c) for c in self.classes]
        self.samples = tuple(replace(s, label=index[int(s.label)]) for s in self.samples)  # type: ignore[arg-type]
        self.classes = server_classes

    def _build(self, cfg: FitConfig) -> TransferModel:
        if self._model is None:
            seed_everything(cfg.seed)
            self._model, _ = prepare_model(cfg, get_strategy(cfg.strategy), SingleLabel(len(self.classes)))
        return self._model

    def _loaders(self, model: TransferModel, cfg: FitConfig) -> tuple[Loaders, FrozenInputs | None]:
        """Image loaders, and (as in ``fit``) cached features for frozen phases unless every
        epoch must see fresh augmentation. No local validation: the server scores centrally."""
        modality = get_modality(cfg.modality)
        splits = DatasetSplits(self.classes, self.samples, (), modality=modality.name)
        pre = modality.preprocessing(model.backbone, cfg)
        device = torch.device("cpu")
        drawn = batches(cfg, modality, pre, device)
        images = Loaders(sample_loader(modality, splits.train, drawn.train_transform, drawn, device, shuffle=True),
                         _NO_VALIDATION)  # fmt: skip
        if cfg.augment and modality.augments and cfg.cache_views == 0:
            return images, None
        # One epoch per round: a cut's activations would cost more than they save; the head on
        # features pays from the first epoch.
        return (
            images,
            lambda phase: (
                Shortcut(model.head, feature_loaders(model, splits, pre, drawn, device, None))
                if phase.head_only
                else None
            ),
        )


class LinkMemory:
    """What a client keeps between compressed rounds, by tensor name: the weights it holds from
    the server and what it has not sent yet. In Flower's ``context.state`` where there is one
    (the simulation builds a client object every round), else on the object."""

    def __init__(self, state: Any = None) -> None:
        self.state, self.local = state, {}  # type: ignore[var-annotated]

    def get(self, key: str) -> dict[str, np.ndarray]:
        if self.state is None:
            return dict(self.local.get(key, {}))
        record = self.state.get(f"transferkit.{key}")
        return {name: array.numpy() for name, array in record.items()} if record is not None else {}

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        if self.state is None:
            self.local[key] = dict(arrays)
        else:
            self.state[f"transferkit.{key}"] = to_record(list(arrays), list(arrays.values()))


_NO_VALIDATION: DataLoader[Any] = DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)))


def _proximal(model: nn.Module, names: Sequence[str], mu: float) -> Callable[[], torch.Tensor]:
    """FedProx: (mu/2)·‖w − w_global‖² over the travelling weights."""
    params = dict(model.named_parameters())
    anchors = [(params[n], params[n].detach().clone()) for n in names]

    def penalty() -> torch.Tensor:
        return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in anchors)  # type: ignore[return-value]

    return penalty
