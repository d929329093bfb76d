"""Secure aggregation: Flower's SecAgg+ under the same strategy, as the grid it sends through.

With ``--secure-aggregation`` the server learns the clients' weighted mean update and nothing
of any one client's, beyond its item count and training loss (SecAgg+ sends those in the
clear). Flower's ``SecAggPlusWorkflow`` runs the protocol — setup, key sharing, masked
vectors, unmasking — and belongs to Flower's legacy workflow API, which does not compose with
``Strategy.start``. Rather than a second server loop, :class:`SecureGrid` runs the protocol
inside ``send_and_receive``: the strategy's train messages go in, and one reply per client
that took part comes out, each carrying the unmasked *mean* weights and that client's own
count and metrics. FedAvg of identical arrays is that mean and FedAdam steps on it, so every
aggregator composes unchanged.

Clients send the change from the weights they received: SecAgg+ clips every value to
±:data:`CLIP` and quantises it to 2²² levels, which a round's change sits far inside and whole
weights need not. On a client, :func:`secure_mod` hands SecAgg+ messages to Flower's
``secaggplus_mod``, whose inner call :func:`_bridge` turns Flower's legacy records into
transferkit's and the trained weights into that change.
"""

import json
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.schema import SchemaError
from transferkit.workflows.federated.client import SERVER, record_bytes, record_names, to_record
from transferkit.workflows.federated.flower import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    SECAGG_CONFIGS,
    ClientAppCallable,
    ClientManager,
    ClientProxy,
    Code,
    ConfigRecord,
    Context,
    Error,
    FitIns,
    FitRes,
    Grid,
    LegacyContext,
    LegacyStrategy,
    Message,
    MetricRecord,
    Parameters,
    RecordDict,
    SecAggPlusWorkflow,
    Status,
    WorkflowKey,
    legacy_records,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    secaggplus_mod,
)
from transferkit.workflows.federated.wire import EXAMPLES

CLIP = 8.0  # SecAgg+ clips each value of a client's change to ±CLIP before quantising it
NAMES = "secure-names"  # the travelling tensors' names: Flower's legacy fit records carry arrays unnamed
SHARES, THRESHOLD = 1.0, 2 / 3  # every client holds a share of every other's secret; 2/3 of them rebuild it
FIRST_MAX_WEIGHT = 1000.0  # Flower's default, until the round's replies give the largest item count
HALTED = 1_001  # the error code of a client left out of a round's sum
TOO_FEW = "secure aggregation halted: too few clients stayed in the round"


class SecureGrid:
    """A grid whose ``train`` exchange is Flower's SecAgg+ protocol; everything else passes
    through. ``counted`` holds the bytes of the last exchange (every stage, both ways)."""

    def __init__(self, grid: Grid, largest: int | None = None) -> None:
        self.grid = grid
        self.counted = (0, 0)
        # SecAgg+ weighs a client by count/max_weight, quantised: a weight far below 1 costs
        # precision, one above 1 is clipped. The largest client's count where known, else
        # Flower's default until the first round's replies tell.
        self.max_weight = float(largest) if largest else FIRST_MAX_WEIGHT

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        content = messages[0].content  # the strategy's own messages: the same weights for every node
        record, config = content.array_records["arrays"], content.config_records["config"]
        names = record_names(record)
        sent = [a.numpy() for a in record.values()]
        collector = _Collector({m.metadata.dst_node_id: m for m in messages}, sent, dict(config), names)
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=collector)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: int(cast(int, config["round"]))}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = legacy_records.parameters_to_arrayrecord(
            ndarrays_to_parameters(sent), keep_input=True
        )
        counting = _CountingGrid(self.grid)
        workflow = SecAggPlusWorkflow(
            SHARES, THRESHOLD, max_weight=self.max_weight, clipping_range=CLIP, timeout=timeout
        )
        workflow(cast(Grid, counting), context)
        self.counted = counting.down, counting.up
        replies = collector.replies()
        counts = [r.content.metric_records["metrics"][EXAMPLES] for r in replies]
        if counts:  # weights as count / max_weight: the largest client weighs 1, no client is clipped
            self.max_weight = float(max(cast(list[int], counts)))
        summed = {r.metadata.src_node_id for r in replies}
        return replies + [  # the others, with their own reason where one came back
            Message(Error(code=HALTED, reason=counting.errors.get(node, TOO_FEW)), reply_to=m)
            for node, m in collector.by_node.items()
            if node not in summed
        ]


