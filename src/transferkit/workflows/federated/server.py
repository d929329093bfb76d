"""The server's side: a Flower strategy per phase of the plan, and the bookkeeping."""

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import numpy as np
from rich.console import Console
from rich.markup import escape

from transferkit.errors import TransferkitError
from transferkit.freezing import freeze_for_phase
from transferkit.layers import layer_groups
from transferkit.metrics import Scores
from transferkit.model import TransferModel
from transferkit.strategies import Phase
from transferkit.workflows.federated.client import (
    checked_weights,
    from_record,
    get_arrays,
    record_bytes,
    set_arrays,
    to_record,
    trainable_names,
)
from transferkit.workflows.federated.compression import Codec, apply_change, digest, send_change
from transferkit.workflows.federated.config import FederatedConfig
from transferkit.workflows.federated.flower import (
    ArrayRecord,
    Bulyan,
    ConfigRecord,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Grid,
    Krum,
    Message,
    MetricRecord,
    RecordDict,
    Strategy,
)
from transferkit.workflows.federated.wire import EXAMPLES, WireRefusal, one_line, reply_metrics

# --------------------------------------------------------------------------- the server


@dataclass
class RoundRecord:
    round: int
    phase: str
    clients_ok: int
    clients_failed: int
    accuracy: float
    macro_f1: float
    loss: float
    bytes_down: int
    bytes_up: int
    seconds: float
    train_loss: float = math.nan  # clients' own loss in their last local epoch, weighted by examples


