"""people: person tracks of each shot, with their faces, head pose, hands and body composition
(SPEC items 3-4; LPM §2.2 "person detection and tracking", LongCat §2.2 human-centric structure
annotation, LongCat §4 first-frame hand-presence check).

Per shot (frames at the 25 fps analysis rate, long side at most 960 px):

1. Person boxes at ``detect_fps`` (default 10/s; the shot's last frame is always included) with
   operators.nets.person_detector (YOLOX-nano ONNX or ultralytics YOLO), all the detection frames
   of the rows in one worker call batched together.
2. ByteTrack (operators.nets.tracking) over the detection frames. A track is cut where it was not
   seen for more than ``max_gap_s``; pieces shorter than ``min_track_s`` are dropped (stable tracks
   only). Boxes are interpolated linearly to every analysis frame between a track's first and last
   detection.
3. Faces (operators.nets.face_landmarks, MediaPipe FaceLandmarker) in each track's upper-body
   region on every analysis frame: face box, mouth opening, jawOpen, yaw/pitch/roll, the share of
   the face inside the frame. When a face is found in two tracks' regions on one frame it goes to
   the track whose box centre is nearest to it. Hands (HandLandmarker) in the track's region at
   ``hands_fps`` (and on its first frame), counted when the hand's centre is inside the person box
   grown by 10 %; frames in between take the count of the nearest analysed frame.
4. Per track: ``is_static`` (posters, photos, statues, screens: see ``_static``), composition, and
   summary scalars for filtering.

Rows: one ``tracks`` row per stable track, ``track_id = "<video_id>:<shot_index>:<k>"`` (k = 0, 1 ...
by start time, then left to right). All per-frame lists are aligned with ``frame_times_s``: the
times (seconds from the video start) of the analysis frames the track covers, i.e. the video's own
frames thinned to at most 25 per second (a 25 fps video keeps every frame; a 30 fps one keeps 25 of
each 30, so the spacing is not exactly 0.04 s; a 15 fps one keeps all 15). Boxes are x1, y1, x2, y2
in display pixels (videos.width x height); a frame without a face has a NaN face box and NaN face
values.

Static (``_static``): a track is static when all three hold: its box hardly moves (``static_box_motion``:
the largest of the 5-95 % ranges of the box centre x, y over the median box height and of log box
height, below ``static_max_box_motion``), the picture inside its box hardly changes
(``static_pixel_change``: 90th percentile over pairs of frames 0.2 s apart of the mean absolute
luma difference (0-255) of the box contents resized to 64 x 64, below ``static_max_pixel_change``)
and its face, if any, does not move (``static_face_motion``: the largest standard deviation of
mouth_open (x10), jaw_open (x10) and yaw/pitch/roll (degrees / 10), below ``static_max_face_motion``).
Measured (tests/operators/test_people.py): a still photo beside a talking man, 3 s: box motion
0.002 / 0.006, pixel change 0.96 / 1.86, face motion 0.018 / 0.67; a looped still frame of
vr_face1: 0.001, 0.61, 0.036; real talking heads (vr_face1, pf_single_face, lp_d0): box motion
0.008-0.027, pixel change 2.7-3.6, face motion 0.74-0.90. The face measure separates best; the
pixel change alone is close for a person sitting still (1.86), hence the AND of all three.
Known limits: a screen showing a moving person is not static by this definition (it moves); nor is
a poster filmed by a panning or zooming camera (its box moves, although the pixel change, measured
inside the moving box, stays low: the stored numbers let a query catch it).

Composition (``_composition``): ``composition_heads`` = median over frames with a face of person
box height / face box height (how many face heights of the body are in the picture). Face-mesh box
heights are about 0.85 of a head; an adult is about 7.5 heads tall, shoulders-up about 2, waist-up
about 3.5-4. ``head`` below ``head_max_heads`` (2.8), ``full_body`` at ``full_body_min_heads`` (5.5) or
more when the box does not reach the frame's bottom edge (feet in the picture), else ``half_body``.
Without any face: ``full_body`` when the box is at least 1.8 times as tall as wide and clear of the
bottom edge, else ``unknown``.

Memory: the worker hands this step the whole shot decoded at 25 fps (960 px long side: 1.5 MB per
frame at 960x540, 39 MB per second of shot); the step itself works through a track's frames in
chunks of ``CHUNK`` frames.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames, crop_boxes
from curation.operator import Operator, Param, Resources
from operators.nets.face_landmarks import (FACE_CROP, FACE_FILE, HAND_CROP, HAND_FILE, FaceLandmarks,
                                           HandLandmarks, person_region, upper_body_region)
from operators.nets.person_detector import detector_weights, load_person_detector
from operators.nets.tracking import track_boxes
from schemas import BOX, frame_list

ANALYSIS_FPS = 25.0      # per-frame lists: the conversation stage's rate (LR-ASD / SyncNet use 25 fps)
CHUNK = 64               # analysis frames cropped at once per track
STATIC_PAIR_S = 0.2      # frame pairs for the pixel-change measure are this far apart
STATIC_CROP = 64         # px, box contents resized to this for the pixel-change measure

_F32 = pa.float32()


class People(Operator):
    name = "people"
    version = "3"   # 3: track ids VIDEO:SHOT:tK (apart from clip ids VIDEO:SHOT:CLIP)
    input_table = "shots"
    output_table = "tracks"
    reads = ("shots.start_s", "shots.end_s", "shots.shot_index", "videos.width", "videos.height")
    frames = FrameSpec(fps=ANALYSIS_FPS, max_side=960)
    needs_model = True
    resources = Resources(num_cpus=1)
    params = {
        "backend": Param("yolox", choices=("yolox", "ultralytics"), help="person detector"),
        "weights": Param("", type=str, help="detector weights under --models; empty = the backend's "
                                            "default (detector/yolox_nano_coco.onnx, yolo/yolov8n.pt)"),
        "device": Param("auto", type=str, help="ultralytics device: auto, cpu, cuda:0 ..."),
        "detect_fps": Param(10.0, help="person detection rate (frames per second)"),
        "det_conf": Param(0.1, help="lowest detector score kept (ByteTrack's low threshold)"),
        "track_thresh": Param(0.25, help="ByteTrack high / new-track score threshold"),
        "det_batch": Param(8, help="frames per detector call"),
        "threads": Param(1, help="onnxruntime intra-op threads (0 = its default)"),
        "max_gap_s": Param(1.0, help="a track unseen for longer is cut in two"),
        "min_track_s": Param(1.0, help="shorter tracks are dropped"),
        "hands_fps": Param(2.0, help="hand landmark rate (frames per second)"),
        "static_max_box_motion": Param(0.03, help="see module docstring"),
        "static_max_pixel_change": Param(1.5, help="luma levels 0-255"),
        "static_max_face_motion": Param(0.1, help="see module docstring"),
        "head_max_heads": Param(2.8, help="composition: head below this many face heights"),
        "full_body_min_heads": Param(5.5, help="composition: full body from this many face heights"),
    }
    writes = pa.schema([
        pa.field("track_id", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("shot_index", pa.int32()),
        pa.field("start_s", pa.float64()),              # first analysis frame's time
        pa.field("end_s", pa.float64()),                # last analysis frame's time + 1/25 s
        pa.field("frame_times_s", frame_list(pa.float64())),
        pa.field("person_boxes", frame_list(BOX)),      # display px; interpolated between detections
        pa.field("face_boxes", frame_list(BOX)),        # display px; NaN where no face
        pa.field("mouth_open", frame_list(_F32)),       # inner-lip gap / outer-eye-corner distance (3-D)
        pa.field("jaw_open", frame_list(_F32)),         # jawOpen blendshape 0-1
        pa.field("head_yaw", frame_list(_F32)),         # degrees, > 0 = face turned to the image right
        pa.field("head_pitch", frame_list(_F32)),       # degrees, > 0 = looking down
        pa.field("head_roll", frame_list(_F32)),        # degrees, > 0 = head rotated anticlockwise
        pa.field("face_visibility", frame_list(_F32)),  # share of the face mesh inside the frame
        pa.field("hands", frame_list(pa.int8())),       # hands of this person (nearest analysed frame)
        pa.field("num_frames", pa.int32()),
        pa.field("det_score_mean", _F32),               # mean detector score of the matched detections
        pa.field("face_ratio", _F32),                   # share of frames with a face
        pa.field("face_size_px", _F32),                 # median larger side of the face box, display px
        pa.field("face_visibility_mean", _F32),         # over frames with a face
        pa.field("head_yaw_median", _F32),
        pa.field("head_pitch_median", _F32),
        pa.field("head_roll_median", _F32),
        pa.field("head_yaw_abs_p90", _F32),
        pa.field("mouth_open_std", _F32),
        pa.field("mouth_motion", _F32),                 # mean |d mouth_open / dt| per second (talking > held smile)
        pa.field("jaw_open_std", _F32),
        pa.field("hands_ratio", _F32),                  # share of frames with at least one hand
        pa.field("first_frame_hands", pa.bool_()),      # LongCat §4: hands visible on the first frame
        pa.field("is_static", pa.bool_()),
        pa.field("static_box_motion", _F32),
        pa.field("static_pixel_change", _F32),
        pa.field("static_face_motion", _F32),
        pa.field("composition", pa.string()),           # head | half_body | full_body | unknown
        pa.field("composition_heads", _F32),            # person box height / face box height (median)
        pa.field("face_frame_frac", _F32),              # median face box height / frame height
        pa.field("person_frame_frac", _F32),            # median person box height / frame height
        pa.field("person_cut_bottom", pa.bool_()),      # the box reaches the frame's bottom edge
        pa.field("detector_backend", pa.string()),
        pa.field("face_backend", pa.string()),
    ])

    def weight_files(self) -> list[str]:
        return [detector_weights(self.p["backend"], self.p["weights"] or None), FACE_FILE, HAND_FILE]

    def setup(self) -> None:
        self.detector = load_person_detector(
            self.model_dir, self.p["backend"], self.p["weights"] or None, device=self.p["device"],
            conf=float(self.p["det_conf"]), batch_size=int(self.p["det_batch"]),
            threads=int(self.p["threads"]) or None)
        self.face_net = FaceLandmarks(self.model_dir)
        self.hand_net = HandLandmarks(self.model_dir)

    # ---- the worker's entry points ------------------------------------------------------------
    def process_row(self, video: dict, row: dict, frames: Frames) -> list[dict]:
        out = self.process_rows([(video, row, frames)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def process_rows(self, items: list[tuple[dict, dict, Frames]]) -> list:
        """Detection over the detection frames of all items in one batched call; the rest per item."""
        if not hasattr(self, "detector"):
            self.setup()
        positions = [sample_positions(f.times, float(self.p["detect_fps"]), keep_last=True) for _, _, f in items]
        images = [f.images[p] for (_, _, f), pos in zip(items, positions) for p in pos]
        dets = self.detector.detect(images) if images else []
        out, at = [], 0
        for (video, row, frames), pos in zip(items, positions):
            mine, at = dets[at:at + len(pos)], at + len(pos)
            try:
                out.append(self.tracks_of_shot(video, row, frames, pos, mine))
            except Exception as e:  # noqa: BLE001 - that shot's error
                out.append(e)
        return out

    # ---- one shot ------------------------------------------------------------------------------
    def tracks_of_shot(self, video: dict, row: dict, frames: Frames, det_pos: np.ndarray,
                       dets: list[np.ndarray]) -> list[dict]:
        times = np.asarray(frames.times, np.float64)
        if len(times) == 0:
            return []
        scale = frames.scale
        width = video.get("width") or int(round(frames.images.shape[2] / scale))
        height = video.get("height") or int(round(frames.images.shape[1] / scale))
        det_times = times[det_pos]
        rate = (len(det_pos) - 1) / max(det_times[-1] - det_times[0], 1e-6) if len(det_pos) > 1 else 1.0
        tracked = track_boxes(dets, frames.images.shape[1:3], rate, high=float(self.p["track_thresh"]),
                              new=float(self.p["track_thresh"]), low=float(self.p["det_conf"]),
                              buffer_s=float(self.p["max_gap_s"]))
        pieces = []
        for rows in tracked.values():
            for piece in split_at_gaps(rows, det_times, float(self.p["max_gap_s"])):
                t = det_times[piece[:, 0].astype(int)]
                if t[-1] - t[0] + 1e-6 >= float(self.p["min_track_s"]):
                    pieces.append(piece)
        tracks = []
        for piece in pieces:
            t = det_times[piece[:, 0].astype(int)]
            first = int(np.searchsorted(times, t[0] - 1e-6))
            last = int(np.searchsorted(times, t[-1] + 1e-6)) - 1
            pos = np.arange(first, last + 1)
            boxes = np.stack([np.interp(times[pos], t, piece[:, 1 + c]) for c in range(4)], 1) / scale
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
            tracks.append({"pos": pos, "boxes": boxes, "score": float(piece[:, 5].mean())})
        tracks.sort(key=lambda tr: (tr["pos"][0], tr["boxes"][0, 0]))
        for tr in tracks:
            self._faces(tr, frames, (width, height))
            self._hands(tr, frames, times)
        _assign_shared_faces(tracks)
        return [self._row(video, row, k, tr, frames, times, (width, height)) for k, tr in enumerate(tracks)]

    def _faces(self, tr: dict, frames: Frames, frame_size: tuple[int, int]) -> None:
        n = len(tr["pos"])
        tr["face"] = np.full((n, 10), np.nan)   # box(4) mouth jaw yaw pitch roll visibility
        regions = upper_body_region(tr["boxes"])
        for a in range(0, n, CHUNK):
            sl = slice(a, a + CHUNK)
            crops = crop_boxes(frames.images[tr["pos"][sl]], regions[sl], FACE_CROP, scale=frames.scale)
            for i, (crop, region, box) in enumerate(zip(crops, regions[sl], tr["boxes"][sl])):
                face = _pick_face(self.face_net.faces(crop, region, frame_size), box)
                if face is not None:
                    tr["face"][a + i] = [*face.box, face.mouth_open, face.jaw_open, face.yaw, face.pitch,
                                         face.roll, face.visibility]

    def _hands(self, tr: dict, frames: Frames, times: np.ndarray) -> None:
        pos = tr["pos"]
        sel = sample_positions(times[pos], float(self.p["hands_fps"]), keep_last=False)
        regions = person_region(tr["boxes"][sel])
        counts = np.zeros(len(sel), np.int8)
        for a in range(0, len(sel), CHUNK):
            sl = slice(a, a + CHUNK)
            crops = crop_boxes(frames.images[pos[sel[sl]]], regions[sl], HAND_CROP, scale=frames.scale)
            for i, (crop, region, box) in enumerate(zip(crops, regions[sl], tr["boxes"][sel[sl]])):
                c = self.hand_net.hand_centres(crop, region)
                g = 0.1 * np.array([box[0] - box[2], box[1] - box[3], box[2] - box[0], box[3] - box[1]])
                gb = box + g
                counts[a + i] = int(np.sum((c[:, 0] >= gb[0]) & (c[:, 0] <= gb[2]) & (c[:, 1] >= gb[1])
                                           & (c[:, 1] <= gb[3])))
        nearest = np.abs(times[pos][:, None] - times[pos][sel][None, :]).argmin(1)
        tr["hands"] = counts[nearest]

    def _row(self, video, row, k, tr, frames, times, frame_size) -> dict:
        pos, boxes, f = tr["pos"], tr["boxes"], tr["face"]
        t = times[pos]
        has = np.isfinite(f[:, 0])
        mouth, jaw, yaw, pitch, roll, vis = (f[:, 4 + j] for j in range(6))
        static = _static(boxes, f, frames, pos)
        is_static = (static[0] < float(self.p["static_max_box_motion"])
                     and static[1] < float(self.p["static_max_pixel_change"])
                     and not static[2] >= float(self.p["static_max_face_motion"]))  # NaN = no face
        comp = _composition(boxes, f, frame_size, float(self.p["head_max_heads"]),
                            float(self.p["full_body_min_heads"]))
        dt = np.diff(t)
        dm = np.abs(np.diff(mouth)) / np.maximum(dt, 1e-6)
        return {
            "track_id": f"{video['video_id']}:{row['shot_index']}:t{k}",
            "video_id": video["video_id"], "shot_index": row["shot_index"],
            "start_s": float(t[0]), "end_s": float(t[-1] + 1.0 / ANALYSIS_FPS),
            "frame_times_s": t.tolist(),
            "person_boxes": boxes.astype(np.float32).tolist(),
            "face_boxes": f[:, :4].astype(np.float32).tolist(),
            "mouth_open": mouth.astype(np.float32).tolist(), "jaw_open": jaw.astype(np.float32).tolist(),
            "head_yaw": yaw.astype(np.float32).tolist(), "head_pitch": pitch.astype(np.float32).tolist(),
            "head_roll": roll.astype(np.float32).tolist(), "face_visibility": vis.astype(np.float32).tolist(),
            "hands": tr["hands"].tolist(),
            "num_frames": len(pos),
            "det_score_mean": tr["score"],
            "face_ratio": float(has.mean()),
            "face_size_px": _nan(np.median(np.maximum(f[has, 2] - f[has, 0], f[has, 3] - f[has, 1])) if has.any() else None),
            "face_visibility_mean": _nan(np.mean(vis[has]) if has.any() else None),
            "head_yaw_median": _nan(np.median(yaw[has]) if has.any() else None),
            "head_pitch_median": _nan(np.median(pitch[has]) if has.any() else None),
            "head_roll_median": _nan(np.median(roll[has]) if has.any() else None),
            "head_yaw_abs_p90": _nan(np.percentile(np.abs(yaw[has]), 90) if has.any() else None),
            "mouth_open_std": _nan(np.std(mouth[has]) if has.any() else None),
            "mouth_motion": _nan(np.nanmean(dm) if np.isfinite(dm).any() else None),
            "jaw_open_std": _nan(np.std(jaw[has]) if has.any() else None),
            "hands_ratio": float(np.mean(tr["hands"] > 0)),
            "first_frame_hands": bool(tr["hands"][0] > 0),
            "is_static": bool(is_static),
            "static_box_motion": _nan(static[0]), "static_pixel_change": _nan(static[1]),
            "static_face_motion": _nan(static[2]),
            **comp,
            "detector_backend": self.detector.backend, "face_backend": self.face_net.backend,
        }


# ---- helpers (pure functions) -----------------------------------------------------------------------
def sample_positions(times: np.ndarray, fps: float, keep_last: bool = False) -> np.ndarray:
    """Positions of ``times`` that sample them at about ``fps`` (the first frame of each 1/fps slot),
    plus the last one when ``keep_last``."""
    times = np.asarray(times, np.float64)
    if len(times) == 0:
        return np.zeros(0, int)
    slots = np.floor((times - times[0]) * fps + 1e-6).astype(int)
    pos = np.unique(slots, return_index=True)[1]
    if keep_last and pos[-1] != len(times) - 1:
        pos = np.append(pos, len(times) - 1)
    return pos


def split_at_gaps(rows: np.ndarray, det_times: np.ndarray, max_gap_s: float) -> list[np.ndarray]:
    """Cut a track's (M, 6) rows (detection position first) where consecutive detections are more
    than ``max_gap_s`` apart."""
    t = det_times[rows[:, 0].astype(int)]
    cuts = np.nonzero(np.diff(t) > max_gap_s + 1e-6)[0] + 1
    return [p for p in np.split(rows, cuts) if len(p)]


def _nan(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _pick_face(faces, box: np.ndarray):
    """The face of the person in ``box``: centre inside the box horizontally and in its upper part,
    nearest the box's centre line; None when no face qualifies."""
    best, best_d = None, math.inf
    w = max(box[2] - box[0], 1e-6)
    for face in faces:
        cx = (face.box[0] + face.box[2]) / 2
        cy = (face.box[1] + face.box[3]) / 2
        if not (box[0] <= cx <= box[2]) or cy > box[3]:
            continue
        d = abs(cx - (box[0] + box[2]) / 2) / w
        if d < best_d:
            best, best_d = face, d
    return best


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _assign_shared_faces(tracks: list[dict]) -> None:
    """A face found in two tracks' regions on one frame (IoU > 0.5) stays with the track whose box
    centre is horizontally nearest the face (relative to box width); the other loses it."""
    for i, a in enumerate(tracks):
        for b in tracks[i + 1:]:
            common, ia, ib = np.intersect1d(a["pos"], b["pos"], return_indices=True)
            for p, x, y in zip(common, ia, ib):
                fa, fb = a["face"][x], b["face"][y]
                if not (np.isfinite(fa[0]) and np.isfinite(fb[0])) or _iou(fa[:4], fb[:4]) <= 0.5:
                    continue
                cx = (fa[0] + fa[2]) / 2

                def dist(box):
                    return abs(cx - (box[0] + box[2]) / 2) / max(box[2] - box[0], 1e-6)
                loser = b["face"][y] if dist(a["boxes"][x]) <= dist(b["boxes"][y]) else a["face"][x]
                loser[:] = np.nan


