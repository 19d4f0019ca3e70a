"""The window checks (LongCat §2.1, second stage): small pure functions of a window's decoded frames,
its audio and its clip's metadata, each returning (measured value, keep).

A profile runs them in its order and stops at the first that drops the window (so the funnel says
which check removed it). Metadata checks (``needs = "meta"``) come first in the bundled profiles: a
window they drop is never decoded by the offline validator.

Frame checks work on the window's frames shrunk to at most ``CHECK_SIDE`` pixels (grey levels
BT.601); the thresholds are in the profiles (workflows/validate/*.yaml).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from curation.data import conditions as cond

CHECK_SIDE = 96


@dataclass
class Check:
    fn: Callable
    needs: str                    # "meta", "frames" or "audio"
    defaults: dict
    unit: str = ""


@dataclass
class Verdict:
    kept: bool
    failed_check: str | None = None
    reason: str | None = None
    checks: list[dict] = field(default_factory=list)   # [{check, value, keep}] in the order run


class WindowView:
    """What the checks see of one window; frames and audio are decoded on first use."""

    def __init__(self, clip: dict, video: dict, window, fps: float, frames=None, audio=None,
                 track: dict | None = None, get_frames=None, get_audio=None):
        self.clip, self.video, self.window, self.fps, self.track = clip, video, window, fps, track
        self._frames, self._audio = frames, audio
        self._get_frames, self._get_audio = get_frames, get_audio
        self._gray = None

    @property
    def frames(self):
        if self._frames is None:
            self._frames = self._get_frames()
        return self._frames

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = self._get_audio()
        return self._audio

    @property
    def decoded(self) -> bool:
        return self._frames is not None

    @property
    def gray(self) -> np.ndarray:
        """(T, h, w) uint8 luma at most CHECK_SIDE pixels on the long side."""
        if self._gray is None:
            import cv2
            from operators.quality import luma
            images = self.frames.images
            g = luma(images) if len(images) else np.zeros((0, 1, 1), np.uint8)
            if len(g) and max(g.shape[1:]) > CHECK_SIDE:
                s = CHECK_SIDE / max(g.shape[1:])
                size = (max(2, round(g.shape[2] * s)), max(2, round(g.shape[1] * s)))
                g = np.stack([cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in g])
            self._gray = g
        return self._gray

    @property
    def times(self) -> np.ndarray:
        """Frame times: the decoded pts, or the nominal ones before decoding."""
        if self.decoded and len(self.frames.pts):
            return self.frames.pts
        return self.window.start_s + np.arange(self.window.frames) / self.fps

    @property
    def seconds(self) -> float:
        return self.window.frames / self.fps


# ---- metadata checks ------------------------------------------------------------------------------
def audio_sync(w: WindowView, p: dict):
    conf, off = w.clip.get("sync_confidence"), w.clip.get("sync_offset_frames")
    if conf is None or off is None:
        return None, bool(p["allow_missing"]), "no sync measurement"
    if abs(off) > p["max_abs_offset_frames"]:
        return float(off), False, f"|sync offset| {abs(off)} frames > {p['max_abs_offset_frames']}"
    return float(conf), conf >= p["min_confidence"], f"sync confidence {conf:.3g} < {p['min_confidence']}"


def camera(w: WindowView, p: dict):
    motion, shake = w.clip.get("camera_motion"), w.clip.get("camera_shake")
    if motion is None:
        return None, bool(p["allow_missing"]), "no camera measurement"
    if p["allowed"] and motion not in p["allowed"]:
        return float(shake or 0.0), False, f"camera {motion} not in {'/'.join(p['allowed'])}"
    return float(shake or 0.0), (shake or 0.0) <= p["max_shake"], f"camera shake {shake:.3g} > {p['max_shake']}"


def quality(w: WindowView, p: dict):
    text, sharp = w.clip.get("text_coverage"), w.clip.get("sharpness")
    if text is None or sharp is None:
        return None, bool(p["allow_missing"]), "no quality measurement"
    if text > p["max_text_coverage"]:
        return float(text), False, f"text coverage {text:.3g} > {p['max_text_coverage']}"
    return float(sharp), sharp >= p["min_sharpness"], f"sharpness {sharp:.3g} < {p['min_sharpness']}"


def defects(w: WindowView, p: dict):
    dup, freeze = w.clip.get("duplicate_frame_ratio"), w.clip.get("longest_freeze_s")
    if dup is None:
        return None, bool(p["allow_missing"]), "no temporal measurement"
    if dup > p["max_duplicate_ratio"]:
        return float(dup), False, f"duplicate frames {dup:.3g} > {p['max_duplicate_ratio']}"
    freeze = freeze or 0.0
    return float(freeze), freeze <= p["max_freeze_s"], f"freeze {freeze:.3g} s > {p['max_freeze_s']}"


def motion_consistency(w: WindowView, p: dict):
    """Jumps the clip's temporal step found inside this window."""
    jumps = w.clip.get("jump_times_s")
    if jumps is None:
        return None, bool(p["allow_missing"]), "no temporal measurement"
    t0, t1 = w.window.start_s, w.window.start_s + w.seconds
    n = sum(1 for t in jumps if t0 <= t < t1)
    return float(n), n <= p["max_jumps"], f"{n} jump(s) found offline in the window > {p['max_jumps']}"


