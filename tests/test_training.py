from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit
from tests.conftest import TINY
from transferkit.backbones import create_backbone
from transferkit.callbacks import NanGuard
from transferkit.checkpoint import LoopState
from transferkit.errors import TransferkitError
from transferkit.events import Callback, EpochRecord, Loop
from transferkit.freezing import freeze_for_phase, set_train_mode
from transferkit.heads import ClassifierHead
from transferkit.layers import layer_groups
from transferkit.model import TransferModel
from transferkit.objectives import Classification
from transferkit.optim import build_optimizer, stretch_to_min_steps, warmup_cosine
from transferkit.runtime import Amp
from transferkit.strategies import Phase
from transferkit.training import train_one_epoch


def _model() -> TransferModel:
    backbone = create_backbone(TINY)
    return TransferModel(backbone, ClassifierHead(backbone.num_features, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("bn_update", [False, True])
def test_frozen_batchnorm_stays_in_eval_mode(bn_update: bool) -> None:
    model = _model()
    groups = layer_groups(model.backbone)
    freeze_for_phase(model, groups, Phase("partial", 1, 1, 1e-3, 1e-4))
    set_train_mode(model, bn_update=bn_update)
    top = set(groups[-1].param_names)
    batchnorms = [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(f"{n}.weight" in top for n, _ in batchnorms)
    for name, module in batchnorms:
        unfrozen = f"{name}.weight" in top
        assert module.weight.requires_grad == unfrozen
        # Frozen BN: always eval. Unfrozen BN: normalises with its own statistics only if asked.
        assert module.training == (unfrozen and bn_update), name
    assert model.head.training


@pytest.mark.parametrize("bn_stats", ["frozen", "update"])
def test_fine_tuned_batchnorm_statistics_follow_the_policy(
    bn_stats: str, tiny_data: Path, tiny_config: dict[str, object]
) -> None:
    before = create_backbone(TINY).state_dict()
    result = transferkit.fit(
        tiny_data, strategy="full", bn_stats=bn_stats, restore_best=False, **{**tiny_config, "epochs": 1}
    )
    after = result.model.model.backbone.state_dict()
    stats = [k for k in after if k.endswith("running_mean")]
    changed = [k for k in stats if not torch.equal(after[k], before[k])]
    weights_changed = [k for k in after if k.endswith("weight") and not torch.equal(after[k], before[k])]
    assert weights_changed
    assert (changed == []) == (bn_stats == "frozen")


def test_fully_frozen_backbone_runs_in_eval_mode() -> None:
    model = _model()
    freeze_for_phase(model, layer_groups(model.backbone), Phase("head", 1, 0, 1e-3, 0.0))
    set_train_mode(model)
    assert not any(m.training for m in model.backbone.modules())
    assert sum(p.requires_grad for p in model.backbone.parameters()) == 0


def test_optimizer_uses_phase_learning_rates() -> None:
    model = _model()
    phase = Phase("full", 1, None, 1e-3, 1e-5)
    freeze_for_phase(model, layer_groups(model.backbone), phase)
    lrs = {g["lr"] for g in build_optimizer(model, phase, 0.01).param_groups}
    assert lrs == {1e-3, 1e-5}


def test_layer_decay_lowers_the_lr_group_by_group_towards_the_stem() -> None:
    model = _model()
    groups = layer_groups(model.backbone)
    phase = Phase("full", 1, None, 1e-3, 1e-4)
    freeze_for_phase(model, groups, phase)
    optimizer = build_optimizer(model, phase, 0.01, groups, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.backbone.named_parameters())
    top = len(groups) - 1
    for group in groups:
        assert [lr_of[id(named[n])] for n in group.param_names] == pytest.approx(
            [1e-4 * 0.5 ** (top - group.index)] * len(group.param_names)
        )
    assert {lr_of[id(p)] for p in model.head.parameters()} == {1e-3}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_small_data_phases_get_at_least_min_steps() -> None:
    plan = (Phase("head", 2, 0, 1e-3, 0.0), Phase("fine-tune", 2, None, 1e-4, 1e-4))
    stretched = stretch_to_min_steps(plan, steps_per_epoch=5, min_steps=50)
    assert [p.epochs for p in stretched] == [10, 10]
    assert stretch_to_min_steps(plan, steps_per_epoch=40, min_steps=50) == (
        Phase("head", 2, 0, 1e-3, 0.0), Phase("fine-tune", 2, None, 1e-4, 1e-4),
    )  # big data: the epochs given already make enough steps  # fmt: skip


def test_fine_tuning_that_only_hurts_ends_at_the_probe(tiny_data: Path, tiny_config: dict[str, object]) -> None:
    """The probe-initialised start competes as epoch 0: an absurd LR wrecks every epoch, and the
    run ends with the probe's head and untouched backbone instead of the wreck."""
    probe = transferkit.fit(tiny_data, **{**tiny_config, "strategy": "linear-probe"})
    wrecked = transferkit.fit(
        tiny_data, **{**tiny_config, "strategy": "full", "lr": 1.0, "backbone_lr": 1.0, "dropout": 0.0}
    )
    assert wrecked.model.config["best_epoch"] == 0
    assert max(h["val_accuracy"] for h in wrecked.history) < probe.metrics["val"]["accuracy"]
    assert wrecked.metrics["val"]["accuracy"] >= probe.metrics["val"]["accuracy"] - 0.2  # C differs: 1 vs 0.01


def test_warmup_then_cosine_to_zero() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01


def test_diverging_loss_stops_with_advice() -> None:
    model = _model()
    freeze_for_phase(model, layer_groups(model.backbone), Phase("head", 1, 0, 1e-3, 0.0))
    with torch.no_grad():
        model.head.output.weight.fill_(float("nan"))
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), batch_size=2)
    optimizer = build_optimizer(model, Phase("head", 1, 0, 1e-3, 0.0), 0.0)
    loop = Loop(model, LoopState(), 1, None)
    with pytest.raises(TransferkitError, match="lower learning rate"):
        train_one_epoch(
            model, loader, Classification(3), optimizer, warmup_cosine(optimizer, 2, 0.0),
            Amp(torch.device("cpu")), torch.device("cpu"), None, events=NanGuard(), loop=loop,
        )  # fmt: skip
    assert loop.step == 0  # stopped before the first step: the weights never took the NaN in


def test_early_stopping_ends_a_phase_but_not_the_run(tiny_data: Path, tiny_config: dict[str, object]) -> None:
    options = {**tiny_config, "epochs": 8, "head_epochs": 4, "patience": 1, "lr": 1e-6, "backbone_lr": 1e-9}
    result = transferkit.fit(tiny_data, strategy="two-phase", **options)
    head, fine_tune = result.phases
    assert head["stopped_early"] and head["epochs_run"] < 4
    assert fine_tune["epochs_run"] >= 1


def test_a_stop_asked_in_one_phase_ends_that_phase_only(tiny_data: Path, tiny_config: dict[str, object]) -> None:
    """A callback stops the head phase after its first epoch; the fine-tune phase then runs all its
    epochs and the console says "early stop" once (it used to say so after every later epoch while
    training went on: the loop read another flag than the one callbacks set)."""

    class StopTheHead(Callback):
        def on_epoch_end(self, loop: Loop, record: EpochRecord) -> None:
            if record.phase == "head":
                loop.should_stop = True

    console = Console(file=io.StringIO(), width=200)
    options = {**tiny_config, "epochs": 4, "head_epochs": 2, "patience": 10}
    result = transferkit.fit(tiny_data, strategy="two-phase", console=console, callbacks=[StopTheHead()], **options)
    head, fine_tune = result.phases
    assert (head["epochs_run"], fine_tune["epochs_run"]) == (1, 2)
    assert console.file.getvalue().count("early stop:") == 1  # type: ignore[attr-defined]
    assert [h["epoch"] for h in result.history] == list(range(1, len(result.history) + 1))
