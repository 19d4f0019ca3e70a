"""rerank: final per-frame states of person clips, re-ranked across the tracks of one clip span.

LPM 1.0 §2.2 "character-audio separation and assignment" (SPEC item 10), as rules over the
per-frame probabilities of ``speaker_states``:

1. Temporal smoothing: each state probability is averaged over a centred window of ``smooth_s``.
2. Cross-track comparison, frame by frame, among the person clips of the same scene clip (same shot
   and clip span): where two or more tracks are most likely speaking, the one whose lips follow the
   voice best keeps it: the highest sync gain (``asd_sync_gain`` averaged over ``evidence_window_s``:
   how much its active-speaker score drops when the audio is moved by a quarter to half a second),
   unless the runner-up's gain is within ``overlap_gain_margin`` and both are at least
   ``overlap_gain``: then the frame is overlapping speech and every speaking track is discarded there
   (reason ``overlap``). Rows without a sync gain compare speak probabilities instead (within
   ``overlap_margin`` and above ``overlap_min``: overlap). A demoted track takes its best other state.
   Two faces that both talk while one voice is heard (one mouths, or is dubbed) are told apart by
   this, not by how much they look like talking.
3. Persistence: runs shorter than ``min_run_s`` take the state of the longer neighbouring run
   (transient spikes), and listen/idle gaps shorter than ``pause_fill_s`` between two speak runs of
   the same track become speak (a speaker's brief pause is not listening).
4. Roles: ``speaker`` when the clip's speak share is at least ``role_min`` and above its listen
   share, ``listener`` in the opposite case, ``idle`` when idle dominates, else ``mixed``.

Outputs: ``frame_states`` (speak | listen | idle | discard), ``frame_discard_reasons`` (desync,
lip_motion, no_face, overlap; null elsewhere), the four ratios, the longest run of each state in
seconds, ``role``, and ``overlap_spans``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Param, Resources
from curation.tracks import nearest
from schemas.labels import STATES
from schemas import SPANS

FRAME_S = 0.04
SPEAK, LISTEN, IDLE, DISCARD = range(4)


def smooth(p: np.ndarray, frames: int) -> np.ndarray:
    if frames <= 1 or len(p) < 2:
        return p
    k = np.ones(frames) / frames
    pad = frames // 2
    padded = np.pad(p, ((pad, frames - 1 - pad), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(p.shape[1])], axis=1)


def runs(states: np.ndarray) -> list[tuple[int, int, int]]:
    """(state, start, end) runs, end exclusive."""
    out, i = [], 0
    while i < len(states):
        j = i
        while j < len(states) and states[j] == states[i]:
            j += 1
        out.append((int(states[i]), i, j))
        i = j
    return out


def persist(states: np.ndarray, min_run: int, pause_fill: int) -> np.ndarray:
    """Suppress transient runs and fill a speaker's brief pauses (see module doc)."""
    st = states.copy()
    changed = True
    while changed and min_run > 1:
        changed = False
        rs = runs(st)
        if len(rs) < 2:
            break
        for k, (s, a, b) in enumerate(rs):
            if b - a < min_run:
                left = rs[k - 1] if k > 0 else None
                right = rs[k + 1] if k + 1 < len(rs) else None
                nb = max((r for r in (left, right) if r), key=lambda r: r[2] - r[1])
                st[a:b] = nb[0]
                changed = True
                break
    rs = runs(st)
    for k in range(1, len(rs) - 1):
        s, a, b = rs[k]
        if s in (LISTEN, IDLE) and b - a < pause_fill and rs[k - 1][0] == SPEAK and rs[k + 1][0] == SPEAK:
            st[a:b] = SPEAK
    return st


def longest(states: np.ndarray, state: int) -> float:
    return max((b - a for s, a, b in runs(states) if s == state), default=0) * FRAME_S


def spans_of(mask: np.ndarray, times: np.ndarray) -> list[dict]:
    out = []
    for s, a, b in runs(mask.astype(int)):
        if s:
            out.append({"start_s": float(times[a]), "end_s": float(times[b - 1]) + FRAME_S})
    return out


