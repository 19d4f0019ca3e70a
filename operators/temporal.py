"""Temporal consistency inside a clip: duplicated / frozen frames, jump cuts, gradual transitions,
motion and camera motion.

This is the LongCat "frame stuttering (jump cuts)" check plus motion measures. It only scores; keep
or drop decisions belong to the workflow's filters.

Everything runs on every native frame at 160 px grey:

* **duplicates / freezes**: a consecutive pair is a duplicate when almost no pixel changes by more
  than a few grey levels (frame-rate padding, freezes, a static still);
* **jumps**: on the sequence of *distinct* frames (duplicates collapsed), a frame difference that is
  an isolated spike: far above the clip's own local motion (rolling median over +-1 s) and above the
  neighbouring differences, above an absolute floor, and not a continuation: across a jump the frames
  on each side stay together (frame k-1 is about as far from k+1 as k is, and k+2 from k), while in
  real motion the change keeps growing over the next frame. One-frame flashes are not jumps. A
  removed chunk of a talking-head video is a jump; talking, blinking and head turns are not;
* **transitions**: dissolves and fades are linear blends, so a frame equals the interpolation of its
  two neighbours (residual ~ 0) while the neighbours differ clearly; motion never does that. Fades to
  or from black are also found as a steady ramp of the mean luma reaching black (robust to uneven
  frame timing). A run lasting ``transition_min_s`` is one transition;
* **motion**: Farneback dense flow on ~``motion_rate`` pairs per second at ``motion_side`` px (80: a
  quarter of the cost at 160, see :func:`flow_magnitude`), in frame diagonals per second;
* **camera**: a chain of similarity transforms (corners tracked with pyramidal LK from pair to pair
  for up to ``camera_chain_s``, ``cv2.estimateAffinePartial2D`` with RANSAC) every
  ``1 / camera_rate`` s, on points of the frame's border band when there are enough of them (the
  background, not the talking person); pan / tilt / zoom are medians over time, shake is the
  high-frequency part of the translation velocity. 0.6 ms of CPU a pair here (version 2, which
  detected corners in every pair and tracked them forwards and backwards with a 15 x 15 LK window,
  took 2.6 ms).

Limits, measured on the test clips: duplicates that an encoder re-coded with visible noise (e.g. x264
``-preset veryfast`` B-frames) differ as much as a still speaker's real frames at 160 px and are not
counted; removed chunks of >= 0.5 s were all found in talking-head clips, chunks of 0.1-0.2 s (a few
frames) mostly look like fast motion and are not. The camera is measured on the border band: when
the person fills it (e.g. a zoom into a talking head past about half the frame) the points follow
the person and the camera reads as shake or complex.

Sign conventions (image axes, x right, y down): ``camera_pan_speed`` > 0 when the camera turns right
(the picture content moves left), ``camera_tilt_speed`` > 0 when the camera turns down (content moves
up), ``camera_zoom_rate`` > 0 when zooming in (content grows). Speeds are in frame diagonals per
second, the zoom rate in log-scale per second.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames
from curation.operator import Operator, Resources

CAMERA_LABELS = ("static", "pan", "tilt", "zoom", "shake", "complex")


# ---- frame differences ---------------------------------------------------------------------------
def _abs_diff_sums(gray: np.ndarray, gap: int, pixel_diff: float | None = None, chunk: int = 256
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """For each pair of grey frames (k, k + gap) of (N, H, W) uint8: the sum of absolute differences
    (exact integers) and, given ``pixel_diff``, the number of pixels that changed by more than it.
    One ``cv2.absdiff`` over stacked frames (no int16 copies), chunked to bound memory."""
    n, h, w = gray.shape
    m = max(n - gap, 0)
    sums = np.zeros(m, np.int64)
    counts = None if pixel_diff is None else np.zeros(m, np.int64)
    for s in range(0, m, chunk):
        e = min(s + chunk, m)
        d = cv2.absdiff(np.ascontiguousarray(gray[s:e]).reshape(-1, w),
                        np.ascontiguousarray(gray[s + gap:e + gap]).reshape(-1, w))
        d = d.reshape(e - s, h * w)
        sums[s:e] = cv2.reduce(d, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
        if counts is not None:                       # pixels > pixel_diff (integers: > floor)
            over = cv2.threshold(d, math.floor(pixel_diff), 1, cv2.THRESH_BINARY)[1]
            counts[s:e] = cv2.reduce(over, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
    return sums, counts


def pair_differences(gray: np.ndarray, pixel_diff: float, chunk: int = 256
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For each consecutive pair of grey frames (N, H, W) uint8: the mean absolute difference and the
    fraction of pixels that changed by more than ``pixel_diff`` grey levels. Chunked to bound memory."""
    sums, counts = _abs_diff_sums(gray, 1, pixel_diff, chunk)
    px = gray.shape[1] * gray.shape[2]
    return sums / px, counts / px


