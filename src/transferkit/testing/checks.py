"""The conformance checks every registered part passes, in the manner of scikit-learn's
``parametrize_with_checks``: a third-party strategy or modality, registered in one file, is
run through fit → save → load → evaluate → predict, an interrupted run resumed to the same
weights, and a comparison — the same checks transferkit's own parts pass
(``tests/test_conformance.py``)::

    from transferkit.testing import parametrize_with_checks

    @parametrize_with_checks(strategies=["my-strategy"])
    def test_my_strategy(check, tmp_path):
        check(tmp_path)

A modality of one's own needs a :class:`Setup` (tiny data and the options that train on it in
seconds): ``parametrize_with_checks(modalities=["my-modality"], setups={"my-modality": Setup(...)})``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferkit.events import Callback, Loop
from transferkit.testing.tiny import (
    TINY_AUDIO_BACKBONE,
    TINY_IMAGE_BACKBONE,
    TINY_IMAGE_SIZE,
    TINY_TEXT_BACKBONE,
    make_images,
    make_text_table,
    make_tones,
    register_tiny_backbones,
)

# Two epochs of batch 8, no --min-steps stretch: each check trains for seconds.
TINY_RUN: dict[str, Any] = {"epochs": 2, "batch_size": 8, "seed": 0, "min_steps": 0}


@dataclass(frozen=True)
class Setup:
    """Tiny data for one modality (made under a folder) and the options that train on it in seconds."""

    make: Callable[[Path], Path]
    options: Mapping[str, Any] = field(default_factory=dict)


def builtin_setups() -> dict[str, Setup]:
    """A setup for each built-in modality, on the tiny backbones (registered here)."""
    register_tiny_backbones()
    return {
        "image": Setup(
            lambda root: make_images(root / "data", classes=3, per_class=8),
            {"backbone": TINY_IMAGE_BACKBONE, "image_size": TINY_IMAGE_SIZE},
        ),
        "text": Setup(
            lambda root: make_text_table(root / "texts.csv", per_class=8),
            {"backbone": TINY_TEXT_BACKBONE, "max_length": 16},
        ),
        "audio": Setup(
            lambda root: make_tones(root / "tones", classes=3, per_class=8), {"backbone": TINY_AUDIO_BACKBONE}
        ),
    }


# --------------------------------------------------------------------------- the checks


def check_fit_save_load_evaluate_predict(modality: str, strategy: str, setup: Setup, folder: Path) -> None:
    """A fit saves a run that loads to the same weights, evaluates in the modality's unit and
    predicts as training's own validation scored."""
    import transferkit
    from transferkit.config import FitConfig

    data = setup.make(folder)
    result = transferkit.fit(data, out=folder / "run", strategy=strategy, **TINY_RUN, **setup.options)
    assert result.config.modality == modality, f"{data} was read as {result.config.modality}, not {modality}"
    assert 0.0 <= result.metrics["val"]["accuracy"] <= 1.0

    loaded = transferkit.load(folder / "run")
    assert loaded.modality.name == modality and loaded.classes == result.model.classes
    splits = transferkit.load_data(data, FitConfig(**setup.options))
    transform = loaded.modality.transform(loaded.preprocessing, is_training=False)
    dataset = loaded.modality.dataset(splits.val, transform)
    batch = torch.stack([dataset[i][0] for i in range(len(splits.val))])
    with torch.inference_mode():  # the saved model is the trained one, to the bit
        assert torch.equal(result.model.model.eval()(batch), loaded.model(batch)), "the saved weights differ"

    report = transferkit.evaluate(folder / "run", data)
    assert report["num_items"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    assert report["unit"] == loaded.modality.unit  # texts are counted as texts, clips as clips
    items = [s.text if s.text is not None else str(s.path) for s in splits.val]
    predictions = transferkit.predict(folder / "run", items, top_k=2)
    assert len(predictions) == len(items)
    top1 = [result.model.classes[int(i)] for i in result.val_scores.y_pred]  # type: ignore[union-attr]
    agree = sum(p.labels[0] == t for p, t in zip(predictions, top1, strict=True)) / len(items)
    assert agree >= 0.9, "predict must score inputs as training's own validation did"


class _CtrlC(Callback):
    """Ctrl-C at the first step after ``epochs`` epochs (their checkpoint is written by then)."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs

    def on_epoch_end(self, loop: Loop, record: Any) -> None:
        self.left -= 1

    def on_before_backward(self, loop: Loop, loss: torch.Tensor) -> None:
        if self.left <= 0:
            raise KeyboardInterrupt


def check_resume_bit_identical(modality: str, strategy: str, setup: Setup, folder: Path) -> None:
    """A run interrupted after two of four epochs and resumed ends on the uninterrupted run's
    weights, to the bit. (A strategy fitted in closed form has no epochs to interrupt.)"""
    import transferkit
    from transferkit.runfolder import RunFolder
    from transferkit.strategies import get_strategy

    if get_strategy(strategy).uses_sklearn:
        return
    data = setup.make(folder)
    run = {**TINY_RUN, **setup.options, "strategy": strategy, "epochs": 4, "restore_best": False}
    reference = transferkit.fit(data, out=folder / "reference", **run)
    try:
        transferkit.fit(data, out=folder / "run", callbacks=[_CtrlC(2)], **run)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"{strategy} finished four epochs without a training step after the second")
    assert (folder / "run" / RunFolder.CHECKPOINT).is_file(), "no checkpoint after two epochs"
    resumed = transferkit.fit(data, out=folder / "run", resume=True, **run)
    a, b = reference.model.model.state_dict(), resumed.model.model.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"the resumed run's weights differ from the uninterrupted run's: {differ[:3]}"


def check_compare(modality: str, strategy: str, setup: Setup, folder: Path) -> None:
    """A comparison of the strategy beside the probe runs, recommends one of them and writes its report."""
    from transferkit.config import FitConfig
    from transferkit.strategies import with_role
    from transferkit.workflows.compare import CompareConfig, compare

    data = setup.make(folder)
    options = dict(setup.options)
    base = FitConfig(**{k: v for k, v in {**TINY_RUN, **options}.items() if k not in ("epochs", "backbone")})
    strategies = tuple(dict.fromkeys((strategy, with_role("probe").name)))
    cfg = CompareConfig(backbones=(options["backbone"],), strategies=strategies, budget_epochs=2, seeds=1, base=base)
    result = compare(data, cfg, out=folder / "cmp")
    assert result.recommendation.strategy in strategies
    assert (folder / "cmp" / "report.html").is_file()


CHECKS: tuple[Callable[[str, str, Setup, Path], None], ...] = (
    check_fit_save_load_evaluate_predict,
    check_resume_bit_identical,
    check_compare,
)


@dataclass(frozen=True)
class Check:
    """One check of one (modality, strategy) pair: call it with an empty folder."""

    name: str
    modality: str
    strategy: str
    setup: Setup
    function: Callable[[str, str, Setup, Path], None]

    def __call__(self, folder: Path) -> None:
        self.function(self.modality, self.strategy, self.setup, Path(folder))

    @property
    def id(self) -> str:
        return f"{self.name}[{self.modality}-{self.strategy}]"


def all_checks(
    strategies: Iterable[str] | None = None,
    modalities: Iterable[str] | None = None,
    setups: Mapping[str, Setup] | None = None,
) -> list[Check]:
    """Every check for each strategy × modality (all registered ones where not given)."""
    from transferkit.modalities import modality_names
    from transferkit.strategies import get_strategy, registered_strategies

    known = {**builtin_setups(), **(setups or {})}
    chosen_strategies = [s.name for s in registered_strategies()] if strategies is None else list(strategies)
    chosen_modalities = modality_names() if modalities is None else list(modalities)
    missing = [m for m in chosen_modalities if m not in known]
    if missing:
        raise ValueError(f"no Setup for modality {', '.join(missing)}: pass setups={{name: Setup(...)}}")
    for name in chosen_strategies:
        get_strategy(name)  # an unknown name is its registry's one-line error, here
    return [Check(f.__name__, m, s, known[m], f) for f in CHECKS for m in chosen_modalities for s in chosen_strategies]


def parametrize_with_checks(
    strategies: Iterable[str] | None = None,
    modalities: Iterable[str] | None = None,
    setups: Mapping[str, Setup] | None = None,
) -> Any:
    """A ``pytest.mark.parametrize`` over :func:`all_checks`: the test takes ``check``."""
    import pytest

    checks = all_checks(strategies, modalities, setups)
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])