def mask_area(w: WindowView, p: dict):
    """Median share of the frame covered by the subject's face (or person) box over the window."""
    if not w.track:
        return None, bool(p["allow_missing"]), "no track for this clip"
    t = np.asarray(w.track.get("frame_times_s") or [], np.float64)
    boxes = np.asarray(w.track.get(p["box"]) or np.zeros((0, 4)), np.float64).reshape(-1, 4)
    inside = (t >= w.window.start_s) & (t < w.window.start_s + w.seconds)
    area = (boxes[inside, 2] - boxes[inside, 0]) * (boxes[inside, 3] - boxes[inside, 1])
    frame = float((w.video.get("width") or w.clip.get("width") or 1) *
                  (w.video.get("height") or w.clip.get("height") or 1))
    share = np.where(np.isfinite(area), area / frame, 0.0)
    value = float(np.median(share)) if len(share) else 0.0
    return value, value >= p["min_share"], f"{p['box'].split('_')[0]} area {value:.3g} < {p['min_share']}"


def composition(w: WindowView, p: dict):
    """The subject's body composition (people: head / half_body / full_body) and hands."""
    if not w.track or w.track.get("composition") is None:
        return None, bool(p["allow_missing"]), "no composition for this clip's track"
    comp, hands = w.track["composition"], float(w.track.get("hands_ratio") or 0.0)
    if p["allowed"] and comp not in p["allowed"]:
        return hands, False, f"composition {comp} not in {'/'.join(p['allowed'])}"
    return hands, hands >= p["min_hands_ratio"], f"hands on {hands:.3g} of frames < {p['min_hands_ratio']}"


def state_coverage(w: WindowView, p: dict):
    codes = cond.states_at(w.clip.get("frame_times"), w.clip.get("frame_states"), w.times, w.fps)
    if (codes == cond.UNKNOWN_STATE).all():
        return None, bool(p["allow_missing"]), "no per-frame states in the window"
    known = codes != cond.UNKNOWN_STATE
    discard = float((codes == cond.STATE_CODES["discard"]).mean())
    if discard > p["max_discard"]:
        return discard, False, f"discard share {discard:.3g} > {p['max_discard']}"
    if not p["state"]:
        return float(known.mean()), known.mean() >= p["min_labelled"], \
            f"labelled share {known.mean():.3g} < {p['min_labelled']}"
    share = float((codes == cond.STATE_CODES[p["state"]]).mean())
    return share, share >= p["min_share"], f"{p['state']} share {share:.3g} < {p['min_share']}"


