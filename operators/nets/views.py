"""Reference-frame choice for one subject (LPM 1.0 §2.4, identity-aware reference images).

Pure functions over per-frame arrays of one person track; they return chosen frame indices with a
kind and label (:class:`Choice`). No images, no store.

Facing angle. LPM measures theta, the angle between the camera's viewing direction and the body's
facing direction (GVHMR + SLAM): theta = 180 deg when the subject faces the camera, 0 deg when it
faces away. We estimate it from what the pipeline has, as a signed *yaw*: the facing direction's
rotation about the vertical axis, 0 = facing the camera, +-180 = facing away, positive = facing
towards image right. Then theta = 180 - |yaw| and the x-component of the facing direction (image
right positive) has the sign of yaw.

- Head yaw from MediaPipe's facial transformation matrix (:func:`yaw_from_face_matrix`): the face's
  forward axis (canonical model +z) in camera space; checked on lp_d3: positive when the nose sits to
  the image right of the cheeks' midpoint, and the sign flips on a mirrored frame.
- Shoulders (optional; MediaPipe pose world landmarks 11 = left, 12 = right shoulder, x to image
  right, z away from the camera): the facing direction is perpendicular to the left-minus-right
  shoulder vector s in the ground plane, yaw = atan2(s_z, s_x).
- Face visibility (0 = no face seen on the person, 1 = whole face): a tracked body whose face is not
  seen faces away (rear).

View classes (LPM §2.4 thresholds): frontal theta >= 155, rear theta <= 45, in between left profile
when the facing x-component is negative (the subject faces image left, so the camera sees its left
side) and right profile when positive.

Global appearance references (LPM §2.4): frames from inside AND outside the training clip, so the
model cannot copy pixels from its own clip; none are chosen when the source has no usable frame
outside the clip. LPM samples candidates at random; here the choice is deterministic (best quality
in equal time bins), which gives the same temporal spread and reproducible runs.

Expression references (LPM §2.4): only from sources whose native resolution is >= 1080p (short side
>= 1080 px), one frame for each of up to 8 expression classes, and only for subjects showing at least
two distinct expressions. LPM re-checks each frame's label with an image-understanding model; that
check belongs to the captioning stage, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FRONTAL_MIN_DEG = 155.0   # LPM §2.4: frontal theta >= 155 deg
REAR_MAX_DEG = 45.0       # LPM §2.4: rear theta <= 45 deg
VIEW_KINDS = ("view_frontal", "view_left", "view_right", "view_rear")
MAX_VIEWS = 4             # LPM §2.4: one to four viewpoints
MAX_EXPRESSIONS = 8       # LPM §2.4: one to eight expressive states
MIN_DISTINCT_EXPRESSIONS = 2  # LPM §2.4: at least two distinct expressions per subject
MIN_SOURCE_SIDE = 1080    # LPM §2.4: native resolution >= 1080p


@dataclass(frozen=True)
class Choice:
    index: int      # frame index into the per-frame arrays given
    kind: str       # global | view_frontal | view_left | view_right | view_rear | expression
    label: str      # global: inside/outside; views: frontal/left/right/rear; expression: its class
    score: float    # the selection score that chose it (higher is better)


# -- facing angle ---------------------------------------------------------------------------------
def yaw_from_face_matrix(matrix: np.ndarray) -> np.ndarray:
    """Head yaw (deg) from MediaPipe FaceLandmarker facial transformation matrices, (4, 4) or (T, 4, 4)
    (NaN matrices -> NaN). 0 = facing the camera, positive = facing towards image right."""
    m = np.asarray(matrix, np.float64)
    forward = m[..., :3, 2]  # rotation applied to the canonical face's forward axis (0, 0, 1)
    return np.degrees(np.arctan2(forward[..., 0], forward[..., 2]))


def yaw_from_shoulders(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Body yaw (deg) from left/right shoulder positions (..., 3) in MediaPipe world-landmark axes
    (x to image right, y down, z away from the camera). NaN where a shoulder is missing."""
    s = np.asarray(left, np.float64) - np.asarray(right, np.float64)
    return np.degrees(np.arctan2(s[..., 2], s[..., 0]))


def theta_from_yaw(yaw_deg: np.ndarray) -> np.ndarray:
    """LPM's theta (deg, 0-180) between camera and facing direction: 180 - |yaw| (yaw wrapped)."""
    y = (np.asarray(yaw_deg, np.float64) + 180.0) % 360.0 - 180.0
    return 180.0 - np.abs(y)


