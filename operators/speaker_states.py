"""speaker_states: per-frame speak / listen / idle / discard probabilities of each person clip.

LPM 1.0 §2.2 (SPEC item 9): the state of a visible person at a frame follows from two signals, speech
present and lip motion synchronous with that speech:

    speech present + lips in sync with it -> speak
    speech present + lips still           -> listen
    speech present + lips moving, not sync -> discard (inconsistent)
    no speech      + lips still           -> idle
    no speech      + lips moving          -> discard (unexplained lip activity)

Signals per frame (25 fps, the clip's ``frame_times`` from ``asd``):
- ``speech_present`` s: share of the frame's 40 ms covered by voice activity (``voice_segments``,
  silero-vad on the separated vocals when separation ran, else on the mix).
- ``lip_sync`` q: how sure it is that these lips make this sound, from the active-speaker network
  (``asd`` step): q = sigmoid(mean logit + ``sync_weight`` x mean sync gain + ``logit_offset``) x
  ownership, the means
  over a centred ``evidence_window_s`` (1 s) of the frames it scored. The logit (AVA weights) says
  "a face speaking with this audio"; the sync gain (``asd_sync_gain``: the logit with the true audio
  minus the logit with the same audio moved by 6-14 frames) says the lips follow *this* voice's
  timing, which a face mouthing someone else's words, or a talking face under a voice-over, does
  not. Ownership = sigmoid(10 (G - ``min_sync_gain``)) with G the mean sync gain over the speech
  frames of a centred ``owner_window_s`` (6 s): a face whose score does not depend on the voice's
  timing over seconds of speech is not where the voice comes from, however much it looks like
  talking (docs/av-labels.md has the composites this was measured on). Rows scored without a sync
  gain (older runs, TalkSet weights) use the network's own probability (``asd_prob``).
  A frame it did not score borrows its nearest scored neighbour within 0.12 s.
- ``lip_motion`` m: how much the mouth moves: the standard deviation of the track's mouth opening
  (inner-lip gap over face size, from ``people``) over a centred 0.4 s window, mapped linearly from
  ``motion_still`` (0: still) to ``motion_moving`` (1: moving) and clipped.

Probabilities (they sum to 1): speak = s q; listen = s (1 - q)(1 - m); idle = (1 - s)(1 - m);
discard = s (1 - q) m + (1 - s) m. ``frame_states_raw`` is the most probable state per frame;
frames without a face are ``discard``. Cross-track re-ranking, smoothing and the final
``frame_states`` come from the ``rerank`` step.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.operator import Operator, OperatorError, Param, Resources
from curation.tracks import FRAME_TIMES, track_of, values_at
from schemas.labels import STATE_PROBS, STATES

OWNER_STEEPNESS = 10.0   # the ownership gate goes from 0.27 to 0.73 over +-0.1 logit around min_sync_gain
FRAME_S = 0.04


def speech_share(times: np.ndarray, segments: list[dict] | None, frame_s: float = FRAME_S) -> np.ndarray:
    """Share of [t - frame_s/2, t + frame_s/2) covered by ``segments`` for each frame time."""
    out = np.zeros(len(times))
    a, b = times - frame_s / 2, times + frame_s / 2
    for seg in segments or []:
        lo, hi = seg["start_s"], seg["end_s"]
        out += np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None)
    return np.clip(out / frame_s, 0.0, 1.0)


def window_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over a centred window of ``window`` frames, ignoring NaN (NaN where all are NaN)."""
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    h = max(1, window) // 2
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(x))
    lo, hi = np.clip(i - h, 0, len(x)), np.clip(i + (max(1, window) - h), 0, len(x))
    num, den = cs[hi] - cs[lo], cn[hi] - cn[lo]
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def lip_sync(times: np.ndarray, row: dict, speech: np.ndarray, window: int, sync_weight: float,
             owner_window: int, min_gain: float, offset: float = 0.0) -> np.ndarray:
    """q per frame (see the module docstring): from ``asd_logits`` and ``asd_sync_gain`` when the
    row has them, else ``asd_prob``; NaN where the network scored no frame near it. ``speech``: the
    frames with speech (the ownership test averages the gain over those only)."""
    gain = row.get("asd_sync_gain")
    if not gain or all(g is None for g in gain):
        return values_at(times, times, row.get("asd_prob"), 0.12)
    logit = values_at(times, times, row.get("asd_logits"), 0.12)
    g = values_at(times, times, gain, 0.12)
    scored = np.isfinite(logit)
    z = window_mean(logit, window) + sync_weight * np.nan_to_num(window_mean(g, window)) + offset
    owner = window_mean(np.where(speech, g, np.nan), owner_window)   # NaN: no speech near
    gate = 1.0 / (1.0 + np.exp(-OWNER_STEEPNESS * (np.nan_to_num(owner, nan=np.inf) - min_gain)))
    return np.where(scored, gate / (1.0 + np.exp(-z)), np.nan)


