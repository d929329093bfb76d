"""`rank`: scores per backbone, ordering, the shared feature cache, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, TINY_IMAGE, make_dataset
from tests.test_cli import run_cli
from transferkit import api
from transferkit.cli import app
from transferkit.errors import ConfigError, DataError, TransferkitError
from transferkit.modalities.image_zoo import MOBILENET_PACKAGE
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


def test_a_class_with_one_image_cannot_be_cross_validated(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", classes=2, per_class=2)
    with pytest.raises(DataError, match="at least 2 training images"):
        rank(data, backbones=(TINY,), image_size=TINY_IMAGE, val_fraction=0.5)


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
    import importlib.util

    from transferkit.workflows import rank as rank_module

    real = importlib.util.find_spec
    monkeypatch.setattr(
        rank_module.importlib.util, "find_spec", lambda name: None if name == MOBILENET_PACKAGE else real(name)
    )
    with pytest.warns(UserWarning, match="not ranked, weights not installed: mobilenet_v2.offline"):
        zoo = rank_module._zoo("image")
    assert "mobilenet_v2.offline" not in zoo and "efficientnet_lite0.offline" in zoo and "resnet10t.random" in zoo