def _static(boxes: np.ndarray, face: np.ndarray, frames: Frames, pos: np.ndarray) -> tuple[float, float, float]:
    """(box motion, pixel change, face motion) of a track; see the module docstring."""
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    hm = float(np.median(h))

    def spread(x):
        return float(np.percentile(x, 95) - np.percentile(x, 5))
    box_motion = max(spread((boxes[:, 0] + boxes[:, 2]) / 2) / hm, spread((boxes[:, 1] + boxes[:, 3]) / 2) / hm,
                     spread(np.log(h)))
    times = frames.times[pos]
    sel = sample_positions(times, 1.0 / STATIC_PAIR_S)
    if len(sel) >= 2:
        crops = crop_boxes(frames.images[pos[sel]], boxes[sel], STATIC_CROP, scale=frames.scale)
        grey = crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixel_change = float(np.percentile(np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2)), 90))
    else:
        pixel_change = math.nan
    has = np.isfinite(face[:, 0])
    if has.sum() >= 2:
        f = face[has]
        face_motion = max(10 * np.std(f[:, 4]), 10 * np.std(f[:, 5]), *(np.std(f[:, 6 + j]) / 10 for j in range(3)))
    else:
        face_motion = math.nan
    return box_motion, pixel_change, float(face_motion)


def _composition(boxes: np.ndarray, face: np.ndarray, frame_size: tuple[int, int], head_max: float,
                 full_min: float) -> dict:
    W, H = frame_size
    ph = boxes[:, 3] - boxes[:, 1]
    pw = boxes[:, 2] - boxes[:, 0]
    cut_bottom = bool(np.median(boxes[:, 3]) >= 0.98 * H)
    has = np.isfinite(face[:, 0])
    out = {"person_frame_frac": float(np.median(ph) / H), "person_cut_bottom": cut_bottom,
           "composition_heads": None, "face_frame_frac": None}
    if has.any():
        fh = face[has, 3] - face[has, 1]
        heads = float(np.median(ph[has] / np.maximum(fh, 1e-6)))
        out["composition_heads"] = heads
        out["face_frame_frac"] = float(np.median(fh) / H)
        if heads < head_max:
            out["composition"] = "head"
        elif heads >= full_min and not cut_bottom:
            out["composition"] = "full_body"
        else:
            out["composition"] = "half_body"
    else:
        tall = float(np.median(ph / np.maximum(pw, 1e-6))) >= 1.8
        out["composition"] = "full_body" if tall and not cut_bottom else "unknown"
    return out
