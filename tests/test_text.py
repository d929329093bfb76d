"""Text: datasets, the encoder wrapper, every strategy on a tiny BERT, the CLI, the real offline encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import transferkit
from tests.conftest import QUICK, TINY_TEXT, make_text_table
from tests.test_cli import run_cli
from transferkit.backbones import create_backbone
from transferkit.config import from_dict
from transferkit.errors import ConfigError, DataError
from transferkit.layers import is_adapter, layer_groups, list_layers
from transferkit.modalities import detect_modality
from transferkit.modalities.text import load_text_splits
from transferkit.pipeline import SingleLabel, prepare_model
from transferkit.strategies import expected_trainable_params, get_strategy, registered_strategies

TEXT_CONFIG = {"backbone": TINY_TEXT, "batch_size": 8, "epochs": 2, "lr": 0.01, "seed": 0, **QUICK}


# --------------------------------------------------------------------------- data


def test_tables_and_folders_load_alike(tmp_path: Path) -> None:
    table = make_text_table(tmp_path / "t.csv", per_class=5)
    rows = [line.rsplit(",", 1) for line in table.read_text().splitlines()[1:]]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "\n".join(f"{t.strip(chr(34))}\t{c}" for t, c in rows))
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t.strip('"'), "label": c}) for t, c in rows))
    for i, (text, label) in enumerate(rows):
        folder = tmp_path / "folders" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.txt").write_text(text.strip('"'))
    loaded = [load_text_splits(tmp_path / name) for name in ("t.csv", "t.tsv", "t.jsonl", "folders")]
    for splits in loaded:
        assert splits.classes == ("money", "music", "sport")
        assert len(splits.train) + len(splits.val) == 15
        assert all(s.text for s in splits.train)
    assert all(detect_modality(tmp_path / name).name == "text" for name in ("t.csv", "t.tsv", "t.jsonl", "folders"))


def test_own_split_tables(tmp_path: Path) -> None:
    make_text_table(tmp_path / "train.csv", per_class=4)
    make_text_table(tmp_path / "val.csv", per_class=2, seed=1)
    splits = load_text_splits(tmp_path)
    assert (len(splits.train), len(splits.val)) == (12, 6)


def test_a_missing_column_names_the_columns_and_the_option(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("body,topic\nhello there,a\nbye now,b\n")
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: body, topic\); name it with --text-column"):
        load_text_splits(table)
    with pytest.raises(DataError, match="did you mean 'topic'"):
        load_text_splits(table, text_column="body", label_column="topics")


def test_an_image_backbone_on_text_is_refused_before_training(tiny_text: Path) -> None:
    with pytest.raises(ConfigError, match="is an image backbone but the data is text"):
        transferkit.fit(tiny_text, backbone="resnet10t.random", epochs=2)


# --------------------------------------------------------------------------- the encoder


def test_layer_groups_are_embeddings_then_one_per_transformer_layer() -> None:
    groups = layer_groups(create_backbone(TINY_TEXT))
    assert groups[0].label.startswith("encoder.embeddings")
    assert [g.param_names[0].split(".")[3] for g in groups[1:]] == ["0", "1"]
    rows = list_layers(create_backbone(TINY_TEXT))
    assert {r.group for r in rows if r.num_params} == {0, 1, 2}


def test_padding_does_not_change_the_features() -> None:
    encoder = create_backbone(TINY_TEXT).eval()
    ids = torch.tensor([[101, 2088, 102, 0, 0, 0]])
    mask = (ids > 0).long()
    packed = torch.stack([ids, mask], dim=1)
    trimmed = torch.stack([ids[:, :3], mask[:, :3]], dim=1)
    assert torch.allclose(encoder(packed), encoder(trimmed), atol=1e-6)


# --------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", [s.name for s in registered_strategies()])
def test_text_strategy_contract(name: str, tiny_text: Path, tmp_path: Path) -> None:
    cfg = from_dict({**TEXT_CONFIG, "strategy": name, "restore_best": False, "unfreeze": 1 if name != "full" else None})
    strategy = get_strategy(name)
    built = prepare_model(cfg, strategy, SingleLabel(3))[0].backbone
    before = {k: v.clone() for k, v in built.state_dict().items()}
    result = transferkit.fit(tiny_text, cfg, out=tmp_path / "run")
    model = result.model.model
    groups = layer_groups(model.backbone)
    head_params = sum(p.numel() for p in model.head.parameters())
    if not strategy.uses_sklearn:
        for summary, phase in zip(result.phases, strategy.plan(cfg), strict=True):
            assert summary["trainable_params"] == expected_trainable_params(groups, head_params, phase)
    touched = (
        set() if strategy.uses_sklearn else {i for p in strategy.plan(cfg) for i in p.trainable_groups(len(groups))}
    )
    frozen = {n for g in groups if g.index not in touched for n in g.param_names if not is_adapter(n)}
    after = model.backbone.state_dict()
    for key in frozen:
        assert torch.equal(after[key], before[key]), f"{name}: frozen {key} changed"
    if strategy.fine_tunes:
        assert any(not torch.equal(v, before[k]) for k, v in after.items() if v.is_floating_point())
    loaded = transferkit.load(tmp_path / "run")
    texts = ["the striker scored a goal", "bank shares fell"]
    assert [p.probabilities for p in loaded.predict(texts)] == [p.probabilities for p in result.model.predict(texts)]


def test_lora_trains_a_small_share_of_the_parameters(tiny_text: Path) -> None:
    lora = transferkit.fit(tiny_text, strategy="lora", **TEXT_CONFIG)
    full = transferkit.fit(tiny_text, strategy="full", **TEXT_CONFIG)
    trainable, frozen = lora.phases[0]["trainable_params"], lora.phases[0]["frozen_params"]
    assert trainable < 0.05 * full.phases[0]["trainable_params"]
    assert frozen > 0.9 * (trainable + frozen)


# --------------------------------------------------------------------------- the command line


def test_cli_fit_evaluate_predict_and_compare_on_text(
    tiny_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(
        ["fit", str(tiny_text), "--backbone", TINY_TEXT, "--strategy", "partial", "--epochs", "2", "--batch-size",
         "8", "--lr", "0.01", "--out", str(run)], capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert "texts; up to 32 tokens each" in out
    code, out, _ = run_cli(["evaluate", str(run), str(tiny_text)], capsys, monkeypatch)
    assert code == 0 and "accuracy" in out
    code, out, _ = run_cli(["predict", str(run), "the band played a new song", "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["predictions"][0]["path"] == "the band played a new song"
    code, out, err = run_cli(
        ["compare", str(tiny_text), "--backbone", TINY_TEXT, "--strategies", "linear-probe,feature-extraction,lora",
         "--budget-epochs", "2", "--seeds", "1", "--batch-size", "8", "--out", str(tmp_path / "cmp")],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    rows = {r["strategy"]: r for r in results["rows"]}
    assert rows["lora"]["trainable_params"] > rows["feature-extraction"]["trainable_params"]
    assert (tmp_path / "cmp" / "report.html").is_file()


def test_cli_layers_lists_the_text_encoder(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_cli(["layers", TINY_TEXT], capsys, monkeypatch)
    assert code == 0 and "encoder.encoder.layer.1" in out


# --------------------------------------------------------------------------- the real offline encoder


@pytest.mark.offline_weights
def test_offline_minilm_separates_bbc_topics(tmp_path: Path) -> None:
    from transferkit.demos import write_news_demo

    data = write_news_demo(tmp_path / "news", per_class=12)
    result = transferkit.fit(data, strategy="linear-probe")  # the image default becomes the text encoder
    assert result.config.backbone == "all-minilm-l6-v2.offline"
    assert result.model.preprocessing.max_length == 256  # type: ignore[union-attr]
    assert result.metrics["val"]["accuracy"] >= 0.8
    similar = result.model.model.backbone
    assert similar.pooling == "mean"


def test_an_image_folder_with_a_stray_txt_is_still_images(tiny_data: Path, tmp_path: Path) -> None:
    (tiny_data / "class_0" / "notes.txt").write_text("where these came from")
    assert detect_modality(tiny_data).name == "image"


def test_rank_scores_text_encoders_too(tiny_text: Path, tmp_path: Path) -> None:
    """rank is modality-agnostic now: it asks the data's modality for preprocessing and transforms."""
    from transferkit.workflows.rank import rank

    ranking = rank(tiny_text, backbones=(TINY_TEXT,), folds=3, out=tmp_path / "rank")
    assert ranking.recommended == TINY_TEXT and 0.0 <= ranking.scores[0].knn_accuracy <= 1.0


def test_a_validation_text_equal_to_a_training_text_is_reported_as_leakage(tmp_path: Path) -> None:
    from transferkit.modalities.text import load_text_splits

    make_text_table(tmp_path / "train.csv", per_class=4)
    header, first_train_row = (tmp_path / "train.csv").read_text().splitlines()[:2]
    fresh_rows = make_text_table(tmp_path / "other.csv", per_class=2, seed=1).read_text().split("\n", 1)[1]
    (tmp_path / "val.csv").write_text(f"{header}\n{first_train_row}\n{fresh_rows}")
    with pytest.warns(UserWarning, match=r"leakage: 1 validation/test text\(s\)"):
        splits = load_text_splits(tmp_path)
    assert len(splits.duplicates) == 1
