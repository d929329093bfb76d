from __future__ import annotations

import math
from pathlib import Path

import pytest

from transferkit.config import FitConfig, from_dict, resolve
from transferkit.errors import ConfigError, TransferkitError


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("epochs", 0, "whole number from 1"),
        ("epochs", -3, "whole number from 1"),
        ("lr", 0.0, "positive number"),
        ("lr", -1e-3, "positive number"),
        ("lr", math.nan, "positive number"),
        ("backbone_lr", 0, "positive number"),
        ("batch_size", 0, "whole number from 1"),
        ("unfreeze", 0, "whole number from 1"),
        ("val_fraction", 1.5, "must be in"),
        ("val_fraction", 0.0, "above 0"),
        ("monitor", "acc", "choose one of"),
        ("device", "tpu", "choose one of"),
    ],
)
def test_bad_values_name_field_value_and_fix(field: str, value: object, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix) as info:
        FitConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert f"{field}={value!r}" in str(info.value)


def test_unknown_strategy_lists_close_matches() -> None:
    with pytest.raises(TransferkitError, match=r"unknown strategy 'two_phase'; did you mean: two-phase"):
        FitConfig(strategy="two_phase")


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(TransferkitError, match=r"unknown backbone 'resnet181'.*resnet18"):
        FitConfig(backbone="resnet181")
    with pytest.raises(TransferkitError, match=r"efficientnet_lite0\.offline"):
        FitConfig(backbone="efficientnet_lite0_offline")


def test_two_phase_needs_a_fine_tune_epoch() -> None:
    with pytest.raises(ConfigError, match="head_epochs=4 is invalid"):
        FitConfig(strategy="two-phase", epochs=4, head_epochs=4)


def test_unknown_key_suggests_the_real_one() -> None:
    with pytest.raises(TransferkitError, match="did you mean batch_size"):
        from_dict({"batchsize": 3})


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("strategy: partial\nepochs: 3\nlr: 0.01\n")
    cfg = resolve(path, epochs=5, lr=None)
    assert (cfg.strategy, cfg.epochs, cfg.lr) == ("partial", 5, 0.01)


def test_config_is_frozen() -> None:
    cfg = FitConfig()
    with pytest.raises(AttributeError):
        cfg.epochs = 3  # type: ignore[misc]
