"""``transferkit explain RUN INPUT… --out DIR``: what a saved model looked at, per input.

Images: class-activation overlays (:mod:`.cam`), one PNG per input with the input and each
method side by side. Text: token attributions (:mod:`.tokens`) as highlighted HTML. Audio:
the attribution over the mel spectrogram (:mod:`.spectrogram`). Every map explains the
model's top class for that input; ``explain.json`` lists the files with the predictions.
The folder is written whole or not at all (``staged_folder``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from transferkit.errors import TransferkitError
from transferkit.explain.cam import METHODS, class_activation_maps, overlay
from transferkit.modalities import Modality, Sample
from transferkit.modalities.common import shown
from transferkit.model import TrainedModel, load_model
from transferkit.ownership import PNG_SOFTWARE, staged_folder
from transferkit.paths import atomic_write_text

KIND = "explanation"
PANEL = 224  # the side each panel of an image explanation is drawn at
MAX_INPUTS = 256  # one command explains a few items, not a dataset (a report shows the worst)

Explainer = Callable[[TrainedModel, Sequence[Sample], Sequence[str], Path], list[dict[str, Any]]]


def save_png(image: Image.Image, path: Path) -> None:
    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    image.save(path, pnginfo=info)


def _top(trained: TrainedModel, inputs: torch.Tensor) -> tuple[list[int], list[float]]:
    probs = trained.predict_proba(inputs)
    top = probs.max(dim=1)
    return top.indices.tolist(), top.values.tolist()


def image_views(trained: TrainedModel, samples: Sequence[Sample]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The model's inputs and what they show (uint8 RGB, after the resize and crop)."""
    from transferkit.modalities.image_io import ImageTransform, open_rgb

    transform = trained.modality.transform(trained.preprocessing, is_training=False)
    assert isinstance(transform, ImageTransform)  # an image model's
    tensors, views = [], []
    for sample in samples:
        image = open_rgb(sample.path, transform.draft_size, transform.window)
        for step in transform.steps:
            image = step(image)
        views.append(np.asarray(image))
        tensors.append(transform.to_tensor(image))
    return torch.stack(tensors), views


def cam_maps(trained: TrainedModel, inputs: torch.Tensor, targets: list[int], method: str) -> np.ndarray:
    return class_activation_maps(trained.model, trained.model.backbone, inputs, targets, method)


def explain_images(
    trained: TrainedModel, samples: Sequence[Sample], methods: Sequence[str], out: Path
) -> list[dict[str, Any]]:
    rows = []
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        inputs, views = image_views(trained, chunk)
        targets, probs = _top(trained, inputs)
        maps = {m: cam_maps(trained, inputs, targets, m) for m in methods}
        for k, sample in enumerate(chunk):
            name = f"{start + k:03d}-{Path(shown(sample)).stem[:60]}.png"
            panels = [views[k], *(overlay(views[k], maps[m][k]) for m in methods)]
            titles = [f"{trained.classes[targets[k]]} {probs[k]:.2f}", *methods]
            save_png(side_by_side(panels, titles), out / name)
            rows.append(_row(trained, sample, targets[k], probs[k], name))
    return rows


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str]) -> Image.Image:
    """Panels of one size in a row, each titled above."""
    strip = Image.new("RGB", (PANEL * len(panels), PANEL + 18), "white")
    draw = ImageDraw.Draw(strip)
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        strip.paste(Image.fromarray(panel).resize((PANEL, PANEL), Image.Resampling.BILINEAR), (i * PANEL, 18))
        draw.text((i * PANEL + 4, 3), title[:36], fill="black")
    return strip


def explain_text(
    trained: TrainedModel, samples: Sequence[Sample], methods: Sequence[str], out: Path
) -> list[dict[str, Any]]:
    from transferkit.explain.tokens import highlighted, integrated_gradients, words
    from transferkit.modalities.text_encoder import Tokenize, tokenizer_for

    transform = trained.modality.transform(trained.preprocessing, is_training=False)
    assert isinstance(transform, Tokenize)  # a text model's
    tokenizer = tokenizer_for(transform.source)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    special = set(tokenizer.all_special_tokens)
    rows, sections = [], []
    for i, sample in enumerate(samples):
        packed = transform(str(sample.text))
        targets, probs = _top(trained, packed.unsqueeze(0))
        scores, delta = integrated_gradients(trained.model, packed, targets[0], pad)
        ids = packed[0, : scores.numel()].tolist()
        pairs = words(tokenizer.convert_ids_to_tokens(ids), scores.tolist(), special)
        label = trained.classes[targets[0]]
        sections.append(
            f"<section><h2>{i + 1}. {_escape(label)} ({probs[0]:.2f})</h2><p>{highlighted(pairs)}</p></section>"
        )
        row = _row(trained, sample, targets[0], probs[0], "tokens.html")
        rows.append({**row, "words": [{"word": w, "score": round(s, 5)} for w, s in pairs], "ig_delta": delta})
    page = (
        "<!doctype html><meta charset='utf-8'><title>transferkit explain</title><body style='font:15px sans-serif;"
        "max-width:60em;margin:2em auto;line-height:1.9'><h1>Token attributions (integrated gradients)</h1>"
        "<p>Red: towards the predicted class; blue: against it. Hover a word for its score.</p>"
        + "".join(sections) + "</body>"
    )  # fmt: skip
    atomic_write_text(out / "tokens.html", page)
    return rows


