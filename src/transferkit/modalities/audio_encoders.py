"""Audio encoders: the GE2E speaker encoder (Resemblyzer's weights) and Hugging Face speech
encoders, each taking a batch of fixed-length waveforms and returning one vector per clip."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.extras import require


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's default (Slaney) mel filterbank, ``[n_mels, n_fft // 2 + 1]``, without librosa."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        linear = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, linear)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), (200.0 / 3) * m)

    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / np.diff(edges)[:-1, None]
    upper = ramps[2:] / np.diff(edges)[1:, None]
    weights: np.ndarray = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class MelFrontEnd(nn.Module):
    """Waveform → power mel spectrogram ``[batch, frames, mels]`` (librosa's melspectrogram:
    centred frames, zero padding, periodic Hann window), with SpecAugment masks in training."""

    def __init__(self, sample_rate: int = 16000, window_ms: int = 25, hop_ms: int = 10, n_mels: int = 40) -> None:
        super().__init__()
        self.n_fft, self.hop = sample_rate * window_ms // 1000, sample_rate * hop_ms // 1000
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        fbank = torch.from_numpy(mel_filterbank(sample_rate, self.n_fft, n_mels))
        self.register_buffer("fbank", fbank, persistent=False)

    window: torch.Tensor
    fbank: torch.Tensor

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wav.float(), self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
            return_complex=True,
        ).abs() ** 2  # fmt: skip
        mel = torch.matmul(self.fbank, spec).transpose(1, 2)  # [batch, frames, mels]
        if self.training:  # SpecAugment: one frequency band and one time span masked per clip
            mel = _mask(_mask(mel, dim=2, width=mel.shape[2] // 8), dim=1, width=mel.shape[1] // 10)
        return mel


def _mask(x: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    size = x.shape[dim]
    widths = torch.randint(0, width + 1, (x.shape[0], 1), device=x.device)
    starts = (torch.rand(x.shape[0], 1, device=x.device) * (size - widths + 1)).long()
    index = torch.arange(size, device=x.device)[None, :]
    keep = ~((index >= starts) & (index < starts + widths))
    return x * (keep[:, None, :] if dim == 2 else keep[:, :, None]).to(x.dtype)


class GE2EEncoder(nn.Module):
    """Mel front end → stacked LSTM layers → projection → ReLU → L2 norm (Wan et al., GE2E)."""

    def __init__(self, hidden: int = 256, layers: int = 3, embedding: int = 256, n_mels: int = 40) -> None:
        super().__init__()
        self.front = MelFrontEnd(n_mels=n_mels)
        sizes = [n_mels] + [hidden] * (layers - 1)
        # one module per layer (not one 3-layer LSTM), so each layer is a layer group of its own
        self.layers = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes)
        self.linear = nn.Linear(hidden, embedding)
        self.num_features = embedding

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.front(wav)
        for lstm in self.layers:
            x, (hidden, _) = lstm(x)
        embedding: torch.Tensor = torch.relu(self.linear(hidden[-1]))
        normalised: torch.Tensor = embedding / embedding.norm(dim=1, keepdim=True).clamp(min=1e-8)
        return normalised

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's format: each LSTM layer is a block; the projection comes last (the top)."""
        return {"stem": r"^front", "blocks": [(r"^layers\.(\d+)", None), (r"^linear", (1000,))]}


def resemblyzer_state() -> dict[str, torch.Tensor]:
    """The GE2E weights inside the resemblyzer wheel, renamed to :class:`GE2EEncoder`'s."""
    spec = importlib.util.find_spec("resemblyzer")  # located, never imported: its audio code needs webrtcvad
    if spec is None or not spec.submodule_search_locations:
        raise TransferkitError("the offline audio encoder needs resemblyzer: pip install --no-deps resemblyzer==0.1.4")
    saved = torch.load(
        Path(spec.submodule_search_locations[0]) / "pretrained.pt", map_location="cpu", weights_only=True
    )
    state: dict[str, torch.Tensor] = {}
    for key, value in saved["model_state"].items():
        if key.startswith("lstm."):  # lstm.weight_ih_l1 → layers.1.weight_ih_l0
            name, layer = key[len("lstm.") :].rsplit("_l", 1)
            state[f"layers.{layer}.{name}_l0"] = value
        elif key.startswith("linear."):
            state[key] = value
    return state


def ge2e(pretrained: bool) -> nn.Module:
    model = GE2EEncoder()
    if pretrained:
        model.load_state_dict(resemblyzer_state(), strict=True)
    model.clip_seconds = 1.6  # type: ignore[assignment]  # GE2E's partial utterance: what it was trained on
    return model


class HubAudioEncoder(nn.Module):
    """A transformers speech encoder that takes raw waveforms (wav2vec2, HuBERT, WavLM), mean-pooled
    over time; per-clip zero-mean unit-variance input when its feature extractor asks for it."""

    def __init__(self, encoder: nn.Module, sample_rate: int, normalize: bool) -> None:
        super().__init__()
        self.encoder, self.normalize = encoder, normalize
        self.sample_rate, self.clip_seconds = sample_rate, 2.0
        self.num_features = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            wav = (wav - wav.mean(dim=1, keepdim=True)) / (wav.var(dim=1, keepdim=True) + 1e-7).sqrt()
        hidden: torch.Tensor = self.encoder(input_values=wav).last_hidden_state
        return hidden.mean(dim=1)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The convolutional feature encoder and projection are the stem; each transformer layer a block."""
        return {
            "stem": r"^encoder\.(?:feature_extractor|feature_projection|masked_spec_embed|encoder\.pos_conv_embed"
            r"|encoder\.layer_norm)",
            "blocks": [(r"^encoder\.encoder\.layers\.(\d+)", None)],
        }


def hub_audio_encoder(source: str, pretrained: bool) -> nn.Module:
    """A speech encoder from a folder or a hub id (the hub needs internet)."""
    transformers = require("transformers", "Hugging Face speech encoders")
    AutoConfig, AutoFeatureExtractor, AutoModel = (
        transformers.AutoConfig, transformers.AutoFeatureExtractor, transformers.AutoModel
    )  # fmt: skip

    try:
        config = AutoConfig.from_pretrained(source)
        model = AutoModel.from_pretrained(source) if pretrained else AutoModel.from_config(config)
        extractor = AutoFeatureExtractor.from_pretrained(source)  # type: ignore[no-untyped-call, unused-ignore]
    except OSError as exc:
        raise TransferkitError(
            f"could not load the speech encoder {source!r} ({exc}). Hub models need internet; offline, use "
            "--backbone ge2e-resemblyzer.offline"
        ) from exc
    rate = int(getattr(extractor, "sampling_rate", 16000))
    return HubAudioEncoder(model, rate, bool(getattr(extractor, "do_normalize", False)))