def longest_hold(times: np.ndarray, dup: np.ndarray) -> float:
    """How long the picture stood still beyond one normal frame interval, in seconds.

    A run of duplicate pairs i..j keeps one image on screen from ``times[i]`` until the next different
    frame ``times[j + 2]`` (end of the clip: one median interval after the last frame). The same
    measure covers variable-frame-rate files, where a freeze is one frame with a long interval."""
    if len(times) < 2:
        return 0.0
    dt = np.diff(times)
    step = float(np.median(dt))
    ends = np.append(times[1:], times[-1] + step)      # when each frame is replaced on screen
    # distinct frames start a hold; a duplicate continues the previous one
    starts = np.concatenate([[True], ~dup])
    first = np.nonzero(starts)[0]
    last = np.append(first[1:] - 1, len(times) - 1)
    held = ends[last] - times[first]
    return max(0.0, float(held.max() - step)) if len(held) else 0.0


def find_jumps(d: np.ndarray, t: np.ndarray, skip: np.ndarray, window_s: float, ratio_local: float,
               ratio_neighbours: float, continuation: float, min_diff: float) -> np.ndarray:
    """Indices (into ``d``) of jumps in a sequence of distinct-frame differences.

    ``d[k]`` is the mean abs difference of distinct frames k and k+1, ``t[k]`` the time of frame k+1,
    ``skip[k]`` the difference of frames k and k+2 (NaN at the end). Pair k is a jump when:

    * ``d[k]`` >= ``min_diff`` grey levels;
    * ``d[k]`` >= ``ratio_local`` x the median of the other differences within +-``window_s``;
    * ``d[k]`` >= ``ratio_neighbours`` x the second largest of the two differences before and the two
      after it (so a spike next to a fast frame, or next to a duplicate that escaped detection, is
      still judged against the motion around it);
    * the frames on each side of it stay together: frame k-1 is at most ``continuation`` x d[k] from
      frame k+1, and frame k+2 at most that from frame k. In real motion the change keeps growing
      over the next frame (ratios 1.3-2), across a jump it does not (ratios ~1.0);
    * it is not a one-frame flash: frame k+2 does not return to frame k (``skip[k]`` >= d[k] / 2).
    """
    m = len(d)
    if m < 2:
        return np.zeros(0, int)
    padded = np.pad(d, 2)                            # zeros beyond the ends
    around = np.sort(np.stack([padded[i:i + m] for i in (0, 1, 3, 4)]), axis=0)[-2]
    cand = np.nonzero((d >= min_diff) & (d >= ratio_neighbours * around))[0]
    out = []
    for k in cand:                                   # few candidates: a loop is fine here
        near = np.abs(t - t[k]) <= window_s
        near[k] = False
        if not near.any() or d[k] < ratio_local * float(np.median(d[near])):
            continue
        after = skip[k]                              # frame k -> frame k+2
        before = skip[k - 1] if k >= 1 else np.nan   # frame k-1 -> frame k+1
        if np.isfinite(after) and not 0.5 * d[k] <= after <= continuation * d[k]:
            continue                                 # a flash, or motion that continues
        if np.isfinite(before) and before > continuation * d[k]:
            continue
        out.append(k)
    return np.asarray(out, int)


