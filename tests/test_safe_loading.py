"""A weights file from elsewhere must not run code unless the user says they trust it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import transferkit
from tests.conftest import TINY
from transferkit.backbones import create_backbone
from transferkit.errors import TransferkitError
from transferkit.layers import load_weights_file


class _Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"conv_stem.weight": _Exploit(marker)}))
    model = create_backbone(TINY, pretrained=False)
    with pytest.raises(TransferkitError, match=r"refusing to unpickle .*--trust-pickle"):
        load_weights_file(model, path)
    assert not marker.exists()


def test_plain_tensor_pickles_and_safetensors_load(tmp_path: Path) -> None:
    source = create_backbone(TINY, pretrained=True)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    for name in ("weights.pth", "weights.safetensors"):
        target = create_backbone(TINY, pretrained=False)
        load_weights_file(target, tmp_path / name)
        assert all(
            torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
        )


def test_weights_that_fit_nothing_are_an_error(tmp_path: Path) -> None:
    save_file({"unrelated": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TransferkitError, match=r"no tensor .* fits"):
        load_weights_file(create_backbone(TINY, pretrained=False), tmp_path / "other.safetensors")


def test_fit_from_init_weights(tiny_data: Path, tiny_config: dict[str, object], tmp_path: Path) -> None:
    import torch

    registered = create_backbone(TINY, pretrained=True).state_dict()
    mine = {k: v.contiguous() + 0.01 if v.is_floating_point() else v for k, v in registered.items()}
    save_file(mine, str(tmp_path / "w.safetensors"))  # the registered weights, shifted: only a load explains them
    result = transferkit.fit(
        tiny_data, strategy="feature-extraction", init_weights=str(tmp_path / "w.safetensors"), **tiny_config
    )
    loaded = result.model.model.backbone.state_dict()  # frozen backbone, frozen BatchNorm: unchanged by training
    assert all(torch.equal(loaded[k], v) for k, v in mine.items() if v.is_floating_point())


def test_unknown_keys_in_config_json_are_refused(
    tiny_data: Path, tiny_config: dict[str, object], tmp_path: Path
) -> None:
    transferkit.fit(tiny_data, strategy="linear-probe", out=tmp_path / "run", **tiny_config)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["exec_this"] = "import os"
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TransferkitError, match=r"unknown key.*'exec_this'"):
        transferkit.load(tmp_path / "run")
