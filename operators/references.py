"""references: identity-aware reference images of each tracked person (LPM 1.0 §2.4; SPEC item 14),
written as JPEG blobs to the ``references`` table.

One input row = one track (operators/people.py; its span is decoded once, at ``FPS`` = 4 frames per
second and the video's native size, our choice: enough candidates for every kind, at native pixels).
Tracks without a person clip (``clips.clip_kind = 'person'``, operators/person_clips.py) give nothing.
Per-frame signals come from the track frame nearest in time (tracks are at 25 fps; within ``MATCH_S``).
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
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames, crop_boxes
from curation.operator import Operator, Param, Resources
from operators.nets import emotieff, fer
from operators.nets.views import MIN_SOURCE_SIDE, choose_expressions, choose_global, choose_views
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


def nearest_index(track_times: np.ndarray, times: np.ndarray, match_s: float = MATCH_S) -> np.ndarray:
    """Index of the track frame nearest to each of ``times``; -1 when none within ``match_s``."""
    t = np.asarray(track_times, np.float64)
    times = np.asarray(times, np.float64)
    if len(t) == 0:
        return np.full(len(times), -1)
    j = np.clip(np.searchsorted(t, times), 0, len(t) - 1)
    prev = np.clip(j - 1, 0, len(t) - 1)
    j = np.where(np.abs(t[prev] - times) < np.abs(t[j] - times), prev, j)
    return np.where(np.abs(t[j] - times) <= match_s, j, -1)


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
        if not hasattr(self, "net"):
            self.setup()
        track_id = row["track_id"]
        clips = [c for c in (video.get("tables") or {}).get("clips", [])
                 if c.get("clip_kind") == "person" and c.get("track_id") == track_id]
        times = np.asarray(frames.times, np.float64)
        if not clips or len(times) == 0:
            return []
        src_w, src_h = int(video["width"]), int(video["height"])
        j = nearest_index(row.get("frame_times_s") or [], times)
        n_track = len(row.get("frame_times_s") or [])
        person = _take(_per_frame(row.get("person_boxes"), n_track, 4), j)
        face = _take(_per_frame(row.get("face_boxes"), n_track, 4), j)
        yaw = _take(facing_yaw(row, float(self.p["rear_min_s"])), j)
        valid = np.isfinite(person).all(axis=1)
        sharp = sharpness(frames.images, person, frames.scale)
        area = np.where(valid, (person[:, 2] - person[:, 0]) * (person[:, 3] - person[:, 1]), 0.0)
        quality = np.nan_to_num(sharp) * area

        base = {"video_id": video["video_id"], "track_id": track_id, "source_width": src_w,
                "source_height": src_h}
        out = []

        def emit(choice, clip_id, ref_id, box, expand, square=False, backend=None):
            i = choice.index
            img, region = cut(frames.images[i], box, frames.scale, float(expand), int(self.p["max_side"]),
                              square)
            out.append({**base, "ref_id": ref_id, "clip_id": clip_id, "kind": choice.kind,
                        "label": choice.label, "frame_s": float(times[i]), "score": choice.score,
                        "yaw_deg": None if not np.isfinite(yaw[i]) else float(yaw[i]),
                        "box": [float(v) for v in region], "image": jpeg(img, int(self.p["jpeg_quality"])),
                        "image_width": img.shape[1], "image_height": img.shape[0],
                        "label_backend": backend})

        has_face = np.isfinite(face).all(axis=1)
        # appearance references show the face when the track has one (not a face hidden by hands)
        valid_global = valid & has_face if (valid & has_face).any() else valid
        for clip in sorted(clips, key=lambda c: c["clip_id"]):
            for ch in choose_global(times, clip["start_s"], clip["end_s"], quality, valid_global,
                                    n_inside=int(self.p["n_inside"]), n_outside=int(self.p["n_outside"]),
                                    min_gap_s=float(self.p["min_gap_s"])):
                ms = int(round(times[ch.index] * 1000))
                emit(ch, clip["clip_id"], f"{clip['clip_id']}:global:{ch.label}:{ms}", person[ch.index],
                     self.p["person_expand"])
        for ch in choose_views(yaw, sharp, area, valid, max_views=int(self.p["max_views"]),
                               min_frames=int(self.p["min_view_frames"])):
            emit(ch, None, f"{track_id}:{ch.kind}", person[ch.index], self.p["person_expand"])
        if self.net is not None and min(src_w, src_h) >= MIN_SOURCE_SIDE:
            probs = np.full((len(times), len(self.classes)), np.nan)
            idx = np.flatnonzero(has_face)
            if len(idx):
                crops = self.crop(frames.images[idx], face[idx], scale=frames.scale)
                probs[idx] = self.predict(crops)
            face_sharp = sharpness(frames.images, face, frames.scale)
            for ch in choose_expressions(probs, self.classes, src_w, src_h, valid=has_face,
                                         sharpness=face_sharp, min_prob=float(self.p["min_expression_prob"]),
                                         max_expressions=int(self.p["max_expressions"])):
                emit(ch, None, f"{track_id}:expression:{ch.label}", face[ch.index], self.p["face_expand"],
                     square=True, backend=self.backend)
        return out
