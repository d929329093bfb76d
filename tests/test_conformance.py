"""One conformance suite over every registered modality × every strategy (in the spirit of
scikit-learn's ``parametrize_with_checks``): a modality is tested by registering it and
giving it a tiny setup below — fit, save, load, evaluate, predict, resume and compare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import transferkit
from tests.conftest import (
    QUICK,
    TINY,
    TINY_AUDIO,
    TINY_IMAGE,
    TINY_TEXT,
    interrupted_in_epoch,
    make_dataset,
    make_text_table,
    make_tones,
)
from transferkit.config import FitConfig
from transferkit.modalities import modality_names
from transferkit.runfolder import RunFolder
from transferkit.strategies import registered_strategies
from transferkit.workflows.compare import CompareConfig, compare

# modality → (make tiny data under a folder, the options that give it a tiny backbone)
SETUPS: dict[str, Callable[[Path], tuple[Path, dict[str, Any]]]] = {
    "image": lambda root: (
        make_dataset(root / "data", classes=3, per_class=8),
        {"backbone": TINY, "image_size": TINY_IMAGE},
    ),
    "text": lambda root: (make_text_table(root / "texts.csv", per_class=8), {"backbone": TINY_TEXT, "max_length": 16}),
    "audio": lambda root: (make_tones(root / "tones", classes=3, per_class=8), {"backbone": TINY_AUDIO}),
}
STRATEGIES = [s.name for s in registered_strategies()]
TINY_RUN = {"epochs": 2, "batch_size": 8, "seed": 0, **QUICK}


def test_every_registered_modality_has_a_tiny_setup() -> None:
    missing = set(modality_names()) - set(SETUPS)
    assert not missing, f"add a tiny setup for {missing} to SETUPS: the conformance suite tests every modality"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("modality", modality_names())
def test_fit_save_load_evaluate_predict(modality: str, strategy: str, tmp_path: Path) -> None:
    data, options = SETUPS[modality](tmp_path)
    result = transferkit.fit(data, out=tmp_path / "run", strategy=strategy, **TINY_RUN, **options)
    assert result.config.modality == modality
    assert 0.0 <= result.metrics["val"]["accuracy"] <= 1.0

    loaded = transferkit.load(tmp_path / "run")
    assert loaded.modality.name == modality and loaded.classes == result.model.classes
    splits = transferkit.load_data(data, FitConfig(**options))
    transform = loaded.modality.transform(loaded.preprocessing, is_training=False)
    dataset = loaded.modality.dataset(splits.val, transform)
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.inference_mode():  # the saved model is the trained one, to the bit
        assert torch.equal(result.model.model.eval()(batch), loaded.model(batch))

    report = transferkit.evaluate(tmp_path / "run", data)
    assert report["num_items"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    assert report["unit"] == loaded.modality.unit  # texts are counted as texts, clips as clips
    assert ("num_images" in report) == (loaded.modality.unit == "images")
    items = [s.text if s.text is not None else str(s.path) for s in splits.val]
    predictions = transferkit.predict(tmp_path / "run", items, top_k=2)
    assert len(predictions) == len(items)
    top1 = [result.model.classes[int(i)] for i in result.val_scores.y_pred]  # type: ignore[union-attr]
    agree = sum(p.labels[0] == t for p, t in zip(predictions, top1, strict=True)) / len(items)
    assert agree >= 0.9, "predict must score inputs as training's own validation did"


@pytest.mark.parametrize("modality", modality_names())
def test_interrupted_run_resumes_to_the_same_weights(
    modality: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, options = SETUPS[modality](tmp_path)
    run = {**TINY_RUN, **options, "strategy": "two-phase", "epochs": 4, "restore_best": False}
    reference = transferkit.fit(data, out=tmp_path / "reference", **run)
    with interrupted_in_epoch(3, monkeypatch):
        transferkit.fit(data, out=tmp_path / "run", **run)
    assert (tmp_path / "run" / RunFolder.CHECKPOINT).is_file()
    resumed = transferkit.fit(data, out=tmp_path / "run", resume=True, **run)  # default options: resumable
    a, b = reference.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("modality", modality_names())
def test_compare_reports_and_recommends(modality: str, tmp_path: Path) -> None:
    data, options = SETUPS[modality](tmp_path)
    base = FitConfig(**{k: v for k, v in {**TINY_RUN, **options}.items() if k not in ("epochs", "backbone")})
    cfg = CompareConfig(
        backbones=(options["backbone"],), strategies=("linear-probe", "feature-extraction"), budget_epochs=2,
        seeds=1, base=base,
    )  # fmt: skip
    result = compare(data, cfg, out=tmp_path / "cmp")
    assert result.recommendation.strategy in cfg.strategies
    assert (tmp_path / "cmp" / "report.html").is_file()