class PhasedStrategy(Strategy):
    """A Flower strategy per phase of the plan, the global model kept across phases.

    A wrapper in Flower's sense: the aggregator (FedAvg, FedProx, FedAdam, optionally inside
    Flower's differential-privacy clipping) sees plain weights; this class compresses what
    goes down, decodes and checks what comes up, and keeps the books: bytes each way, replies
    and failures, and the central validation score after every round.
    """

    def __init__(
        self,
        cfg: FederatedConfig,
        model: TransferModel,
        classes: Sequence[str],
        score: Callable[[TransferModel, Phase], Scores],
        console: Console | None = None,
        join_timeout: float = 600.0,
    ) -> None:
        self.cfg, self.model, self.classes, self.score, self.console = cfg, model, tuple(classes), score, console
        self.join_timeout = join_timeout
        self.groups = layer_groups(model.backbone)
        self.phases = cfg.phases()
        self.records: list[RoundRecord] = []
        self._phase = -1
        self._inner: Strategy | None = None
        self._names: list[str] = []
        self._limits: list[int] = []
        self._pending: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._grid: Any = None  # the round's grid: a secure one counts the bytes of its own protocol
        self.codec = Codec.parse(cfg.compress)
        self._held: dict[str, np.ndarray] = {}  # a compressed link's weights, as every client holds them
        self._rng = np.random.default_rng(cfg.base.seed)
        self.client_sizes: dict[int, int] = {}  # each node's item count, from its good replies

    def initial_arrays(self) -> ArrayRecord:
        return self._enter(0)

    # Flower's Strategy.start calls these, in this order, every round.
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started, self._grid = time.perf_counter(), grid
        if server_round == 1:  # the first round waits for the whole cohort; later ones go on with fewer
            _wait_for_nodes(grid, self.cfg.clients, self.join_timeout)
        phase_index = self.cfg.phase_of(server_round)
        if phase_index != self._phase:
            set_arrays(self.model, self._names, from_record(arrays, self._names))
            arrays = self._enter(phase_index)
        assert self._inner is not None  # set by _enter
        phase = self.phases[phase_index]
        scale = self.cfg.lr_scale(server_round)
        local = replace(
            phase, epochs=self.cfg.local_epochs, head_lr=phase.head_lr * scale, backbone_lr=phase.backbone_lr * scale
        )
        settings: dict[str, Any] = {
            **config,
            "fit_config": json.dumps(self.cfg.base.to_dict()),
            "classes": json.dumps(self.classes),
            "phase": json.dumps(asdict(local)),
            "round": server_round,
        }  # fmt: skip
        sent = arrays
        if self.codec.active:  # the change since the last round, as every client holds that one
            weights = dict(zip(self._names, from_record(arrays, self._names), strict=True))
            sent = to_record(self._names, send_change(self.codec, self._names, self._held, weights, self._rng))
            settings |= {"compress": self.codec.name, "digest": digest([self._held[n] for n in self._names])}
        config = ConfigRecord(settings)
        # The aggregator is configured with the plain weights (FedAdam and DP clipping keep them
        # as the round's reference); the messages carry what actually travels.
        messages = list(self._inner.configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content = RecordDict({"arrays": sent, "config": message.content["config"]})
        self._pending = {"down": record_bytes(sent) * len(messages), "sent": len(messages)}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._inner is not None
        replies = list(replies)
        counted = getattr(self._grid, "counted", None)  # a secure grid counts SecAgg+'s four stages itself
        down, up = counted or (self._pending.get("down", 0), sum(_arrays_bytes(r) for r in replies))
        for reply in replies:
            if reply.has_error() and self.console:  # the client's own words: a refusal, or Flower's report
                reason = _reason(reply.error.reason or f"error {reply.error.code}")
                self.console.print(f"  [yellow]a client failed the round: {escape(reason)}[/]")
        good = [r for r in replies if not r.has_error() and self._decoded(r)]
        failed = self._pending.get("sent", len(replies)) - len(good)  # errors, refusals and silence
        self._pending |= {"down": down, "up": up, "ok": len(good), "failed": failed}
        if len(good) < self.cfg.needed:  # too few replies: keep the global model as it was
            if self.console:
                self.console.print(
                    f"  [yellow]round {server_round}: {len(good)} of {self.cfg.needed} needed clients replied "
                    f"({failed} failed); weights unchanged[/]"
                )
            # the global weights as they were, of this phase (Flower would keep the last round's,
            # which are the previous phase's tensors when this round entered a new phase)
            return to_record(self._names, get_arrays(self.model, self._names)), None
        self._clip_counts(good)
        arrays, metrics = self._inner.aggregate_train(server_round, good)
        loss = metrics.get("train_loss", math.nan) if metrics else math.nan
        self._pending["train_loss"] = float(loss) if isinstance(loss, int | float) else math.nan
        try:  # FedAdam's and Bulyan's arithmetic promote to float64: send what the model holds, checked
            plain = from_record(arrays, self._names) if arrays is not None else None
            weights = checked_weights(self.model, self._names, plain) if plain is not None else None
        except WireRefusal as exc:
            weights = None
            if self.console:
                self.console.print(f"  [yellow]round {server_round}: the aggregate was refused ({escape(str(exc))})[/]")
        if weights is None:  # Krum/Bulyan with too few replies, or a refused aggregate: keep this phase's weights
            weights = get_arrays(self.model, self._names)
        return to_record(self._names, weights), metrics

    def _clip_counts(self, good: Sequence[Message]) -> None:
        """A client's item count checked against what the server expects: a reply weighs at most
        :data:`COUNT_CLIP` × the median count of the round's other replies, so one client claiming
        999,999 items (under ``--max-client-items``) next to honest hundreds cannot move a weighted
        average by its own update alone. Each clipped client is named in the log, every round; the
        claim itself is kept (and must not change between rounds). Robust aggregators do not
        weight by counts; the clip is harmless there."""
        counts = [int(r.content["metrics"][EXAMPLES]) for r in good]  # type: ignore[arg-type]  # checked ints
        weights = clipped_counts(counts)
        total_before, total_after = sum(counts), sum(weights)
        for reply, count, weight in zip(good, counts, weights, strict=True):
            if weight == count:
                continue
            metrics = reply.content["metrics"]
            assert isinstance(metrics, MetricRecord)  # _decoded put it there
            reply.content = RecordDict(
                {"arrays": reply.content["arrays"], "metrics": MetricRecord({**dict(metrics), EXAMPLES: weight})}
            )
            if self.console:
                self.console.print(
                    f"  [yellow]client {reply.metadata.src_node_id} claims {count} items, over {COUNT_CLIP}× the "
                    f"others' median ({weight // COUNT_CLIP}): weighted as {weight} ({weight / total_after:.0%} of the "
                    f"average, not {count / total_before:.0%})[/]"
                )

    def _decoded(self, reply: Message) -> bool:
        """A client's reply is untrusted too: one array record holding the travelling tensors'
        weights (or a change from them that decodes), each array bounded by its tensor's size
        before it is read, finite and within bounds as float32, and metrics in the one schema
        (:func:`reply_metrics`) with the item count this client claimed before. A reply that is
        not counts as a failed client, never as a crash of the server (nor of Flower's
        aggregator). A good reply's content is replaced by the plain float32 weights."""
        try:
            arrays, metrics = self._checked_reply(reply)
        except Exception as exc:  # WireRefusal, a change that does not decode (WireError), Flower's records
            if self.console:
                reason = one_line(str(exc) if isinstance(exc, TransferkitError) else type(exc).__name__, 200)
                self.console.print(f"  [yellow]a client's reply was refused: {escape(reason)}[/]")
            return False
        self.client_sizes[reply.metadata.src_node_id] = cast(int, metrics[EXAMPLES])  # an int: reply_metrics checked it
        reply.content = RecordDict({"arrays": to_record(self._names, arrays), "metrics": metrics})
        return True

    def _checked_reply(self, reply: Message) -> tuple[list[np.ndarray], MetricRecord]:
        content = reply.content
        if set(content.keys()) != {"arrays", "metrics"}:
            raise WireRefusal(f"records {sorted(content.keys())[:5]}; expected arrays and metrics")
        record, sent = content["arrays"], content["metrics"]
        if not isinstance(record, ArrayRecord) or not isinstance(sent, MetricRecord):
            raise WireRefusal("records of the wrong kind")
        metrics = reply_metrics(sent, self.cfg.max_client_items)
        count, before = metrics[EXAMPLES], self.client_sizes.get(reply.metadata.src_node_id)
        if before is not None and count != before:  # a client's data does not change during a run
            raise WireRefusal(f"a client claims {count} items after {before} in an earlier round")
        arrays = from_record(record, self._names, self.codec.per_tensor, self._limits)
        if self.codec.active:  # a change from what the client holds: the weights it trained
            now = apply_change(self.codec, self._held, self._names, arrays)
            arrays = [now[n] for n in self._names]
        return checked_weights(self.model, self._names, arrays), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # scored centrally, on the server's validation split

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        """transferkit prints its own line per round instead of Flower's summary."""

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """The central score of the global model (Flower's ``evaluate_fn``), recorded per round."""
        set_arrays(self.model, self._names, from_record(arrays, self._names))
        phase = self.phases[self.cfg.phase_of(max(server_round, 1))]
        scores = self.score(self.model, phase)
        if server_round > 0:
            self._record(server_round, phase, scores)
        elif self.console:
            self.console.print(f"round   0 (start) | val acc {scores.accuracy:.3f}", highlight=False)
        return MetricRecord({"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "loss": scores.loss})

    def _record(self, server_round: int, phase: Phase, scores: Scores) -> None:
        pending = self._pending
        record = RoundRecord(
            server_round, phase.name, pending.get("ok", 0), pending.get("failed", 0), scores.accuracy,
            scores.macro_f1, scores.loss, pending.get("down", 0), pending.get("up", 0),
            time.perf_counter() - self._started, pending.get("train_loss", math.nan),
        )  # fmt: skip
        self.records.append(record)
        if self.console:
            self.console.print(
                f"round {server_round:>3}/{self.cfg.rounds} \\[{phase.name}] {record.clients_ok} client(s)"
                + (f", {record.clients_failed} failed" if record.clients_failed else "")
                + f" | val acc {scores.accuracy:.3f} f1 {scores.macro_f1:.3f} loss {scores.loss:.3f}"
                f" | sent {_mb(record.bytes_down + record.bytes_up)} | {record.seconds:.1f}s",
                highlight=False,
                soft_wrap=True,
            )

    def _enter(self, index: int) -> ArrayRecord:
        """Start phase ``index``: its travelling weights, and a fresh Flower strategy over them."""
        self._phase = index
        freeze_for_phase(self.model, self.groups, self.phases[index])
        self._names = trainable_names(self.model)
        arrays = get_arrays(self.model, self._names)
        # the most bytes a reply's array may hold for each tensor: float64 weights and the npy header
        self._limits = [a.size * 8 + 1024 for a in arrays]
        for name, array in zip(self._names, arrays, strict=True):  # clients build these weights themselves
            self._held.setdefault(name, array.copy())
        self._inner = _flower_strategy(self.cfg)
        return to_record(self._names, arrays)


COUNT_CLIP = 10  # a reply weighs at most this many times the median count of the round's other replies


def clipped_counts(counts: Sequence[int]) -> list[int]:
    """Each count clipped to :data:`COUNT_CLIP` × the median of the others' counts (a count with
    no others is kept): the weights a weighted average gives the round's replies."""
    clipped = []
    for i, count in enumerate(counts):
        others = [*counts[:i], *counts[i + 1 :]]
        bound = COUNT_CLIP * math.ceil(float(np.median(others))) if others else count
        clipped.append(min(count, max(bound, 1)))
    return clipped


def _arrays_bytes(reply: Message) -> int:
    record = reply.content.get("arrays") if reply.has_content() else None
    return record_bytes(record) if isinstance(record, ArrayRecord) else 0


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            joined = len(list(grid.get_node_ids()))
            raise TransferkitError(f"only {joined} of {count} clients joined in {timeout:.0f} s")
        time.sleep(0.5)


def _flower_strategy(cfg: FederatedConfig) -> Strategy:
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_fit,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.needed,
        "min_available_nodes": cfg.needed,
        "weighted_by_key": EXAMPLES,
    }
    strategies: dict[str, Callable[[], Strategy]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(proximal_mu=cfg.proximal_mu, **common),
        "fedadam": lambda: FedAdam(eta=cfg.server_lr, eta_l=cfg.base.lr, tau=1e-3, **common),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(beta=cfg.trim, **common),
        "krum": lambda: Krum(num_malicious_nodes=cfg.byzantine, **common),
        "bulyan": lambda: Bulyan(num_malicious_nodes=cfg.byzantine, **common),
    }
    strategy = strategies[cfg.aggregator]()
    if cfg.dp_noise is not None:  # Flower's central DP: clip each client's update, noise the sum
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, cfg.dp_noise, cfg.dp_clip, cfg.sampled)
    return strategy


def _reason(text: str) -> str:
    """Flower reports a ClientApp's exception as ``<class '...'>:<'message'>``: the message."""
    found = re.search(r":<'(.*)'>\s*$", text, re.DOTALL)
    return (found.group(1) if found else text).strip()[-500:]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
