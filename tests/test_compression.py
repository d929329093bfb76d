"""Compressed federated updates: codes that decode to what was sent, unbiased rounding, error
feedback that loses nothing, a wire that refuses what does not decode, and a federation whose
server and clients stay in step (in process, and in Flower's simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
from tests.flower_fakes import flower_task, one_round, sent_arrays  # noqa: F401  (flower_task: a fixture)
from tests.test_federated import _base, fed  # noqa: F401  (fed: the module's fixture)
from transferkit.errors import ConfigError, TransferkitError
from transferkit.metrics import score
from transferkit.pipeline import SingleLabel, fit_to_data, load_data, prepare_model
from transferkit.runtime import seed_everything
from transferkit.strategies import get_strategy
from transferkit.workflows.federated import FederatedConfig, PhasedStrategy, simulate
from transferkit.workflows.federated.apps import train_reply
from transferkit.workflows.federated.client import TransferClient, record_names
from transferkit.workflows.federated.compression import Codec, WireError, apply_change, send_change

SCHEMES = ("int8", "int4", "topk:0.1")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(96, 64, 1, 1), (32, 1, 3, 3), (17,), (5, 3)])
def test_codes_decode_to_the_shape_sent_and_their_size_is_what_the_scheme_promises(
    scheme: str, shape: tuple[int, ...]
) -> None:
    codec, rng = Codec.parse(scheme), np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    wire = codec.encode(x, rng)
    y = codec.decode(wire, shape)
    assert y.shape == shape and y.dtype == np.float32
    size = sum(a.nbytes for a in wire)
    if shape == (96, 64, 1, 1):  # a 1x1 conv: one scale per channel of 64 entries
        assert size <= {"int8": 0.27, "int4": 0.145, "topk:0.1": 0.16}[scheme] * x.nbytes
    if codec.bits:  # never further than one step of the channel's scale
        step = np.abs(x).max() / (2 ** (codec.bits - 1) - 1)
        assert np.abs(y - x).max() <= step + 1e-6


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_change_costs_no_bytes(scheme: str) -> None:
    codec = Codec.parse(scheme)
    wire = codec.encode(np.zeros((8, 64), np.float32), np.random.default_rng(0))
    assert sum(a.nbytes for a in wire) == 0
    assert not codec.decode(wire, (8, 64)).any()


def test_stochastic_rounding_is_unbiased_and_error_feedback_sends_everything_eventually() -> None:
    codec, rng = Codec.parse("int4"), np.random.default_rng(1)
    x = rng.normal(size=(16, 64)).astype(np.float32)
    mean = np.mean([codec.decode(codec.encode(x, rng), x.shape) for _ in range(400)], axis=0)
    step = np.abs(x).max() / 7
    assert np.abs(mean - x).mean() < 0.05 * step  # one code is off by up to a step; the mean is not
    for scheme in SCHEMES:
        codec = Codec.parse(scheme)
        # The broadcast: the receiver's copy is the reference, so what was not sent goes out next.
        held, target = {"w": np.zeros_like(x)}, np.zeros_like(x)
        for _ in range(40):
            target = target + 0.05 * rng.normal(size=x.shape).astype(np.float32)
            before = dict(held)
            received = apply_change(codec, before, ["w"], send_change(codec, ["w"], held, {"w": target}, rng))
            assert np.array_equal(received["w"], held["w"])  # both ends hold the same, bit for bit
        # the lag stays one change's rounding (top-k: the entries not yet sent), never a drift
        lag = {"int8": 0.01, "int4": 0.05, "topk:0.1": 0.3}[scheme]
        assert np.abs(held["w"] - target).mean() < lag * np.abs(target).mean()
        # A reply: decoded on a fixed reference; the residual keeps what was not sent yet.
        residual: dict[str, np.ndarray] = {}
        total = np.zeros_like(x)
        for _ in range(40):
            update = 0.05 * rng.normal(size=x.shape).astype(np.float32)
            wire = send_change(codec, ["w"], {"w": np.zeros_like(x)}, {"w": update}, rng, residual)
            total = total + update - codec.decode(wire, x.shape)
        np.testing.assert_allclose(total, residual["w"], atol=1e-4)  # nothing lost, only late


@pytest.mark.parametrize(
    ("scheme", "wire", "problem"),
    [
        ("int8", [np.zeros(12, np.int16), np.ones(1, np.float32)], "int8 codes"),
        ("int8", [np.zeros(12, np.int8), np.array([np.nan], np.float32)], "finite"),
        ("int4", [np.zeros(7, np.uint8), np.ones(1, np.float32)], "int4 codes"),
        ("topk:0.5", [np.array([0, 1, 2, 99, 4, 5], np.int32), np.ones(6, np.float16)], "outside"),
        ("topk:0.5", [np.array([0, 0, 2, 3, 4, 5], np.int32), np.ones(6, np.float16)], "repeated"),
        ("topk:0.5", [np.arange(6, dtype=np.int32), np.full(6, np.inf, np.float16)], "non-finite"),
        ("int8", [np.zeros(12, np.int8)], "arrays"),
    ],
)
def test_a_change_that_does_not_decode_is_refused_whole(scheme: str, wire: list[np.ndarray], problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        Codec.parse(scheme).decode_all(wire, [(3, 4)])


def test_compression_settings_are_checked_before_any_compute() -> None:
    for bad in ("int2", "topk:0", "topk:1.5", "zip"):
        with pytest.raises(ConfigError, match="compress"):
            FederatedConfig(compress=bad)
    with pytest.raises(ConfigError, match="every client every round"):
        FederatedConfig(compress="int8", fraction_fit=0.5)


@pytest.mark.usefixtures("flower_task")
def test_server_and_clients_stay_in_step_and_an_out_of_step_client_says_so(tmp_path: Path) -> None:
    """In process, no Ray: the server's strategy and two clients answering through the
    ClientApp's own handler, two compressed rounds of a two-phase plan; the clients' weights
    after decoding are the server's, checksum and all."""
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="two-phase", augment=False, batch_size=8)
    splits = load_data(make_dataset(tmp_path / "data", classes=3, per_class=8), base)
    base = fit_to_data(base, splits)
    cfg = FederatedConfig(clients=2, rounds=2, head_rounds=1, compress="int8", base=base)
    seed_everything(base.seed)  # as the server does: clients build the same model from the same seed
    model, _ = prepare_model(base, get_strategy("two-phase"), SingleLabel(3))
    strategy = PhasedStrategy(cfg, model, splits.classes, lambda m, p: score(np.array([0, 1]), np.array([0, 1]), 3))
    clients = [TransferClient(splits.train[i::2], splits.classes, i, state=None) for i in range(2)]
    arrays = strategy.initial_arrays()
    for server_round in (1, 2):
        messages, arrays = one_round(strategy, server_round, arrays, lambda i, m: train_reply(clients[i], m))
    assert [r.clients_ok for r in strategy.records] == [2, 2]
    full = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert strategy.records[1].bytes_up < 0.3 * 2 * full  # int8 codes and a scale per channel
    held = clients[0].memory.get("held")
    assert all(np.array_equal(held[n], strategy._held[n]) for n in strategy._names)
    # A client that missed a round holds older weights: it refuses to train on a wrong sum.
    stale = TransferClient(splits.train, splits.classes, 5, state=None)
    config = dict(messages[0].content["config"])
    wire, names = sent_arrays(messages[0]), record_names(messages[0].content["arrays"])
    with pytest.raises(TransferkitError, match="out of step"):
        stale.fit(wire, config | {"digest": (int(config["digest"]) + 1) % 2**32}, sent_names=names)
    with pytest.raises(TransferkitError, match="compress"):
        stale.fit(wire, config | {"compress": "int3"}, sent_names=names)


def test_a_compressed_simulation_keeps_its_clients_state_between_rounds(fed: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    """Flower's simulation builds a client object every round; context.state carries the
    weights each client holds, so every round's checksum matches and every reply counts."""
    data, weights = fed
    cfg = FederatedConfig(clients=2, rounds=3, head_rounds=1, compress="int4", base=_base(weights, "two-phase"))
    result = simulate(data, cfg, out=tmp_path / "run")
    assert all(r.clients_ok == 2 and r.clients_failed == 0 for r in result.rounds)
    assert result.bytes_total < result.full_model_bytes_total / 5
    saved = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert len(saved["rounds"]) == 3