def local_std(x: np.ndarray, window: int) -> np.ndarray:
    """Standard deviation over a centred window, ignoring NaN (NaN where the window has < 3 values)."""
    out = np.full(len(x), np.nan)
    h = window // 2
    for i in range(len(x)):
        w = x[max(0, i - h): i + h + 1]
        w = w[np.isfinite(w)]
        if len(w) >= 3:
            out[i] = w.std()
    return out


def state_probs(s: np.ndarray, q: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(N, 4) probabilities of speak, listen, idle, discard from speech share s, lip sync q and
    lip motion m (each in [0, 1])."""
    speak = s * q
    listen = s * (1 - q) * (1 - m)
    idle = (1 - s) * (1 - m)
    discard = s * (1 - q) * m + (1 - s) * m
    return np.stack([speak, listen, idle, discard], axis=1)


class SpeakerStates(Operator):
    name = "speaker_states"
    summary = ("person clips: speak / listen / idle / discard probabilities per frame (LPM §2.2 "
               "rules)")
    version = "2"   # 2: q from the AVA logit and the sync gain over 1 s
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.frame_times", "clips.asd_prob", "clips.asd_logits", "clips.asd_sync_gain",
             "clips.track_id", "tracks.track_id",
             "tracks.frame_times_s", "tracks.mouth_open", "videos.voice_segments")
    writes = pa.schema([
        pa.field("speech_present", pa.list_(pa.float32())),
        pa.field("lip_motion", pa.list_(pa.float32())),
        pa.field("frame_state_probs", pa.list_(STATE_PROBS)),
        pa.field("frame_states_raw", pa.list_(pa.string())),
    ])
    params = {
        "motion_still": Param(0.015, help="mouth-opening std (0.4 s window) at or below which lips are still"),
        "motion_moving": Param(0.045, help="mouth-opening std at or above which lips are moving"),
        "motion_window_s": Param(0.4),
        "evidence_window_s": Param(1.0, help="the active-speaker evidence is averaged over this window"),
        "sync_weight": Param(2.0, help="weight of the sync gain against the logit in q"),
        "owner_window_s": Param(6.0, help="the voice-ownership test averages the sync gain over the "
                                          "speech frames of this window"),
        "min_sync_gain": Param(0.15, help="mean sync gain (logit) a face needs over owner_window_s to be "
                                          "the one its voice comes from"),
        "logit_offset": Param(2.0, help="added to the AVA logit in q (AVA's movie-trained head sits "
                                        "lower on close talking faces; the ownership gate keeps listeners "
                                        "and dubbed faces out)"),
    }
    resources = Resources(num_cpus=0.25)
    inline = True

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        return [self._one(video, r) for r in rows]

    def _one(self, video: dict, row: dict) -> dict:
        times = np.asarray(row.get("frame_times") or [], np.float64)
        if not len(times):
            return {"error": row.get("error") or "no active-speaker scores for this clip",
                    "error_stage": row.get("error_stage") or self.name}
        track = track_of(video, row)
        if track is None:
            raise OperatorError(f"track {row.get('track_id')!r} not found")
        s = speech_share(times, video.get("voice_segments"))
        ev = max(1, int(round(float(self.p["evidence_window_s"]) / FRAME_S)))
        ow = max(1, int(round(float(self.p["owner_window_s"]) / FRAME_S)))
        q = lip_sync(times, row, s >= 0.5, ev, float(self.p["sync_weight"]), ow,
                     float(self.p["min_sync_gain"]), float(self.p["logit_offset"]))
        mouth = values_at(times, track.get(FRAME_TIMES), track.get("mouth_open"), 0.03)
        window = max(3, int(round(float(self.p["motion_window_s"]) / FRAME_S)) | 1)
        spread = local_std(mouth, window)
        lo, hi = float(self.p["motion_still"]), float(self.p["motion_moving"])
        m = np.clip((spread - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        face = np.isfinite(q) & np.isfinite(m)
        probs = state_probs(s, np.nan_to_num(q), np.nan_to_num(m))
        probs[~face] = (0.0, 0.0, 0.0, 1.0)
        states = [STATES[i] for i in probs.argmax(axis=1)]
        return {"speech_present": s.astype(np.float32).tolist(),
                "lip_motion": [None if not np.isfinite(x) else float(x) for x in m],
                "frame_state_probs": [dict(zip(STATES, map(float, p))) for p in probs],
                "frame_states_raw": states}
