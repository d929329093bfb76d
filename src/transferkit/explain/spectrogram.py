"""Where an audio model listens: gradient × input over the mel spectrogram.

An encoder with a mel front end (the offline GE2E) is attributed on its own spectrogram: the
front end's output is the input of everything learned, so the map is the class logit's
gradient times each time–frequency cell's energy (Simonyan et al. 2014; Shrikumar et al. 2017),
positive part, smoothed over 3×3 cells. An encoder that reads the raw waveform (wav2vec2,
HuBERT) is attributed on the waveform, pooled into the spectrogram's frames: a map over time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.modalities.audio_encoders import MelFrontEnd


def _front(model: nn.Module) -> MelFrontEnd | None:
    return next((m for m in model.modules() if isinstance(m, MelFrontEnd)), None)


def spectrogram_attribution(model: nn.Module, wav: torch.Tensor, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel spectrogram ``[mels, frames]``, attribution ``[mels, frames]`` in [0, 1]) of one clip."""
    front = _front(model)
    display = (front or MelFrontEnd()).eval()
    with torch.no_grad():
        mel = display(wav.unsqueeze(0).float())[0]  # [frames, mels]
    if front is not None:
        captured: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            captured["mel"] = output.detach().requires_grad_(True)
            return captured["mel"]

        handle = front.register_forward_hook(keep)
        try:
            logit = model(wav.unsqueeze(0))[0, target]
            grad = torch.autograd.grad(logit, captured["mel"])[0][0]
        finally:
            handle.remove()
        cells = (grad * captured["mel"][0]).clamp(min=0).T.detach()  # [mels, frames]
    else:
        signal = wav.unsqueeze(0).float().requires_grad_(True)
        grad = torch.autograd.grad(model(signal)[0, target], signal)[0][0]
        per_sample = (grad * signal[0]).abs().detach()
        hop = max(1, per_sample.numel() // max(mel.shape[0], 1))
        frames = per_sample[: hop * mel.shape[0]].reshape(mel.shape[0], hop).sum(dim=1)
        cells = frames.unsqueeze(0).repeat(mel.shape[1], 1)
    smooth = torch.nn.functional.avg_pool2d(cells[None, None], 3, stride=1, padding=1)[0, 0]
    peak = float(smooth.max())
    attribution = (smooth / peak if peak > 0 else smooth).numpy()
    log_mel = torch.log10(mel.T + 1e-10).numpy()
    return log_mel, attribution.astype(np.float32)


__all__ = ["spectrogram_attribution"]
