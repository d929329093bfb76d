"""A new strategy is one registration (docs/architecture.md, "where a variation goes"): the toy
strategy of tests/toy_strategy.py, registered in one file, runs through fit, compare, auto and a
federated simulation, with no line of transferkit naming it."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from tests.conftest import ROOT, TINY, TINY_IMAGE, make_dataset, quick_config
from tests.test_auto import BUDGET, _costs
from transferkit import fit, load
from transferkit.auto import auto
from transferkit.auto.config import AutoConfig
from transferkit.auto.plans import candidates
from transferkit.registry import PLUGINS
from transferkit.strategies import Strategy, unregister_strategy, with_role
from transferkit.workflows.compare import CompareConfig, compare
from transferkit.workflows.federated import FederatedConfig, federated_strategies, simulate

MODULE = "tests.toy_strategy"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Strategy]:
    """Registered here, and in every process a command starts (Ray's federated clients) through
    $TRANSFERKIT_PLUGINS; taken out again so no other test sees it."""
    monkeypatch.setenv(PLUGINS, MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    sys.modules.pop(MODULE, None)
    strategy: Strategy = importlib.import_module(MODULE).TOY
    yield strategy
    unregister_strategy(strategy.name)
    sys.modules.pop(MODULE, None)


def test_a_strategy_in_one_file_runs_through_fit_compare_auto_and_federated(toy: Strategy, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=3, per_class=12)
    base = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, augment=False, epochs=3)

    result = fit(data, base.replace(strategy=toy.name), out=tmp_path / "fit")
    assert [row["phase"] for row in result.history] == ["head", "top", "top"]
    assert load(tmp_path / "fit").predict  # a saved run of it loads

    compared = CompareConfig(budget_epochs=2, seeds=1, base=base)
    assert toy.name in compared.strategies  # it said it belongs in a comparison
    chosen = CompareConfig(strategies=(toy.name, with_role("probe").name), budget_epochs=2, seeds=1, base=base)
    comparison = compare(data, chosen, out=tmp_path / "compare")
    assert {r["strategy"] for r in comparison.rows} == {toy.name, with_role("probe").name}

    assert candidates(TINY, 4, TINY_IMAGE)[0].strategy == toy.name  # its searched depth ranks first
    _costs(tmp_path)  # what timing and exporting the tiny model cost here, as an earlier search learnt
    auto(data, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False), out=tmp_path / "auto")
    trail = json.loads((tmp_path / "auto" / "auto.json").read_text())
    assert toy.name in json.dumps(trail["schedule"])

    assert toy.name in federated_strategies()
    # clients are other processes: the backbone by its timm name, its "pretrained" weights from a file
    weights = tmp_path / "backbone.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    client_base = base.replace(strategy=toy.name, backbone="test_efficientnet", init_weights=str(weights))
    federated = FederatedConfig(clients=2, rounds=2, base=client_base)
    run = simulate(data, federated, out=tmp_path / "federated")
    assert [r.phase for r in run.rounds] == ["head", "top"] and all(r.clients_ok == 2 for r in run.rounds)
