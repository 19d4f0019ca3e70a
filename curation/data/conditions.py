"""Conditions of a window (LongCat §2.1 condition construction, LPM §2.4, LongCat §3.2): the text, the
speak / listen audio, the per-frame states, the reference images and the Whisper features.

Pure functions of a clip row (and the window's frame times); the store reads are in
:mod:`curation.data.stream`.
"""
from __future__ import annotations

import numpy as np

SR = 16000
STATE_CODES = {"speak": 0, "listen": 1, "idle": 2, "discard": 3}
UNKNOWN_STATE = -1

# Where each part of the text condition comes from, first found wins (LongCat §2.1: the caption plus
# the camera motion, the shot size, the lens and the style).
TEXT_PARTS = (
    ("caption", ("caption_spans", "caption_dense", "caption_summary")),
    ("camera motion", ("tags.camera_motion", "camera_motion")),
    ("shot size", ("tags.shot_size", "composition")),
    ("lens", ("tags.lens",)),
    ("style", ("tags.style",)),
)
# composition (people operator, from the person box in face heights) as a shot size word
SHOT_SIZE = {"head": "close-up", "half_body": "medium shot", "full_body": "full shot"}


def text_condition(clip: dict, start_s: float, end_s: float) -> tuple[str, list[str], list[str]]:
    """(text, parts present, parts missing) of a window of ``clip`` from ``start_s`` to ``end_s``.
    A caption span overlapping the window most is preferred to the clip's dense caption (LongCat's
    temporal-span captions); missing parts are left out and named."""
    pieces, present, missing = [], [], []
    for part, sources in TEXT_PARTS:
        value = None
        for src in sources:
            value = _value(clip, src, start_s, end_s)
            if value:
                break
        if value:
            pieces.append(value if part == "caption" else f"{part[0].upper() + part[1:]}: {value}.")
            present.append(part)
        else:
            missing.append(part)
    text = " ".join(p if p.endswith(".") else p + "." for p in pieces)
    return text, present, missing


def _value(clip: dict, src: str, start_s: float, end_s: float) -> str | None:
    if src == "caption_spans":
        spans = clip.get("caption_spans") or []
        best = max(spans, default=None,
                   key=lambda s: min(end_s, s["end_s"]) - max(start_s, s["start_s"]))
        ok = best and min(end_s, best["end_s"]) > max(start_s, best["start_s"]) and best.get("text")
        return best["text"].strip() if ok else None
    if src.startswith("tags."):
        words = (clip.get("tags") or {}).get(src[5:]) or []
        return ", ".join(w.replace("_", " ") for w in words) or None
    if src == "composition":
        return SHOT_SIZE.get(clip.get("composition") or "")
    value = clip.get(src)
    return str(value).strip().replace("_", " ") if value else None


def states_at(times: list | None, states: list | None, pts: np.ndarray, fps: float) -> np.ndarray:
    """The per-frame state codes (0 speak, 1 listen, 2 idle, 3 discard, -1 unknown) at the window's
    frame times ``pts``: the label of the nearest labelled frame, for frames inside the labelled span
    (its ends widened by half a frame interval: the labels' rate or the window's, the longer); -1
    outside it. (Labels come on a thinned grid, e.g. 25 of a 30 fps video's frames: a window frame
    can fall in a gap of two source frames and take the nearer label.)"""
    out = np.full(len(pts), UNKNOWN_STATE, np.int8)
    if not times or not states:
        return out
    t = np.asarray(times, np.float64)
    pts = np.asarray(pts, np.float64)
    codes = np.asarray([STATE_CODES.get(s, UNKNOWN_STATE) if s else UNKNOWN_STATE for s in states],
                       np.int8)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0 / fps
    tol = 0.5 * max(step, 1.0 / fps) + 1e-6
    j = np.clip(np.searchsorted(t, pts), 0, len(t) - 1)
    prev = np.clip(j - 1, 0, len(t) - 1)
    j = np.where(np.abs(t[prev] - pts) <= np.abs(t[j] - pts), prev, j)
    inside = (pts >= t[0] - tol) & (pts <= t[-1] + tol)
    out[inside] = codes[j[inside]]
    return out


def mask_audio(mix: np.ndarray, mask: list | None, mask_times: list | None, start_s: float,
               ) -> tuple[np.ndarray, np.ndarray]:
    """(speak, listen) audio from the window's mix and the clip's per-frame ``audio_mask`` (1 own
    speech, 2 the other's speech, 0 neither): speak keeps all but the other's speech, listen all but
    the own speech, with the 10 ms fades of ``operators.audio_variants``."""
    from operators.audio_variants import gain_curve
    m = np.asarray(mask, np.int8)
    t = np.asarray(mask_times, np.float64)
    speak = mix * gain_curve(m != 2, len(mix), start_s, t)
    listen = mix * gain_curve(m != 1, len(mix), start_s, t)
    return speak.astype(np.float32), listen.astype(np.float32)


def cut_audio(samples: np.ndarray, first: int, start_s: float, n: int) -> np.ndarray:
    """The ``n`` samples from round(start_s * SR) of ``samples``, whose first is sample ``first``
    of the stream (zeros where there are none)."""
    a = int(round(start_s * SR)) - first
    if a < 0:
        return fit(np.concatenate([np.zeros(-a, np.float32), samples]), n)
    return fit(samples[a:], n)


def fit(samples: np.ndarray, n: int) -> np.ndarray:
    """``samples`` cut or zero-padded to exactly ``n`` (float32)."""
    out = np.zeros(n, np.float32)
    k = min(n, len(samples))
    out[:k] = samples[:k]
    return out


def features_at(features: np.ndarray, rate_hz: float, start_s: float, pts: np.ndarray) -> np.ndarray:
    """(F, G, D) features at ``rate_hz`` (frame f at ``start_s + f / rate_hz``) linearly
    interpolated at the frame times ``pts``: (T, G, D) float32 (LongCat §3.2: 50 Hz -> video fps).
    Times beyond the ends take the end frames."""
    f = np.clip((np.asarray(pts, np.float64) - start_s) * rate_hz, 0, len(features) - 1)
    lo = np.floor(f).astype(int)
    hi = np.minimum(lo + 1, len(features) - 1)
    w = (f - lo).astype(np.float32)[:, None, None]
    a = features[lo].astype(np.float32)
    b = features[hi].astype(np.float32)
    return a * (1 - w) + b * w


def decode_jpeg(data: bytes) -> np.ndarray | None:
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
