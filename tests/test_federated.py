"""Federated fine-tuning: partitions, the simulation, and real server and client processes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from flwr.app import Error, Message, MetricRecord, RecordDict
from rich.console import Console
from safetensors.torch import save_file

from tests.conftest import TINY, TINY_IMAGE, make_dataset, quick_config
from tests.flower_fakes import flower_task, one_round, reply, sent_arrays  # noqa: F401  (flower_task: a fixture)
from tests.test_cli import run_cli
from transferkit import api
from transferkit.config import FitConfig
from transferkit.errors import ConfigError, DataError
from transferkit.metrics import score
from transferkit.pipeline import SingleLabel, fit_to_data, load_data, prepare_model
from transferkit.reports.federated import plot_rounds, report_markdown
from transferkit.runtime import seed_everything
from transferkit.strategies import get_strategy
from transferkit.workflows.federated import FederatedConfig, PhasedStrategy, partition, replace_config, simulate
from transferkit.workflows.federated.apps import train_reply
from transferkit.workflows.federated.client import TransferClient, from_record, record_names


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Data and backbone weights that separate processes (Ray actors, clients) can load by name."""
    root = tmp_path_factory.mktemp("fed")
    data = make_dataset(root / "data", classes=3, per_class=12)
    weights = root / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    return data, weights


def _base(weights: Path, strategy: str = "feature-extraction") -> FitConfig:
    return quick_config(
        backbone="test_efficientnet", init_weights=str(weights), strategy=strategy, image_size=TINY_IMAGE,
        batch_size=8, augment=False, lr=0.05, backbone_lr=0.01,
    )  # fmt: skip


# --------------------------------------------------------------------------- partitions


