from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import transferkit
from transferkit.errors import TransferkitError


@pytest.fixture
def run_dir(tiny_data: Path, tiny_config: dict[str, object], tmp_path: Path) -> Path:
    transferkit.fit(tiny_data, strategy="feature-extraction", out=tmp_path / "run", **{**tiny_config, "epochs": 1})
    return tmp_path / "run"


def test_run_directory_contents(run_dir: Path) -> None:
    files = {"model.safetensors", "config.json", "history.json", "history.csv", "split.json"}
    assert {p.name for p in run_dir.iterdir() if not p.name.startswith(".")} == files
    assert (run_dir / ".transferkit").is_file()  # the marker that makes the folder transferkit's to replace
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["classes"] == ["class_0", "class_1", "class_2"]
    assert cfg["strategy"] == "feature-extraction"
    assert cfg["preprocessing"]["image_size"] == 32
    assert set(cfg["versions"]) >= {"torch", "timm", "transferkit"}
    assert "val" in cfg["metrics"]


def test_predict_returns_sorted_topk(run_dir: Path, tiny_data: Path) -> None:
    predictions = transferkit.predict(run_dir, [tiny_data / "class_0"], top_k=2)
    assert len(predictions) == 10
    for p in predictions:
        assert len(p.labels) == 2 and p.probabilities[0] >= p.probabilities[1]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("classes"), "lacks the key 'classes'"),
        (lambda c: c.update(classes="abc"), "'classes' should be a list"),
        (lambda c: c.update(classes=["a", "b", "c", "d"]), "head for 3 classes"),
        (lambda c: c.update(format_version=99), "newer transferkit"),
    ],
    ids=["missing-key", "wrong-type", "class-count", "future-format"],
)
def test_tampered_config_is_refused_clearly(run_dir: Path, edit: object, message: str) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    edit(cfg)  # type: ignore[operator]
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TransferkitError, match=message):
        transferkit.load(run_dir)


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(TransferkitError, match="not a model directory"):
        transferkit.load(tmp_path)
