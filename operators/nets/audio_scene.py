"""Music / noise level of a video or clip, and the decision whether to separate vocals before VAD,
ASD and ASR (issue 7 item 3: "decide per video whether to separate from a measured music/noise
level; the row records whether it ran and why").

The measure is the Spleeter accompaniment stem itself (everything that is not voice: music, noise,
effects): Spleeter runs at about 0.02 s per audio second (models/separation/README.md), so the
separation is the cheap first pass and its vocals are kept when the decision says to use them.

Per 0.5 s window w (RMS levels in dBFS of the mix, the vocals and the accompaniment):

- the window has "music/noise" when the accompaniment carries at least 10 % of the window's energy
  (``acc_db(w) >= mix_db(w) - 10``), is audible against the clip (``acc_db(w) >= mix_db(clip) - 20``,
  which leaves out the noise floor in pauses of clean speech) and is not near-silent
  (``acc_db(w) >= -50`` dBFS);
- ``music_ratio`` = the share of such windows; separate when ``music_ratio >= 0.1``.

The thresholds were set on the shared clips (Spleeter stems at 16 kHz, mono), where they leave wide
margins: clean speech vr_face1/2/3 and st_WDA_KatieHill_000 have music_ratio 0.00 (their
accompaniment stems sit 15-58 dB under the mix; vr_face1's pauses reach the mix level but at -52..-56
dBFS, 25-29 dB under the clip), dj_video5 (speech, faint room sound) 0.04, the cartoon with music
dj_video1 0.22, dj_video4 0.56, the stage musical fr_short_hamilton_clip 0.60, the animation part of
pf_face_noface 1.00, the near-silent pf_single_face (-57 dBFS) 0.00.

Also reported, not used in the decision: the accompaniment-to-mix energy ratio over the whole clip
(dj_video1 -11 dB, vr_face1 -15 dB, vr_face3 -58 dB: a clip-wide average mixes pauses with speech, so
it separates the cases less well than the windowed share).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

WINDOW_S = 0.5        # analysis window
SHARE_DB = -10.0      # accompaniment >= 10 % of the window energy
AUDIBLE_DB = -20.0    # accompaniment window level relative to the clip's mix level
FLOOR_DBFS = -50.0    # below this the accompaniment is treated as silence
MIN_RATIO = 0.1       # share of windows with music/noise that triggers separation
SILENT_DBFS = -70.0   # a mix below this has nothing to separate


@dataclass
class SceneLevel:
    mix_db: float                   # RMS of the mix, dBFS
    vocals_db: float                # RMS of the vocals stem, dBFS
    accompaniment_db: float         # RMS of the accompaniment stem, dBFS
    accompaniment_to_mix_db: float  # accompaniment energy / mix energy over the clip, dB
    music_ratio: float              # share of 0.5 s windows with music/noise (rules above)
    music_s: float                  # seconds of such windows
    separate: bool                  # use the separated vocals downstream
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _db(x: np.ndarray, axis=None) -> np.ndarray | float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64), axis=axis) + 1e-12)


def measure(mix: np.ndarray, vocals: np.ndarray, accompaniment: np.ndarray, sample_rate: int,
            window_s: float = WINDOW_S, share_db: float = SHARE_DB, audible_db: float = AUDIBLE_DB,
            floor_dbfs: float = FLOOR_DBFS, min_ratio: float = MIN_RATIO) -> SceneLevel:
    """Levels and the separation decision from a mix and its two stems (mono or [N, C], same rate)."""
    def mono(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float32)
        return z.mean(1) if z.ndim == 2 else z
    mix, vocals, accompaniment = mono(mix), mono(vocals), mono(accompaniment)
    mix_db, voc_db, acc_db = float(_db(mix)), float(_db(vocals)), float(_db(accompaniment))
    w = max(1, int(round(window_s * sample_rate)))
    n = len(mix) // w
    if n == 0 or mix_db < SILENT_DBFS:
        why = "no audio" if len(mix) == 0 else f"silent track ({mix_db:.0f} dBFS)" if mix_db < SILENT_DBFS \
            else f"clip shorter than {window_s} s"
        return SceneLevel(mix_db, voc_db, acc_db, acc_db - mix_db, 0.0, 0.0, False, why)
    mw = _db(mix[:n * w].reshape(n, w), axis=1)
    aw = _db(accompaniment[:n * w].reshape(n, w), axis=1)
    music = (aw >= mw + share_db) & (aw >= mix_db + audible_db) & (aw >= floor_dbfs)
    ratio = float(music.mean())
    sep = ratio >= min_ratio
    reason = (f"music/noise in {ratio:.0%} of {window_s} s windows (>= {min_ratio:.0%}): accompaniment "
              f"{acc_db:.1f} dBFS, {acc_db - mix_db:.1f} dB re mix" if sep else
              f"clean: music/noise in {ratio:.0%} of {window_s} s windows (< {min_ratio:.0%}); accompaniment "
              f"{acc_db:.1f} dBFS, {acc_db - mix_db:.1f} dB re mix")
    return SceneLevel(mix_db, voc_db, acc_db, acc_db - mix_db, ratio, float(music.sum() * w / sample_rate),
                      sep, reason)


def assess(wav: np.ndarray, sample_rate: int, separator) -> tuple[SceneLevel, np.ndarray, np.ndarray]:
    """Separate ``wav`` with ``separator`` (Spleeter or Demucs: ``separate(wav, sr) -> (vocals, rest)``)
    and measure it; returns (level, vocals, accompaniment) at the input rate and shape."""
    wav = np.asarray(wav, np.float32)
    if wav.shape[0] == 0 or _db(wav) < SILENT_DBFS:      # nothing to separate: skip the network
        return measure(wav, wav, np.zeros_like(wav), sample_rate), wav, np.zeros_like(wav)
    vocals, acc = separator.separate(wav, sample_rate)
    return measure(wav, vocals, acc, sample_rate), vocals, acc
