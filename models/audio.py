"""Audio features per video frame for the two audio branches (speak, listen): (T, G, D) float32.

Backends (``audio.features`` in a training config; a checkpoint is tied to one, its D and G differ):

- ``whisper`` (LongCat §3.2): the store's precomputed Whisper-encoder features, the sample's
  ``"audio_features"`` (T, G=5, D; D = 384 for tiny.en, 1280 for large). Role features come from the
  sample's ``"speak_audio_features"`` / ``"listen_audio_features"`` when it has them; otherwise the
  clip's features are masked per frame by where each role track carries the window's sound (a frame
  goes to a branch when that role's track holds at least a quarter of the mix's energy in it;
  elsewhere the branch gets zeros, the model's "no audio" input). A sample without features is
  rejected with a one-line reason (models/data.py).
- ``logmel``: computed here from the role waveforms (``"speak_audio"``, ``"listen_audio"``): Whisper's
  own 80-band log-mel spectrogram (openai-whisper's ``log_mel_spectrogram``, 100 frames/s) averaged
  over each video frame -> (T, 1, 80). Always available (no weights, no store column).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SR = 16000
ROLE_SHARE = 0.25      # a frame belongs to a role when its track holds >= this share of the mix energy


def logmel_features(wave: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(T, 1, 80) log-mel energies of a 16 kHz waveform averaged over each of ``n_frames`` frames."""
    from whisper.audio import log_mel_spectrogram
    need = int(round(n_frames / fps * SR))
    w = np.zeros(need, np.float32)
    w[:min(need, len(wave))] = wave[:need]
    mel = log_mel_spectrogram(torch.from_numpy(w))                  # (80, need / 160 + 1)
    cols = max(1, int(round(n_frames / fps * 100)))
    mel = F.interpolate(mel[None, :, :cols], size=n_frames, mode="area")[0]
    return mel.T[:, None, :].contiguous().numpy().astype(np.float32)


def frame_energy(wave: np.ndarray, n_frames: int) -> np.ndarray:
    """Energy of each of ``n_frames`` equal spans of ``wave``."""
    if len(wave) == 0:
        return np.zeros(n_frames, np.float64)
    edges = np.linspace(0, len(wave), n_frames + 1).round().astype(int)
    sq = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    return sq[edges[1:]] - sq[edges[:-1]]


def role_masks(sample: dict, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, whether the speak / listen track carries at least ROLE_SHARE of the mix's energy."""
    mix = frame_energy(np.asarray(sample["audio"]), n_frames)
    out = []
    for key in ("speak_audio", "listen_audio"):
        e = frame_energy(np.asarray(sample.get(key, np.zeros(0, np.float32))), n_frames)
        out.append((mix > 0) & (e >= ROLE_SHARE * mix))
    return out[0], out[1]


def role_features(sample: dict, backend: str, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(speak, listen) features (T, G, D) of the sample's first ``n_frames`` frames."""
    if backend == "none":                      # a task that reads no audio (the VAE)
        return np.zeros((n_frames, 1, 1), np.float32), np.zeros((n_frames, 1, 1), np.float32)
    if backend == "logmel":
        fps = float(sample["fps"])
        return tuple(logmel_features(np.asarray(sample[k], np.float32), n_frames, fps)
                     for k in ("speak_audio", "listen_audio"))
    if backend != "whisper":
        raise ValueError(f"unknown audio features backend {backend!r} (whisper, logmel)")
    if sample.get("speak_audio_features") is not None and sample.get("listen_audio_features") is not None:
        return tuple(np.asarray(sample[k], np.float32)[:n_frames]
                     for k in ("speak_audio_features", "listen_audio_features"))
    feats = sample.get("audio_features")
    if feats is None:
        raise ValueError(f"clip {sample.get('clip_id')} has no Whisper audio features in the store "
                         "(audio.features: whisper needs them; logmel computes features from audio)")
    feats = np.asarray(feats, np.float32)[:n_frames]
    speak, listen = role_masks(sample, n_frames)
    return feats * speak[:, None, None], feats * listen[:, None, None]


def group_frames(feats: torch.Tensor, frames_per_latent: int) -> torch.Tensor:
    """(..., T, G, D) per video frame, T = 1 + r(T'-1) -> (..., T', r, G, D) per latent frame (the first
    latent frame's group is the first frame repeated r times, as the causal VAE does)."""
    r = frames_per_latent
    first = feats[..., :1, :, :].expand(*feats.shape[:-3], r - 1, *feats.shape[-2:])
    x = torch.cat([first, feats], -3)
    return x.unflatten(-3, (-1, r))
