"""The frozen forward through ONNX Runtime: the same outputs as eager PyTorch, or eager itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, TINY_IMAGE, quick_config
from transferkit import fastforward
from transferkit.backbones import create_backbone
from transferkit.fastforward import frozen_forward
from transferkit.ownership import owned_kind

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_the_runtime_forward_matches_eager_and_its_graph_is_kept_as_ours(tmp_path: Path) -> None:
    backbone = create_backbone(TINY).eval()
    forward = frozen_forward(backbone, "tiny", tmp_path / "graphs", torch.device("cpu"))
    x = torch.randn(5, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.inference_mode():
        eager, fast = backbone(x), forward(x)
        assert torch.allclose(fast, eager, atol=1e-4)
        assert forward(x[:2]).shape == (2, eager.shape[1])  # any batch size
    assert list((tmp_path / "graphs").glob("frozen-*.onnx")) and owned_kind(tmp_path / "graphs") == "feature cache"


def test_a_graph_that_disagrees_or_cannot_export_runs_eagerly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = create_backbone(TINY).eval()
    x = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE)
    monkeypatch.setattr(fastforward, "_agrees", lambda *args: False)
    with torch.inference_mode():
        assert torch.equal(frozen_forward(backbone, "a", tmp_path, torch.device("cpu"))(x), backbone(x))
    monkeypatch.setattr(fastforward, "_export", lambda *args: False)
    with torch.inference_mode():
        assert torch.equal(frozen_forward(backbone, "b", None, torch.device("cpu"))(x), backbone(x))


def test_eager_on_request_and_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = create_backbone(TINY)
    assert frozen_forward(backbone, "c", None, torch.device("meta")) is backbone
    monkeypatch.setenv("TRANSFERKIT_FROZEN_FORWARD", "eager")
    assert frozen_forward(backbone, "c", None, torch.device("cpu")) is backbone


def test_the_graphs_are_listed_and_cleared_with_the_cache(tmp_path: Path) -> None:
    from transferkit.cli.system import cache_entries
    from transferkit.features import graph_folder

    backbone = create_backbone(TINY).eval()
    with torch.inference_mode():
        frozen_forward(backbone, "d", graph_folder(tmp_path), torch.device("cpu"))(torch.randn(2, 3, 16, 16))
    (entry,) = cache_entries(tmp_path)
    assert entry["key"] == "frozen-graphs" and entry["items"] == 1


def test_inputs_that_are_not_images_run_eagerly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(fastforward, "_session", lambda *args: calls.append(args))

    class Tokens(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids.float().sum(-1, keepdim=True)

    forward = frozen_forward(Tokens(), "e", tmp_path, torch.device("cpu"))
    assert forward(torch.ones(3, 2, 7, dtype=torch.long)).shape == (3, 2, 1) and not calls


def test_a_linear_probe_on_runtime_features_scores_as_on_eager_ones(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit import features
    from transferkit.api import fit

    cfg = quick_config(backbone=TINY, strategy="linear-probe", image_size=TINY_IMAGE, cache=False)
    monkeypatch.setattr(features, "FAST_FORWARD_ITEMS", 0)  # tiny data takes the runtime path too
    fast = fit(tiny_data, cfg, out=tmp_path / "fast")
    monkeypatch.setenv("TRANSFERKIT_FROZEN_FORWARD", "eager")
    eager = fit(tiny_data, cfg, out=tmp_path / "eager")
    assert fast.metrics["val"]["accuracy"] == eager.metrics["val"]["accuracy"]


def test_a_folder_of_the_users_by_that_name_is_never_claimed(tmp_path: Path) -> None:
    theirs = tmp_path / "frozen-graphs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine", encoding="utf-8")
    backbone = create_backbone(TINY).eval()
    x = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.inference_mode():
        assert torch.allclose(frozen_forward(backbone, "f", theirs, torch.device("cpu"))(x), backbone(x), atol=1e-4)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]  # no marker, no graph: untouched