def body_yaw(head_yaw_deg: np.ndarray, face_visibility: np.ndarray, shoulders: np.ndarray | None = None,
             min_visibility: float = 0.5, rear_visibility: float = 0.1) -> np.ndarray:
    """Per-frame body yaw (deg; NaN = unknown) of a tracked person.

    ``head_yaw_deg`` (T,), NaN where no face landmarks; ``face_visibility`` (T,) in [0, 1];
    ``shoulders`` (T, 2, 3) left and right shoulder world landmarks, NaN where missing.

    - face seen (visibility >= ``min_visibility``): the shoulders' yaw when it is in the front
      hemisphere (|yaw| < 90, agreeing with a visible face), otherwise the head yaw;
    - face not seen (visibility < ``rear_visibility``): rear; the shoulders give the side when
      present (pose models often read a back view as a front view with left and right swapped,
      s -> -s, so a front-hemisphere shoulder yaw is turned by 180 deg), else yaw = 180;
    - in between (a partly visible face without a usable estimate): unknown (NaN)."""
    head = np.asarray(head_yaw_deg, np.float64)
    vis = np.nan_to_num(np.asarray(face_visibility, np.float64), nan=0.0)
    if head.shape != vis.shape:
        raise ValueError("head_yaw_deg and face_visibility must have the same shape")
    sh = np.full(head.shape, np.nan)
    if shoulders is not None:
        s = np.asarray(shoulders, np.float64)
        sh = yaw_from_shoulders(s[:, 0], s[:, 1])
    out = np.full(head.shape, np.nan)
    seen = vis >= min_visibility
    front_sh = np.isfinite(sh) & (np.abs(sh) < 90.0)
    out[seen & front_sh] = sh[seen & front_sh]
    use_head = seen & ~front_sh & np.isfinite(head)
    out[use_head] = head[use_head]
    away = vis < rear_visibility
    swapped = np.where(np.abs(sh) < 90.0, (sh + 360.0) % 360.0 - 180.0, sh)  # sh + 180, wrapped
    out[away & np.isfinite(sh)] = swapped[away & np.isfinite(sh)]
    out[away & ~np.isfinite(sh)] = 180.0
    return out


def view_class(yaw_deg: np.ndarray) -> np.ndarray:
    """(T,) view label per frame: "frontal", "rear", "left", "right", or "" when yaw is NaN."""
    yaw = np.asarray(yaw_deg, np.float64)
    theta = theta_from_yaw(yaw)
    wrapped = (yaw + 180.0) % 360.0 - 180.0
    out = np.full(yaw.shape, "", dtype=object)
    ok = np.isfinite(yaw)
    out[ok & (theta >= FRONTAL_MIN_DEG)] = "frontal"
    out[ok & (theta <= REAR_MAX_DEG)] = "rear"
    side = ok & (theta > REAR_MAX_DEG) & (theta < FRONTAL_MIN_DEG)
    out[side & (wrapped < 0)] = "left"
    out[side & (wrapped > 0)] = "right"
    return out


# -- selection ------------------------------------------------------------------------------------
def _unit(x: np.ndarray | None, n: int) -> np.ndarray:
    """Non-negative values scaled to [0, 1] by their maximum (None or all zero -> ones)."""
    if x is None:
        return np.ones(n)
    v = np.nan_to_num(np.asarray(x, np.float64), nan=0.0).clip(min=0.0)
    top = v.max() if v.size else 0.0
    return v / top if top > 0 else np.ones(n)


def _centrality(theta: np.ndarray, label: str) -> np.ndarray:
    """1 at the middle of the view class (frontal 180, rear 0, profiles 90), falling to 0 at its far edge."""
    centre, half = {"frontal": (180.0, 180.0 - FRONTAL_MIN_DEG), "rear": (0.0, REAR_MAX_DEG),
                    "left": (90.0, FRONTAL_MIN_DEG - 90.0), "right": (90.0, FRONTAL_MIN_DEG - 90.0)}[label]
    return np.clip(1.0 - np.abs(theta - centre) / half, 0.0, 1.0)


def choose_views(yaw_deg: np.ndarray, sharpness: np.ndarray | None = None, size: np.ndarray | None = None,
                 valid: np.ndarray | None = None, max_views: int = MAX_VIEWS,
                 min_frames: int = 3) -> list[Choice]:
    """Multi-view body references: at most one frame per view class, 1-``max_views`` of them.

    ``yaw_deg`` (T,) body yaw (:func:`body_yaw`); ``sharpness`` and ``size`` (T,) any non-negative
    scale (e.g. Laplacian variance, box height); ``valid`` (T,) bool mask of usable frames. A class
    needs ``min_frames`` frames (one stray estimate does not make a view; our choice, not LPM's).
    In each class the frame with the best sharpness x size x (0.5 + 0.5 x centrality in the class)
    wins. Order: frontal first, then the other classes by how many frames they have. Empty when
    no class has enough frames."""
    yaw = np.asarray(yaw_deg, np.float64)
    n = len(yaw)
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    labels = view_class(yaw)
    theta = theta_from_yaw(yaw)
    quality = _unit(sharpness, n) * _unit(size, n)
    found = []
    for label in ("frontal", "left", "right", "rear"):
        idx = np.flatnonzero(ok & (labels == label))
        if len(idx) < max(min_frames, 1):
            continue
        score = quality[idx] * (0.5 + 0.5 * _centrality(theta[idx], label))
        best = int(idx[np.argmax(score)])
        found.append((label != "frontal", -len(idx), Choice(best, f"view_{label}", label, float(score.max()))))
    found.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in found[:max(1, min(max_views, MAX_VIEWS))]]