# ---- frame checks ---------------------------------------------------------------------------------
def duration(w: WindowView, p: dict):
    got = len(w.frames.pts) / w.fps
    return got, got >= w.seconds - p["tolerance_s"], f"window has {got:.3g} s of frames < {w.seconds:.3g}"


def sampling_fps(w: WindowView, p: dict):
    """Distinct source frames per second of the window (a 15 fps source sampled at 25 repeats)."""
    eff = w.frames.distinct / max(w.seconds, 1e-6)
    return eff, eff >= p["min_ratio"] * w.fps, f"{eff:.3g} distinct frames/s < {p['min_ratio']} x {w.fps:g}"


def resolution(w: WindowView, p: dict):
    side = float(min(w.frames.source_size)) if w.frames.source_size else 0.0
    return side, side >= p["min_short_side"], f"short side {side:.0f} px < {p['min_short_side']}"


def brightness(w: WindowView, p: dict):
    means = w.gray.reshape(len(w.gray), -1).mean(axis=1) if len(w.gray) else np.zeros(1)
    mean = float(means.mean())
    if not p["min_mean"] <= mean <= p["max_mean"]:
        return mean, False, f"mean luma {mean:.3g} outside {p['min_mean']}-{p['max_mean']}"
    dark = float((means < p["dark_luma"]).mean())
    if dark > p["max_dark_frames"]:
        return dark, False, f"under-exposed frames {dark:.3g} > {p['max_dark_frames']}"
    bright = float((means > p["bright_luma"]).mean())
    return mean, bright <= p["max_bright_frames"], f"over-exposed frames {bright:.3g} > {p['max_bright_frames']}"


def black_white(w: WindowView, p: dict):
    g = w.gray
    black, white = float((g < 16).mean()), float((g > 240).mean())
    if black > p["max_black"]:
        return black, False, f"black pixels {black:.3g} > {p['max_black']}"
    return white, white <= p["max_white"], f"white pixels {white:.3g} > {p['max_white']}"


