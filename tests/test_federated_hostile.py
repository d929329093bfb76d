"""A federation no single party can break: a hostile server's instructions are a refused round
on the client (one line, nothing built), a hostile client's reply is set aside by the server
(the round goes on with the others), and the robust aggregators hold against one liar. All in
process: the ClientApp's handler and the server's strategy against a fake grid, no Ray."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from rich.console import Console

from tests.conftest import TINY, TINY_IMAGE, quick_config
from tests.flower_fakes import FakeGrid, flower_task, one_round, reply, sent_arrays  # noqa: F401  (a fixture)
from tests.test_bounds import _invalid
from tests.test_federated import _base, _strategy, fed  # noqa: F401  (fed: the module's fixture)
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.metrics import score
from transferkit.pipeline import SingleLabel, fit_to_data, load_data, prepare_model
from transferkit.runtime import seed_everything
from transferkit.strategies import get_strategy
from transferkit.workflows.federated import FederatedConfig, PhasedStrategy, replace_config
from transferkit.workflows.federated.apps import REFUSED, train_reply
from transferkit.workflows.federated.client import TransferClient, derived_seed
from transferkit.workflows.federated.server import clipped_counts
from transferkit.workflows.federated.wire import EXAMPLES, WireRefusal, decode

# --------------------------------------------------------------------------- a hostile server


@pytest.fixture
def server_and_client(fed: tuple[Path, Path], flower_task: None) -> tuple[Message, TransferClient]:  # noqa: F811
    """The first round's message of an honest server, and a client holding its own weights."""
    data, weights = fed
    cfg = FederatedConfig(clients=1, rounds=1, base=_base(weights))
    splits = load_data(data, cfg.base)
    strategy = _strategy(replace_config(cfg, base=fit_to_data(cfg.base, splits)), tuple(splits.classes))
    (message,) = strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid(1))  # type: ignore[arg-type]
    return message, TransferClient(list(splits.train), splits.classes, 0, init_weights=str(weights))


def _tampered(message: Message, fit: dict[str, Any] | None = None, phase: dict[str, Any] | None = None) -> Message:
    config = message.content["config"]
    assert isinstance(config, ConfigRecord)
    if fit is not None:
        config["fit_config"] = json.dumps({**json.loads(str(config["fit_config"])), **fit})
    if phase is not None:
        config["phase"] = json.dumps({**json.loads(str(config["phase"])), **phase})
    return message


def _refusal(client: TransferClient, message: Message, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()  # the server's own log lines
    answer = train_reply(client, message)
    assert answer.has_error() and answer.error.code == REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the round" in err and "Traceback" not in err
    reason = str(answer.error.reason)
    assert "\n" not in reason and len(reason) <= 300
    assert client._model is None  # refused before anything was built
    return reason


@pytest.mark.parametrize(
    ("fit", "field"),
    [
        ({"hidden": 10**6}, "hidden"),
        ({"image_size": 100_000}, "image_size"),
        ({"num_workers": 10**6}, "num_workers"),
        ({"seed": 2**70}, "seed"),
        ({"lr": 1e300}, "lr"),
        ({"backbone": "resnet50"}, "does not hold offline"),
        ({"k" * 100_000: 1}, "unknown config key"),
    ],
)
def test_a_servers_instruction_out_of_bounds_is_a_refused_round(
    server_and_client: tuple[Message, TransferClient], capsys: pytest.CaptureFixture[str], fit: dict[str, Any],
    field: str,
) -> None:  # fmt: skip
    """Every value the server sends goes through `fit`'s one validator (types and upper bounds)
    before the client builds anything; a backbone the client does not hold offline is refused."""
    message, client = server_and_client
    fit = {**fit, "init_weights": None} if "backbone" in fit else fit  # a download, not this client's own weights
    assert field in _refusal(client, _tampered(message, fit), capsys)


def test_a_phase_unfreezing_more_groups_than_the_backbone_has_is_refused(
    server_and_client: tuple[Message, TransferClient], capsys: pytest.CaptureFixture[str]
) -> None:
    """`unfreeze` 1000 is within the message's own bound, not the model's: one line, no IndexError."""
    message, client = server_and_client
    answer = train_reply(client, _tampered(message, phase={"unfreeze": 1000}))
    assert answer.has_error() and "unfreezes 1000 layer groups" in str(answer.error.reason)
    assert "IndexError" not in capsys.readouterr().err


def test_a_client_may_opt_in_to_a_backbone_it_downloads(server_and_client: tuple[Message, TransferClient]) -> None:
    _, client = server_and_client
    sent = {"backbone": "resnet18", "strategy": "feature-extraction"}
    with pytest.raises(Exception, match="--allow-download"):
        client._own_config(sent)
    client.allow_download = True
    assert client._own_config(sent).backbone == "resnet18"  # checked only: nothing is built here


def _npy(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue() + payload


@pytest.mark.parametrize(
    "array",
    [
        Array(dtype="float32", shape=(10**12,), stype="numpy.ndarray", data=_npy((10**12,), "<f4", b"\0" * 16)),
        Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=_npy((2**40, 2**40), "<f4", b"\0" * 8)),
        Array(dtype="float128", shape=(1,), stype="numpy.ndarray", data=_npy((1,), "<f16", b"\0" * 16)),
        Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=_npy((1,), "|O", b"\0" * 8)),
        Array(dtype="float32", shape=(1,), stype="torch", data=b"\0" * 4),
        Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"not an npy file"),
    ],
)
def test_an_arrays_header_is_bounded_before_anything_is_allocated(array: Array) -> None:
    with pytest.raises(WireRefusal):
        decode(ArrayRecord({"w": array}))


