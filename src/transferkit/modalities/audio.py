"""Audio: folders of clips per class (or a CSV of path and label), on pre-trained audio encoders.

Clips are decoded with ``soundfile`` (libsndfile: wav, flac, ogg, mp3), mixed to mono,
resampled to the encoder's rate with ``soxr``, raised to -30 dBFS when quieter (as
Resemblyzer does), and cropped or zero-padded to the encoder's clip length
(``--clip-seconds``, 1.6 s for GE2E; shorter clips are padded with silence before
the speech). Training augmentation: a random crop offset, a random gain and a little
additive noise on the waveform, and SpecAugment time/frequency masks inside the encoder's
mel front end while it trains.

The offline encoder is the GE2E speaker encoder whose weights ship in the PyPI package
``resemblyzer`` (Apache-2.0): only its weights are loaded (no pickle code runs:
``weights_only``), into the module below — a mel front end written in torch, three LSTM
layers and a projection — so its layer groups are the LSTM layers and the projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit.backbones import BackboneSpec, NameResolver, register_backbone, register_resolver
from transferkit.errors import DataError
from transferkit.extras import require
from transferkit.modalities.base import Modality
from transferkit.modalities.common import (
    DatasetSplits,
    FileDataset,
    Sample,
    Skipped,
    class_folders,
    content_key,
    count_suffixes,
    expand_paths,
    files_in_class_folders,
    png_img,
)
from transferkit.modalities.folders import load_folder_splits
from transferkit.modalities.path_tables import (
    PATH_TABLE_CLAIM,
    PATH_TABLE_SUFFIXES,
    is_path_table,
    load_path_table_splits,
    path_table_eval_samples,
)
from transferkit.params import Interval as Bounds
from transferkit.params import param
from transferkit.schema import Interval, check_fields

if TYPE_CHECKING:  # torch loads when a clip becomes a tensor or an encoder is built
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from transferkit.modalities.base import ExportSignature, RunOptions

HF_AUDIO_PREFIX = "hf-audio:"  # any Hugging Face speech encoder (wav2vec2, HuBERT, WavLM…)
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3"})
DEFAULT_AUDIO_BACKBONE = "ge2e-resemblyzer.offline"
MAX_SECONDS = 600.0  # longer files are skipped: a clip classifier is not for hour-long recordings
SILENCE = 1e-4  # peak amplitude below which a clip counts as silent


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class AudioPreprocessing:
    sample_rate: int
    clip_seconds: float

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "audio", **asdict(self)}

    def example(self) -> torch.Tensor:
        import torch

        return torch.zeros(1, self.samples)

    def describe(self) -> str:
        return f"{self.sample_rate} Hz mono, {self.clip_seconds:g} s clips"


def _audio_io() -> tuple[Any, Any]:
    return require("soundfile", "reading audio"), require("soxr", "resampling audio")


def read_clip(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode, mix to mono and resample to ``sample_rate`` (float32 in [-1, 1])."""
    soundfile, soxr = _audio_io()
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate and len(mono):
        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def check_clip(path: Path) -> str | None:
    """Why ``path`` cannot be used (unreadable, empty, silent, over-long), or None."""
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return "not an audio file type"
    soundfile, _ = _audio_io()
    try:
        info = soundfile.info(str(path))
        if info.duration > MAX_SECONDS:
            return f"longer than {MAX_SECONDS:.0f} s ({info.duration:.0f} s)"
        wav = read_clip(path, info.samplerate)
    except Exception as exc:  # libsndfile raises its own error types for every corrupt-file case
        return f"unreadable as audio ({type(exc).__name__}: {exc})"
    if not len(wav):
        return "empty (no samples)"
    if float(np.abs(wav).max()) < SILENCE:
        return "silent"
    return None


