"""Flower's server side without Flower's runtime: a grid of fake nodes, and one round of the
server's strategy answered by the test (or by real clients in this process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from transferkit.workflows.federated import PhasedStrategy
from transferkit.workflows.federated.client import record_names, to_record
from transferkit.workflows.federated.wire import EXAMPLES


@pytest.fixture
def flower_task() -> Iterator[None]:
    """Flower stamps every message with the run and node of the process; a ServerApp sets them."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """The nodes a SuperLink would list; the strategy only asks which there are."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(10, 10 + nodes))

    def get_node_ids(self) -> Iterable[int]:
        return self.nodes


def reply(message: Message, arrays: list[np.ndarray], count: int = 10, loss: float = 1.0) -> Message:
    """A client's answer to ``message``: its arrays, named as the message's were, and the
    metrics every reply carries (the server refuses any other schema)."""
    names = record_names(message.content["arrays"])
    metrics = MetricRecord({EXAMPLES: count, "train_loss": loss, "train_accuracy": 0.5})
    content = RecordDict({"arrays": to_record(names, arrays), "metrics": metrics})
    return Message(content, reply_to=message)


def sent_arrays(message: Message) -> list[np.ndarray]:
    return [a.numpy() for a in message.content["arrays"].values()]


def one_round(
    strategy: PhasedStrategy,
    server_round: int,
    arrays: ArrayRecord,
    answer: Callable[[int, Message], Message],
    nodes: int = 2,
) -> tuple[list[Message], ArrayRecord]:
    """Flower's ``Strategy.start`` for one round: configure, the nodes' answers, aggregate, score."""
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(nodes)))  # type: ignore[arg-type]
    new, _ = strategy.aggregate_train(server_round, [answer(i, m) for i, m in enumerate(messages)])
    new = arrays if new is None else new
    strategy.evaluate(server_round, new)
    return messages, new