def test_a_record_with_too_many_bytes_for_its_tensor_is_refused() -> None:
    record = ArrayRecord({"w": Array(np.zeros(1000, dtype=np.float32))})
    assert decode(record)[0].shape == (1000,)
    with pytest.raises(WireRefusal, match="at most 1024"):
        decode(record, [1024])


# --------------------------------------------------------------------------- a hostile client


def _head_strategy(clients: int, console: Console | None = None, **options: Any) -> PhasedStrategy:
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="feature-extraction", augment=False)
    cfg = FederatedConfig(clients=clients, rounds=2, base=base, **options)
    seed_everything(cfg.base.seed)
    model, _ = prepare_model(cfg.base, get_strategy(cfg.base.strategy), SingleLabel(3))
    scores = score(np.array([0, 1]), np.array([0, 1]), 3)
    return PhasedStrategy(cfg, model, ("a", "b", "c"), lambda m, p: scores, console)


def _log(strategy: PhasedStrategy) -> str:
    assert strategy.console is not None
    return strategy.console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def _console() -> Console:
    return Console(file=io.StringIO(), width=400)


@pytest.mark.usefixtures("flower_task")
def test_a_reply_with_another_metric_schema_is_set_aside_and_the_round_goes_on() -> None:
    """Metrics holding only `num-examples` passed the old checks and then made Flower's FedAvg
    raise InconsistentMessageReplies (the round died); now the reply is refused, the rest average."""
    strategy = _head_strategy(3, _console(), min_clients=2)

    def answer(i: int, message: Message) -> Message:
        trained = [a + 0.1 for a in sent_arrays(message)]
        if i == 2:
            names = list(message.content["arrays"].keys())
            arrays = ArrayRecord({n: Array(a) for n, a in zip(names, trained, strict=True)})
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord({EXAMPLES: 10})})
            return Message(content, reply_to=message)
        return reply(message, trained)

    one_round(strategy, 1, strategy.initial_arrays(), answer, nodes=3)
    assert (strategy.records[0].clients_ok, strategy.records[0].clients_failed) == (2, 1)
    assert "expected exactly num-examples, train_accuracy, train_loss" in _log(strategy)


