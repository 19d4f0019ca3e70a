"""Whisper-encoder audio features (LongCat §3.2): every hidden state, 5 groups, 50 Hz, on real speech."""
from __future__ import annotations

import numpy as np
import pytest

from curation.data.conditions import features_at
from curation.media import load_audio, probe
from operators.audio_features import AudioFeatures


@pytest.fixture(scope="module")
def op(models):
    o = AudioFeatures(model_dir=str(models))
    o.setup()
    return o


def test_features_of_speech_are_all_hidden_states_grouped(op, media):
    path = media / "vr_face1.mp4"
    video = {"video_id": "v", "uri": str(path), **probe(str(path))}
    (row,) = op.process(video, [video])
    shape = row["audio_features_shape"]
    audio = load_audio(str(path), 16000)
    assert shape == [-(-len(audio) // 320), 5, 384] and row["audio_features_hz"] == 50.0
    assert row["audio_features_backend"] == "whisper:tiny.en"
    feats = np.frombuffer(row["audio_features"], np.float16).reshape(shape).astype(np.float32)
    # the last group is the encoder's own output (whisper's embed_audio), the first the embedding
    import torch
    import whisper
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)))
    with torch.inference_mode():
        ref = op.model.embed_audio(mel[None])[0].numpy()[: shape[0]]
    assert np.abs(feats[:, 4] - ref).max() < 0.02 * np.abs(ref).max()
    assert not np.allclose(feats[:, 0], feats[:, 4], atol=0.1)
    # time alignment: silence 3.5-4.7 s of the audio; the embedding group (convolutions: a few
    # frames of context) changes only at 50 Hz frames 175-235, the last (attention) most there
    cut = audio.copy()
    cut[int(3.5 * 16000):int(4.7 * 16000)] = 0
    other = op.features(cut)
    diff = np.abs(other - feats).mean(axis=2)                     # (F, 5)
    changed = np.nonzero(diff[:, 0] > 1e-3)[0]
    assert 172 <= changed.min() and changed.max() <= 238
    assert diff[175:235, 4].mean() > 3 * diff[:150, 4].mean()


def test_long_audio_is_encoded_in_30_s_pieces_and_resampled_to_frames(op):
    t = np.arange(int(31.5 * 16000)) / 16000
    feats = op.features((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert feats.shape == (1575, 5, 384)
    # 50 Hz -> 25 fps: a frame at 30.02 s is exactly feature frame 1501 (the second piece's second)
    at = features_at(feats.astype(np.float16), 50.0, 0.0, np.array([0.0, 30.02, 30.03]))
    assert at.shape == (3, 5, 384)
    np.testing.assert_allclose(at[1], feats[1501].astype(np.float16).astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(at[2], (feats[1501] + feats[1502]).astype(np.float16).astype(np.float32) / 2,
                               atol=2e-2)


def test_no_audio_stream_gives_no_features(op, media):
    path = media / "lp_d0.mp4"
    video = {"video_id": "v", "uri": str(path), **probe(str(path))}
    (row,) = op.process(video, [video])
    assert row["audio_features"] is None and row["audio_features_backend"] == "no-audio"
