"""Contract tests: every registered strategy does what it says on a tiny backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import transferkit
from transferkit.config import FitConfig, from_dict
from transferkit.layers import is_adapter, layer_groups
from transferkit.modalities.image_io import eval_transform, open_rgb
from transferkit.pipeline import SingleLabel, prepare_model
from transferkit.strategies import expected_trainable_params, get_strategy, registered_strategies

STRATEGIES = [s.name for s in registered_strategies()]


def _frozen_throughout(cfg: FitConfig) -> set[str]:
    """Backbone parameter and buffer prefixes that no phase of the strategy unfreezes."""
    strategy = get_strategy(cfg.strategy)
    groups = layer_groups(prepare_model(cfg, strategy, SingleLabel(3))[0].backbone)
    if strategy.uses_sklearn:
        return {n for g in groups for n in g.param_names}
    touched = {i for phase in strategy.plan(cfg) for i in phase.trainable_groups(len(groups))}
    return {n for g in groups if g.index not in touched for n in g.param_names if not is_adapter(n)}


# Frozen phases without augmentation train the head on features computed once: cover both paths.
CASES = [(name, True) for name in STRATEGIES] + [("feature-extraction", False), ("two-phase", False)]


@pytest.mark.parametrize(("name", "augment"), CASES)
def test_strategy_contract(
    name: str, augment: bool, tiny_data: Path, tiny_config: dict[str, object], tmp_path: Path
) -> None:
    overrides = {"strategy": name, "epochs": 2, "augment": augment, "unfreeze": 1 if name == "two-phase" else None}
    overrides["restore_best"] = False  # inspect the weights training produced, not an earlier best
    cfg = from_dict({**tiny_config, **overrides})
    strategy = get_strategy(name)
    # The backbone as fit builds it (with LoRA adapters for lora): its frozen tensors must not move.
    before = {k: v.clone() for k, v in prepare_model(cfg, strategy, SingleLabel(3))[0].backbone.state_dict().items()}

    result = transferkit.fit(tiny_data, cfg, out=tmp_path / "run")
    model = result.model.model

    # 1. Each phase trained exactly the parameters the strategy promises.
    groups = layer_groups(model.backbone)
    head_params = sum(p.numel() for p in model.head.parameters())
    if strategy.uses_sklearn:
        assert [p["trainable_params"] for p in result.phases] == [head_params]
    else:
        for summary, phase in zip(result.phases, strategy.plan(cfg), strict=True):
            assert summary["trainable_params"] == expected_trainable_params(groups, head_params, phase)

    # 2. Frozen weights and their BatchNorm statistics are bit-identical after training.
    frozen_params = _frozen_throughout(cfg)
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen_params}
    after = model.backbone.state_dict()
    checked = 0
    for key, value in after.items():
        if key.rsplit(".", 1)[0] in frozen_modules:
            assert torch.equal(value, before[key]), f"{name}: frozen tensor {key} changed"
            checked += 1
    if strategy.fine_tunes:
        changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
        assert changed, f"{name}: no backbone tensor changed although the strategy fine-tunes"
    else:
        assert checked == len(after)

    # 3. The saved model reloads and predicts identically.
    loaded = transferkit.load(tmp_path / "run")
    image = next(tiny_data.rglob("*.png"))
    x = eval_transform(result.model.preprocessing)(open_rgb(image)).unsqueeze(0)
    assert torch.equal(result.model.predict_proba(x), loaded.predict_proba(x))
    assert loaded.classes == ["class_0", "class_1", "class_2"]
    assert not list((tmp_path / "run").glob("*.pt*")), "no pickle files in a run directory"


def test_two_phase_counts_epochs_on_and_restores_frozen_bn(tiny_data: Path, tiny_config: dict[str, object]) -> None:
    """Across the phase boundary: epochs continue (Keras initial_epoch) and the BN rule holds."""
    result = transferkit.fit(
        tiny_data, strategy="two-phase",
        **{**tiny_config, "epochs": 4, "head_epochs": 1, "unfreeze": 2, "restore_best": False},
    )  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["phase"] for h in result.history] == ["head", "fine-tune", "fine-tune", "fine-tune"]
    assert result.phases[0]["trainable_params"] < result.phases[1]["trainable_params"]
    import torch

    from tests.conftest import TINY
    from transferkit.backbones import create_backbone

    pretrained = create_backbone(TINY, pretrained=True).state_dict()
    tuned = result.model.model.backbone.state_dict()
    stats = [k for k in pretrained if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(tuned[k], pretrained[k]) for k in stats)  # bn_stats=frozen: every layer
    unfrozen = [k for k in pretrained if k.startswith("conv_head") and k.endswith("weight")]
    assert unfrozen and not all(torch.equal(tuned[k], pretrained[k]) for k in unfrozen)  # while weights trained


def test_partial_trains_only_top_groups(tiny_config: dict[str, object]) -> None:
    cfg = from_dict({**tiny_config, "strategy": "partial", "unfreeze": 2})
    (phase,) = get_strategy("partial").plan(cfg)
    assert list(phase.trainable_groups(6)) == [4, 5]
    assert phase.backbone_lr < phase.head_lr


def test_scratch_is_not_pretrained() -> None:
    assert not get_strategy("scratch").pretrained
    assert all(get_strategy(n).pretrained for n in STRATEGIES if n != "scratch")


def test_same_seed_same_metrics(tiny_data: Path, tiny_config: dict[str, object]) -> None:
    a = transferkit.fit(tiny_data, strategy="partial", **tiny_config)
    b = transferkit.fit(tiny_data, strategy="partial", **tiny_config)

    def timeless(history: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(a.history) == timeless(b.history)
    assert a.metrics == b.metrics