def test_iid_partition_deals_every_class_evenly() -> None:
    labels = np.repeat(np.arange(3), [9, 12, 6])
    parts = partition(labels, 3, "iid", seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        assert Counter(labels[part].tolist()) == {0: 3, 1: 4, 2: 2}


def test_dirichlet_partition_skews_labels_and_leaves_no_client_empty() -> None:
    labels = np.repeat(np.arange(5), 40)
    parts = partition(labels, 4, "dirichlet", alpha=0.1, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert min(len(p) for p in parts) >= 2
    # With alpha 0.1 a client's images come mostly from one or two classes.
    top_share = [Counter(labels[p].tolist()).most_common(1)[0][1] / len(p) for p in parts]
    assert np.mean(top_share) > 0.5
    assert partition(labels, 4, "dirichlet", alpha=100.0, seed=0)[0].size > 30  # large alpha: near even


def test_more_clients_than_images_per_class_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="class 2 has 3: use --clients 3 or fewer"):
        partition(np.repeat(np.arange(3), [5, 5, 3]), 4, "iid")
    with pytest.raises(DataError, match="cannot give 10 clients"):
        partition(np.arange(6) % 2, 10, "dirichlet")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"partition": "non-iid"}, "partition"),
        ({"aggregator": "fedsgd"}, "aggregator"),
        ({"min_clients": 5}, "min_clients"),
        ({"rounds": 0}, "rounds"),
        ({"base": FitConfig(strategy="linear-probe")}, "strategy"),
        ({"base": FitConfig(strategy="two-phase"), "rounds": 1}, "rounds"),
        ({"base": FitConfig(bn_stats="update", strategy="full")}, "bn_stats"),
    ],
)
def test_bad_federated_settings_fail_before_any_compute(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FederatedConfig(**{"clients": 4, **changes})  # type: ignore[arg-type]


def test_cli_reports_too_many_clients_without_a_traceback(
    fed: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = fed
    code, _, err = run_cli(
        ["federated", str(data), "--clients", "20", "--backbone", "test_efficientnet", "--no-baseline"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 2
    assert "class 'class_0' has 10: use --clients 10 or fewer" in err
    assert "Traceback" not in err


def test_the_written_app_names_the_installed_apps_and_carries_the_run_config(
    fed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`federated-server --write-app DIR`: the app `flwr run` submits to a SuperLink started by
    hand; an existing folder is refused, never written into."""
    import tomllib

    data, _ = fed
    args = ["federated-server", str(data), "--backbone", "test_efficientnet", "--rounds", "4", "--compress", "int4",
            "--out", str(tmp_path / "fed"), "--write-app"]  # fmt: skip
    code, out, err = run_cli([*args, str(tmp_path / "app")], capsys, monkeypatch)
    assert "flwr run" in out
    assert code == 0, err
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text(encoding="utf-8"))
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "transferkit.workflows.federated.apps:server_app",
                                 "clientapp": "transferkit.workflows.federated.apps:client_app"}  # fmt: skip
    run = app["config"]
    assert run["data"] == str(data.absolute()) and run["out"] == str(tmp_path / "fed")
    assert FederatedConfig.from_dict(json.loads(run["federated"])).compress == "int4"
    mine = tmp_path / "mine"
    mine.mkdir()
    code, _, err = run_cli([*args, str(mine)], capsys, monkeypatch)
    assert code == 2 and "write-app" in err and not any(mine.iterdir())


# --------------------------------------------------------------------------- simulation


def test_simulation_sends_only_trainable_weights_and_saves_a_loadable_model(
    fed: tuple[Path, Path], tmp_path: Path
) -> None:
    data, weights = fed
    cfg = FederatedConfig(clients=2, rounds=3, head_rounds=1, base=_base(weights, "two-phase"))
    result = simulate(data, cfg, out=tmp_path / "run")
    assert [r.phase for r in result.rounds] == ["head", "fine-tune", "fine-tune"]
    assert all(r.clients_ok == 2 and r.clients_failed == 0 for r in result.rounds)
    model = result.model
    assert model is not None
    head_bytes = sum(p.numel() * 4 for p in model.head.parameters())
    all_bytes = sum(p.numel() * 4 for p in model.parameters())
    head, tune = result.rounds[0], result.rounds[1]
    # Flower's serialisation adds a small header per tensor; the payload is the weights themselves.
    assert head_bytes * 4 <= head.bytes_down + head.bytes_up < head_bytes * 4 + 4 * 1024
    assert all_bytes * 4 <= tune.bytes_down + tune.bytes_up < all_bytes * 4 * 1.05
    assert result.bytes_total < result.full_model_bytes_total
    saved = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert len(saved["rounds"]) == 3 and saved["client_sizes"] == [15, 15]
    # `transferkit evaluate` reads the federated model, and scores the server's validation images
    # exactly as the last round did
    import shutil

    from transferkit.pipeline import load_data

    val = tmp_path / "val"
    for sample in load_data(data, cfg.base).val:
        (val / sample.path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, val / sample.path.parent.name / sample.path.name)
    report = api.evaluate(tmp_path / "run", val)
    assert report["accuracy"] == pytest.approx(result.rounds[-1].accuracy, abs=1e-9)


# --------------------------------------------------------------------------- real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, server: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited early: {server.communicate()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("server never listened")


def _start(args: list[str], log: Path) -> subprocess.Popen[str]:
    """A process in its own group: a client's SuperNode and the ClientApps it starts go with it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    handle = log.open("w")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def _kill(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_text(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(encoding="utf-8", errors="replace"):
        assert time.monotonic() < deadline, f"never saw {text!r} in {log.name}"
        time.sleep(0.2)


def _server(data: Path, weights: Path, port: int, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "transferkit", "federated-server", str(data), "--address", f"127.0.0.1:{port}",
        "--out", str(out), "--backbone", "test_efficientnet", "--image-size", str(TINY_IMAGE),
        "--batch-size", "8", "--lr", "0.05", "--config", str(_yaml(weights, out.parent)), *extra,
    ]  # fmt: skip


def _yaml(weights: Path, folder: Path) -> Path:
    path = folder / "fit.yaml"
    path.write_text(f"init_weights: {weights}\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def _serving(fed: tuple[Path, Path], tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A federated server (a SuperLink and the run) on a free loopback port; killed when the block ends."""
    data, weights = fed
    port = _free_port()
    server = _start(_server(data, weights, port, tmp_path / "global", *extra), tmp_path / "server.log")
    try:
        _wait_for_port(port, server)
        yield server, port
    finally:
        _kill(server)


def _client(data: Path, port: int, part: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "transferkit", "federated-client", str(data), "--server", f"127.0.0.1:{port}",
            "--part", part, *extra]  # fmt: skip


def _own_weights(data: Path) -> tuple[str, str]:
    return "--init-weights", str(data.parent / "backbone.safetensors")  # the client's copy of the starting weights


def _clients(data: Path, port: int, tmp_path: Path, n: int, of: int) -> list[subprocess.Popen[str]]:
    return [
        _start(_client(data, port, f"{i}/{of}", *_own_weights(data)), tmp_path / f"client{i}.log") for i in range(n)
    ]


def test_a_superlink_and_two_supernodes_as_processes_on_loopback(fed: tuple[Path, Path], tmp_path: Path) -> None:
    """Flower's deployment engine: `federated-server` starts a SuperLink and submits the run
    with `flwr run`; each `federated-client` is a SuperNode. With compressed updates: each
    SuperNode keeps its link between rounds (round 3's checksum holds only if both clients
    kept round 2's weights; round 1's change is zero)."""
    data, _ = fed
    clients: list[subprocess.Popen[str]] = []
    with _serving(fed, tmp_path, "--clients", "2", "--rounds", "3", "--compress", "int8") as (server, port):
        try:
            clients = _clients(data, port, tmp_path, 2, 2)
            assert server.wait(timeout=300) == 0, (tmp_path / "server.log").read_text()
        finally:
            for c in clients:
                _kill(c)  # a SuperNode serves run after run until it is stopped
    log = (tmp_path / "server.log").read_text()
    assert "round   3/3 [head] 2 client(s)" in log and "Traceback" not in log
    saved = json.loads((tmp_path / "global" / "rounds.json").read_text())
    assert [r["clients_ok"] for r in saved["rounds"]] == [2, 2, 2]
    assert sorted(saved["client_sizes"]) == [18, 18]
    assert api.load(tmp_path / "global").classes == ["class_0", "class_1", "class_2"]


@pytest.mark.slow  # 60 s of Flower's heartbeat and round timeout; the loopback test covers the processes
def test_a_client_dropping_out_mid_round_leaves_the_others_to_finish(fed: tuple[Path, Path], tmp_path: Path) -> None:
    """The third SuperNode loses power while it trains: the round goes on with the two others."""
    data, _ = fed
    extra = ("--clients", "3", "--min-clients", "2", "--rounds", "1", "--round-timeout", "30")
    clients: list[subprocess.Popen[str]] = []
    with _serving(fed, tmp_path, *extra) as (server, port):
        try:
            clients = _clients(data, port, tmp_path, 3, 3)
            _wait_for_text(tmp_path / "client2.log", "Start `flwr-clientapp` process")
            _kill(clients[2])
            assert server.wait(timeout=300) == 0, (tmp_path / "server.log").read_text()
        finally:
            for c in clients:
                _kill(c)
    (saved,) = json.loads((tmp_path / "global" / "rounds.json").read_text())["rounds"]
    assert (saved["clients_ok"], saved["clients_failed"]) == (2, 1)
    assert "2 client(s), 1 failed" in (tmp_path / "server.log").read_text()


# --------------------------------------------------------------------------- the server's strategy, without Ray


def _strategy(cfg: FederatedConfig, classes: tuple[str, ...] = ("a", "b", "c")) -> PhasedStrategy:
    seed_everything(cfg.base.seed)  # as the server does: its random tensors (head, adapters) are the clients'
    model, _ = prepare_model(cfg.base, get_strategy(cfg.base.strategy), SingleLabel(len(classes)))
    return PhasedStrategy(cfg, model, classes, lambda m, p: score(np.array([0, 1]), np.array([0, 1]), len(classes)))


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("aggregator", ["fedavg", "fedprox", "fedadam"])
def test_each_aggregator_moves_only_the_phase_weights(aggregator: str) -> None:
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="two-phase", augment=False)
    strategy = _strategy(FederatedConfig(clients=2, rounds=2, head_rounds=1, aggregator=aggregator, base=base))
    head_tensors = len(list(strategy.model.head.parameters()))
    arrays = strategy.initial_arrays()
    for server_round, phase in ((1, "head"), (2, "fine-tune")):
        messages, new = one_round(
            strategy, server_round, arrays, lambda i, m: reply(m, [a + 0.1 for a in sent_arrays(m)])
        )
        config = messages[0].content["config"]
        assert json.loads(str(config["phase"]))["name"] == phase
        assert ("proximal-mu" in config) == (aggregator == "fedprox")
        sent = sent_arrays(messages[0])
        assert (len(sent) == head_tensors) == (phase == "head")
        plain = [a.numpy() for a in new.values()]
        assert all(a.dtype == np.float32 for a in plain)  # FedAdam computes in float64; the wire stays float32
        assert all(not np.array_equal(a, b) for a, b in zip(plain, sent, strict=True))
        arrays = new
    assert [r.phase for r in strategy.records] == ["head", "fine-tune"]
    assert strategy.records[0].bytes_up < strategy.records[1].bytes_up


@pytest.mark.usefixtures("flower_task")
def test_differential_privacy_clips_each_clients_update_to_the_norm() -> None:
    """Flower's central DP wrapper sees plain weights: a client's update of norm 100 moves the
    global model by the clipping norm, no more (no noise here, to measure the clip alone)."""
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="feature-extraction", augment=False)
    strategy = _strategy(FederatedConfig(clients=2, rounds=1, dp_noise=0.0, dp_clip=0.5, base=base))
    arrays = strategy.initial_arrays()
    before = [a.numpy() for a in arrays.values()]
    step = [np.full_like(a, 100.0 / np.sqrt(sum(b.size for b in before))) for a in before]  # norm 100
    _, new = one_round(
        strategy, 1, arrays, lambda i, m: reply(m, [a + d for a, d in zip(sent_arrays(m), step, strict=True)])
    )
    moved = np.sqrt(sum(float(((a.numpy() - b) ** 2).sum()) for a, b in zip(new.values(), before, strict=True)))
    assert moved == pytest.approx(0.5, rel=1e-3)


def test_report_lists_each_round_with_its_bytes_and_plots(tmp_path: Path) -> None:
    cfg = FederatedConfig(clients=2, rounds=2, base=quick_config(strategy="two-phase", augment=False))
    rounds = [
        {"round": 1, "phase": "head", "accuracy": 0.5, "bytes_down": 1000, "bytes_up": 1000},
        {"round": 2, "phase": "fine-tune", "accuracy": 0.75, "bytes_down": 4_000_000, "bytes_up": 4_000_000},
    ]
    run = {"client_sizes": [5, 5], "final_accuracy": 0.75, "final_macro_f1": 0.7, "bytes_total": 8_002_000,
           "full_model_bytes_total": 16_000_000, "seconds": 3.0, "rounds": rounds}  # fmt: skip
    report = {"config": cfg.to_dict(), "runs": {"iid": run, "dirichlet": run}, "centralised": {
        "accuracy": 0.8, "macro_f1": 0.8, "seconds": 2.0}}  # fmt: skip
    text = report_markdown(report)
    assert "| 2 | fine-tune | 0.7500 | 0.7500 | 8.00 MB |" in text
    assert "| centralised | 0.8000 |" in text
    plot_rounds(report, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


@pytest.mark.usefixtures("flower_task")
def test_a_client_reply_that_does_not_fit_the_model_counts_as_a_failure() -> None:
    """The wire is untrusted both ways: a reply of the wrong shape, with NaN, with a silly item
    count or with records of another kind is set aside (the round goes on with the others),
    never a crash of the server; an error reply is counted and its reason printed once."""
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, strategy="feature-extraction", augment=False)
    strategy = _strategy(FederatedConfig(clients=6, rounds=1, min_clients=1, base=base))
    good: list[np.ndarray] = []

    def answer(i: int, message: Message) -> Message:
        sent = sent_arrays(message)
        if i == 0:
            good.extend(a + 0.1 for a in sent)
            return reply(message, good)
        if i == 1:
            return reply(message, [a.reshape(-1)[:3] for a in sent])
        if i == 2:
            return reply(message, [np.full_like(a, np.nan) for a in sent])
        if i == 3:
            return reply(message, sent, count=-4)
        if i == 4:
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=message)
        return Message(Error(code=1000, reason="<class 'X'>:<'no images here'>"), reply_to=message)

    _, new = one_round(strategy, 1, strategy.initial_arrays(), answer, nodes=6)
    assert all(np.allclose(a.numpy(), b) for a, b in zip(new.values(), good, strict=True))  # only the good reply
    assert strategy.records[0].clients_ok == 1 and strategy.records[0].clients_failed == 5


@pytest.mark.usefixtures("flower_task")
def test_a_client_refusing_the_servers_instruction_ends_with_one_line(
    fed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The server names a weights file the client does not hold: the client (the ClientApp's
    own handler) never loads it and says so in one line, the reply carries the reason, and the
    server prints it and keeps its weights."""
    data, weights = fed
    cfg = FederatedConfig(clients=1, rounds=1, base=_base(weights))
    splits = load_data(data, cfg.base)
    strategy = _strategy(replace_config(cfg, base=fit_to_data(cfg.base, splits)))
    strategy.console = Console(file=io.StringIO(), width=400)
    client = TransferClient(list(splits.train), splits.classes, 0, init_weights=None)
    arrays = strategy.initial_arrays()
    _, new = one_round(strategy, 1, arrays, lambda i, m: train_reply(client, m), nodes=1)
    err = capsys.readouterr().err
    assert err.count("refused the round") == 1 and "never loads files the server names" in err
    server_log = strategy.console.file.getvalue()  # type: ignore[attr-defined]
    assert "a client failed the round: " in server_log and "never loads files the server names" in server_log
    assert strategy.records[0].clients_ok == 0
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(new.values(), arrays.values(), strict=True))


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("compress", ["none", "int8"])
def test_lora_rounds_send_only_the_adapters_and_the_head(fed: tuple[Path, Path], compress: str) -> None:
    """Structural compression: a LoRA round moves the adapters and the head, nothing of the
    backbone's own weights; the clients (the ClientApp's handler, in this process) build the same
    adapters from the run's seed, so their replies fit the server's names."""
    data, weights = fed
    cfg = FederatedConfig(clients=2, rounds=1, base=_base(weights, "lora"), compress=compress)
    splits = load_data(data, cfg.base)
    strategy = _strategy(replace_config(cfg, base=fit_to_data(cfg.base, splits)), tuple(splits.classes))
    names = record_names(strategy.initial_arrays())
    head = {f"head.{n}" for n, _ in strategy.model.head.named_parameters()}
    assert names and all(".lora_" in n or n in head for n in names) and head <= set(names)
    clients = [TransferClient(list(splits.train)[i::2], splits.classes, i, init_weights=str(weights)) for i in (0, 1)]
    messages, new = one_round(strategy, 1, strategy.initial_arrays(), lambda i, m: train_reply(clients[i], m))
    assert json.loads(str(messages[0].content["config"]["phase"]))["adapters"] is True
    assert strategy.records[0].clients_ok == 2
    lora_b = [n for n in names if ".lora_B." in n]  # peft starts B at zero: a change shows the round trained
    trained = dict(zip(names, from_record(new, names), strict=True))
    assert any(np.abs(trained[n]).max() > 0 for n in lora_b)
    backbone_bytes = sum(p.numel() * 4 for n, p in strategy.model.named_parameters() if ".lora_" not in n)
    assert strategy.records[0].bytes_up < backbone_bytes
