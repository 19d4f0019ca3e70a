"""references: identity-aware reference images of each tracked person (LPM 1.0 §2.4; SPEC item 14),
written as JPEG blobs to the ``references`` table.

One input row = one track (operators/people.py; its span is decoded once, at ``FPS`` = 4 frames per
second and the video's native size, our choice: enough candidates for every kind, at native pixels).
Tracks without a person clip (``clips.clip_kind = 'person'``, operators/person_clips.py) give nothing.
Per-frame signals come from the track frame nearest in time (curation.tracks; tracks are at 25 fps;
within ``MATCH_S``).
The choice of frames is operators/nets/views.py's:

- ``global`` (per person clip, ``clip_id`` set): ``n_outside`` frames of the same track at least
  ``min_gap_s`` outside the clip and ``n_inside`` inside it, each set spread over time
  (:func:`choose_global`); none when the track has no frame outside the clip (never only frames of
  the clip itself, LPM §2.4). The person's identity is known only within a track (one shot), so
  "outside" means the rest of the track, not other shots.
- ``view_frontal | view_left | view_right | view_rear`` (per track, ``clip_id`` null: shared by the
  track's clips): 1-4 views by the facing angle (:func:`choose_views`, LPM's theta thresholds). The
  facing direction is the head yaw of the face mesh (people.py ``head_yaw``: > 0 = turned to the
  image right) where a face is seen with ``face_visibility`` >= 0.5. A frame without a face counts as
  a back view only inside a run of at least ``rear_min_s`` seconds without a face (our rule, checked on
  dj_video4: a woman hiding her face in her hands for 0.9 s, or one looking down while combing hair
  for 1.5 s, is not turned away); other frames are unknown.
- ``expression`` (per track, ``clip_id`` null): only for sources whose short side is >= 1080 px,
  one frame per facial expression class when the subject shows at least two (:func:`choose_expressions`);
  classes from ``expression_backend``: the FER2013 network (operators/nets/fer.py, 7 classes; works
  here) or EmotiEffLib (operators/nets/emotieff.py, its own 8 AffectNet classes, LPM §2.4's eight
  expression categories; weights ``emotiefflib/<model>.onnx``) on the face crops.

Global references use frames where the track has a face (when it has any: a face hidden by hands
is no appearance reference). Frame quality for the choices: sharpness (variance of the Laplacian of
the person crop resized to ``QUALITY_CROP`` px, grey) x person box area.

Images: global and view references are the person box grown by ``person_expand`` (aspect kept);
expression references the face box made square and grown by ``face_expand``; both cut from the
native frame with :func:`curation.media.crop_boxes` (black outside the frame), shrunk to at most
``max_side`` px (never enlarged), JPEG quality ``jpeg_quality``.

``ref_id``: ``<clip_id>:global:<inside|outside>:<ms>`` for global references,
``<track_id>:<kind>`` for views and ``<track_id>:expression:<class>`` for expressions.

Memory: a track spans up to its shot, at native size (6 MB per 1080p frame, 25 MB per second at
4 fps). Tracks of curation.operator.CHUNK_S (10 s) or more stream (:meth:`References.stream`,
:class:`TrackReferences`): per-frame numbers are computed chunk by chunk and only the crops of the
few frames that can still be chosen are kept; the choices run at the end over the whole track, so
the references are the same as from the whole span (tests/test_chunked.py).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames, crop_boxes
from curation.operator import Operator, OperatorError, Param, Resources
from curation.tracks import FRAME_TIMES, nearest
from operators.nets import emotieff, fer
from operators.nets.views import (MIN_SOURCE_SIDE, _centrality, _unit, choose_expressions, choose_global,
                                  choose_views, theta_from_yaw, view_class)
from schemas import BOX, blob_field

FPS = 4.0             # candidate frames per second of track (see module docstring)
MATCH_S = 0.1         # a frame uses the track frame nearest in time, at most this far away
QUALITY_CROP = 128    # px, person crop size for the sharpness measure
MIN_FACE_VIS = 0.5    # views.body_yaw's min_visibility: a face seen well enough to trust its yaw

REFERENCE_KINDS = ("global", "view_frontal", "view_left", "view_right", "view_rear", "expression")

# The base schema the ``references`` table needs in schemas.TABLES (key: ref_id); this operator
# writes all of it.
COLUMNS = [
    pa.field("ref_id", pa.string()),
    pa.field("video_id", pa.string()),
    pa.field("clip_id", pa.string()),          # global references: the clip; views/expressions: null
    pa.field("track_id", pa.string()),
    pa.field("kind", pa.string()),             # REFERENCE_KINDS
    pa.field("label", pa.string()),            # global: inside|outside; views: frontal|left|right|rear;
                                               # expression: its class
    pa.field("frame_s", pa.float64()),         # time of the frame in the video (s)
    pa.field("score", pa.float32()),           # the choice's score (views.Choice.score)
    pa.field("yaw_deg", pa.float32()),         # facing yaw used for the view (NaN: unknown)
    pa.field("box", BOX),                      # the cut region, display px (may leave the frame)
    blob_field("image"),                       # JPEG bytes
    pa.field("image_width", pa.int32()),
    pa.field("image_height", pa.int32()),
    pa.field("source_width", pa.int32()),      # the video's display size
    pa.field("source_height", pa.int32()),
    pa.field("label_backend", pa.string()),    # expression references: the network that labelled it
]


def _per_frame(values, n: int, width: int = 0) -> np.ndarray:
    """A track's per-frame list (None entries allowed) as floats: (n,) or (n, width), NaN for None."""
    shape = (n, width) if width else (n,)
    out = np.full(shape, np.nan)
    for i, v in enumerate((values or [])[:n]):
        if v is not None:
            out[i] = v
    return out