def _spread(idx: np.ndarray, times: np.ndarray, quality: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` frames of ``idx``: the best quality in each of k equal time bins over their span."""
    if k <= 0 or len(idx) == 0:
        return []
    t = times[idx]
    edges = np.linspace(t.min(), t.max(), k + 1)
    picks = []
    for b in range(k):
        hi = t <= edges[b + 1] if b == k - 1 else t < edges[b + 1]
        inside = idx[(t >= edges[b]) & hi]
        if len(inside):
            picks.append(int(inside[np.argmax(quality[inside])]))
    return sorted(set(picks))


def choose_global(times: np.ndarray, clip_start_s: float, clip_end_s: float,
                  quality: np.ndarray | None = None, valid: np.ndarray | None = None,
                  n_inside: int = 1, n_outside: int = 2, min_gap_s: float = 1.0) -> list[Choice]:
    """Global appearance references for a clip [clip_start_s, clip_end_s) of a longer source.

    ``times`` (T,) frame times in the source (s); ``quality`` (T,) higher is better (e.g.
    sharpness x person size); ``valid`` (T,) frames where the subject is usable. Outside frames must
    be at least ``min_gap_s`` away from the clip (neighbouring frames look like the clip's own).
    Returns ``n_outside`` outside frames (label "outside") and ``n_inside`` inside frames ("inside"),
    each set spread over time; an empty list when no outside frame qualifies (never only from the
    clip itself)."""
    t = np.asarray(times, np.float64)
    n = len(t)
    ok = (np.ones(n, bool) if valid is None else np.asarray(valid, bool)) & np.isfinite(t)
    q = _unit(quality, n)
    inside = np.flatnonzero(ok & (t >= clip_start_s) & (t < clip_end_s))
    outside = np.flatnonzero(ok & ((t < clip_start_s - min_gap_s) | (t >= clip_end_s + min_gap_s)))
    picks_out = _spread(outside, t, q, n_outside)
    if not picks_out:
        return []
    picks_in = _spread(inside, t, q, n_inside)
    return ([Choice(i, "global", "outside", float(q[i])) for i in picks_out]
            + [Choice(i, "global", "inside", float(q[i])) for i in picks_in])


def choose_expressions(probs: np.ndarray, classes: Sequence[str], source_width: int, source_height: int,
                       valid: np.ndarray | None = None, sharpness: np.ndarray | None = None,
                       min_prob: float = 0.5, max_expressions: int = MAX_EXPRESSIONS,
                       min_distinct: int = MIN_DISTINCT_EXPRESSIONS, min_frames: int = 1,
                       min_side: int = MIN_SOURCE_SIDE) -> list[Choice]:
    """Facial expression references of one subject (LPM §2.4).

    ``probs`` (T, C) frame emotion probabilities with columns ``classes`` (NaN rows: no face);
    ``source_width/height``: the source video's native size. A class counts when it is the top
    class with probability >= ``min_prob`` on at least ``min_frames`` valid frames (our thresholds;
    LPM gives none). One frame per class: the highest probability (x sharpness when given). At most
    ``max_expressions`` classes, most confident first. Empty when the source is below ``min_side``
    on its short side or fewer than ``min_distinct`` classes count."""
    if min(int(source_width), int(source_height)) < min_side:
        return []
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs must be (T, {len(classes)}), got shape {p.shape}")
    n = len(p)
    ok = (np.ones(n, bool) if valid is None else np.asarray(valid, bool)) & np.all(np.isfinite(p), axis=1)
    if not ok.any():
        return []
    top = np.where(ok, np.nan_to_num(p).argmax(axis=1), -1)
    conf = np.nan_to_num(p).max(axis=1)
    weight = _unit(sharpness, n)
    found = []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(ok & (top == c) & (conf >= min_prob))
        if len(idx) < max(min_frames, 1):
            continue
        score = conf[idx] * weight[idx]
        best = int(idx[np.argmax(score)])
        found.append(Choice(best, "expression", name, float(conf[best])))
    if len(found) < min_distinct:
        return []
    found.sort(key=lambda ch: -ch.score)
    return found[:max(1, min(max_expressions, MAX_EXPRESSIONS))]
