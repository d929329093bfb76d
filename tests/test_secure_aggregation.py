"""Secure aggregation: Flower's SecAgg+ protocol run in this process between the server's
grid and the clients' mod — the server gets the weighted mean and never one client's update."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from tests.conftest import TINY, TINY_IMAGE, quick_config
from tests.flower_fakes import FakeGrid, flower_task, reply, sent_arrays  # noqa: F401  (flower_task: a fixture)
from tests.test_federated import fed as fed  # a fixture
from transferkit.errors import ConfigError, TransferkitError
from transferkit.workflows.federated import FederatedConfig
from transferkit.workflows.federated.client import EXAMPLES, record_names, to_record
from transferkit.workflows.federated.secure import NAMES, SecureGrid, _names, secure_mod

Answer = Callable[[int, Message], Message]


class ModGrid(FakeGrid):
    """Nodes that answer through ``secure_mod`` (as a ClientApp with it would), each with its
    own context; ``seen`` keeps every reply the server received, to look for plain updates."""

    def __init__(self, nodes: int, answer: Answer) -> None:
        super().__init__(nodes)
        self.answer, self.seen = answer, []  # type: ignore[var-annotated]
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in self.nodes}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for sent in messages:
            message = copy.deepcopy(sent)  # each node gets its own copy, as over a wire
            node = message.metadata.dst_node_id
            message.metadata.__dict__["_message_id"] = f"m{len(self.seen)}-{node}"  # a SuperLink stamps one
            handler = lambda m, c, node=node: self.answer(self.nodes.index(node), m)  # noqa: E731
            try:
                answer = secure_mod(message, self.contexts[node], handler)
                replies.append(Message(answer.content, reply_to=sent))  # to the server's message
            except Exception as exc:  # a ClientApp's exception: Flower replies with an error
                replies.append(Message(Error(code=2, reason=str(exc)), reply_to=sent))
        self.seen.extend(replies)
        return replies


def _train_message(node: int, arrays: list[np.ndarray]) -> Message:
    content = RecordDict({"arrays": to_record(["w", "b"], arrays), "config": ConfigRecord({"round": 3})})
    return Message(content, dst_node_id=node, message_type="train")


@pytest.mark.usefixtures("flower_task")
def test_the_server_gets_the_weighted_mean_and_no_clients_update() -> None:
    rng = np.random.default_rng(0)
    sent = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    changes = [[rng.normal(0, 0.1, a.shape).astype(np.float32) for a in sent] for _ in range(3)]
    counts = [10, 30, 60]

    def client(i: int, message: Message) -> Message:
        assert record_names(message.content["arrays"]) == ["w", "b"]  # named again on the client's side
        assert NAMES not in message.content["config"]
        trained = [a + c for a, c in zip(sent_arrays(message), changes[i], strict=True)]
        return reply(message, trained, count=counts[i], loss=float(i))

    grid = ModGrid(3, client)
    secure = SecureGrid(grid)  # type: ignore[arg-type]
    replies = list(secure.send_and_receive([_train_message(n, sent) for n in grid.nodes]))
    mean = [sum(n * c[k] for n, c in zip(counts, changes, strict=True)) / sum(counts) for k in range(2)]
    assert sorted(r.content["metrics"][EXAMPLES] for r in replies) == counts
    # SecAgg+'s precision: each client's count/1000-weighted change is rounded (stochastically) to
    # 16/2^22 = 3.8e-6, and the sum is divided by the weights' total, 0.1: at worst 3 × 3.8e-5
    for r in replies:  # every reply: what was sent plus the weighted mean change
        got = [a.numpy() for a in r.content["arrays"].values()]
        assert all(np.allclose(g, s + m, atol=2e-4) for g, s, m in zip(got, sent, mean, strict=True))
        assert all(g.dtype == np.float32 for g in got)
    plain = {c.tobytes() for change in changes for c in change}
    assert not any(  # what crossed the wire up holds masked vectors, never a client's change
        a.numpy().tobytes() in plain
        for m in grid.seen
        for rec in m.content.array_records.values()
        for a in rec.values()
    )
    down, up = secure.counted
    assert up > 3 * sum(a.nbytes for a in sent) and down > 0 and secure.max_weight == 60


@pytest.mark.usefixtures("flower_task")
def test_a_client_failing_mid_round_drops_out_of_the_sum() -> None:
    """A client that fails its round drops out of the sum: the other two hold enough shares
    of its secrets (2 of 3) to remove its masks, and the server gets their mean alone."""
    sent = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]

    def client(i: int, message: Message) -> Message:
        if i == 2:
            raise TransferkitError("no images here")
        return reply(message, [a + 1.0 for a in sent_arrays(message)], count=5)

    grid = ModGrid(3, client)
    replies = list(SecureGrid(grid).send_and_receive([_train_message(n, sent) for n in grid.nodes]))  # type: ignore[arg-type]
    failed = [r for r in replies if r.has_error()]
    assert len(failed) == 1 and "no images here" in failed[0].error.reason  # its own reason, for the server to print
    replies = [r for r in replies if not r.has_error()]
    # 5 items of a first round's max weight of 1000: each value is quantised at 1/200 of its scale
    assert len(replies) == 2 and all(np.allclose(r.content["arrays"]["w"].numpy(), 1.0, atol=2e-3) for r in replies)


def test_the_names_a_server_sends_are_checked() -> None:
    assert _names('["a", "b"]', 2) == ["a", "b"]
    for bad in ('["a"]', "[1, 2]", "{}", "not json", None, "x" * 2_000_000):
        with pytest.raises(TransferkitError, match=NAMES):
            _names(bad, 2)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"compress": "int8"}, "compress"), ({"dp_noise": 0.1}, "dp_noise"), ({"clients": 1}, "clients")],
)
def test_secure_aggregation_refuses_what_it_cannot_combine_with(changes: dict[str, object], field: str) -> None:
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="feature-extraction", augment=False)
    with pytest.raises(ConfigError, match=field):
        FederatedConfig(**{"clients": 2, "secure_aggregation": True, "base": base, **changes})  # type: ignore[arg-type]


@pytest.mark.slow  # a SuperLink and two SuperNodes, ~60 s; the simulation test above runs the same apps
def test_secure_aggregation_on_flowers_deployment_engine(fed: tuple[Path, Path], tmp_path: Path) -> None:
    """Each SuperNode keeps SecAgg+'s keys in its context between the protocol's four stages."""
    import json
    import subprocess

    from tests.test_federated import _clients, _kill, _serving

    data, _ = fed
    clients: list[subprocess.Popen[str]] = []
    with _serving(fed, tmp_path, "--clients", "2", "--rounds", "2", "--secure-aggregation") as (server, port):
        try:
            clients = _clients(data, port, tmp_path, 2, 2)
            assert server.wait(timeout=300) == 0, (tmp_path / "server.log").read_text()
        finally:
            for c in clients:
                _kill(c)
    saved = json.loads((tmp_path / "global" / "rounds.json").read_text())
    assert [r["clients_ok"] for r in saved["rounds"]] == [2, 2]