def explain_audio(
    trained: TrainedModel, samples: Sequence[Sample], methods: Sequence[str], out: Path
) -> list[dict[str, Any]]:
    from matplotlib import colormaps

    from transferkit.explain.spectrogram import spectrogram_attribution

    dataset = trained.modality.dataset(samples, trained.modality.transform(trained.preprocessing, is_training=False))
    rows = []
    for i, sample in enumerate(samples):
        wav = dataset[i][0]
        targets, probs = _top(trained, wav.unsqueeze(0))
        log_mel, attribution = spectrogram_attribution(trained.model, wav, targets[0])
        grey = (log_mel - log_mel.min()) / max(float(log_mel.max() - log_mel.min()), 1e-9)
        view = (colormaps["gray"](grey[::-1])[..., :3] * 255).astype(np.uint8)  # low frequencies at the bottom
        name = f"{i:03d}-{Path(shown(sample)).stem[:60]}.png"
        title = f"{trained.classes[targets[0]]} {probs[0]:.2f}"
        save_png(side_by_side([view, overlay(view, attribution[::-1].copy())], [title, "gradient x input"]), out / name)
        rows.append(_row(trained, sample, targets[0], probs[0], name))
    return rows


def _row(trained: TrainedModel, sample: Sample, target: int, prob: float, file: str) -> dict[str, Any]:
    return {"input": shown(sample), "predicted": trained.classes[target], "probability": round(prob, 5), "file": file}


def _escape(text: str) -> str:
    import html

    return html.escape(text)


@dataclass(frozen=True)
class Attribution:
    """How one kind of model is explained: the function, the methods a user may choose among
    (``--method``; one where there is no choice), and whether it draws activation maps over the
    input (which the comparison report shows per strategy)."""

    explain: Explainer
    methods: tuple[str, ...]
    activation_maps: bool = False

    def chosen(self, asked: Sequence[str]) -> list[str]:
        return list(asked) if len(self.methods) > 1 else list(self.methods)


# by the modality's ``attribution``: what each modality's models are explained with
EXPLAINERS: dict[str, Attribution] = {
    "cam": Attribution(explain_images, METHODS, activation_maps=True),
    "integrated-gradients": Attribution(explain_text, ("integrated-gradients",)),
    "gradient-x-input": Attribution(explain_audio, ("gradient-x-input",)),
}


def attribution_of(modality: Modality) -> Attribution | None:
    """What ``modality``'s models are explained with, or ``None``."""
    return EXPLAINERS.get(modality.attribution or "")


def explain(run: str | Path, inputs: Sequence[str | Path], out: str | Path,
            methods: Sequence[str] = ("gradcam",)) -> dict[str, Any]:  # fmt: skip
    """Explain ``run``'s predictions on ``inputs`` into the folder ``out``; what ``explain.json`` holds."""
    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise TransferkitError(f"--method {','.join(unknown) or '(none)'} is invalid: choose from {', '.join(METHODS)}")
    trained = load_model(run)
    explainer = attribution_of(trained.modality)
    if explainer is None:
        raise TransferkitError(f"explain has no method for {trained.modality.name} models")
    samples = trained.modality.read_inputs(inputs)
    if not samples:
        raise TransferkitError("no inputs to explain")
    if len(samples) > MAX_INPUTS:
        raise TransferkitError(f"{len(samples)} inputs: explain takes at most {MAX_INPUTS} at a time")
    used = explainer.chosen(methods)  # one method where there is no choice
    with staged_folder(out, KIND, "--out") as staging:
        rows = explainer.explain(trained, samples, used, staging)
        result = {"run": str(run), "modality": trained.modality.name, "methods": used, "items": rows}
        atomic_write_text(staging / "explain.json", json.dumps(result, indent=1))
    for row in rows:
        row["file"] = str(out / row["file"])
    return result


__all__ = ["EXPLAINERS", "explain", "image_views", "save_png"]
