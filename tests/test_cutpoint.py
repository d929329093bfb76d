"""The cut-point cache: frozen bottom groups run once per view, the top trains on their activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, TINY_IMAGE, interrupted_in_epoch, quick_config
from transferkit import cutpoint
from transferkit.api import fit
from transferkit.backbones import create_backbone
from transferkit.cutpoint import CutModel, split
from transferkit.freezing import freeze_for_phase, set_train_mode
from transferkit.heads import ClassifierHead
from transferkit.layers import layer_groups
from transferkit.model import TransferModel
from transferkit.strategies import Phase

EXAMPLE = torch.zeros(1, 3, TINY_IMAGE, TINY_IMAGE)


def _model() -> TransferModel:
    backbone = create_backbone(TINY)
    return TransferModel(backbone, ClassifierHead(int(backbone.num_features), 3))


@pytest.mark.parametrize("top", [1, 2, 4])
def test_a_cut_is_exact_and_shares_every_parameter(top: int) -> None:
    model = _model()
    groups = layer_groups(model.backbone)
    cut = split(model.backbone, groups, len(groups) - top, EXAMPLE)
    assert cut is not None
    x = torch.randn(4, 3, TINY_IMAGE, TINY_IMAGE)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(cut.top(cut.bottom(x)), model.backbone(x), atol=1e-5)
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in CutModel(cut.top, model.head).parameters())  # one set of weights
    assert set(model.state_dict()) == set(_model().state_dict())  # the saved model is untouched


def test_a_forward_that_is_no_chain_is_not_cut() -> None:
    class Skip(torch.nn.Module):  # the input joins again after the first layer: no prefix is a cut
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + x).mean((2, 3))

    groups = layer_groups(Skip())
    assert split(Skip(), groups, 1, EXAMPLE) is None


def test_the_top_keeps_the_batchnorm_policy() -> None:
    model = _model()
    groups = layer_groups(model.backbone)
    phase = Phase("partial", 1, 2, 1e-3, 1e-4)
    freeze_for_phase(model, groups, phase)
    cut = split(model.backbone, groups, len(groups) - 2, EXAMPLE)
    assert cut is not None
    net = CutModel(cut.top, model.head)
    set_train_mode(net, bn_update=False)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)  # pre-trained statistics, as without the cut
    assert net.head.training


def _partial(tmp_path: Path, name: str, said: str) -> tuple[float, dict[str, torch.Tensor]]:
    from rich.console import Console

    console = Console(record=True, width=200)
    cfg = quick_config(backbone=TINY, strategy="partial", unfreeze=2, image_size=TINY_IMAGE, batch_size=8, epochs=3,
                    augment=False, cache=False)  # fmt: skip
    result = fit(tmp_path / "data", cfg, out=tmp_path / name, console=console)
    assert said in console.export_text()
    return result.metrics["val"]["accuracy"], load_file(tmp_path / name / "model.safetensors")


def test_partial_trains_alike_with_and_without_the_cut(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_cut, cut_weights = _partial(tmp_path, "cut", "run once per view")
    monkeypatch.setattr(cutpoint, "CUT_CACHE_LIMIT", 0)  # over the limit: recomputed, as before
    without, weights = _partial(tmp_path, "whole", "frozen layers recomputed every step")
    assert with_cut == pytest.approx(without, abs=0.1)
    # fp16 activations round the inputs of the top, nothing else differs
    assert max(float((cut_weights[k] - weights[k]).abs().max()) for k in weights) < 5e-3


def test_the_cut_is_said_and_a_resume_ends_alike(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    cfg = quick_config(backbone=TINY, strategy="partial", unfreeze=2, image_size=TINY_IMAGE, batch_size=8, epochs=3,
                    augment=True, cache_views=2, seed=1)  # fmt: skip
    whole = fit(tmp_path / "data", cfg, out=tmp_path / "whole", console=console)
    assert "run once per view" in console.export_text()
    with interrupted_in_epoch(2, monkeypatch):
        fit(tmp_path / "data", cfg, out=tmp_path / "resumed")
    resumed = fit(tmp_path / "data", cfg, out=tmp_path / "resumed", resume=True)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["val"] == whole.metrics["val"]
