"""`rank`: scores per backbone, ordering, the shared feature cache, and user errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, TINY_IMAGE, make_dataset, make_image
from tests.test_cli import run_cli
from transferkit import api
from transferkit.cli import app
from transferkit.errors import ConfigError, TransferkitError
from transferkit.modalities.image_zoo import MOBILENET_PACKAGE
from transferkit.workflows import rank as rank_module
from transferkit.workflows.rank import RankConfig, rank

FLOOR = "resnet10t.random"


@pytest.fixture(scope="module")
def rank_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("rank") / "data", classes=3, per_class=10)


def test_ranks_every_backbone_with_all_three_scores(rank_data: Path, tmp_path: Path) -> None:
    ranking = rank(rank_data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE, folds=3, out=tmp_path)
    assert {s.backbone for s in ranking.scores} == {TINY, FLOOR}
    logmes = [s.logme for s in ranking.scores]
    assert logmes == sorted(logmes, reverse=True)
    assert ranking.recommended == ranking.scores[0].backbone
    for s in ranking.scores:
        assert s.images == 24  # the training split only
        assert 0.0 <= s.knn_accuracy <= 1.0 and 0.0 <= s.linear_accuracy <= 1.0
        assert set(s.seconds) == {"features", "logme", "knn", "linear"}
    saved = json.loads((tmp_path / "rank.json").read_text())
    assert saved["recommended"] == ranking.recommended and len(saved["scores"]) == 2


def test_score_option_changes_the_order_key(rank_data: Path) -> None:
    ranking = rank(rank_data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE, folds=3, score="knn")
    accuracies = [s.knn_accuracy for s in ranking.scores]
    assert accuracies == sorted(accuracies, reverse=True)
    assert "kNN accuracy" in ranking.reason


def test_rank_reuses_the_features_fit_cached(rank_data: Path, tiny_config: dict[str, object]) -> None:
    """`fit --strategy feature-extraction` and `rank` key the cache the same way."""
    api.fit(rank_data, strategy="feature-extraction", augment=False, **tiny_config)
    ranking = rank(rank_data, backbones=(TINY,), image_size=TINY_IMAGE, folds=3)
    assert ranking.scores[0].cached


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"backbones": (TINY, TINY)}, "backbones"),
        ({"device": "nonsense"}, "device"),
        ({"score": "accuracy"}, "score"),
        ({"folds": 1}, "folds"),
        ({"image_size": 8}, "image_size"),
        ({"neighbours": 0}, "neighbours"),
    ],
)
def test_bad_settings_fail_before_any_compute(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RankConfig(**options)  # type: ignore[arg-type]
    assert info.value.field == field


def test_unknown_backbone_lists_close_names() -> None:
    with pytest.raises(TransferkitError, match="did you mean"):
        RankConfig(backbones=("efficientnet_lite0.ofline",))


def test_cli_prints_the_table_and_recommendation(rank_data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["rank", str(rank_data), "--backbones", f"{TINY},{FLOOR}", "--image-size", str(TINY_IMAGE), "--folds", "3",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "LogME" in result.output and "Recommendation" in result.output and FLOOR in result.output


def test_cli_bad_score_is_a_one_line_error(
    rank_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["rank", rank_data, "--backbones", TINY, "--score", "auc"], capsys, monkeypatch)
    assert code == 2 and "score" in err and "Traceback" not in err


def test_the_default_zoo_leaves_out_backbones_whose_weights_are_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from transferkit.extras import installed  # what rank asks; it asks importlib

    monkeypatch.setattr(rank_module, "installed", lambda name: False if name == MOBILENET_PACKAGE else installed(name))
    with pytest.warns(UserWarning, match="not ranked, weights not installed: mobilenet_v2.offline"):
        zoo = rank_module._zoo("image")
    assert "mobilenet_v2.offline" not in zoo and "efficientnet_lite0.offline" in zoo and "resnet10t.random" in zoo


# --------------------------------------------------------------------------- tiny, imbalanced, duplicated data


def make_counts(root: Path, counts: list[int], seed: int = 0, copies: bool = False) -> Path:
    """An image folder with ``counts[c]`` images in class c; ``copies``: each class one image, copied."""
    rng = np.random.default_rng(seed)
    for c, count in enumerate(counts):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        first = make_image(c, rng)
        for i in range(count):
            (first if copies else make_image(c, rng)).save(root / f"class_{c}" / f"{i:03d}.png")
    return root


def _finite(ranking: Any, score: str) -> bool:
    return all(math.isfinite(s.value(score)) for s in ranking.scores)


def test_two_training_images_per_class_rank_with_every_score(tmp_path: Path) -> None:
    """3 images a class: 1 to validation, 2 to train; folds and kNN's k shrink to fit."""
    data = make_dataset(tmp_path / "data", classes=3, per_class=3)
    ranking = rank(data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE, out=tmp_path / "out")
    assert ranking.ordered_by == "logme" and ranking.notes == []
    assert all(s.images == 6 for s in ranking.scores) and _finite(ranking, "logme")
    assert _finite(ranking, "knn") and _finite(ranking, "linear")
    assert all(any("k = " in note for note in s.notes) for s in ranking.scores)  # k = 3 of the asked 5
    saved = json.loads((tmp_path / "out" / "rank.json").read_text())
    assert saved["ordered_by"] == "logme" and saved["recommended"] == ranking.recommended