def border(w: WindowView, p: dict):
    """Constant black bars (letterbox / pillarbox) at the frame's edges (quality's detector)."""
    from operators.quality import border_fractions
    g = w.gray[:: max(1, len(w.gray) // 8)]
    bars = border_fractions(g, dark=p["dark"], max_range=p["max_range"], fill=p["fill"])
    total = 1.0 if bars is None else float(sum(bars))
    return total, total <= p["max_total"], f"border bars cover {total:.3g} > {p['max_total']}"


def frame_jumps(w: WindowView, p: dict):
    """Sudden jumps (cuts, removed chunks) between the window's distinct frames: temporal's rules
    (``operators.temporal.find_jumps``) on the window alone."""
    from operators.temporal import _abs_diff_sums, find_jumps, pair_differences
    g = w.gray
    if len(g) < 3:
        return 0.0, True, ""
    mean_d, changed = pair_differences(g, 3.0)
    distinct = np.concatenate([[0], np.nonzero(mean_d >= p["dup_mean_diff"])[0] + 1])
    gd, td = g[distinct], w.times[distinct]
    if len(gd) < 3:
        return 0.0, True, ""
    d = mean_d[distinct[1:] - 1]
    skip = np.append(_abs_diff_sums(gd, 2)[0] / (gd.shape[1] * gd.shape[2]), np.nan)
    ks = find_jumps(d, td[1:], skip, p["window_s"], p["ratio_local"], p["ratio_neighbours"],
                    p["continuation"], p["min_diff"])
    at = ", ".join(f"{td[k + 1]:.2f}" for k in ks[:3])
    return float(len(ks)), len(ks) <= p["max_jumps"], f"{len(ks)} frame jump(s) at {at} s"


def motion_intensity(w: WindowView, p: dict):
    """Mean absolute grey-level change between consecutive frames, per second of window."""
    g = w.gray
    if len(g) < 2:
        return 0.0, p["min"] <= 0.0, "one frame: no motion"
    from operators.temporal import pair_differences
    d = pair_differences(g, 3.0)[0]
    value = float(d.mean() * w.fps)
    return value, p["min"] <= value <= p["max"], f"motion {value:.3g} outside {p['min']}-{p['max']}"


def audio(w: WindowView, p: dict):
    if not w.video.get("has_audio"):
        return None, False, "no audio stream"
    a = w.audio
    rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) if len(a) else 0.0
    db = 20 * math.log10(rms) if rms > 0 else -120.0
    return db, db >= p["min_rms_db"], f"audio level {db:.3g} dBFS < {p['min_rms_db']}"


CHECKS: dict[str, Check] = {
    "audio_sync": Check(audio_sync, "meta", {"min_confidence": 0.0, "max_abs_offset_frames": 15,
                                             "allow_missing": False}),
    "camera": Check(camera, "meta", {"allowed": [], "max_shake": 1e9, "allow_missing": True}),
    "quality": Check(quality, "meta", {"max_text_coverage": 1.0, "min_sharpness": 0.0,
                                       "allow_missing": True}),
    "defects": Check(defects, "meta", {"max_duplicate_ratio": 1.0, "max_freeze_s": 1e9,
                                       "allow_missing": True}),
    "motion_consistency": Check(motion_consistency, "meta", {"max_jumps": 0, "allow_missing": True}),
    "mask_area": Check(mask_area, "meta", {"box": "face_boxes", "min_share": 0.0,
                                           "allow_missing": False}),
    "composition": Check(composition, "meta", {"allowed": [], "min_hands_ratio": 0.0,
                                               "allow_missing": False}),
    "state_coverage": Check(state_coverage, "meta", {"state": "", "min_share": 0.0, "max_discard": 1.0,
                                                     "min_labelled": 0.0, "allow_missing": False}),
    "duration": Check(duration, "frames", {"tolerance_s": 0.001}),
    "sampling_fps": Check(sampling_fps, "frames", {"min_ratio": 0.9}),
    "resolution": Check(resolution, "frames", {"min_short_side": 0}),
    "brightness": Check(brightness, "frames", {"min_mean": 0.0, "max_mean": 255.0, "dark_luma": 40.0,
                                               "max_dark_frames": 1.0, "bright_luma": 215.0,
                                               "max_bright_frames": 1.0}),
    "black_white": Check(black_white, "frames", {"max_black": 1.0, "max_white": 1.0}),
    "border": Check(border, "frames", {"dark": 24.0, "max_range": 10.0, "fill": 0.9, "max_total": 1.0}),
    "frame_jumps": Check(frame_jumps, "frames", {"max_jumps": 0, "dup_mean_diff": 0.3, "min_diff": 1.5,
                                                 "ratio_local": 3.5, "ratio_neighbours": 2.5,
                                                 "continuation": 1.2, "window_s": 1.0}),
    "motion_intensity": Check(motion_intensity, "frames", {"min": 0.0, "max": 1e9}),
    "audio": Check(audio, "audio", {"min_rms_db": -120.0}),
}


def run_checks(profile, window: WindowView) -> Verdict:
    """Run the profile's checks in order on ``window``; stop at the first that drops it."""
    out = Verdict(kept=True)
    for name, params in profile.checks:
        try:
            value, keep, why = CHECKS[name].fn(window, params)
        except Exception as e:  # noqa: BLE001 - a window that cannot be measured is dropped, saying why
            from curation.store import one_line
            value, keep, why = None, False, f"could not measure: {one_line(e, 160)}"
        keep = bool(keep)
        out.checks.append({"check": name, "value": None if value is None else float(value), "keep": keep})
        if not keep:
            out.kept, out.failed_check = False, name
            out.reason = f"{name}: {why}"
            break
    return out