@pytest.mark.usefixtures("flower_task")
def test_float64_weights_beyond_float32_are_refused_before_the_average() -> None:
    """1e300 is a finite float64 and inf in float32: the cast comes first, then the check."""
    strategy = _head_strategy(3, _console(), min_clients=2)
    honest: list[np.ndarray] = []

    def answer(i: int, message: Message) -> Message:
        sent = sent_arrays(message)
        if i == 2:
            return reply(message, [np.full(a.shape, 1e300, dtype=np.float64) for a in sent])
        if not honest:
            honest.extend(a + 0.1 for a in sent)
        return reply(message, honest)

    _, new = one_round(strategy, 1, strategy.initial_arrays(), answer, nodes=3)
    assert all(
        np.allclose(a.numpy(), b) and a.numpy().dtype == np.float32 for a, b in zip(new.values(), honest, strict=True)
    )
    assert strategy.records[0].clients_failed == 1 and "non-finite" in _log(strategy)


@pytest.mark.usefixtures("flower_task")
def test_a_clients_item_count_is_capped_and_must_not_change_between_rounds() -> None:
    strategy = _head_strategy(3, _console(), min_clients=1, max_client_items=1000)
    counts = {0: 10, 1: 999_999_999, 2: 900}

    _, arrays = one_round(
        strategy, 1, strategy.initial_arrays(), lambda i, m: reply(m, sent_arrays(m), count=counts[i]), nodes=3
    )
    assert strategy.records[0].clients_ok == 2 and "item count of 999999999" in _log(strategy)
    assert "claims 900 items, over 10× the others' median (10): weighted as 100" in _log(strategy)
    counts[0] = 20  # a client's data does not change during a run
    one_round(strategy, 2, arrays, lambda i, m: reply(m, sent_arrays(m), count=counts[i]), nodes=3)
    assert strategy.records[1].clients_ok == 1 and "claims 20 items after 10" in _log(strategy)


def test_a_clients_weight_is_clipped_to_ten_times_the_others_median() -> None:
    """Each reply weighs at most 10× the median count of the round's other replies; honest
    counts within that spread are kept as they are."""
    assert clipped_counts([100] * 7 + [999_999]) == [100] * 7 + [1000]
    assert clipped_counts([100, 999_999]) == [100, 1000]  # two clients: each against the other
    assert clipped_counts([50, 100, 400, 999]) == [50, 100, 400, 999]
    assert clipped_counts([7]) == [7]


@pytest.mark.usefixtures("flower_task")
def test_a_client_claiming_many_items_under_the_cap_no_longer_outweighs_the_round() -> None:
    """999,999 items against honest 100s passed the cap (10^6) and moved FedAvg by the liar's own
    update (99× the honest step); clipped to 10× the others' median it weighs 1000 of 1700 (at
    most 10/17 of its ×100 update), and the log names the client and the weight it was given."""
    assert 40 < lying_round("fedavg", "999,999 items") < 100 * 10 / 17
    strategy = _head_strategy(8, _console(), min_clients=7)
    counts = [999_999] + [100] * 7
    messages, _ = one_round(
        strategy, 1, strategy.initial_arrays(), lambda i, m: reply(m, sent_arrays(m), count=counts[i]), nodes=8
    )
    log = _log(strategy)
    assert f"client {messages[0].metadata.dst_node_id} claims 999999 items" in log
    assert "weighted as 1000 (59% of the average, not 100%)" in log and log.count("weighted as") == 1
    assert strategy.client_sizes[messages[0].metadata.dst_node_id] == 999_999  # the claim is what must not change


def test_a_derived_seed_stays_within_the_seed_bound() -> None:
    top = 2**32 - 1
    assert derived_seed(top, 5, 3) == 5000 + 3 - 1
    assert all(0 <= derived_seed(s, r, c) < 2**32 for s in (0, top - 1, top) for r in (1, 1000) for c in (0, 999))
    assert derived_seed(7, 2, 1) == 2008  # below the bound, the seeds are what they were