@pytest.mark.parametrize("score", ["logme", "knn", "linear"])
def test_one_training_image_per_class_ranks_by_logme_with_a_note(tmp_path: Path, score: str) -> None:
    """2 images a class leave 1 to train: no cross-validation, so kNN and linear are NaN with
    a note and a ranking asked for by either falls back to LogME (this was a DataError)."""
    data = make_dataset(tmp_path / "data", classes=2, per_class=2)
    ranking = rank(data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE, score=score)
    assert ranking.ordered_by == "logme" and _finite(ranking, "logme")
    assert all(math.isnan(s.knn_accuracy) and math.isnan(s.linear_accuracy) for s in ranking.scores)
    assert all(any("cross-validation needs 2" in n for n in s.notes) for s in ranking.scores)
    if score != "logme":
        assert "Ordered by LogME" in ranking.reason and ranking.notes


def test_fifty_to_one_imbalance_ranks_with_every_score(tmp_path: Path) -> None:
    data = make_counts(tmp_path / "data", [125, 3])  # 100 and 2 training images
    ranking = rank(data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE)
    assert all(s.images == 102 for s in ranking.scores)
    assert ranking.ordered_by == "logme"
    assert _finite(ranking, "logme") and _finite(ranking, "knn") and _finite(ranking, "linear")


def test_exact_duplicates_rank_and_say_the_features_fit_exactly(tmp_path: Path) -> None:
    data = make_counts(tmp_path / "data", [5, 5, 5], copies=True)
    ranking = rank(data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE)
    assert _finite(ranking, "logme") and _finite(ranking, "knn") and _finite(ranking, "linear")
    assert any("fit the labels" in note for s in ranking.scores for note in s.notes)


def test_a_score_that_cannot_be_computed_falls_back_with_a_note(
    rank_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever LogME cannot score (here: one backbone's features are refused) ranks by kNN."""
    from transferkit.logme import logme_evidence as real

    calls = {"n": 0}

    def refuse_the_second(x: np.ndarray, y: np.ndarray) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("features hold NaN or infinite values")
        return real(x, y)

    monkeypatch.setattr(rank_module, "logme_evidence", refuse_the_second)
    ranking = rank(rank_data, backbones=(TINY, FLOOR), image_size=TINY_IMAGE, folds=3, out=tmp_path)
    assert ranking.ordered_by == "knn"
    assert ranking.reason.startswith(f"Ordered by kNN accuracy: LogME could not be computed for {FLOOR}")
    assert [s.knn_accuracy for s in ranking.scores] == sorted((s.knn_accuracy for s in ranking.scores), reverse=True)
    failed = next(s for s in ranking.scores if s.backbone == FLOOR)
    assert math.isnan(failed.logme) and failed.notes == ["LogME not computed: features hold NaN or infinite values"]
    assert json.loads((tmp_path / "rank.json").read_text())["ordered_by"] == "knn"


def test_the_cli_prints_missing_scores_and_notes_on_tiny_data(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=2)
    result = CliRunner().invoke(
        app, ["rank", str(data), "--backbones", f"{TINY},{FLOOR}", "--image-size", str(TINY_IMAGE), "--score", "knn",
              "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "—" in result.output and "cross-validation needs 2" in result.output
    assert "Ordered by LogME" in result.output


@pytest.mark.parametrize("counts", [[10, 10, 10], [100, 5]], ids=["10-per-class", "20-to-1"])
def test_auto_ranks_the_issue_s_small_and_imbalanced_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counts: list[int]
) -> None:
    """`auto` on 10 images a class (the issue's digits case) and on imbalanced data: its real
    entry point, stopped once the ranking stage is saved (the search after it is tested in
    test_auto)."""
    from transferkit.auto import auto, search
    from transferkit.auto.config import AutoConfig

    class Ranked(Exception):
        pass

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Ranked

    monkeypatch.setattr(search.Search, "anytime", stop)
    data = make_counts(tmp_path / "data", counts)
    with pytest.raises(Ranked):
        auto(data, AutoConfig(budget="60s", backbones=(TINY, FLOOR), zoo=False), out=tmp_path / "out")
    ranking = json.loads((tmp_path / "out" / "auto.json").read_text())["ranking"]
    assert {r["backbone"] for r in ranking} == {TINY, FLOOR}
    assert all(math.isfinite(r["logme"]) for r in ranking)