class _Collector(LegacyStrategy):
    """The legacy strategy SecAgg+ asks for fit instructions and hands the unmasked result:
    the strategy's own messages, and replies in their format."""

    def __init__(self, by_node: dict[int, Message], sent: list[np.ndarray], config: dict[str, Any], names: list[str]):
        self.by_node, self.sent, self.config, self.names = by_node, sent, config, names
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        # ``parameters``: the round's weights, serialised once by the grid; every node gets them
        config = {**self.config, NAMES: json.dumps(self.names)}
        return [(_Node(nid), FitIns(parameters, config)) for nid in self.by_node]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        self.results = results
        return None, {}

    def replies(self) -> list[Message]:
        """One reply per client in the sum: the mean change added to what was sent (the same
        for all), with the client's own count and metrics."""
        out = []
        for proxy, res in self.results:
            change = parameters_to_ndarrays(res.parameters)
            weights = [(s + c).astype(s.dtype) for s, c in zip(self.sent, change, strict=True)]
            metrics = MetricRecord({**_numbers(res.metrics), EXAMPLES: int(res.num_examples)})
            content = RecordDict({"arrays": to_record(self.names, weights), "metrics": metrics})
            out.append(Message(content, reply_to=self.by_node[int(proxy.node_id)]))
        return out

    # The legacy strategy's other duties: the strategy above the grid does them.
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[Any]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _Node(ClientProxy):
    """What SecAgg+ needs of a client: its node id."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


class _CountingGrid:
    """The grid, counting the bytes of every message each way (arrays and byte strings)."""

    def __init__(self, grid: Grid) -> None:
        self.grid, self.down, self.up = grid, 0, 0
        self.errors: dict[int, str] = {}  # a node's error reply, at any stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.down += sum(map(_message_bytes, messages))
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.up += sum(map(_message_bytes, replies))
        for reply in replies:
            if reply.has_error():
                self.errors.setdefault(reply.metadata.src_node_id, reply.error.reason or f"error {reply.error.code}")
        return replies


def _message_bytes(message: Message) -> int:
    if not message.has_content():
        return 0
    total = sum(record_bytes(r) for r in message.content.array_records.values())
    for record in message.content.config_records.values():
        for value in record.values():
            parts = value if isinstance(value, list) else [value]
            total += sum(len(p) for p in parts if isinstance(p, bytes | str))
    return total


def _numbers(metrics: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


# --------------------------------------------------------------------------- the client's side


def secure_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod: SecAgg+ messages go through Flower's ``secaggplus_mod``, with
    :func:`_bridge` as its inner call; every other message straight to the app."""
    if not message.has_content() or SECAGG_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    return secaggplus_mod(message, context, partial(_bridge, call_next=call_next))


def _bridge(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The masked-vector stage: Flower's legacy fit records in, transferkit's to the app, and
    the change from what arrived back, in Flower's legacy reply records (SecAgg+ masks it)."""
    try:
        ins = legacy_records.recorddict_to_fitins(message.content, keep_input=True)
        config = dict(ins.config)
        received = parameters_to_ndarrays(ins.parameters)
    except (KeyError, TypeError, ValueError) as exc:  # the server's message: untrusted like any other
        raise SchemaError(SERVER, "records", sorted(message.content.keys()), "expected Flower's fit records") from exc
    names = _names(config.pop(NAMES, None), len(received))
    config_record = ConfigRecord(cast(dict[str, Any], config))
    message.content = RecordDict({"arrays": to_record(names, received), "config": config_record})
    reply = call_next(message, context)
    if reply.has_error():  # the app's refusal, printed there; Flower reports this to the server
        raise TransferkitError(reply.error.reason)
    trained, metrics = reply.content.array_records["arrays"], dict(reply.content.metric_records["metrics"])
    change = [t.numpy() - r for t, r in zip(trained.values(), received, strict=True)]
    count = int(cast(int, metrics.pop(EXAMPLES)))
    result = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(change), count, cast(dict[str, Any], metrics))
    return Message(legacy_records.fitres_to_recorddict(result, keep_input=False), reply_to=message)


def _names(sent: object, count: int) -> list[str]:
    """The tensor names the server sent: a JSON list of ``count`` strings (untrusted, as all)."""
    try:
        names = json.loads(sent) if isinstance(sent, str) and len(sent) < 1_000_000 else None
    except (ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise SchemaError(SERVER, NAMES, sent, f"expected a JSON list of {count} tensor names")
    return names
