"""Visual quality scores of a clip from its 2 fps frame samples (no models, OpenCV + NumPy only).

Scores only: nothing is kept or dropped here; workflow filters apply thresholds to these columns.

How it works, per clip:

1. Luma (BT.601 grey) of every sampled frame at the decoded size.
2. Letterbox / pillarbox bars: rows and columns at the frame edges that are near-black in *every*
   sampled frame, constant over time (a dark scene, whose pixels change, is not a bar) and end in a
   sharp straight edge (a dark suit clipped to black fades out gradually, and is not a bar either).
3. Exposure, colour, sharpness and motion are measured on the picture *inside* the bars, so a
   letterboxed clip is not called dark or black because of its bars. Text is looked for in the
   whole frame (subtitles are often printed in a bar).
4. Sharpness and text are measured at a fixed reference scale (short side ``ref_short_side``), so a
   clip scores about the same at any resolution at or above it (smaller sources are upscaled and
   score lower: they carry less detail). Text boxes are left out of the sharpness measure.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames
from curation.operator import Operator, Resources

# Text detector constants (at the reference scale, short side = ref_short_side pixels).
_TEXT_MIN_H = 0.02         # a text line is at least 2 % of the frame height (7 px at 360) ...
_TEXT_MAX_H = 0.20         # ... and at most 20 % (two merged subtitle lines still count)
_TEXT_MIN_ASPECT = 1.5     # a text line is wider than tall
_TEXT_STROKE_WIN = 0.06    # window (fraction of height) in which strokes are counted
_TEXT_MIN_STROKES_WIN = 3  # edge starts per window for a pixel to be "stroke texture"
_TEXT_MIN_STROKES_PER_H = 2.0  # letters: >= 2 stroke crossings per line-height of width
_DIFF_SCALE = 4            # frame differences at 1/4 of the reference scale (ignores grain/noise)


class Quality(Operator):
    name = "quality"
    summary = "frame quality scores at 2 fps"
    version = "1"
    input_table = "clips"
    output_table = "clips"
    frames = FrameSpec(fps=2.0, max_side=480)
    resources = Resources(num_cpus=1.0)
    params = {
        "ref_short_side": 360,      # px: sharpness/text are measured with the short side resized to this
        "dark_luma": 50.0,          # a frame whose mean luma is below this is underexposed (0-255)
        "bright_luma": 205.0,       # a frame whose mean luma is above this is overexposed (0-255)
        "black_level": 16,          # a pixel with luma below this is black
        "white_level": 240,         # a pixel with luma above this is white
        "border_luma": 24,          # a bar pixel stays at or below this luma in every frame ...
        "border_range": 8,          # ... and varies by at most this much over time
        "border_fill": 0.95,        # fraction of a row/column that must be bar pixels
        "text_edge": 96,            # |Sobel x| (3x3) above which a pixel is a stroke edge
        "text_min_strokes": 10,     # a text line crosses at least this many vertical strokes
        "flash_jump": 40.0,         # mean-luma rise (0-255) between samples that starts a flash
        "flash_window_s": 0.6,      # a flash must fall back within this many seconds
        "still_diff_scale": 32.0,   # mean abs frame difference (luma) at which still_score reaches 0
    }
    writes = pa.schema([
        # Laplacian variance of luma at the reference scale (luma^2): HIGHER = SHARPER, low = blurry.
        pa.field("sharpness", pa.float32()),                               # median over frames
        pa.field("quality_frame_times_s", pa.list_(pa.float32())),    # s, the sampled frames
        pa.field("sharpness_per_frame", pa.list_(pa.float32())),           # aligned with the times above
        pa.field("brightness_mean", pa.float32()),    # mean luma 0-255
        pa.field("brightness_std", pa.float32()),     # mean over frames of the spatial luma std (contrast)
        pa.field("underexposed_ratio", pa.float32()), # fraction of frames with mean luma < dark_luma
        pa.field("overexposed_ratio", pa.float32()),  # fraction of frames with mean luma > bright_luma
        pa.field("black_pixel_ratio", pa.float32()),  # mean fraction of pixels with luma < black_level
        pa.field("white_pixel_ratio", pa.float32()),  # mean fraction of pixels with luma > white_level
        pa.field("border_top", pa.float32()),         # fraction of frame height under a black bar
        pa.field("border_bottom", pa.float32()),
        pa.field("border_left", pa.float32()),        # fraction of frame width under a black bar
        pa.field("border_right", pa.float32()),
        pa.field("text_coverage", pa.float32()),      # median over frames of the text-box area fraction
        pa.field("text_boxes_max", pa.int32()),       # most text-line boxes in one frame
        pa.field("colour_cast", pa.float32()),        # |mean (a, b)| in Lab units; 0 = neutral
        pa.field("cast_hue", pa.float32()),           # degrees, atan2(b, a): 0 red, 90 yellow, 180 green, 270 blue
        pa.field("flash_count", pa.int32()),          # brief global luma spikes (up, then back down)
        pa.field("still_score", pa.float32()),        # 1 - frame_diff_mean / still_diff_scale, in [0, 1]
        pa.field("frame_diff_mean", pa.float32()),    # mean abs luma difference of consecutive samples
    ])

    def process_row(self, video: dict, row: dict, frames: Frames) -> dict:
        p = self.p
        n = len(frames)
        if n == 0 or frames.images.size == 0:
            return {**{f.name: None for f in self.writes},
                    "quality_frame_times_s": [], "sharpness_per_frame": []}
        gray = luma(frames.images)
        h, w = gray.shape[1:]

        borders = border_fractions(gray, p["border_luma"], p["border_range"], p["border_fill"])
        y0, y1, x0, x1 = content_box(borders, h, w)
        gray_c = gray[:, y0:y1, x0:x1]
        # the picture inside the bars at the reference scale: sharpness and motion
        ref = [to_reference(g, p["ref_short_side"]) for g in gray_c]
        # the whole frame at the reference scale: text (subtitles are often printed in the bars)
        cropped = (y0, y1, x0, x1) != (0, h, 0, w)
        ref_full = [to_reference(g, p["ref_short_side"]) for g in gray] if cropped else ref

        means = gray_c.reshape(n, -1).mean(axis=1)
        stds = gray_c.reshape(n, -1).std(axis=1)
        black = (gray_c < p["black_level"]).reshape(n, -1).mean(axis=1)
        white = (gray_c > p["white_level"]).reshape(n, -1).mean(axis=1)

        text = [text_boxes(g, p["text_edge"], p["text_min_strokes"]) for g in ref_full]
        coverage = [box_coverage(b, g.shape) for b, g in zip(text, ref_full)]
        text_in_ref = [map_boxes(b, (y0, y1, x0, x1), (h, w), ref_full[0].shape, ref[0].shape)
                       for b in text] if cropped else text
        sharp = np.array([laplacian_variance(g, b) for g, b in zip(ref, text_in_ref)], np.float64)

        cast, hue = colour_cast(frames.images[:, y0:y1, x0:x1])
        diff = frame_difference(ref)
        top, bottom, left, right = borders if borders is not None else (None,) * 4
        return {
            "sharpness": float(np.median(sharp)),
            "quality_frame_times_s": [float(t) for t in frames.times],
            "sharpness_per_frame": [float(v) for v in sharp],
            "brightness_mean": float(means.mean()),
            "brightness_std": float(stds.mean()),
            "underexposed_ratio": float((means < p["dark_luma"]).mean()),
            "overexposed_ratio": float((means > p["bright_luma"]).mean()),
            "black_pixel_ratio": float(black.mean()),
            "white_pixel_ratio": float(white.mean()),
            "border_top": top,
            "border_bottom": bottom,
            "border_left": left,
            "border_right": right,
            "text_coverage": float(np.median(coverage)),
            "text_boxes_max": int(max(len(b) for b in text)),
            "colour_cast": cast,
            "cast_hue": hue,
            "flash_count": flash_count(means, np.asarray(frames.times, np.float64),
                                       p["flash_jump"], p["flash_window_s"]),
            "still_score": None if diff is None else float(np.clip(1.0 - diff / p["still_diff_scale"],
                                                                   0.0, 1.0)),
            "frame_diff_mean": diff,
        }


# ---- helpers (pure functions on arrays) -------------------------------------------------------------
def luma(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 -> (N, H, W) BT.601 luma uint8, in one OpenCV call."""
    n, h, w = images.shape[:3]
    stacked = np.ascontiguousarray(images).reshape(n * h, w, 3)
    return cv2.cvtColor(stacked, cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def border_fractions(gray: np.ndarray, dark: float, max_range: float, fill: float):
    """(top, bottom, left, right) fractions of the frame covered by black bars, or None when the
    whole frame is bar-like (a black clip: there is no picture to frame).

    A bar pixel is dark in every sampled frame (temporal max <= ``dark``, so the temporal median is
    dark too) and constant over time (max - min <= ``max_range``): a dark scene, whose pixels change,
    is not a bar. A bar row (column) has at least ``fill`` of its pixels bar-like. From each edge
    the bar extends to the last bar row of the run of rows that are at least ``_BAR_LOOSE`` bar-like,
    so subtitles printed inside a letterbox bar do not cut the bar short.
    """
    hi = gray.max(axis=0).astype(np.int16)
    lo = gray.min(axis=0).astype(np.int16)
    bar = (hi <= dark) & (hi - lo <= max_range)
    row_frac, col_frac = bar.mean(axis=1), bar.mean(axis=0)
    if (row_frac >= fill).all() or (col_frac >= fill).all():
        return None
    h, w = bar.shape
    top = _bar_length(row_frac[: h // 2], fill)
    bottom = _bar_length(row_frac[::-1][: h // 2], fill)
    left = _bar_length(col_frac[: w // 2], fill)
    right = _bar_length(col_frac[::-1][: w // 2], fill)
    return top / h, bottom / h, left / w, right / w


_BAR_LOOSE = 0.2      # rows of a bar with text in it are at least this bar-like
_BAR_INSIDE_MAX = 0.5  # just inside a bar's edge the picture is mostly not bar-like (a sharp edge)


def _bar_length(frac: np.ndarray, fill: float) -> int:
    """Rows in the bar at the start of ``frac`` (bar-like fraction per row, edge first).

    A bar ends in a straight, sharp edge: the few rows just inside it must be mostly picture. A dark
    region of the picture clipped to black (a dark suit, a night sky) fades out gradually instead,
    and is not a bar.
    """
    loose = frac >= _BAR_LOOSE
    run = int(np.argmin(loose)) if not loose.all() else len(frac)
    strict = np.flatnonzero(frac[:run] >= fill)
    if not len(strict) or strict[0] != 0:
        return 0
    end = int(strict[-1]) + 1
    inside = frac[end:end + max(3, len(frac) // 25)]  # ~2 % of the frame (frac spans half of it)
    return end if len(inside) and inside.mean() <= _BAR_INSIDE_MAX else 0


def content_box(borders, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the picture inside the bars; the whole frame when that would be tiny."""
    if borders is None:
        return 0, h, 0, w
    top, bottom, left, right = borders
    y0, y1 = int(round(top * h)), h - int(round(bottom * h))
    x0, x1 = int(round(left * w)), w - int(round(right * w))
    if y1 - y0 < 8 or x1 - x0 < 8:
        return 0, h, 0, w
    return y0, y1, x0, x1


def to_reference(gray: np.ndarray, short_side: int) -> np.ndarray:
    """One grey frame resized so its short side is ``short_side`` pixels."""
    h, w = gray.shape
    scale = short_side / min(h, w)
    if abs(scale - 1.0) < 1e-3:
        return gray
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def map_boxes(boxes, crop, frame_shape, full_shape, crop_shape) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) found on the whole frame at the reference scale (``full_shape``), moved to
    the reference-scale copy (``crop_shape``) of the picture inside the bars, ``crop`` = (y0, y1, x0,
    x1) in frame pixels (``frame_shape``). Boxes outside the picture (text in a bar) are dropped."""
    y0, y1, x0, x1 = crop
    # full reference -> frame pixels -> crop reference
    sy = frame_shape[0] / full_shape[0] * crop_shape[0] / (y1 - y0)
    sx = frame_shape[1] / full_shape[1] * crop_shape[1] / (x1 - x0)
    oy, ox = y0 * crop_shape[0] / (y1 - y0), x0 * crop_shape[1] / (x1 - x0)
    out = []
    for x, y, w, h in boxes:
        bx1, by1 = max(0, int(x * sx - ox)), max(0, int(y * sy - oy))
        bx2 = min(crop_shape[1], int(math.ceil((x + w) * sx - ox)))
        by2 = min(crop_shape[0], int(math.ceil((y + h) * sy - oy)))
        if bx2 > bx1 and by2 > by1:
            out.append((bx1, by1, bx2 - bx1, by2 - by1))
    return out


def laplacian_variance(gray: np.ndarray, exclude=()) -> float:
    """Variance of the 3x3 Laplacian, the classic focus measure, over the frame outside the
    ``exclude`` boxes (burned-in text: its crisp outlines would make any blurry picture look sharp)."""
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    if len(exclude):
        keep = ~_box_mask(exclude, gray.shape, margin=2)
        if keep.sum() >= 64:
            return float(lap[keep].var())
    return float(lap.var())


def _box_mask(boxes, shape, margin: int = 0) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[max(0, y - margin):y + h + margin, max(0, x - margin):x + w + margin] = True
    return mask


def text_boxes(gray: np.ndarray, edge: float, min_strokes: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) of burned-in text lines in one grey frame at the reference scale.

    Text is a horizontal band of many short vertical strokes: threshold |d/dx|, keep edge pixels
    that sit in dense stroke texture (many edge starts in a short window, which drops isolated
    object outlines), join strokes along the line by a horizontal closing, and keep components
    of line-like height and shape that cross many strokes relative to their width, e.g. a line of
    letters crosses >= 2 strokes per line-height of its width, and >= ``min_strokes`` in all (an eye
    or a mouth crosses fewer than 10).
    """
    h, w = gray.shape
    if h < 8 or w < 8:
        return []
    edges = (np.abs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3)) > edge).astype(np.uint8)
    starts = np.zeros_like(edges)
    starts[:, 1:] = edges[:, 1:] > edges[:, :-1]          # left edge of each stroke crossing
    win = max(5, int(round(h * _TEXT_STROKE_WIN)))
    density = cv2.boxFilter(starts, cv2.CV_16S, (win, 3), normalize=False)
    strokes = edges & (density >= _TEXT_MIN_STROKES_WIN).astype(np.uint8)
    k = max(3, int(round(h / 40)))
    lines = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1)))
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN,
                             cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, k // 2), 3)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    boxes = []
    for x, y, bw, bh, _area in stats[1:]:
        if not (_TEXT_MIN_H * h <= bh <= _TEXT_MAX_H * h) or bw < _TEXT_MIN_ASPECT * bh:
            continue
        # strokes crossed per row; the upper quartile skips rows of descenders or background
        crossings = np.percentile(starts[y:y + bh, x:x + bw].sum(axis=1), 75)
        if crossings >= min_strokes and crossings / (bw / bh) >= _TEXT_MIN_STROKES_PER_H:
            boxes.append((int(x), int(y), int(bw), int(bh)))
    return boxes


def box_coverage(boxes, shape) -> float:
    """Fraction of the frame covered by the union of ``boxes``."""
    return float(_box_mask(boxes, shape).mean()) if len(boxes) else 0.0


def colour_cast(images: np.ndarray) -> tuple[float, float | None]:
    """(distance of the mean chroma from neutral, its hue in degrees or None when neutral) in CIE Lab.

    OpenCV's 8-bit Lab stores a and b offset by 128 (unscaled), so the distance is in Lab units.
    Every other pixel is enough for a mean.
    """
    sub = np.ascontiguousarray(images[:, ::2, ::2])
    n, h, w = sub.shape[:3]
    lab = cv2.cvtColor(sub.reshape(n * h, w, 3), cv2.COLOR_RGB2Lab)
    a = float(lab[..., 1].mean()) - 128.0
    b = float(lab[..., 2].mean()) - 128.0
    cast = math.hypot(a, b)
    return cast, (math.degrees(math.atan2(b, a)) % 360.0 if cast > 1e-3 else None)


def frame_difference(ref: list[np.ndarray]) -> float | None:
    """Mean absolute luma difference of consecutive frames, on small copies (grain and compression
    noise average out); None with fewer than two frames."""
    if len(ref) < 2:
        return None
    small = np.stack([cv2.resize(g, (max(1, g.shape[1] // _DIFF_SCALE), max(1, g.shape[0] // _DIFF_SCALE)),
                                 interpolation=cv2.INTER_AREA) for g in ref]).astype(np.int16)
    return float(np.abs(np.diff(small, axis=0)).mean())


def flash_count(means: np.ndarray, times: np.ndarray, jump: float, window_s: float) -> int:
    """Brief flashes: the mean luma rises by >= ``jump`` from one sample to the next and falls back
    (to within half a jump of where it started) no later than ``window_s`` after the rise.
    A cut to a brighter scene rises but never falls back, so it is not a flash."""
    count, i = 0, 1
    while i < len(means):
        base = means[i - 1]
        if means[i] - base >= jump:
            j = i + 1
            while j < len(means) and times[j] - times[i] <= window_s + 1e-6:
                if means[j] <= base + jump / 2:
                    break
                j += 1
            if j < len(means) and times[j] - times[i] <= window_s + 1e-6:
                count += 1
                i = j
        i += 1
    return count