def blend_residuals(gray: np.ndarray, times: np.ndarray, chunk: int = 128,
                    skip_sums: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each interior frame i of (N, H, W): the mean abs residual of f_i against the linear
    interpolation of its neighbours at its time, and half the mean abs difference of its neighbours
    |f_{i+1} - f_{i-1}| / 2. In a dissolve or fade (a linear blend over time) the residual is ~0
    while the neighbours differ; in motion both are comparable. Interpolating at the frame times
    keeps this right when the frames are unevenly spaced (variable frame rate, collapsed duplicates).

    Frames midway between their neighbours (evenly spaced frames, the usual case; within 0.01 % of
    the interval, the rounding of stored times) are done in integer arithmetic,
    |2 f_i - f_{i-1} - f_{i+1}| / 2, exact while a frame's sums fit float32's 24 bits (up to 32,896
    pixels, e.g. 160 x 160), and several times cheaper than the float32 blend. ``skip_sums``: the
    integer sums |f_{i+1} - f_{i-1}| if the caller has them already (see :func:`_abs_diff_sums`)."""
    n = len(gray)
    res = np.zeros(max(n - 2, 0))
    half = np.zeros(max(n - 2, 0))
    if n < 3:
        return res, half
    span = np.maximum(times[2:] - times[:-2], 1e-9)
    w = np.clip((times[1:-1] - times[:-2]) / span, 0.0, 1.0).astype(np.float32)
    px = gray.shape[1] * gray.shape[2]
    exact = px * 510 < 2 ** 24
    mid = (np.abs(w - 0.5) <= 1e-4) if exact else np.zeros(n - 2, bool)
    if exact:
        if skip_sums is None:
            skip_sums = _abs_diff_sums(gray, 2)[0]
        # mean |c - a| and mean |b - (a + c) / 2| in float32 as numpy gets them: exact sums, one
        # rounding of the division
        half[:] = np.float32(0.5) * (skip_sums[:n - 2].astype(np.float32) / np.float32(px))
        h, wd = gray.shape[1:]
        for s in np.unique(np.nonzero(mid)[0] // chunk) * chunk:
            e = min(s + chunk, n - 2)               # interior frames s+1 .. e of this chunk
            # signed steps f_{k+1} - f_k, then |step_k+1 - step_k| = |2 f_{k+1} - f_k - f_{k+2}|
            steps = cv2.subtract(np.ascontiguousarray(gray[s + 1:e + 2]).reshape(-1, wd),
                                 np.ascontiguousarray(gray[s:e + 1]).reshape(-1, wd),
                                 dtype=cv2.CV_16S)
            bend = cv2.absdiff(steps[h:], steps[:-h]).reshape(e - s, h * wd)
            sums = cv2.reduce(bend, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32F)[:, 0]   # exact (< 2^24)
            sel = mid[s:e]
            res[s:e][sel] = sums[sel].astype(np.float32) * np.float32(0.5) / np.float32(px)
    rest = np.nonzero(~mid)[0]
    for s in range(0, len(rest), chunk):
        sel = rest[s:s + chunk]
        a, b, c = (gray[sel + k].astype(np.float32) for k in (0, 1, 2))
        ws = w[sel, None, None]
        res[sel] = np.abs(b - (a + ws * (c - a))).mean(axis=(1, 2))
        if not exact:
            half[sel] = 0.5 * np.abs(c - a).mean(axis=(1, 2))
    return res, half


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) indices of the runs of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1))


def fade_runs(luma: np.ndarray, min_step: float, black: float, min_change: float) -> list[tuple[int, int]]:
    """Fades to / from black as (first, last) frame indices: runs of steps where the mean luma keeps
    changing in one direction by at least ``min_step`` per frame, whose dark end is at most ``black``
    and whose total change is at least ``min_change`` grey levels. Independent of frame timing."""
    step = np.diff(luma)
    out = []
    for sign in (1, -1):
        for a, b in runs(sign * step >= min_step):   # steps a..b join frames a..b+1
            lo, hi = sorted((luma[a], luma[b + 1]))
            if lo <= black and hi - lo >= min_change:
                out.append((int(a), int(b + 1)))
    return out


def count_transitions(intervals: list[tuple[int, int]], times: np.ndarray, min_s: float) -> int:
    """Merge overlapping or touching (first, last) frame intervals; count those lasting ``min_s``."""
    merged: list[list[int]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return sum(1 for a, b in merged if times[b] - times[a] >= min_s)


# ---- sampling ------------------------------------------------------------------------------------
def anchors(times: np.ndarray, rate: float) -> np.ndarray:
    """Indices of the first frame in each 1/rate-second slot (uniform in time, VFR-safe)."""
    slots = np.floor((times - times[0]) * rate + 1e-6).astype(int)
    return np.unique(slots, return_index=True)[1]


def next_distinct(dup: np.ndarray) -> np.ndarray:
    """For each frame i, the first later frame whose content differs from frame i's (N if none);
    ``dup[k]`` tells whether frame k+1 duplicates frame k."""
    n = len(dup) + 1
    changes = np.nonzero(~dup)[0] + 1                # frames that differ from their predecessor
    pos = np.searchsorted(changes, np.arange(n), side="right")
    return np.append(changes, n)[pos]


# ---- motion and camera ---------------------------------------------------------------------------
def flow_magnitude(a: np.ndarray, b: np.ndarray, max_side: int | None = None) -> float:
    """Mean Farneback flow magnitude between two grey frames, in pixels of the frames given, with the
    flow computed on copies whose long side is ``max_side`` (area-averaged). At 80 px instead of 160
    it costs a quarter of the CPU (2.2 against 8.4 ms a pair here) and reads mean speeds within
    -6 %..+28 % of the full-size flow on the test clips (small motions read slightly higher)."""
    h, w = a.shape
    f = 1.0 if not max_side or max(h, w) <= max_side else max_side / max(h, w)
    if f < 1.0:
        size = (max(8, int(round(w * f))), max(8, int(round(h * f))))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        f = size[0] / w
    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    sq = flow * flow                                 # the same float32 sums as (flow ** 2).sum(2),
    mag = sq[..., 0] + sq[..., 1]                    # a quarter of the time
    return float(np.sqrt(mag, out=mag).mean()) / f


class _Tasks:
    """Runs the independent parts of one row (camera chains, groups of motion pairs) on ``threads``
    threads while the calling thread does the frame differences (OpenCV and NumPy release the GIL);
    with one thread each part runs when it is submitted. Results never depend on the threads."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _flows(pairs: list[tuple[np.ndarray, np.ndarray]], max_side: int | None) -> list[float]:
    return [flow_magnitude(a, b, max_side) for a, b in pairs]


def border_mask(h: int, w: int, inner: float) -> np.ndarray:
    """A mask of the frame's border band: everything outside a centred box of ``inner`` x the size
    (where a talking person usually is)."""
    mask = np.full((h, w), 255, np.uint8)
    y0, x0 = int(h * (1 - inner) / 2), int(w * (1 - inner) / 2)
    mask[y0:h - y0, x0:w - x0] = 0
    return mask


# pyramidal LK for the camera: a 9 x 9 window on 3 levels costs about 40 % of the CPU of 15 x 15
# and still follows the synthetic whip pans of ~35 px per pair (1.5 frame diagonals per second)
_LK = dict(winSize=(9, 9), maxLevel=2,
           criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01))