def test_a_run_seeded_at_the_top_of_the_bound_trains_a_round(
    server_and_client: tuple[Message, TransferClient], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--seed 4294967295` is within the bound: the client's round seed (seed + 1000 × round +
    client) used to pass it, and the client refused every round."""
    message, client = server_and_client
    answer = train_reply(client, _tampered(message, {"seed": 2**32 - 1}))
    assert not answer.has_error(), answer.error.reason if answer.has_error() else ""
    assert "refused" not in capsys.readouterr().err


# --------------------------------------------------------------------------- robust aggregators


def lying_round(aggregator: str, lie: str, clients: int = 8) -> float:
    """One round, ``clients - 1`` honest clients each stepping by 0.1 (±noise) and one liar:
    how far the global weights land from the honest clients' mean step, relative to that step
    (a round needs ``clients - 1`` replies, so one refused reply leaves the others to average)."""
    strategy = _head_strategy(clients, aggregator=aggregator, min_clients=clients - 1)
    arrays = strategy.initial_arrays()
    start = [a.numpy() for a in arrays.values()]
    rng = np.random.default_rng(0)
    steps = [
        [np.full_like(a, 0.1) + rng.normal(0, 0.01, a.shape).astype(a.dtype) for a in start] for _ in range(clients)
    ]

    def answer(i: int, message: Message) -> Message:
        sent = sent_arrays(message)
        if i == 0 and lie == "scaled x100":
            return reply(message, [a + 100 * s for a, s in zip(sent, steps[i], strict=True)])
        if i == 0 and lie == "1e30 values":
            return reply(message, [np.full_like(a, 1e30) for a in sent])
        if i == 0 and lie == "999,999 items":
            return reply(message, [a + 100 * s for a, s in zip(sent, steps[i], strict=True)], count=999_999)
        return reply(message, [a + s for a, s in zip(sent, steps[i], strict=True)])

    _, new = one_round(strategy, 1, arrays, answer, nodes=clients)
    honest = [np.mean([s[k] for s in steps[1:]], axis=0) for k in range(len(start))]
    moved = [n.numpy() - s for n, s in zip(new.values(), start, strict=True)]
    error = float(np.sqrt(sum(float(((m - h) ** 2).sum()) for m, h in zip(moved, honest, strict=True))))
    return error / float(np.sqrt(sum(float((h**2).sum()) for h in honest)))


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("aggregator", ["fedmedian", "fedtrimmedavg", "krum", "bulyan"])
def test_a_robust_aggregator_holds_against_one_client_scaling_its_update(aggregator: str) -> None:
    assert lying_round("fedavg", "scaled x100") > 10  # the weighted mean moves with the liar
    assert lying_round(aggregator, "scaled x100") < 0.2


@pytest.mark.usefixtures("flower_task")
def test_a_client_sending_huge_values_is_refused_by_every_aggregator() -> None:
    assert lying_round("fedavg", "1e30 values") < 0.2


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"aggregator": "krum", "clients": 4}, "min_clients"),
        ({"aggregator": "bulyan", "clients": 6}, "min_clients"),
        ({"aggregator": "fedmedian", "secure_aggregation": True}, "aggregator"),
        ({"trim": 0.5}, "trim"),
        ({"max_client_items": 10**9}, "max_client_items"),
    ],
)
def test_robust_aggregation_settings_are_checked_before_any_compute(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FederatedConfig(**{"clients": 7, **options})


@pytest.mark.parametrize(("field", "value"), [(f, v) for _, f, v in _invalid((FitConfig,)) if f != "init_weights"])
def test_every_fit_option_out_of_range_from_a_server_is_a_refused_round(
    server_and_client: tuple[Message, TransferClient], capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    """The federated door of the one declaration: each out-of-range value any `fit` option
    declares, sent by a server, refuses the round in one line before the client builds anything."""
    message, client = server_and_client
    sent = list(value) if isinstance(value, tuple) else value
    _refusal(client, _tampered(message, {field: sent}), capsys)


def test_a_round_needing_more_memory_than_the_client_allows_is_refused(
    server_and_client: tuple[Message, TransferClient], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each value within its bound, their product beyond the machine (the third hostile trial:
    1024 px × a batch of 65,536 × every layer took a client to 19.8 GB and the kernel's kill):
    the round's need is estimated from one input and refused in one line, before a batch is read."""
    message, client = server_and_client
    client.max_memory = 64 * 2**20  # this client's operator allows 64 MiB
    hostile = _tampered(message, {"image_size": 1024, "batch_size": 65_536}, {"unfreeze": None})
    answer = train_reply(client, hostile)
    reason = str(answer.error.reason)
    assert answer.has_error() and "GiB here" in reason and "--max-memory" in reason and "\n" not in reason
    assert "Traceback" not in capsys.readouterr().err