class Rerank(Operator):
    name = "rerank"
    summary = ("person clips: smoothing, persistence, one speaker at a time, overlaps excluded, "
               "roles")
    version = "2"   # 2: speakers compared by sync gain
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.frame_times", "clips.frame_state_probs", "clips.frame_states_raw",
             "clips.speech_present", "clips.lip_motion", "clips.shot_index", "clips.clip_index",
             "clips.track_id", "clips.asd_sync_gain")
    writes = pa.schema([
        pa.field("frame_states", pa.list_(pa.string())),
        pa.field("frame_discard_reasons", pa.list_(pa.string())),
        pa.field("speak_ratio", pa.float32()),
        pa.field("listen_ratio", pa.float32()),
        pa.field("idle_ratio", pa.float32()),
        pa.field("discard_ratio", pa.float32()),
        pa.field("longest_speak_s", pa.float32()),
        pa.field("longest_listen_s", pa.float32()),
        pa.field("longest_idle_s", pa.float32()),
        pa.field("longest_discard_s", pa.float32()),
        pa.field("role", pa.string()),
        pa.field("overlap_spans", SPANS),
    ])
    params = {
        "smooth_s": Param(0.2, help="moving-average window of the state probabilities"),
        "min_run_s": Param(0.2, help="shorter runs of a state are transient spikes"),
        "pause_fill_s": Param(0.4, help="shorter listen/idle gaps between speak runs become speak"),
        "overlap_min": Param(0.5, help="speak probability of the runner-up that makes an overlap"),
        "overlap_margin": Param(0.15, help="speak-probability gap under which two speakers overlap"),
        "overlap_gain": Param(1.0, help="sync gain both speakers need for overlapping speech"),
        "overlap_gain_margin": Param(0.3, help="sync-gain gap under which two speakers overlap"),
        "evidence_window_s": Param(2.0, help="the sync gain is averaged over this window"),
        "role_min": Param(0.2, help="least speak (listen) share for the speaker (listener) role"),
    }
    resources = Resources(num_cpus=0.25)
    inline = True

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if r.get("frame_state_probs"):
                groups.setdefault((r.get("shot_index"), r.get("clip_index")), []).append(i)
        out: list[dict] = [{"error": r.get("error") or "no state probabilities for this clip",
                            "error_stage": r.get("error_stage") or self.name} for r in rows]
        for idx in groups.values():
            for i, d in zip(idx, self._group([rows[i] for i in idx])):
                out[i] = d
        return out

    def _group(self, rows: list[dict]) -> list[dict]:
        sm = max(1, int(round(float(self.p["smooth_s"]) / FRAME_S)))
        probs = [smooth(np.array([[p[s] for s in STATES] for p in r["frame_state_probs"]], np.float64), sm)
                 for r in rows]
        times = [np.asarray(r["frame_times"], np.float64) for r in rows]
        states = [p.argmax(axis=1) for p in probs]
        raw = [r.get("frame_states_raw") or [] for r in rows]
        overlap = [np.zeros(len(t), bool) for t in times]
        if len(rows) > 1:   # compare tracks frame by frame on a shared time grid
            self._cross(times, probs, states, overlap, [self._gain(r, t) for r, t in zip(rows, times)])
        reasons_all = []
        results = []
        mr = max(1, int(round(float(self.p["min_run_s"]) / FRAME_S)))
        pf = max(1, int(round(float(self.p["pause_fill_s"]) / FRAME_S)))
        for r, t, p, st, ov, rw in zip(rows, times, probs, states, overlap, raw):
            st = persist(st, mr, pf)
            st[ov] = DISCARD
            speech = np.asarray(r.get("speech_present") or np.zeros(len(t)), np.float64)
            motion = np.array([np.nan if x is None else x for x in (r.get("lip_motion") or [])], np.float64)
            reasons = []
            for k, s in enumerate(st):
                if s != DISCARD:
                    reasons.append(None)
                elif ov[k]:
                    reasons.append("overlap")
                elif k < len(rw) and rw[k] == "discard" and (k >= len(motion) or not np.isfinite(motion[k])):
                    reasons.append("no_face")
                else:
                    reasons.append("desync" if k < len(speech) and speech[k] >= 0.5 else "lip_motion")
            reasons_all.append(reasons)
            n = max(1, len(st))
            ratios = [float(np.sum(st == k)) / n for k in range(4)]
            role_min = float(self.p["role_min"])
            if ratios[SPEAK] >= role_min and ratios[SPEAK] >= ratios[LISTEN]:
                role = "speaker"
            elif ratios[LISTEN] >= role_min and ratios[LISTEN] > ratios[SPEAK]:
                role = "listener"
            elif ratios[IDLE] >= 0.5:
                role = "idle"
            else:
                role = "mixed"
            results.append({
                "frame_states": [STATES[k] for k in st], "frame_discard_reasons": reasons,
                "speak_ratio": ratios[SPEAK], "listen_ratio": ratios[LISTEN],
                "idle_ratio": ratios[IDLE], "discard_ratio": ratios[DISCARD],
                "longest_speak_s": longest(st, SPEAK), "longest_listen_s": longest(st, LISTEN),
                "longest_idle_s": longest(st, IDLE), "longest_discard_s": longest(st, DISCARD),
                "role": role, "overlap_spans": spans_of(ov, t)})
        return results

    def _gain(self, row: dict, times: np.ndarray) -> np.ndarray | None:
        """The row's sync gain averaged over the evidence window, None when it has none."""
        from operators.speaker_states import window_mean
        g = row.get("asd_sync_gain")
        if not g or all(x is None for x in g) or len(g) != len(times):
            return None
        w = max(1, int(round(float(self.p["evidence_window_s"]) / FRAME_S)))
        return np.nan_to_num(window_mean(np.array([np.nan if x is None else x for x in g]), w), nan=-1e9)

    def _cross(self, times, probs, states, overlap, gains) -> None:
        """At each frame of each track, compare with the other tracks' nearest frames (within
        half a frame): one speaker at a time outside overlapping speech. By sync gain when every
        track has one, else by speak probability."""
        by_gain = all(g is not None for g in gains)
        if by_gain:
            o_min, o_margin = float(self.p["overlap_gain"]), float(self.p["overlap_gain_margin"])
            score = [g[:, None] for g in gains]   # one column: index 0 below
            col = 0
        else:
            o_min, o_margin = float(self.p["overlap_min"]), float(self.p["overlap_margin"])
            score, col = probs, SPEAK
        for i in range(len(times)):
            for k, t in enumerate(times[i]):
                if states[i][k] != SPEAK:
                    continue
                mine = score[i][k, col]
                rivals = []
                for j in range(len(times)):
                    if j == i or not len(times[j]):
                        continue
                    m = int(nearest(times[j], t, FRAME_S / 2)[0])
                    if m >= 0 and states[j][m] == SPEAK:
                        rivals.append(score[j][m, col])
                if not rivals:
                    continue
                best = max(rivals)
                if best >= o_min and mine >= o_min and abs(mine - best) < o_margin:
                    overlap[i][k] = True
                elif best > mine:   # another track is the speaker here: take the best other state
                    alt = probs[i][k].copy()
                    alt[SPEAK] = -1
                    states[i][k] = int(alt.argmax())