def corners(img: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Corners to track: of the border band when it has at least 12, else of the whole frame."""
    pts = None
    for m in (mask, None):
        pts = cv2.goodFeaturesToTrack(img, 120, 0.01, 5, mask=m, blockSize=5)
        if pts is not None and len(pts) >= 12:
            break
    return pts


def similarity(a: np.ndarray, b: np.ndarray, pts: np.ndarray | None
               ) -> tuple[tuple[float, float, float] | None, np.ndarray | None]:
    """Global similarity transform a -> b as (dx, dy, log scale), from the points ``pts`` of ``a``
    ((N, 1, 2) float32) tracked with LK and a RANSAC fit; and the tracked points where they are in
    ``b`` (to continue from), or (None, None)."""
    if pts is None or len(pts) < 6:
        return None, None
    fwd, st, _ = cv2.calcOpticalFlowPyrLK(a, b, pts, None, **_LK)
    ok = st.ravel().astype(bool)
    src, dst = pts[ok], fwd[ok]
    if len(src) < 6:
        return None, None
    matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=0.5, maxIters=500,
                                                  confidence=0.99)
    if matrix is None or inliers is None or np.count_nonzero(inliers) < 6:
        return None, None                            # e.g. across a cut: fresh corners next
    # about the frame centre, so a zoom does not read as a translation
    (m00, m01, m02), (m10, m11, m12) = matrix.tolist()
    cx, cy = a.shape[1] / 2, a.shape[0] / 2
    dx, dy = m00 * cx + m01 * cy + m02 - cx, m10 * cx + m11 * cy + m12 - cy
    return (dx, dy, math.log(max(math.hypot(m00, m10), 1e-6))), dst


def track_chain(images: list[np.ndarray], inner: float, min_carried: int) -> list:
    """:func:`similarity` for each consecutive pair of ``images``. The first pair starts from fresh
    corners (:func:`corners`); each later pair continues from where the previous pair's points
    were tracked to (all of them, not only its RANSAC inliers: keeping only those would lock onto
    whatever moved the most points in one pair, e.g. hair in the band when the head turns), those
    still inside the border band, unless fewer than ``min_carried`` are left: then fresh corners.
    No detection per pair, and no backward LK check (RANSAC drops the points that tracked badly)."""
    out, pts = [], None
    h, w = images[0].shape
    mask = border_mask(h, w, inner)
    y0, x0 = int(h * (1 - inner) / 2), int(w * (1 - inner) / 2)
    for a, b in zip(images[:-1], images[1:]):
        if pts is None or len(pts) < min_carried:
            pts = corners(a, mask)
        est, pts = similarity(a, b, pts)
        out.append(est)
        if pts is not None:                          # carried points: inside the band only
            x, y = pts[:, 0, 0] + 0.5, pts[:, 0, 1] + 0.5     # the pixel each point is in
            frame = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            box = (x >= x0) & (x < w - x0) & (y >= y0) & (y < h - y0)
            pts = pts[frame & ~box]
    return out


def classify_camera(pan: float, tilt: float, zoom: float, shake: float, static_speed: float,
                    shake_speed: float, dominance: float) -> str:
    """One label from the camera scores (diagonals per second; the zoom rate is compared as the speed
    it gives the frame's corners, zoom / 2)."""
    comps = {"pan": abs(pan), "tilt": abs(tilt), "zoom": abs(zoom) / 2}
    (top, top_v), (_, second_v), _ = sorted(comps.items(), key=lambda kv: -kv[1])
    if shake >= shake_speed and shake >= top_v:
        return "shake"
    if top_v < static_speed:
        return "static"
    if top_v >= dominance * second_v:
        return top
    return "complex"


# ---- the operator --------------------------------------------------------------------------------
class Temporal(Operator):
    name = "temporal"
    summary = "jump cuts, duplicated frames, transitions, motion, camera motion, every frame"
    version = "3"
    input_table = "clips"
    output_table = "clips"
    frames = FrameSpec(fps=None, max_side=160)
    resources = Resources(num_cpus=1.0)
    # threads for the camera chains and motion pairs, next to the frame differences (OpenCV
    # releases the GIL): results do not depend on it
    threads: int = min(2, os.cpu_count() or 1)
    params = {
        # duplicates: a pair is (near-)identical when at most dup_max_changed of its pixels change by
        # more than dup_pixel_diff grey levels (and the mean change is below dup_mean_diff)
        "dup_pixel_diff": 3.0,
        "dup_max_changed": 0.002,
        "dup_mean_diff": 0.5,
        # jumps, on distinct frames (see find_jumps): the difference must reach jump_min_diff grey
        # levels, jump_ratio_local x the median difference within +-jump_window_s and
        # jump_ratio_neighbours x the neighbouring ones; the frames on either side of it must stay
        # within jump_continuation x the difference of each other
        "jump_min_diff": 1.5,
        "jump_ratio_local": 3.5,
        "jump_ratio_neighbours": 2.5,
        "jump_continuation": 1.2,
        "jump_window_s": 1.0,
        # transitions: dissolve frames have a blend residual <= transition_max_residual x the
        # neighbour half-difference, which must be >= transition_min_diff grey levels; fades are luma
        # ramps of >= fade_min_step per frame reaching fade_black and changing >= fade_min_change;
        # either must last transition_min_s
        "transition_max_residual": 0.4,
        "transition_min_diff": 1.0,
        "fade_min_step": 0.5,
        "fade_black": 24.0,
        "fade_min_change": 20.0,
        "transition_min_s": 0.2,
        # motion: Farneback pairs per second, computed with the long side at motion_side px
        "motion_rate": 5.0,
        "motion_side": 80,
        # camera: transform segments per second; corners are taken outside a centred box of
        # camera_inner_box x the frame when there are enough of them
        "camera_rate": 10.0,
        "camera_inner_box": 0.6,
        # points are tracked from pair to pair for up to camera_chain_s seconds, while at least
        # camera_min_carried of them are left in the border band (else fresh corners)
        "camera_chain_s": 1.0,
        "camera_min_carried": 20,
        "static_speed": 0.02,      # diagonals/s: below this on every axis the camera is static
        "shake_speed": 0.04,       # diagonals/s of high-frequency translation velocity
        "camera_dominance": 2.0,   # pan / tilt / zoom needs this many times the next component
    }
    writes = pa.schema([
        ("duplicate_frame_ratio", pa.float64()),
        ("longest_freeze_s", pa.float64()),
        ("jump_count", pa.int32()),
        ("jump_times_s", pa.list_(pa.float64())),
        ("transition_count", pa.int32()),
        ("motion_intensity", pa.float64()),
        ("motion_p90", pa.float64()),
        ("camera_motion", pa.string()),
        ("camera_pan_speed", pa.float64()),
        ("camera_tilt_speed", pa.float64()),
        ("camera_zoom_rate", pa.float64()),
        ("camera_shake", pa.float64()),
    ])

    def process_row(self, video: dict, row: dict, frames: Frames) -> dict:
        out: dict = {name: None for name in self.writes.names}
        if len(frames) < 2:
            return out                               # nothing temporal to measure on one frame
        gray = frames.gray()
        times = np.asarray(frames.times, np.float64)
        diag = math.hypot(*gray.shape[1:])
        p = self.p
        tasks = _Tasks(self.threads)
        try:
            camera = self._camera_start(gray, times, tasks)

            # duplicates and freezes
            mean_d, changed = pair_differences(gray, p["dup_pixel_diff"])
            dup = (changed <= p["dup_max_changed"]) & (mean_d < p["dup_mean_diff"])
            out["duplicate_frame_ratio"] = round(float(dup.mean()), 4)
            out["longest_freeze_s"] = round(longest_hold(times, dup), 3)

            # motion: Farneback from frames sampled in time to the next distinct frame
            follow = next_distinct(dup)
            pairs, frozen = [], 0
            for i in anchors(times, p["motion_rate"]):
                j = follow[i]
                if j < len(frames) and times[j] > times[i]:
                    pairs.append((i, j))
                elif i + 1 < len(frames):
                    frozen += 1                      # frozen until the end of the clip: speed 0
            flows = [tasks.submit(_flows, [(gray[i], gray[j]) for i, j in pairs[s:s + 8]],
                                  p["motion_side"]) for s in range(0, len(pairs), 8)]

            # jumps and transitions, on the distinct frames (padding duplicates would break both)
            distinct = np.concatenate([[0], np.nonzero(~dup)[0] + 1])
            if len(frames) >= 3:
                out.update(self._jumps_and_transitions(gray[distinct], times[distinct],
                                                       mean_d[distinct[1:] - 1]))

            flows = [f for part in flows for f in part.result()]
            speeds = [f / (times[j] - times[i]) / diag
                      for f, (i, j) in zip(flows, pairs)] + [0.0] * frozen
            if speeds:
                out["motion_intensity"] = round(float(np.mean(speeds)), 5)
                out["motion_p90"] = round(float(np.percentile(speeds, 90)), 5)

            out.update(self._camera_finish(times, diag, *camera))
        finally:
            tasks.close()
        return out

    def _jumps_and_transitions(self, g: np.ndarray, t: np.ndarray, d: np.ndarray) -> dict:
        """On distinct frames ``g`` at times ``t``, ``d[k]`` the difference of frames k and k+1."""
        p = self.p
        if len(g) < 3:                               # at most one change: nothing to compare with
            return {"jump_count": 0, "jump_times_s": [], "transition_count": 0}
        skip_sums = _abs_diff_sums(g, 2)[0]          # difference of frames k and k+2
        skip = np.append(skip_sums / (g.shape[1] * g.shape[2]), np.nan)
        ks = find_jumps(d, t[1:], skip, p["jump_window_s"], p["jump_ratio_local"],
                        p["jump_ratio_neighbours"], p["jump_continuation"], p["jump_min_diff"])

        res, half = blend_residuals(g, t, skip_sums=skip_sums)
        blend = (half >= p["transition_min_diff"]) & (res <= p["transition_max_residual"] * half)
        blend[1:-1] |= blend[:-2] & blend[2:]        # bridge one noisy frame inside a blend
        intervals = [(a + 1, b + 1) for a, b in runs(blend) if b - a >= 2]   # >= 3 blended frames
        luma = g.reshape(len(g), -1).sum(axis=1, dtype=np.uint32) / (g.shape[1] * g.shape[2])
        intervals += fade_runs(luma, p["fade_min_step"], p["fade_black"], p["fade_min_change"])
        return {"jump_count": int(len(ks)),
                "jump_times_s": [round(float(t[k + 1]), 3) for k in ks],
                "transition_count": count_transitions(intervals, t, p["transition_min_s"])}

    def _camera_start(self, gray: np.ndarray, times: np.ndarray, tasks: _Tasks) -> tuple:
        """Start the chain of similarity transforms between frames sampled in time: chains of
        camera_chain_s seconds, each from fresh corners (so the result does not depend on the
        number of threads), points carried from pair to pair inside one."""
        p = self.p
        idx = anchors(times, p["camera_rate"])
        if len(idx) < 2:                             # a very short clip: first to last frame
            idx = np.array([0, len(times) - 1])
        n = max(1, int(round(p["camera_chain_s"] * p["camera_rate"])))
        parts = [tasks.submit(track_chain, [gray[i] for i in idx[s:s + n + 1]],
                              p["camera_inner_box"], p["camera_min_carried"])
                 for s in range(0, len(idx) - 1, n)]
        return idx, parts

    def _camera_finish(self, times: np.ndarray, diag: float, idx: np.ndarray, parts: list) -> dict:
        """Camera scores from the chain's transforms (see :meth:`_camera_start`)."""
        p = self.p
        ests = [e for part in parts for e in part.result()]
        vel = []                                     # (vx, vy) diagonals/s, zoom log-scale/s
        for a, b, est in zip(idx[:-1], idx[1:], ests):
            dt = times[b] - times[a]
            if est is not None and dt > 0:
                vel.append((est[0] / diag / dt, est[1] / diag / dt, est[2] / dt))
        if not vel:
            return dict.fromkeys(("camera_motion", "camera_pan_speed", "camera_tilt_speed",
                                  "camera_zoom_rate", "camera_shake"))   # no texture: unknown
        v = np.asarray(vel)
        # the camera moves opposite to the picture content
        pan, tilt = -float(np.median(v[:, 0])), -float(np.median(v[:, 1]))
        zoom = float(np.median(v[:, 2]))
        # shake: how far each translation velocity departs from the mean of its two neighbours
        # (a second difference: zero for steady or slowly changing motion, large for back-and-forth
        # jitter); the median keeps one-off subject movements from counting
        shake = None
        if len(v) >= 3:
            jitter = v[1:-1, :2] - 0.5 * (v[:-2, :2] + v[2:, :2])
            shake = round(float(np.median(np.linalg.norm(jitter, axis=1))), 5)
        label = classify_camera(pan, tilt, zoom, shake or 0.0, p["static_speed"], p["shake_speed"],
                                p["camera_dominance"])
        return {"camera_motion": label, "camera_pan_speed": round(pan, 5) + 0.0,  # no -0.0
                "camera_tilt_speed": round(tilt, 5) + 0.0, "camera_zoom_rate": round(zoom, 5) + 0.0,
                "camera_shake": shake}
