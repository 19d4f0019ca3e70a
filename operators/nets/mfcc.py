"""MFCC exactly as the active-speaker networks were trained on (shared/docs/ASD.md §1.3).

This is python_speech_features 0.6 ``mfcc(signal, 16000, numcep=13, winlen=0.025, winstep=0.010)``
with every other argument at its default (nfilt 26, nfft 512, lowfreq 0, highfreq 8000, preemph 0.97,
ceplifter 22, appendEnergy True), written in numpy from the fact sheet's recipe:

- pre-emphasis on the whole signal: y[0] = x[0], y[n] = x[n] - 0.97 x[n-1];
- frames of 400 samples, hop 160, count 1 + ceil((N - 400) / 160) (1 when N <= 400), end zero-padded;
  rectangular window (no Hamming);
- power spectrum |rfft(frame, 512)|^2 / 512 (257 bins); frame energy = their sum (0 -> machine eps);
- 26 triangular mel filters on FFT bins floor(513 mel2hz(m) / 16000), 28 points evenly spaced in mel
  from 0 to hz2mel(8000), hz2mel(f) = 2595 log10(1 + f / 700);
- filter energies (0 -> eps) -> natural log -> orthonormal DCT-II -> first 13 -> lifter
  1 + 11 sin(pi n / 22) -> coefficient 0 replaced by ln(frame energy).

The input is the raw int16 sample values (not scaled to +-1; scaling moves c0 by 2 ln 32768) and
there is no mean/variance normalisation. Rate: 100 rows per second = 4 rows per 25-fps video frame.
tests/nets/test_asd.py checks this against a from-the-definition per-frame computation (and against
python_speech_features when that package is importable; the fact sheet reports the recipe bit-exact
against it).
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dct

SAMPLE_RATE = 16000
WIN = 400            # 0.025 s at 16 kHz
HOP = 160            # 0.010 s
NFFT = 512
NFILT = 26
NUMCEP = 13
PREEMPH = 0.97
CEPLIFTER = 22
EPS = np.finfo(float).eps


def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = NFILT, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE,
                   lowfreq: float = 0.0, highfreq: float | None = None) -> np.ndarray:
    """(nfilt, nfft // 2 + 1) triangular filters on FFT-bin edges (python_speech_features' layout)."""
    highfreq = highfreq or sample_rate / 2
    mels = np.linspace(_hz2mel(lowfreq), _hz2mel(highfreq), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mels) / sample_rate).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, mid):
            fb[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            fb[j, i] = (hi - i) / (hi - mid)
    return fb


_FBANK = mel_filterbank()
_LIFTER = 1.0 + (CEPLIFTER / 2.0) * np.sin(np.pi * np.arange(NUMCEP) / CEPLIFTER)


def mfcc(signal: np.ndarray) -> np.ndarray:
    """(Na, 13) float64 MFCC of 16 kHz mono audio given as raw int16 values (int16 or float array)."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    y = np.append(x[:1], x[1:] - PREEMPH * x[:-1])
    n = len(y)
    nframes = 1 if n <= WIN else 1 + int(np.ceil((n - WIN) / HOP))
    padded = np.concatenate([y, np.zeros((nframes - 1) * HOP + WIN - n)])
    idx = np.arange(WIN)[None, :] + HOP * np.arange(nframes)[:, None]
    frames = padded[idx]
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, EPS, energy)
    feat = power @ _FBANK.T
    feat = np.where(feat == 0, EPS, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :NUMCEP]
    cep = cep * _LIFTER
    cep[:, 0] = np.log(energy)
    return cep