def _take(arr: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Rows ``j`` of ``arr`` (NaN where j = -1)."""
    out = np.full((len(j),) + arr.shape[1:], np.nan)
    out[j >= 0] = arr[j[j >= 0]]
    return out


def facing_yaw(track: dict, rear_min_s: float) -> np.ndarray:
    """(T,) facing yaw (deg) per track frame: head yaw where a face is seen (visibility >= 0.5),
    180 (back to the camera) inside runs of >= ``rear_min_s`` seconds without a face, NaN elsewhere."""
    t = np.asarray(track.get("frame_times_s") or [], np.float64)
    n = len(t)
    face = _per_frame(track.get("face_boxes"), n, 4)
    has_face = np.isfinite(face).all(axis=1)
    yaw = _per_frame(track.get("head_yaw"), n)
    vis = _per_frame(track.get("face_visibility"), n) if track.get("face_visibility") is not None \
        else np.where(has_face, 1.0, np.nan)
    out = np.where(has_face & (np.nan_to_num(vis) >= MIN_FACE_VIS), yaw, np.nan)
    i = 0
    while i < n:
        if has_face[i]:
            i += 1
            continue
        j = i
        while j < n and not has_face[j]:
            j += 1
        end = t[j] if j < n else t[-1] + (t[-1] - t[-2] if n > 1 else 0.04)
        if end - t[i] >= rear_min_s:
            out[i:j] = 180.0
        i = j
    return out


def sharpness(images: np.ndarray, boxes: np.ndarray, scale: float) -> np.ndarray:
    """(N,) variance of the Laplacian of each box's crop, grey, resized to QUALITY_CROP (NaN: no box)."""
    import cv2
    crops = crop_boxes(images, boxes, QUALITY_CROP, scale=scale)
    out = np.full(len(images), np.nan)
    for i, (c, b) in enumerate(zip(crops, boxes)):
        if np.isfinite(b).all():
            out[i] = cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
    return out


def cut(image: np.ndarray, box: np.ndarray, scale: float, expand: float, max_side: int,
        square: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The region of ``box`` (display px) grown by ``expand`` (made square first when ``square``) from
    one native frame, at most ``max_side`` px on its long side. Returns (crop, region in display px)."""
    b = np.asarray(box, np.float64)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    hw, hh = (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
    if square:
        hw = hh = max(hw, hh)
    hw, hh = hw * expand, hh * expand
    region = np.array([cx - hw, cy - hh, cx + hw, cy + hh])
    w_px, h_px = 2 * hw * scale, 2 * hh * scale
    shrink = min(1.0, max_side / max(w_px, h_px, 1.0))
    size = (max(2, int(round(w_px * shrink))), max(2, int(round(h_px * shrink))))
    return crop_boxes(image[None], region[None], size, scale=scale)[0], region


def jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class References(Operator):
    name = "references"
    summary = ("JPEG reference images per track: global (inside + outside each person clip), 1-4 "
               "views by head yaw, expressions from >= 1080p sources (LPM §2.4)")
    version = "1"
    input_table = "tracks"
    output_table = "references"
    reads = ("tracks.start_s", "tracks.end_s", "tracks.frame_times_s", "tracks.person_boxes",
             "tracks.face_boxes", "tracks.head_yaw", "tracks.face_visibility",
             "clips.clip_kind", "clips.track_id", "clips.start_s", "clips.end_s",
             "videos.width", "videos.height")
    frames = FrameSpec(fps=FPS, max_side=None)
    needs_model = True
    resources = Resources(num_cpus=1)
    params = {
        "n_outside": Param(2, type=int, help="global references from outside each clip"),
        "n_inside": Param(1, type=int, help="global references from inside each clip"),
        "min_gap_s": Param(1.0, help="outside frames are at least this far from the clip (s)"),
        "max_views": Param(4, type=int, choices=(1, 2, 3, 4), help="LPM §2.4: one to four views"),
        "min_view_frames": Param(3, type=int, help="candidate frames a view class needs"),
        "rear_min_s": Param(2.0, help="no face for this long counts as a back view (s)"),
        "expressions": Param(True, help="expression references (sources >= 1080p only)"),
        "expression_backend": Param("fer", choices=("fer", "emotiefflib"), help="expression classifier"),
        "model_name": Param(emotieff.DEFAULT_MODEL, type=str,
                            help="emotiefflib model under <models>/emotiefflib/ (without .onnx)"),
        "min_expression_prob": Param(0.5, help="a frame shows a class when its top probability >= this"),
        "max_expressions": Param(8, type=int, help="LPM §2.4: one to eight expressions"),
        "person_expand": Param(1.1, help="person box growth for global/view images"),
        "face_expand": Param(1.6, help="square face box growth for expression images"),
        "max_side": Param(1024, type=int, help="longest image side (px); larger crops are shrunk"),
        "jpeg_quality": Param(90, type=int, help="JPEG quality 1-100"),
    }
    writes = pa.schema(COLUMNS)

    def weight_files(self) -> list[str]:
        if not self.p["expressions"]:
            return []
        return [fer.WEIGHTS] if self.p["expression_backend"] == "fer" else \
            [emotieff.weights_for(self.p["model_name"])]

    def setup(self) -> None:
        self.net = None
        if self.p["expressions"] and self.p["expression_backend"] == "fer":
            self.net, self.classes, self.crop = fer.FER(self.model_dir), fer.CLASSES, fer.face_crops
            self.predict = self.net.predict
            self.backend = f"{fer.WEIGHTS.rsplit('/', 1)[-1]}/onnxruntime"
        elif self.p["expressions"]:
            eff = emotieff.EmotiEff(self.model_dir, self.p["model_name"])
            self.net, self.classes, self.crop = eff, eff.classes, emotieff.face_crops
            self.predict = eff.predict_raw   # the library's own 8 (or 7) classes
            self.backend = f"emotiefflib/{self.p['model_name']}.onnx/onnxruntime"

    def process_row(self, video: dict, row: dict, frames: Frames) -> list[dict]:
        refs = self.stream(video, row, frames.times)
        refs.add(frames)
        return refs.finish()

    def stream(self, video: dict, row: dict, times: np.ndarray) -> "TrackReferences":
        """A track chunk by chunk (curation.operator's contract); process_row is its one-chunk case."""
        if not hasattr(self, "net"):
            self.setup()
        return TrackReferences(self, video, row, times)


class _Best:
    """The frames of one choice that can still win its argmax while frames come in: the first one
    (all scores 0 or normalised to ones), the best key so far and those within a relative 1e-9 of
    it (the choice divides keys by maxima known only at the end, which can reorder keys that close,
    never keys further apart)."""

    def __init__(self):
        self.best, self.top, self.first = 0.0, [], None

    def offer(self, idx: np.ndarray, keys: np.ndarray) -> None:
        for i, k in zip(idx.tolist(), keys.tolist()):
            if self.first is None:
                self.first = i
            if k > self.best:
                self.best = k
                self.top = [(j, kj) for j, kj in self.top if kj >= k * (1 - 1e-9)] + [(i, k)]
            elif self.best > 0 and k >= self.best * (1 - 1e-9):
                self.top.append((i, k))

    def frames(self) -> set[int]:
        return {i for i, _ in self.top} | ({self.first} if self.first is not None else set())


class TrackReferences:
    """The references of one track from its frames given in consecutive chunks (``add``), rows from
    ``finish`` (:meth:`References.stream`; process_row gives the span as one chunk).

    Everything the choices use except the pixels is known up front from the track row and the
    frame ``times`` (boxes, facing yaw, validity, clips, view classes, the global choices' time
    bins). Per frame, as chunks come: sharpness of the person and face crops and the expression
    probabilities. The choices themselves (operators/nets/views.py) run at ``finish`` over the whole
    track's numbers, as on the whole span; the images they cut come from the few frames kept on the
    way: for each choice (a time bin of a clip's global references, a view class, an expression
    class) the frames that can still win it (:class:`_Best`), kept as the crops ``emit`` makes
    (person or face region, at most ``max_side`` px), so memory does not grow with the track."""

    def __init__(self, op: References, video: dict, row: dict, times: np.ndarray):
        self.op, self.video, self.row = op, video, row
        self.times = np.asarray(times, np.float64)
        self.track_id = row["track_id"]
        self.clips = sorted([c for c in (video.get("tables") or {}).get("clips", [])
                             if c.get("clip_kind") == "person" and c.get("track_id") == self.track_id],
                            key=lambda c: c["clip_id"])
        self.at = 0
        self.active = bool(self.clips) and len(self.times) > 0
        if not self.active:
            return
        p = op.p
        n = len(self.times)
        self.src = (int(video["width"]), int(video["height"]))
        j = nearest(row.get(FRAME_TIMES) or [], self.times, MATCH_S)
        n_track = len(row.get("frame_times_s") or [])
        self.person = _take(_per_frame(row.get("person_boxes"), n_track, 4), j)
        self.face = _take(_per_frame(row.get("face_boxes"), n_track, 4), j)
        self.yaw = _take(facing_yaw(row, float(p["rear_min_s"])), j)
        self.valid = np.isfinite(self.person).all(axis=1)
        self.area = np.where(self.valid, (self.person[:, 2] - self.person[:, 0])
                             * (self.person[:, 3] - self.person[:, 1]), 0.0)
        self.has_face = np.isfinite(self.face).all(axis=1)
        # appearance references show the face when the track has one (not a face hidden by hands)
        both = self.valid & self.has_face
        self.valid_global = both if both.any() else self.valid
        self.sharp = np.full(n, np.nan)
        self.expressions = op.net is not None and min(self.src) >= MIN_SOURCE_SIDE
        if self.expressions:
            self.probs = np.full((n, len(op.classes)), np.nan)
            self.face_sharp = np.full(n, np.nan)
        # the choices that need a person crop: per clip the global time bins, per class the views
        self.global_bins = []   # (mask, _Best)
        for clip in self.clips:
            for idx, k in _global_candidates(self.times, clip["start_s"], clip["end_s"], self.valid_global,
                                             int(p["n_inside"]), int(p["n_outside"]), float(p["min_gap_s"])):
                mask = np.zeros(n, bool)
                mask[idx] = True
                self.global_bins.append((mask, _Best()))
        labels, theta = view_class(self.yaw), theta_from_yaw(self.yaw)
        unit_area = _unit(self.area, n)
        self.views, self.fixed = [], set()
        for label in ("frontal", "left", "right", "rear"):
            idx = np.flatnonzero(self.valid & (labels == label))
            if len(idx) < max(int(p["min_view_frames"]), 1):
                continue
            weight = np.zeros(n)
            weight[idx] = unit_area[idx] * (0.5 + 0.5 * _centrality(theta[idx], label))
            mask = np.zeros(n, bool)
            mask[idx] = True
            self.views.append((mask, weight, _Best()))
            self.fixed.add(int(idx[np.argmax(weight[idx])]))   # the winner when no crop is sharp
        self.expr_best: dict[tuple[int, bool], _Best] = {}   # (class, weighted by face sharpness)
        self.person_cuts: dict[int, tuple] = {}
        self.face_cuts: dict[int, tuple] = {}

    def add(self, frames: Frames) -> None:
        m = len(frames)
        if not self.active or m == 0:
            self.at += m
            return
        a, b = self.at, self.at + m
        if not np.array_equal(frames.times, self.times[a:b]):
            raise OperatorError("references: frames do not follow the times given to stream()")
        op, self.scale = self.op, frames.scale
        pos = np.arange(a, b)
        self.sharp[a:b] = sharpness(frames.images, self.person[a:b], frames.scale)
        for mask, best in self.global_bins:
            here = np.flatnonzero(mask[a:b])
            best.offer(pos[here], np.nan_to_num(np.nan_to_num(self.sharp[a + here]) * self.area[a + here]).clip(min=0.0))
        s = np.nan_to_num(self.sharp[a:b]).clip(min=0.0)
        for mask, weight, best in self.views:
            here = np.flatnonzero(mask[a:b])
            best.offer(pos[here], s[here] * weight[a + here])
        if self.expressions:
            idx = np.flatnonzero(self.has_face[a:b])
            if len(idx):
                self.probs[a + idx] = op.predict(op.crop(frames.images[idx], self.face[a + idx], scale=frames.scale))
            self.face_sharp[a:b] = sharpness(frames.images, self.face[a:b], frames.scale)
            p = np.nan_to_num(self.probs[a:b])
            ok = self.has_face[a:b] & np.all(np.isfinite(self.probs[a:b]), axis=1)
            top, conf = p.argmax(axis=1), p.max(axis=1)
            fs = np.nan_to_num(self.face_sharp[a:b]).clip(min=0.0)
            for c in range(len(op.classes)):
                here = np.flatnonzero(ok & (top == c) & (conf >= float(op.p["min_expression_prob"])))
                if len(here):
                    self.expr_best.setdefault((c, True), _Best()).offer(pos[here], conf[here] * fs[here])
                    self.expr_best.setdefault((c, False), _Best()).offer(pos[here], conf[here])
        # keep the crops of the frames that can still be chosen, drop the others
        want_person = set(self.fixed).union(*(best.frames() for _, best in self.global_bins),
                                            *(best.frames() for _, _, best in self.views))
        want_face = set().union(*(best.frames() for best in self.expr_best.values()))
        side = int(op.p["max_side"])
        for i in sorted(want_person - set(self.person_cuts)):
            if a <= i < b:
                self.person_cuts[i] = cut(frames.images[i - a], self.person[i], frames.scale,
                                          float(op.p["person_expand"]), side)
        for i in sorted(want_face - set(self.face_cuts)):
            if a <= i < b:
                self.face_cuts[i] = cut(frames.images[i - a], self.face[i], frames.scale,
                                        float(op.p["face_expand"]), side, square=True)
        for i in set(self.person_cuts) - want_person:
            del self.person_cuts[i]
        for i in set(self.face_cuts) - want_face:
            del self.face_cuts[i]
        self.at = b

    def finish(self) -> list[dict]:
        if not self.active or self.at == 0:
            return []
        op, p = self.op, self.op.p
        n = self.at                     # all the frames, or those a truncated stream gave
        times, person, face, yaw = self.times[:n], self.person[:n], self.face[:n], self.yaw[:n]
        valid, has_face, sharp = self.valid[:n], self.has_face[:n], self.sharp[:n]
        quality = np.nan_to_num(sharp) * self.area[:n]
        base = {"video_id": self.video["video_id"], "track_id": self.track_id,
                "source_width": self.src[0], "source_height": self.src[1]}
        out = []

        def emit(choice, clip_id, ref_id, box, square=False, backend=None):
            i = choice.index
            kept = self.face_cuts if square else self.person_cuts
            if i not in kept:
                raise OperatorError(f"references: frame {i} was chosen but not kept (internal error)")
            img, region = kept[i]
            out.append({**base, "ref_id": ref_id, "clip_id": clip_id, "kind": choice.kind,
                        "label": choice.label, "frame_s": float(times[i]), "score": choice.score,
                        "yaw_deg": None if not np.isfinite(yaw[i]) else float(yaw[i]),
                        "box": [float(v) for v in region], "image": jpeg(img, int(p["jpeg_quality"])),
                        "image_width": img.shape[1], "image_height": img.shape[0],
                        "label_backend": backend})

        valid_global = self.valid_global[:n]
        for clip in self.clips:
            for ch in choose_global(times, clip["start_s"], clip["end_s"], quality, valid_global,
                                    n_inside=int(p["n_inside"]), n_outside=int(p["n_outside"]),
                                    min_gap_s=float(p["min_gap_s"])):
                ms = int(round(times[ch.index] * 1000))
                emit(ch, clip["clip_id"], f"{clip['clip_id']}:global:{ch.label}:{ms}", person[ch.index])
        for ch in choose_views(yaw, sharp, self.area[:n], valid, max_views=int(p["max_views"]),
                               min_frames=int(p["min_view_frames"])):
            emit(ch, None, f"{self.track_id}:{ch.kind}", person[ch.index])
        if self.expressions:
            for ch in choose_expressions(self.probs[:n], op.classes, *self.src, valid=has_face,
                                         sharpness=self.face_sharp[:n],
                                         min_prob=float(p["min_expression_prob"]),
                                         max_expressions=int(p["max_expressions"])):
                emit(ch, None, f"{self.track_id}:expression:{ch.label}", face[ch.index], square=True,
                     backend=op.backend)
        self.person_cuts, self.face_cuts = {}, {}
        return out


def _global_candidates(times: np.ndarray, start_s: float, end_s: float, valid: np.ndarray, n_inside: int,
                       n_outside: int, min_gap_s: float) -> list[tuple[np.ndarray, int]]:
    """The frames of each time bin choose_global (views._spread) takes its best from, for a clip:
    (frame indices, bin number) per non-empty bin, outside bins first."""
    t = np.asarray(times, np.float64)
    ok = valid & np.isfinite(t)
    inside = np.flatnonzero(ok & (t >= start_s) & (t < end_s))
    outside = np.flatnonzero(ok & ((t < start_s - min_gap_s) | (t >= end_s + min_gap_s)))
    out = []
    for idx, k in ((outside, n_outside), (inside, n_inside)):
        if k <= 0 or len(idx) == 0:
            continue
        edges = np.linspace(t[idx].min(), t[idx].max(), k + 1)
        for b in range(k):
            hi = t[idx] <= edges[b + 1] if b == k - 1 else t[idx] < edges[b + 1]
            mine = idx[(t[idx] >= edges[b]) & hi]
            if len(mine):
                out.append((mine, b))
    return out
