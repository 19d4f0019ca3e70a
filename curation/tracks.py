"""Per-frame track lookups, one rule for every operator: what a track (or any per-frame list) says
at a given time.

A track (``tracks`` row) holds per-frame lists aligned with its frame times, ``FRAME_TIMES`` =
``frame_times_s`` (25 fps analysis frames); a person clip's per-frame lists are aligned with its
``frame_times``. Operators sample them at other times (their own frames, a clip's 25 fps grid,
5 fps emotion frames, another track's frames):

- **the nearest frame** (:func:`nearest`): the sample whose time is nearest, the *earlier* one on a
  tie, and none (-1) when it is farther than ``max_gap_s`` (default: half a 25 fps frame);
- **the face at time t** (:func:`face_boxes_at`): the face box of the nearest track frame *that has
  a face*, within ``max_gap_s``: a frame without a face (NaN box) never hides a face one frame away;
- **a per-frame value at time t** (:func:`values_at`): likewise, the nearest sample with a value;
- **a track frame has a face** (:func:`has_face`) when its box is four finite numbers, and **a
  span's frames** (:func:`in_span`) are those in [start, end).

``asd``, ``sync``, ``emotion``, ``references``, ``speaker_states``, ``rerank``, ``people``,
``person_clips`` and ``captions`` use these (tests/test_tracks.py).
"""
from __future__ import annotations

import numpy as np

FRAME_TIMES = "frame_times_s"   # the per-frame time column of a track
FRAME_S = 0.04                  # one frame at the 25 fps analysis rate
HALF_FRAME_S = FRAME_S / 2


def nearest(src_times, times, max_gap_s: float = HALF_FRAME_S) -> np.ndarray:
    """For each of ``times``, the index of the nearest of ``src_times`` (sorted): the earlier one
    on a tie; -1 where the nearest is farther than ``max_gap_s`` (``np.inf``: never) or there is no
    sample at all."""
    src = np.asarray(src_times if src_times is not None else [], np.float64)
    t = np.atleast_1d(np.asarray(times, np.float64))
    if not len(src):
        return np.full(len(t), -1)
    right = np.clip(np.searchsorted(src, t, side="left"), 0, len(src) - 1)
    left = np.clip(right - 1, 0, len(src) - 1)
    j = np.where(np.abs(t - src[left]) <= np.abs(src[right] - t), left, right)
    return np.where(np.abs(src[j] - t) <= max_gap_s + 1e-9, j, -1)


def values_at(times, src_times, src_values, max_gap_s: float = HALF_FRAME_S) -> np.ndarray:
    """A per-frame list (``src_values`` aligned with ``src_times``; None -> missing) at ``times``:
    the value of the nearest sample that has one, NaN where none is within ``max_gap_s``."""
    st = np.asarray(src_times if src_times is not None else [], np.float64)
    sv = np.array([np.nan if v is None else float(v) for v in (src_values or [])], np.float64)
    n = min(len(st), len(sv))
    ok = np.isfinite(sv[:n])
    out = np.full(len(np.atleast_1d(times)), np.nan)
    j = nearest(st[:n][ok], times, max_gap_s)
    out[j >= 0] = sv[:n][ok][j[j >= 0]]
    return out


def face_boxes_at(track: dict | None, times, max_gap_s: float = HALF_FRAME_S) -> np.ndarray:
    """(len(times), 4) face boxes (display px) of ``track`` at ``times``: the box of the nearest
    track frame with a face, NaN where none is within ``max_gap_s``."""
    t = np.atleast_1d(np.asarray(times, np.float64))
    out = np.full((len(t), 4), np.nan)
    if not track or not track.get(FRAME_TIMES):
        return out
    ft = np.asarray(track[FRAME_TIMES], np.float64)
    raw = track.get("face_boxes") or []
    if len(raw) != len(ft):
        raise ValueError(f"track {track.get('track_id')}: {len(raw)} face boxes for {len(ft)} frames")
    boxes = np.array([[np.nan] * 4 if b is None else b for b in raw], np.float64).reshape(-1, 4)
    has = np.all(np.isfinite(boxes), axis=1)
    j = nearest(ft[has], t, max_gap_s)
    out[j >= 0] = boxes[has][j[j >= 0]]
    return out


def has_face(track: dict) -> np.ndarray:
    """Per track frame: whether it has a face (a finite 4-number box in ``face_boxes``)."""
    return np.array([b is not None and len(b) == 4 and bool(np.all(np.isfinite(np.asarray(b, np.float64))))
                     for b in track.get("face_boxes") or []], bool)


def in_span(times, start_s: float, end_s: float) -> np.ndarray:
    """The frames of a span [start_s, end_s) (1 µs of slack for stored, rounded bounds)."""
    t = np.asarray(times if times is not None else [], np.float64)
    return (t >= start_s - 1e-6) & (t < end_s - 1e-6)


def track_of(video: dict, row: dict) -> dict | None:
    """The ``tracks`` row of a person clip (``row["track_id"]``) among its video's tracks."""
    tid = row.get("track_id")
    return next((t for t in (video.get("tables") or {}).get("tracks", []) if t["track_id"] == tid),
                None)