def louder(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raise the level to ``target_dbfs`` when the clip is quieter (never lower it)."""
    power = float(np.mean(wav.astype(np.float64) ** 2)) if len(wav) else 0.0
    if power <= 0:
        return wav
    change = target_dbfs - 10 * np.log10(power)
    return wav if change < 0 else (wav * 10 ** (change / 20)).astype(np.float32)


class ClipTransform:
    """Path → fixed-length waveform tensor; in training a random offset, gain and noise."""

    def __init__(self, pre: AudioPreprocessing, is_training: bool) -> None:
        self.pre, self.is_training = pre, is_training

    def array(self, path: str | Path) -> np.ndarray:
        """The evaluation clip with NumPy only (ONNX inference): centre crop or silence before."""
        wav = louder(read_clip(path, self.pre.sample_rate))
        n = self.pre.samples
        if len(wav) > n:
            start = (len(wav) - n) // 2
            return np.ascontiguousarray(wav[start : start + n])
        return np.pad(wav, (n - len(wav), 0)).astype(np.float32)

    def __call__(self, path: str | Path) -> torch.Tensor:
        import torch

        if not self.is_training:
            return torch.from_numpy(self.array(path))
        wav = torch.from_numpy(louder(read_clip(path, self.pre.sample_rate)))
        n = self.pre.samples
        if len(wav) > n:
            room = len(wav) - n
            start = int(torch.randint(room + 1, ())) if self.is_training else room // 2
            wav = wav[start : start + n]
        elif len(wav) < n:  # silence before, not after: an LSTM's last state should follow the speech
            wav = torch.nn.functional.pad(wav, (n - len(wav), 0))
        if self.is_training:  # ±3 dB of gain, noise about 40 dB below the signal
            wav = wav * 10 ** ((torch.rand(()) * 6 - 3) / 20)
            wav = wav + torch.randn(n) * wav.abs().mean() * 0.01
        return wav


class AudioDataset(FileDataset):
    """Decodes clips lazily; libsndfile reports every corrupt-file case with its own error types."""

    item = "clip"
    errors = (Exception,)


# --------------------------------------------------------------------------- data on disk


def _scan(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Sample], list[Skipped]]:
    names = list(classes) if classes is not None else [d.name for d in class_folders(root)]
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for path, label in files_in_class_folders(root, names):
        reason = check_clip(path)
        if reason is None:
            samples.append(Sample(path, label))
        else:
            skipped.append(Skipped(path, reason))
    return names, samples, skipped


def _check_clips(paths: Sequence[Path]) -> list[tuple[str | None, str | None]]:
    return [(check_clip(p), None) for p in paths]


CLIP_SECONDS = Bounds(float, 0.05, 60.0)  # the option's and a saved run's one bound


@dataclass(frozen=True)
class AudioOptions:
    """The options audio owns; the run config composes them (``transferkit.params.owned``)."""

    clip_seconds: float | None = param(
        None, "Audio: seconds per clip, cropped or padded [default: the encoder's own]", CLIP_SECONDS
    )


def load_audio_splits(path: Path, cfg: RunOptions) -> DatasetSplits:
    """A table of clips, or class folders in either layout (the checks every folder gets)."""
    if not path.is_file():
        return load_folder_splits(
            path, _scan, modality="audio", item="clip", unusable="unreadable, empty, silent or over-long",
            val_fraction=cfg.val_fraction, seed=cfg.seed, strict=cfg.strict,
        )  # fmt: skip
    return load_path_table_splits(
        path, _check_clips, modality="audio", item="clip", unusable="unreadable, empty, silent or over-long",
        label_column=cfg.label_column, val_fraction=cfg.val_fraction, seed=cfg.seed, strict=cfg.strict,
    )  # fmt: skip


def _claim(path: Path) -> int:
    if path.is_file() and path.suffix.lower() in PATH_TABLE_SUFFIXES:
        return PATH_TABLE_CLAIM if is_path_table(path, AUDIO_EXTENSIONS) else 0
    return count_suffixes(path, AUDIO_EXTENSIONS) if path.is_dir() else int(path.suffix.lower() in AUDIO_EXTENSIONS)


def spectrogram_html(path: str, width: int = 160, height: int = 64) -> str | None:
    """A log-power spectrogram thumbnail (low frequencies at the bottom, dark = loud) for the report."""
    from PIL import Image

    try:
        wav = louder(read_clip(path, 16000))
    except Exception:  # moved or unreadable since the comparison ran
        return None
    frame, hop = 400, 160
    wav = np.pad(wav, (0, max(0, frame - len(wav))))
    frames = np.lib.stride_tricks.sliding_window_view(wav, frame)[::hop] * np.hanning(frame)
    power = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)) ** 2).T[::-1]
    pixels = (255 * (1 - power / max(float(power.max()), 1e-9))).astype(np.uint8)
    return png_img(Image.fromarray(pixels).resize((width, height)), Path(path).name)


def _encoders() -> Any:
    """The encoder module (torch): loaded when an encoder is built, not to register its name."""
    from transferkit.modalities import audio_encoders

    return audio_encoders


def _hub_spec(name: str) -> BackboneSpec | None:
    """``hf-audio:<hub id or folder>``: a Hugging Face speech encoder (wav2vec2, HuBERT, WavLM…).
    Its own prefix, because an ``hf:`` id's modality cannot be known offline without its config."""
    if not name.startswith(HF_AUDIO_PREFIX) or len(name) == len(HF_AUDIO_PREFIX):
        return None
    source = name[len(HF_AUDIO_PREFIX) :]
    return BackboneSpec(
        name, "audio", lambda pretrained: _encoders().hub_audio_encoder(source, pretrained),
        "Hugging Face speech encoder", architecture=source, needs=("transformers",),
    )  # fmt: skip


# --------------------------------------------------------------------------- the modality


class AudioModality(Modality):
    name = "audio"
    unit = "clips"
    input_options = ("clip_seconds",)
    options = AudioOptions
    default_backbone = DEFAULT_AUDIO_BACKBONE
    augments = True
    literal_inputs = False
    attribution = "gradient-x-input"

    def claim(self, path: Path) -> int:
        return _claim(path)

    def load_splits(self, path: Path, cfg: RunOptions) -> DatasetSplits:
        return load_audio_splits(path, cfg)

    def load_eval_samples(self, path: Path, classes: Sequence[str], fit_config: Mapping[str, Any]) -> list[Sample]:
        if path.is_file():
            return path_table_eval_samples(path, classes, str(fit_config.get("label_column", "label")), _check_clips)
        root = next((path / s for s in ("test", "val") if (path / s).is_dir()), path)
        found, samples, _ = _scan(root, classes)
        if list(found) != list(classes):
            samples = [Sample(s.path, list(classes).index(found[int(s.label)])) for s in samples]  # type: ignore[arg-type]
        if not samples:
            raise DataError(f"no readable clips under {root} in classes {', '.join(classes)}")
        return samples

    def check_file(self, path: Path) -> str | None:
        return check_clip(path)

    def read_inputs(self, items: Sequence[str | Path]) -> list[Sample]:
        return [Sample(p, 0) for p in expand_paths(items, AUDIO_EXTENSIONS, "clip", check=check_clip)]

    def preprocessing(self, backbone: nn.Module, cfg: RunOptions, samples: Sequence[Sample] = ()) -> AudioPreprocessing:
        seconds = cfg.clip_seconds or float(getattr(backbone, "clip_seconds", 3.0))
        return AudioPreprocessing(sample_rate=int(getattr(backbone, "sample_rate", 16000)), clip_seconds=seconds)

    def preprocessing_from_dict(self, values: Mapping[str, Any]) -> AudioPreprocessing:
        checked = check_fields("preprocessing", values, {
            "sample_rate": Interval(int, 4_000, 48_000), "clip_seconds": CLIP_SECONDS,
        })  # fmt: skip
        return AudioPreprocessing(checked["sample_rate"], checked["clip_seconds"])

    def transform(self, pre: Any, is_training: bool, cfg: RunOptions | None = None) -> Callable[[Any], Any]:
        return ClipTransform(pre, is_training and cfg is not None and cfg.augment)

    def dataset(
        self, samples: Sequence[Sample], transform: Callable[[Any], Any], training: bool = False
    ) -> Dataset[Any]:
        return AudioDataset(samples, transform, training)

    def sample_key(self, sample: Sample) -> bytes:
        return content_key(sample)

    def preview(self, path: str) -> str | None:
        return spectrogram_html(path)

    def domain_shift(self, backbone: str, splits: DatasetSplits, pre: Any) -> float | None:
        return None  # no probe of how unlike the encoder's pre-training speech the clips are

    def export_signature(self, model: nn.Module, pre: Any) -> ExportSignature:
        return model, (pre.example().repeat(2, 1),), ["waveforms"], [(0,)]

    def export_assets(self, pre: Any, folder: Path) -> None:
        return None

    def onnx_inputs(self, pre: Any, samples: Sequence[Sample], assets: Path) -> dict[str, np.ndarray]:
        transform = ClipTransform(pre, is_training=False)
        return {"waveforms": np.stack([transform.array(s.path) for s in samples])}

    def register_backbones(self) -> None:
        register_resolver(NameResolver("hf-audio", _hub_spec))
        register_backbone(
            BackboneSpec(
                DEFAULT_AUDIO_BACKBONE, "audio", lambda pretrained: _encoders().ge2e(pretrained),
                "GE2E speaker encoder (1.4 M parameters: mel front end, 3 LSTM layers, projection) with the weights "
                "in the PyPI package resemblyzer (Apache-2.0); works offline (pip install --no-deps "
                "resemblyzer==0.1.4). Default for audio.",
                architecture="GE2E LSTM (Resemblyzer)",
                requires=("resemblyzer", "pip install --no-deps resemblyzer==0.1.4"),
            )
        )  # fmt: skip
