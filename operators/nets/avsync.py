"""Audio-visual sync without SyncNet weights: lower-face motion against the speech energy ("motion-energy").

For one face track at 25 fps:
- visual signal m[i]: mean absolute grey difference between frames i-1 and i over rows 56:112,
  columns 20:92 of the ASD crop (operators.nets.asd.asd_crops: the 112 crop spans the lower half of the
  face, so this is the mouth/chin region); m[0] = m[1];
- audio signal e[j]: ln(1 + mean frame power) of audio frame j, the power being exp(c0) of the 4 MFCC
  rows of that frame (c0 = ln frame energy, operators/nets/mfcc.py; raw int16 scale);
- for each candidate shift k in -15..+15, over the frames i covered at every shift (15 .. min(N, Ta) - 15;
  every covered frame when fewer than 25), both signals standardised over those frames and
  d[i][k] = -z_m[i] z_e[i + k], so mean_i d[i][k] = -Pearson r(m[i], e[i + k]).
The offset, LSE-D, LSE-C and per-frame confidence then follow syncnet.sync_from_distances (no
smoothing, each frame its own window), with SyncNet's sign:

    offset_frames > 0  <=>  the audio lags the video (the sound of video frame i is at frame i + offset).

Units: LSE-D = -(best correlation), in [-1, 1]; LSE-C = best minus median correlation over shifts.
A silent or constant track (no variance in either signal) gives offset 0, LSE-C 0, NaN per frame.

Chosen by measurement (audio shifted by -10, -5, -2, 0, +2, +5, +10 frames, video untouched; 5 clips
with one talking face): the ASD networks scored at every shift (their speaking logit as the sync
score) did not follow the shift (Light-ASD TalkSet errors -3..-16 frames, LR-ASD TalkSet up to 22 on
st_WDA_KatieHill_000); the cosine of the two ASD embeddings neither (not trained to share a space);
frame-difference motion against the energy *change* followed it on 2 of 5 clips; motion against the
energy level (this module) followed every shift on 4 of 5 clips up to a constant per-clip bias.

MEASURED: recovered offset minus applied shift, shifts -10 -5 -2 0 +2 +5 +10 (simulated in numpy;
the ffmpeg copies of tests/nets/test_sync.py give the same table for the clips tested there):
    st_WDA_KatieHill_000   +2 +1 +1 +1 +1 +1 +1
    vr_face1               +5 +5 +5 +5 +5 +5 +5
    vr_face2                0  0  0  0  0  0  0
    vr_face3               +3 +3 +3 +3 +3 +3 +3
    dj_video5              -4 -4 +1 +1 +1 +1 +1
Within +-1 frame of the truth on 18 of 35; within +-1 of (shift + the clip's own estimate at shift 0)
on 33 of 35. The per-clip bias (mouth motion vs sound energy timing, or a real offset in the source
clip: this cannot tell which) makes absolute offsets of a few frames unreliable; large offsets and
offset changes are reliable on talking faces. Use SyncNet (syncnet.py) when its weights are present.
A silent track (lp_d3: digital silence) gives offset 0 and LSE-C 0; ambient noise without speech
(pf_single_face) can still give LSE-C ~0.4, so LSE-C is no speech detector.

Speed: ~0.13 s per second of video (MFCC + frame differences), crops given.
"""
from __future__ import annotations

import numpy as np

from operators.nets.mfcc import mfcc
from operators.nets.syncnet import VSHIFT, SyncResult, sync_from_distances

MIN_COMMON = 25                          # frames covered at every shift needed to use only those
ROWS, COLS = slice(56, 112), slice(20, 92)   # mouth/chin region of the 112 ASD crop


def mouth_motion(crops: np.ndarray) -> np.ndarray:
    """(N,) mean absolute grey change of the lower-face region from the previous frame."""
    g = np.asarray(crops, np.float32)[:, ROWS, COLS]
    if len(g) < 2:
        return np.zeros(len(g))
    m = np.abs(np.diff(g, axis=0)).mean(axis=(1, 2))
    return np.r_[m[0], m].astype(np.float64)


def speech_energy(audio_int16: np.ndarray) -> np.ndarray:
    """(Ta,) ln(1 + mean power) per 25-fps frame (4 MFCC rows each, c0 = ln energy)."""
    feats = mfcc(audio_int16) if len(audio_int16) else np.zeros((0, 13))
    ta = len(feats) // 4
    return np.log1p(np.exp(feats[: 4 * ta, 0]).reshape(ta, 4).mean(axis=1))


class AVSync:
    """Motion-energy sync backend (no weights)."""

    name = "motion-energy"

    def features(self, crops: np.ndarray, audio_int16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two signals compared: lower-face motion (N,) and speech energy (Ta,) per frame."""
        return mouth_motion(crops), speech_energy(audio_int16)

    def mean_dist(self, m: np.ndarray, e: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
        """(2 vshift + 1,) mean distance per candidate offset (minus the correlation)."""
        d, used = self._distances(m, e, vshift)
        rows = d[used]
        rows = rows[np.isfinite(rows).any(axis=1)]
        if not len(rows):
            return np.full(2 * vshift + 1, np.nan)
        return np.nanmean(rows, axis=0)

    def distances(self, crops: np.ndarray, audio_int16: np.ndarray, vshift: int = VSHIFT):
        """(N, 2 vshift + 1) distances -z_m[i] z_e[i + k - vshift] (NaN outside the frames used) and
        the boolean row mask of the frames used."""
        return self._distances(*self.features(crops, audio_int16), vshift)

    def _distances(self, m: np.ndarray, e: np.ndarray, vshift: int):
        n, ta = len(m), len(e)
        rows = np.arange(vshift, min(n, ta) - vshift)
        if len(rows) < MIN_COMMON:     # short track: every frame with audio at some shift
            rows = np.arange(0, min(n, ta + vshift))
        d = np.full((n, 2 * vshift + 1), np.nan)
        for j, k in enumerate(range(-vshift, vshift + 1)):
            r = rows[(rows + k >= 0) & (rows + k < ta)]
            if len(r) < 2:
                continue
            x, y = m[r], e[r + k]
            sx, sy = x.std(), y.std()
            if sx == 0 or sy == 0:
                continue
            d[r, j] = -((x - x.mean()) / sx) * ((y - y.mean()) / sy)
        used = np.zeros(n, bool)
        used[rows] = True
        return d, used

    def sync(self, crops: np.ndarray, audio_int16: np.ndarray, vshift: int = VSHIFT) -> SyncResult:
        """Offset (frames, positive = audio lags the video), LSE-D, LSE-C and per-frame confidence
        of one track: ``crops`` (N, 112, 112) grey from asd.asd_crops at 25 fps, ``audio_int16`` the
        track's 16 kHz mono samples from its first frame."""
        n = len(crops)
        d, used = self.distances(crops, audio_int16, vshift)
        if not np.isfinite(d).any():
            return SyncResult(offset_frames=0, min_dist=0.0, confidence=0.0,
                              frame_confidence=np.full(n, np.nan),
                              mean_dist=np.zeros(2 * vshift + 1), backend=self.name)
        rows = d[used]
        rows = rows[np.isfinite(rows).any(axis=1)]
        res = sync_from_distances(rows, n, centre=0, vshift=vshift, backend=self.name, smooth=1)
        res.frame_confidence = float(np.nanmedian(res.mean_dist)) - d[:, res.offset_frames + vshift]
        return res
