"""One conformance suite over every registered modality × every strategy, through the public
:mod:`transferkit.testing` (in the spirit of scikit-learn's ``parametrize_with_checks``): fit,
save, load, evaluate, predict, an interrupted run resumed to the same weights, and a
comparison. A plugin runs the same checks over its own parts (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferkit.modalities import modality_names
from transferkit.testing import Check, Setup, all_checks, builtin_setups, make_images, parametrize_with_checks


def test_every_registered_modality_has_a_tiny_setup() -> None:
    missing = set(modality_names()) - set(builtin_setups())
    assert not missing, f"add a tiny setup for {missing} to transferkit.testing: the suite tests every modality"


@parametrize_with_checks()
def test_every_registered_part_conforms(check: Check, tmp_path: Path) -> None:
    check(tmp_path)


def test_a_modality_without_a_setup_is_named() -> None:
    with pytest.raises(ValueError, match="no Setup for modality nope"):
        all_checks(modalities=["nope"])


def test_a_plugin_brings_its_own_setup() -> None:
    """A third party's modality is checked on the data and options it gives."""
    mine = Setup(lambda root: make_images(root / "mine", classes=2, per_class=4), {"backbone": "tiny.test"})
    checks = all_checks(strategies=["linear-probe"], modalities=["image"], setups={"image": mine})
    assert all(c.setup is mine for c in checks) and len(checks) == 3
