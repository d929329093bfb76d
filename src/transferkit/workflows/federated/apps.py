"""Flower's apps: a ``ServerApp`` and a ``ClientApp`` holding transferkit's server and client once.

The simulation (``transferkit federated``) builds them around data it already holds; the
deployment engine (SuperLink, SuperNodes, ``flwr run``) loads the module-level ``server_app``
and ``client_app``, which read what they need from the run config (the server's operator) and
the node config (each client's own operator). Nothing a message carries is opened as a path.
"""

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from transferkit.config import FitConfig
from transferkit.errors import ConfigError, TransferkitError
from transferkit.modalities import Sample
from transferkit.modalities.common import first_label
from transferkit.pipeline import fit_to_data, load_data
from transferkit.schema import Interval, SchemaError
from transferkit.workflows.federated.client import SERVER, TransferClient, record_names, to_record
from transferkit.workflows.federated.config import FederatedConfig, partition, replace_config
from transferkit.workflows.federated.flower import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    Error,
    Grid,
    Message,
    MetricRecord,
    RecordDict,
    ServerApp,
)
from transferkit.workflows.federated.result import Coordinator
from transferkit.workflows.federated.secure import secure_mod
from transferkit.workflows.federated.wire import EXAMPLES, decode, one_line

# --------------------------------------------------------------------------- one round, on a client


REFUSED = 1_000  # the error code of a round a client refused: an application code, above Flower's own


def train_reply(client: TransferClient, message: Message) -> Message:
    """A ``train`` message answered: the travelling weights (named, as Flower's records are)
    and the round's instructions checked, trained, and sent back with the item count. A round
    the client refuses (a message that fails its checks) is one line here and an error reply
    there that says why, never a traceback. A server whose instructions would still exhaust this
    machine (memory) is refused the same way."""
    try:
        return _trained(client, message)
    except (TransferkitError, MemoryError) as exc:
        reason = one_line(str(exc) if isinstance(exc, TransferkitError) else "out of memory building the round")
        print(f"error: client {client.client_id} refused the round: {reason}", file=sys.stderr, flush=True)
        return Message(Error(code=REFUSED, reason=reason), reply_to=message)


def _trained(client: TransferClient, message: Message) -> Message:
    content = message.content
    if set(content.keys()) != {"arrays", "config"}:
        raise SchemaError(SERVER, "records", sorted(content.keys()), "expected the records arrays and config")
    arrays, config = content["arrays"], content["config"]
    if not isinstance(arrays, ArrayRecord) or not isinstance(config, ConfigRecord):
        raise SchemaError(SERVER, "records", sorted(content.keys()), "expected an array record and a config record")
    names = record_names(arrays)
    # every array's header bounded before it is read (sizes, dtypes), the shapes against the model in fit
    trained, count, metrics = client.fit(decode(arrays), dict(config), sent_names=names)
    reply = RecordDict({"arrays": to_record(names, trained), "metrics": MetricRecord({EXAMPLES: count, **metrics})})
    return Message(reply, reply_to=message)


def simulation_apps(
    coordinator: Coordinator,
    shards: Sequence[Sequence[Sample]],
    classes: Sequence[str],
    init_weights: str | None,
    round_timeout: float | None = None,
) -> tuple[ServerApp, ClientApp]:
    """The two apps around data this process holds: node ``partition-id`` trains ``shards[i]``."""
    server, client = ServerApp(), ClientApp(mods=[secure_mod])
    parts = [tuple(s) for s in shards]
    names = tuple(classes)

    @server.main()
    def _serve(grid: Grid, context: Context) -> None:
        coordinator.run(grid, round_timeout, largest=max(map(len, parts)))

    @client.train()
    def _train(message: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])
        # context.state outlives the client object: it keeps a compressed link's weights between rounds
        # the simulation's server is this machine's own user: the backbone it names is theirs to download
        client = TransferClient(parts[cid], names, cid, init_weights, context.state, allow_download=True)
        return train_reply(client, message)

    return server, client


# --------------------------------------------------------------------------- the deployment's apps

server_app = ServerApp()
client_app = ClientApp(mods=[secure_mod])  # SecAgg+ rounds through Flower's mod; others straight in

RUN_KEYS = ("data", "out", "federated", "round-timeout")  # what `federated-server` writes in the app's config


@server_app.main()
def _deployed_server(grid: Grid, context: Context) -> None:
    """The server of a deployment: its data, output folder and settings from the run config."""
    run = context.run_config
    try:
        cfg = FederatedConfig.from_dict(json.loads(str(run["federated"])))
        splits = load_data(Path(str(run["data"])), cfg.base)
        cfg = replace_config(cfg, base=fit_to_data(cfg.base, splits))
        coordinator = Coordinator(splits, cfg, Console(highlight=False, soft_wrap=True))
        timeout = float(str(run.get("round-timeout", 0))) or None
        coordinator.run(grid, timeout)
        coordinator.finish(None, str(run["out"]))
    except TransferkitError as exc:  # one line; `federated-server` then says the run did not finish
        print(f"error: {exc}", file=sys.stderr, flush=True)


@client_app.train()
def _deployed_client(message: Message, context: Context) -> Message:
    """A client of a deployment: its images (and demo part of them) from its own node config."""
    return train_reply(node_client(dict(context.node_config), context.state), message)


NODE_KEYS = frozenset(
    {"data", "part", "partition", "alpha", "seed", "val-fraction", "init-weights", "allow-download", "max-memory"}
)


def node_client(node: dict[str, Any], state: Any = None) -> TransferClient:
    """The client a SuperNode's config describes (``federated-client`` writes it)."""
    unknown = sorted(set(node) - NODE_KEYS - {"partition-id", "num-partitions"})
    if unknown:
        raise ConfigError("node-config", unknown, f"expected only {', '.join(sorted(NODE_KEYS))}")
    seed = int(node.get("seed", 0))
    splits = load_data(Path(str(node["data"])), FitConfig(val_fraction=float(node.get("val-fraction", 0.2)), seed=seed))
    samples = [*splits.train, *splits.val, *splits.test]  # the server scores centrally: all of it trains
    client_id = 0
    if node.get("part"):
        client_id, n = (int(v) for v in str(node["part"]).split("/"))
        scheme, alpha = str(node.get("partition", "iid")), float(node.get("alpha", 0.5))
        chosen = partition([first_label(s) for s in samples], n, scheme, alpha, seed)[client_id]
        samples = [samples[i] for i in chosen]
    weights = node.get("init-weights") or None
    allow = node.get("allow-download", False)
    if not isinstance(allow, bool):  # a TOML boolean: a string "false" must not read as yes
        raise ConfigError("node-config allow-download", allow, "must be true or false")
    limit = node.get("max-memory")
    if limit is not None:  # bytes, as `federated-client --max-memory` writes them
        limit = Interval(int, 2**26, 2**47).check("node-config", "max-memory", limit)
    return TransferClient(samples, splits.classes, client_id, str(weights) if weights else None, state, allow, limit)
