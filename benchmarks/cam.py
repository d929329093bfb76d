"""Where the class-activation maps fall: the share of each map inside a bright square, per
backbone and method, beside the share a perfect map on the same grid would hold.

    .venv/bin/python benchmarks/cam.py [--backbones efficientnet_lite0.offline ...]
                                       [--methods gradcam eigencam] [--seeds 0 1 2]
                                       [--strategy linear-probe] [--out runs/cam]

The data (tests/test_explain.py checks the maps on the same): class ``square``, a bright (230) 40 px square at a random
place on 96 px grey noise (mean 100, sd 8); class ``plain``, the noise alone; --per-class of
each, drawn afresh for every seed. Each seed fits --strategy on them (every other option at its
default) and explains the first --images of its square images towards class ``square`` with
`transferkit explain`'s own functions. Per backbone and method:

- **mass inside**: the share of the map (as pytorch-grad-cam returns it, at the model's input
  size) inside the square, mean over the images, ± 95% t-interval over --seeds;
- **worst**: the lowest image of all seeds; **peak inside**: how often the map's maximum lies
  inside the square; **outside level**: the map's mean outside the square over its mean inside
  (0: nothing outside; 1: no localisation at all);
- **perfect map**: the same share for the square itself averaged over each cell of the target
  layer's grid and upsampled the same way, the most a map that coarse can show (the square
  covers ``area`` of the input).

Prints a Markdown table and writes cam.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

BACKBONES = ["efficientnet_lite0.offline", "efficientnet_lite1.offline", "efficientnet_lite2.offline",
             "mobilenet_v2.offline"]  # fmt: skip
SIDE, OBJECT = 96, 40  # a 40 px square in a 96 px image


def squares(root: Path, per_class: int, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    """Class folders ``square`` and ``plain`` under ``root``; each square image with its mask."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    made = []
    for label in ("square", "plain"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = rng.normal(100, 8, (SIDE, SIDE, 3)).clip(0, 255)
            y, x = rng.integers(4, SIDE - OBJECT - 4, 2)
            mask = (yy >= y) & (yy < y + OBJECT) & (xx >= x) & (xx < x + OBJECT)
            if label == "square":
                image[mask] = 230
            path = root / label / f"{i:02d}.png"
            Image.fromarray(image.astype(np.uint8)).save(path)
            if label == "square":
                made.append((path, mask))
    return made


def seen_mask(trained: Any, mask: np.ndarray) -> np.ndarray:
    """The mask through the model's own resize and crop: which input pixels are the square."""
    from PIL import Image

    transform = trained.modality.transform(trained.preprocessing, is_training=False)
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    for step in transform.steps:
        image = step(image)
    return np.asarray(image)[..., 0] > 127


def inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's mass inside the mask."""
    return float(cam[mask].sum() / max(float(cam.sum()), 1e-9))


def perfect_map(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mask averaged over each grid cell, then resized back as pytorch-grad-cam resizes."""
    import cv2

    cells = cv2.resize(mask.astype(np.float32), grid[::-1], interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.resize(cells, mask.shape[::-1]))


def grid_of(trained: Any, inputs: Any) -> tuple[int, int]:
    """The target layer's spatial size on these inputs."""
    import torch

    from transferkit.explain import target_layer

    backbone = trained.model.backbone
    target = target_layer(backbone, inputs[:1])
    seen: list[tuple[int, int]] = []

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        shaped = target.reshape(output) if target.reshape else output
        seen.append((int(shaped.shape[-2]), int(shaped.shape[-1])))

    handle = target.module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            backbone(inputs[:1])
    finally:
        handle.remove()
    return seen[-1]


def signed_eigencam(trained: Any, inputs: Any) -> np.ndarray:
    """Eigen-CAM with pytorch-grad-cam's own sign correction (Seg-Eigen-CAM's rule: a map whose
    minimum outweighs its maximum is flipped), the fix proposed for its issue 315."""
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    from transferkit.explain import target_layer

    class Signed(EigenCAM):  # type: ignore[misc]
        def get_cam_image(self, *args: Any, **kwargs: Any) -> np.ndarray:
            return np.asarray(get_2d_projection_with_sign_correction(args[3]))  # (input, layer, class, activations, …)

    target = target_layer(trained.model.backbone, inputs[:1])
    with Signed(model=trained.model, target_layers=[target.module], reshape_transform=target.reshape) as cam:
        return np.asarray(cam(input_tensor=inputs, targets=None))  # class-agnostic, as Eigen-CAM is


def one_seed(backbone: str, methods: list[str], strategy: str, seed: int, per_class: int, images: int,
             tmp: Path, **fit_options: Any) -> dict[str, Any]:  # fmt: skip
    from transferkit import fit
    from transferkit.explain import class_activation_maps
    from transferkit.explain.run import image_views
    from transferkit.modalities import Sample
    from transferkit.model import load_model

    root = tmp / f"{backbone}-{seed}"
    made = squares(root / "data", per_class, seed)
    fit(root / "data", backbone=backbone, strategy=strategy, seed=seed, out=root / "run", **fit_options)
    trained = load_model(root / "run")
    made = made[:images]
    inputs, _ = image_views(trained, [Sample(p, 0) for p, _ in made])
    masks = [seen_mask(trained, m) for _, m in made]
    target = [trained.classes.index("square")] * len(made)
    grid = grid_of(trained, inputs)
    row: dict[str, Any] = {
        "grid": list(grid),
        "area": float(np.mean([m.mean() for m in masks])),
        "perfect": float(np.mean([inside(perfect_map(m, grid), m) for m in masks])),
    }
    for method in methods:
        maps = (
            signed_eigencam(trained, inputs)
            if method == "eigencam-signed"
            else class_activation_maps(trained.model, trained.model.backbone, inputs, target, method)
        )
        row[method] = {
            "inside": [inside(c, m) for c, m in zip(maps, masks, strict=True)],
            "peak_inside": [bool(m.flat[int(np.argmax(c))]) for c, m in zip(maps, masks, strict=True)],
            "outside_level": [
                float(c[~m].mean() / max(float(c[m].mean()), 1e-9)) for c, m in zip(maps, masks, strict=True)
            ],
        }
    return row


def interval(values: list[float]) -> str:
    """mean ± the half-width of a 95% t-interval (the mean alone for one value)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)):.2f}"


def table(result: dict[str, Any], methods: list[str]) -> str:
    lines = ["| backbone | grid | method | mass inside | worst | peak inside | outside level | perfect map | area |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for backbone, seeds in result.items():
        grid = "×".join(map(str, seeds[0]["grid"]))
        perfect = float(np.mean([s["perfect"] for s in seeds]))
        area = float(np.mean([s["area"] for s in seeds]))
        for method in methods:
            means = [float(np.mean(s[method]["inside"])) for s in seeds]
            worst = min(min(s[method]["inside"]) for s in seeds)
            peaks = [p for s in seeds for p in s[method]["peak_inside"]]
            level = float(np.mean([v for s in seeds for v in s[method]["outside_level"]]))
            lines.append(f"| {backbone} | {grid} | {method} | {interval(means)} | {worst:.2f} | "
                         f"{sum(peaks)}/{len(peaks)} | {level:.2f} | {perfect:.2f} | {area:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "eigencam"],
                        help="explain's methods, and eigencam-signed: Eigen-CAM with its sign corrected")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="square images explained per seed")
    parser.add_argument("--strategy", default="linear-probe")
    parser.add_argument("--image-size", type=int, default=None, help="the fits' input side (default: chosen)")
    parser.add_argument("--out", type=Path, default=Path("runs/cam"))
    args = parser.parse_args()
    options = {"image_size": args.image_size} if args.image_size else {}
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            result[backbone] = [
                one_seed(backbone, args.methods, args.strategy, seed, args.per_class, args.images, Path(tmp), **options)
                for seed in args.seeds
            ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cam.json").write_text(json.dumps(result, indent=2))
    print(table(result, args.methods))


if __name__ == "__main__":
    main()
