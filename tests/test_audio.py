"""Audio: the torch mel front end and GE2E weights against Resemblyzer's own, messy files,
tables, and (with the Debian package) real language identification."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from tests.conftest import TINY_AUDIO, make_tones
from transferkit.config import FitConfig
from transferkit.errors import DataError, TransferkitError
from transferkit.modalities import detect_modality, get_modality
from transferkit.modalities.audio import louder, read_clip
from transferkit.modalities.audio_encoders import GE2EEncoder, mel_filterbank, resemblyzer_state

HAS_RESEMBLYZER = all(importlib.util.find_spec(m) for m in ("resemblyzer", "librosa", "webrtcvad"))
needs_resemblyzer = pytest.mark.skipif(
    not HAS_RESEMBLYZER, reason="pip install --no-deps resemblyzer==0.1.4 and librosa, webrtcvad-wheels"
)


def _speech_like(seconds: float = 1.3, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 3 * t)) for f in (180, 720, 2400))
    return (0.05 * tones + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@needs_resemblyzer
def test_mel_front_end_matches_resemblyzer() -> None:
    import librosa
    from resemblyzer.audio import wav_to_mel_spectrogram

    assert np.allclose(mel_filterbank(16000, 400, 40), librosa.filters.mel(sr=16000, n_fft=400, n_mels=40), atol=1e-8)
    wav = louder(_speech_like())
    theirs = wav_to_mel_spectrogram(wav)
    ours = GE2EEncoder().eval().front(torch.from_numpy(wav)[None])[0].numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, float(np.abs(theirs).max()))


@needs_resemblyzer
def test_ge2e_weights_give_resemblyzers_embedding() -> None:
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import wav_to_mel_spectrogram

    wav = louder(_speech_like())
    encoder = GE2EEncoder()
    encoder.load_state_dict(resemblyzer_state(), strict=True)
    with torch.no_grad():
        theirs = VoiceEncoder("cpu", verbose=False)(torch.from_numpy(wav_to_mel_spectrogram(wav))[None])
        ours = encoder.eval()(torch.from_numpy(wav)[None])
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_layer_groups_are_the_lstm_layers_then_the_projection() -> None:
    from transferkit.layers import layer_groups

    groups = layer_groups(GE2EEncoder())
    assert [g.label.split(".")[0] for g in groups] == ["layers", "layers", "layers", "linear"]
    assert [g.param_names[0].split(".")[1] for g in groups[:3]] == ["0", "1", "2"]


def test_unusable_clips_are_skipped_with_one_warning_or_refused_under_strict(tmp_path: Path) -> None:
    data = make_tones(tmp_path / "d", classes=2, per_class=4)
    (data / "tone_0" / "empty.wav").write_bytes(b"")
    (data / "tone_0" / "noise.ogg").write_bytes(np.random.default_rng(0).bytes(500))
    import soundfile

    soundfile.write(data / "tone_1" / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    with pytest.warns(UserWarning, match=r"skipped 3 .*empty.wav.*noise.ogg.*silent.wav \(silent\)"):
        splits = transferkit.load_data(data, FitConfig())
    assert splits.modality == "audio" and len(splits.train) + len(splits.val) == 8
    with pytest.raises(DataError, match="--strict: 3 file"):
        transferkit.load_data(data, FitConfig(strict=True))


def test_a_table_of_paths_and_labels_is_audio_not_text(tmp_path: Path) -> None:
    data = make_tones(tmp_path / "d", classes=2, per_class=4)
    rows = [f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}" for p in sorted(data.glob("*/*.wav"))]
    table = tmp_path / "clips.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert detect_modality(table).name == "audio"
    splits = transferkit.load_data(table, FitConfig())
    assert splits.classes == ("tone_0", "tone_1") and len(splits.train) + len(splits.val) == 8


def test_clips_are_mono_resampled_and_cut_to_length(tmp_path: Path) -> None:
    import soundfile

    stereo = np.stack([_speech_like(2.0, 44100), _speech_like(2.0, 44100)], axis=1)
    soundfile.write(tmp_path / "s.flac", stereo, 44100)
    assert read_clip(tmp_path / "s.flac", 16000).shape == (32000,)
    audio = get_modality("audio")
    model = transferkit.create_backbone(TINY_AUDIO)
    pre = audio.preprocessing(model, FitConfig(backbone=TINY_AUDIO))
    clip = audio.transform(pre, is_training=False)(tmp_path / "s.flac")
    assert clip.shape == (pre.samples,) == (8000,)


def test_demo_audio_names_the_apt_command_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferkit import demos

    monkeypatch.setattr(demos, "TUXPAINT_STAMPS", tmp_path / "absent")
    with pytest.raises(TransferkitError, match="apt-get install tuxpaint-stamps-default"):
        demos.write_audio_demo(tmp_path / "out")


@pytest.mark.offline_weights
def test_linear_probe_identifies_8_languages(tmp_path: Path) -> None:
    """Real GE2E weights, real speech: 25 clips in each of 8 languages (one voice per language,
    so this also measures speaker identity)."""
    from transferkit.demos import TUXPAINT_INSTALL, TUXPAINT_STAMPS, write_audio_demo

    if not TUXPAINT_STAMPS.is_dir():
        pytest.skip(f"Debian's tuxpaint-stamps-default is not installed ({TUXPAINT_INSTALL})")
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip("pip install --no-deps resemblyzer==0.1.4")
    data = write_audio_demo(tmp_path / "lang", task="language", per_class=25)
    result = transferkit.fit(data, strategy="linear-probe", val_fraction=0.4, seed=0)
    assert result.config.backbone == "ge2e-resemblyzer.offline"
    assert result.metrics["val"]["accuracy"] >= 0.9
    shutil.rmtree(data)


def test_hugging_face_speech_encoders_are_audio_backbones(tmp_path: Path) -> None:
    """``hf-audio:<folder or hub id>``: here a tiny random wav2vec2 saved locally (the hub needs internet)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from transferkit.layers import layer_groups

    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(tmp_path / "w2v")
    name = f"hf-audio:{tmp_path / 'w2v'}"
    assert transferkit.resolve_backbone(name).modality == "audio"
    assert len(layer_groups(transferkit.create_backbone(name))) == 3  # stem, layer 0, layer 1
    data = make_tones(tmp_path / "tones", classes=2, per_class=6)
    result = transferkit.fit(
        data, backbone=name, strategy="partial", unfreeze=1, epochs=2, batch_size=4, clip_seconds=0.4
    )  # the tones as they are: padded to 3 s, attention costs 30 s more
    assert result.config.modality == "audio" and result.model.model.backbone.num_features == 16


def test_the_report_previews_a_clip_as_a_spectrogram(tmp_path: Path) -> None:
    data = make_tones(tmp_path / "d", classes=2, per_class=1)
    shown = get_modality("audio").preview(str(next(data.glob("*/*.wav"))))
    assert shown is not None and shown.startswith("<img") and "base64," in shown
    assert get_modality("audio").preview(str(tmp_path / "moved.wav")) is None
