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
3. Faces (operators.nets.face_finder) in each track's upper-body region at ``face_fps`` (every
   analysis frame at 25): MediaPipe's FaceLandmarker on the region; where it finds no face of the
   person, YuNet on the region and MediaPipe's face mesh on a crop zoomed on YuNet's face; where
   the mesh rejects that face too (profiles, which the mesh does not model), YuNet's box alone
   (``face_source`` 2, NaN measures) when its score reaches ``box_min_score``. Measures: face box,
   mouth opening, jawOpen, yaw/pitch/roll, the share of the face inside the frame. Frames between
   the analysed ones (``face_fps`` below 25) are interpolated (:func:`fill_faces`, ``face_source``
   3). When a face is found in two tracks' regions on one frame it goes to the track whose box
   centre is nearest to it. Hands (HandLandmarker) in the track's region at
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

Memory: frames at 25 fps, 960 px long side, are 1.5 MB each at 960x540 (39 MB per second of shot; a
one-shot hour would be ~140 GB). Shots of curation.operator.CHUNK_S (10 s) or more stream
(:meth:`People.stream`, :class:`ShotTracks`): the worker decodes them in chunks of at most 10 s,
detection runs per chunk (batched within it), ByteTrack as detections come, and a frame's per-track
work once detection is ``max_gap_s + min_track_s`` past it, so the step holds one chunk plus about
2 s of frames and per-frame numbers, whatever the shot's length. Shorter shots come whole, with
detection batched over all the shots of the worker's call. The rows do not depend on the chunking
(tests/test_chunked.py: identical on dj_video4 and vr_face1 with 1 s chunks).
"""
from __future__ import annotations

import bisect
import math

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames, crop_boxes
from curation.operator import Operator, OperatorError, Param, Resources
from curation.tracks import nearest
from operators.nets.face_detector import YUNET_FILE
from operators.nets.face_finder import FaceFinder
from operators.nets.face_landmarks import (FACE_FILE, HAND_CROP, HAND_FILE, HandLandmarks, person_region,
                                           upper_body_region)
from operators.nets.person_detector import detector_weights, load_person_detector
from operators.nets.tracking import make_tracker
from schemas import BOX, frame_list

ANALYSIS_FPS = 25.0      # per-frame lists: the conversation stage's rate (LR-ASD / SyncNet use 25 fps)
CHUNK = 64               # analysis frames cropped at once per track
STATIC_PAIR_S = 0.2      # frame pairs for the pixel-change measure are this far apart
STATIC_CROP = 64         # px, box contents resized to this for the pixel-change measure

_F32 = pa.float32()


class People(Operator):
    name = "people"
    summary = ("person boxes (YOLOX-nano ONNX / ultralytics YOLO), ByteTrack, faces (MediaPipe "
               "FaceLandmarker, then YuNet + MediaPipe's mesh for the faces it misses, docs/faces.md: "
               "mouth, jawOpen, head pose, visibility) at face_fps and hands, static flag, composition")
    version = "6"   # 3: ids VIDEO:SHOT:tK; 4: presentation timeline; 5: YuNet (face_source), face_fps;
    #                 6: YOLOX on rectangular inputs (boxes of non-square videos move by a few px)
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
        "det_batch": Param(2, help="frames per detector call (YOLOX-nano on a CPU: 1-2 frames cost the least "
                                   "per frame, 8 about 25 % more, the boxes identical; more on a GPU)"),
        "threads": Param(1, help="onnxruntime intra-op threads (0 = its default)"),
        "max_gap_s": Param(1.0, help="a track unseen for longer is cut in two"),
        "min_track_s": Param(1.0, help="shorter tracks are dropped"),
        "hands_fps": Param(2.0, help="hand landmark rate (frames per second)"),
        "yunet_faces": Param(True, help="frames the FaceLandmarker misses: YuNet, then the face mesh on a "
                                        "crop zoomed on its face (operators/nets/face_finder.py)"),
        "box_min_score": Param(0.6, help="YuNet score from which a face the mesh rejects (profile) is "
                                         "kept as a box alone (face_source 2); above 1: never"),
        "face_fps": Param(25.0, help="face landmark rate (frames per second, at most 25); frames in "
                                     "between are interpolated (face_source 3)"),
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
        pa.field("face_source", frame_list(pa.int8())),  # 0 none, 1 landmarks, 2 YuNet box only, 3 interpolated
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
        return ([detector_weights(self.p["backend"], self.p["weights"] or None), FACE_FILE, HAND_FILE]
                + ([YUNET_FILE] if self.p["yunet_faces"] else []))

    def setup(self) -> None:
        self.detector = load_person_detector(
            self.model_dir, self.p["backend"], self.p["weights"] or None, device=self.p["device"],
            conf=float(self.p["det_conf"]), batch_size=int(self.p["det_batch"]),
            threads=int(self.p["threads"]) or None)
        self.face_net = FaceFinder(self.model_dir, detector=bool(self.p["yunet_faces"]),
                                   box_min_score=float(self.p["box_min_score"]))
        self.hand_net = HandLandmarks(self.model_dir)

    def teardown(self) -> None:
        for net in (getattr(self, "face_net", None), getattr(self, "hand_net", None)):
            if net is not None:
                net.close()   # MediaPipe's graphs and their threads
        self.face_net = self.hand_net = None

    # ---- the worker's entry points ------------------------------------------------------------
    def process_rows(self, items: list[tuple[dict, dict, Frames]]) -> list:
        """Detection over the detection frames of all items in one batched call; the rest per item
        (each shot given to its :class:`ShotTracks` as one chunk)."""
        if not hasattr(self, "detector"):
            self.setup()
        shots = [ShotTracks(self, video, row, f.times) for video, row, f in items]
        images = [f.images[p] for (_, _, f), s in zip(items, shots) for p in s.det_pos]
        dets = self.detector.detect(images) if images else []
        out, at = [], 0
        for (video, row, frames), s in zip(items, shots):
            mine, at = dets[at:at + len(s.det_pos)], at + len(s.det_pos)
            try:
                s.add(frames, dets=mine)
                out.append(s.finish())
            except Exception as e:  # noqa: BLE001 - that shot's error
                out.append(e)
        return out

    def stream(self, video: dict, row: dict, times: np.ndarray) -> "ShotTracks":
        """A long shot chunk by chunk (curation.operator's contract): detection per chunk."""
        if not hasattr(self, "detector"):
            self.setup()
        return ShotTracks(self, video, row, times)

    def _row(self, video, row, k, tr, times, frame_size) -> dict:
        pos, boxes, f = tr["pos"], tr["boxes"], tr["face"]
        t = times[pos]
        has = np.isfinite(f[:, 0])      # a face box (landmarks, or YuNet's box alone)
        mesh = np.isfinite(f[:, 4])     # landmark measures (mouth, jaw, pose)
        mouth, jaw, yaw, pitch, roll, vis = (f[:, 4 + j] for j in range(6))
        static = _static(boxes, f, tr["pixel_change"])
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
            "face_source": face_source(f, tr["measured"]).tolist(),
            "hands": tr["hands"].tolist(),
            "num_frames": len(pos),
            "det_score_mean": tr["score"],
            "face_ratio": float(has.mean()),
            "face_size_px": _nan(np.median(np.maximum(f[has, 2] - f[has, 0], f[has, 3] - f[has, 1])) if has.any() else None),
            "face_visibility_mean": _nan(np.mean(vis[has]) if has.any() else None),
            "head_yaw_median": _nan(np.median(yaw[mesh]) if mesh.any() else None),
            "head_pitch_median": _nan(np.median(pitch[mesh]) if mesh.any() else None),
            "head_roll_median": _nan(np.median(roll[mesh]) if mesh.any() else None),
            "head_yaw_abs_p90": _nan(np.percentile(np.abs(yaw[mesh]), 90) if mesh.any() else None),
            "mouth_open_std": _nan(np.std(mouth[mesh]) if mesh.any() else None),
            "mouth_motion": _nan(np.nanmean(dm) if np.isfinite(dm).any() else None),
            "jaw_open_std": _nan(np.std(jaw[mesh]) if mesh.any() else None),
            "hands_ratio": float(np.mean(tr["hands"] > 0)),
            "first_frame_hands": bool(tr["hands"][0] > 0),
            "is_static": bool(is_static),
            "static_box_motion": _nan(static[0]), "static_pixel_change": _nan(static[1]),
            "static_face_motion": _nan(static[2]),
            **comp,
            "detector_backend": self.detector.backend, "face_backend": self.face_net.backend,
        }


class ShotTracks:
    """The tracks of one shot from its analysis frames given in consecutive chunks (``add``), rows
    from ``finish`` (:meth:`People.stream`; :meth:`People.process_rows` gives a shot as one chunk).

    Frames come at ``times`` (the shot's whole grid, known up front: the detection frames and the
    detection rate ByteTrack's lost-track buffer is counted in are those of the whole shot).
    Detection runs on each chunk's detection frames, ByteTrack (online) right after. The per-track
    work of a frame (interpolated box, face, hands, static crop) needs every track piece that covers
    it: a piece is cut when its track goes unseen for more than ``max_gap_s`` and kept when it lasts
    ``min_track_s``, so once detection is more than ``max_gap_s + min_track_s`` past a frame, the
    pieces covering it, their boxes there and whether they are kept are final (an open piece
    covering it already lasts min_track_s). Frames are done in order as detection passes that point
    (all at ``finish``) and then dropped: the sink holds about ``max_gap_s + min_track_s`` seconds
    of frames beyond the chunk, plus per-frame numbers. The rows are those of the whole shot at
    once (the same calls on the same pixels; tests/test_chunked.py compares them)."""

    def __init__(self, op: People, video: dict, row: dict, times: np.ndarray):
        p = op.p
        self.op, self.video, self.row = op, video, row
        self.times = np.asarray(times, np.float64)
        self.det_pos = sample_positions(self.times, float(p["detect_fps"]), keep_last=True)
        det_times = self.times[self.det_pos]
        rate = (len(det_times) - 1) / max(det_times[-1] - det_times[0], 1e-6) if len(det_times) > 1 else 1.0
        self.tracker = make_tracker(rate, high=float(p["track_thresh"]), new=float(p["track_thresh"]),
                                    low=float(p["det_conf"]), buffer_s=float(p["max_gap_s"]))
        self.max_gap, self.min_track = float(p["max_gap_s"]), float(p["min_track_s"])
        self.lag = self.max_gap + self.min_track + 1e-3
        self.hands_fps = float(p["hands_fps"])
        self.face_mask = np.zeros(len(self.times), bool)   # frames whose faces are measured
        self.face_mask[sample_positions(self.times, min(float(p["face_fps"]), ANALYSIS_FPS))] = True
        self.det_times: list[float] = []          # times of the detection frames tracked so far
        self.pieces: dict[int, list[dict]] = {}   # ByteTrack id -> its pieces (cut at gaps), in order
        self.at = 0                               # frames received
        self.done = 0                             # frames whose per-track work is done
        self.buf: list[tuple[int, np.ndarray]] = []   # (position, images) of frames not done
        self.shape = self.scale = self.frame_size = None

    # ---- chunks in ------------------------------------------------------------------------------
    def add(self, frames: Frames, dets: list[np.ndarray] | None = None) -> None:
        m = len(frames)
        if m == 0:
            return
        if not np.array_equal(frames.times, self.times[self.at:self.at + m]):
            raise OperatorError("people: frames do not follow the times given to stream()")
        if self.shape is None:
            self.shape, self.scale = frames.images.shape[1:3], frames.scale
            self.frame_size = (self.video.get("width") or int(round(frames.images.shape[2] / self.scale)),
                               self.video.get("height") or int(round(frames.images.shape[1] / self.scale)))
        self.buf.append((self.at, frames.images))
        lo, hi = np.searchsorted(self.det_pos, [self.at, self.at + m])
        mine = self.det_pos[lo:hi]
        if dets is None:
            dets = self.op.detector.detect([frames.images[q - self.at] for q in mine]) if len(mine) else []
        self.at += m
        for q, det in zip(mine, dets):
            self._track(int(q), det)
        if self.det_times:   # frames detection has passed by the lag are final
            self._settle(int(np.searchsorted(self.times, self.det_times[-1] - self.lag)))

    def finish(self) -> list[dict]:
        if self.at == 0:
            return []
        if self.at < len(self.times):   # a truncated stream: its last frame is a detection frame
            self.times = self.times[:self.at]
            if not self.det_times or self.det_times[-1] < self.times[-1]:
                self._track(self.at - 1, self.op.detector.detect([self._images(self.at - 1, self.at)[0]])[0])
        self._settle(self.at)
        tracks = []
        for pieces in self.pieces.values():
            for pc in pieces:
                if self._kept(pc):
                    n = pc["last"] - pc["first"] + 1
                    rows = np.asarray(pc["rows"], np.float32)
                    slots = np.asarray(pc["hand_t"])
                    t = self.times[pc["first"]:pc["last"] + 1]
                    measured = self.face_mask[pc["first"]:pc["last"] + 1]
                    tracks.append({"pos": np.arange(pc["first"], pc["last"] + 1), "measured": measured,
                                   "boxes": np.concatenate(pc["boxes"]),
                                   "face": fill_faces(np.concatenate(pc["face"]), t, measured),
                                   "score": float(rows[:, 5].mean()),
                                   "hands": np.asarray(pc["hand_counts"], np.int8)[nearest(slots, t, np.inf)],
                                   "pixel_change": float(np.percentile(np.asarray(pc["diffs"]), 90))
                                   if pc["diffs"] else math.nan})
                    assert len(tracks[-1]["boxes"]) == n
        tracks.sort(key=lambda tr: (tr["pos"][0], tr["boxes"][0, 0]))
        _assign_shared_faces(tracks)
        self.buf = []
        return [self.op._row(self.video, self.row, k, tr, self.times, self.frame_size)
                for k, tr in enumerate(tracks)]

    # ---- tracking ---------------------------------------------------------------------------------
    def _track(self, q: int, det: np.ndarray) -> None:
        """One detection frame (position ``q``) through ByteTrack, as operators.nets.tracking's
        track_boxes does it; its matches extend the tracks' pieces."""
        from ultralytics.engine.results import Boxes
        k = len(self.det_times)
        t = float(self.times[q])
        self.det_times.append(t)
        det = np.asarray(det, np.float32).reshape(-1, 5)
        data = np.concatenate([det, np.zeros((len(det), 1), np.float32)], 1)  # class 0 = person
        out = self.tracker.update(Boxes(data, tuple(self.shape)))
        for r in np.asarray(out).reshape(-1, 8):
            _x1, _y1, _x2, _y2, tid, score, _cls, idx = r
            row = np.asarray([k, *det[int(idx), :4], score], np.float32)
            pieces = self.pieces.setdefault(int(tid), [])
            if not pieces or t - pieces[-1]["t"][-1] > self.max_gap + 1e-6:   # split_at_gaps
                first = int(np.searchsorted(self.times, t - 1e-6))
                pieces.append({"rows": [], "t": [], "first": first, "next": first, "hand_slot": -1,
                               "static_slot": -1, "boxes": [], "face": [], "hand_t": [],
                               "hand_counts": [], "diffs": [], "grey": None})
            pc = pieces[-1]
            pc["rows"].append(row)
            pc["t"].append(t)
            pc["last"] = int(np.searchsorted(self.times, t + 1e-6)) - 1

    def _kept(self, pc: dict) -> bool:
        return pc["t"][-1] - pc["t"][0] + 1e-6 >= self.min_track

    # ---- per-track work on frames ------------------------------------------------------------------
    def _settle(self, upto: int) -> None:
        """Per-track work on frames done..upto-1 (final: see the class docstring), then drop them."""
        upto = min(upto, self.at)
        if upto <= self.done:
            return
        for pieces in self.pieces.values():
            for pc in pieces:
                a, b = max(pc["next"], self.done), min(upto, pc["last"] + 1)
                if b > a and self._kept(pc):
                    self._work(pc, a, b)
                    pc["next"] = b
        self.done = upto
        while self.buf and self.buf[0][0] + len(self.buf[0][1]) <= upto:
            self.buf.pop(0)
        if self.buf and self.buf[0][0] < upto:
            q, images = self.buf[0]
            rest = images[upto - q:]
            self.buf[0] = (upto, rest.copy() if 2 * len(rest) < len(images) else rest)

    def _images(self, a: int, b: int) -> np.ndarray:
        """Frames a..b-1 (not done yet): a view when they lie in one buffered chunk."""
        parts = []
        for q, images in self.buf:
            lo, hi = max(a, q), min(b, q + len(images))
            if hi > lo:
                parts.append(images[lo - q:hi - q])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _work(self, pc: dict, a: int, b: int) -> None:
        op, scale, times = self.op, self.scale, self.times
        t_f = times[a:b]
        # the box at each frame: linear between the piece's detections around it (np.interp uses
        # only the two around a frame, so the detections a..b need are enough)
        i0 = max(0, bisect.bisect_right(pc["t"], t_f[0]) - 1)
        i1 = bisect.bisect_left(pc["t"], t_f[-1]) + 1
        rows = np.asarray(pc["rows"][i0:i1], np.float32)
        t = np.asarray(pc["t"][i0:i1])
        boxes = np.stack([np.interp(t_f, t, rows[:, 1 + c]) for c in range(4)], 1) / scale
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, self.frame_size[0])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, self.frame_size[1])
        pc["boxes"].append(boxes)
        # faces, on the frames of face_fps (all at 25): operators.nets.face_finder
        face = np.full((b - a, 10), np.nan)   # box(4) mouth jaw yaw pitch roll visibility
        regions = upper_body_region(boxes)
        todo = np.flatnonzero(self.face_mask[a:b])
        for c in range(0, len(todo), CHUNK):
            s = todo[c:c + CHUNK]
            images = self._images(a + int(s[0]), a + int(s[-1]) + 1)
            step = int(s[1] - s[0]) if len(s) > 1 else 1
            # every step-th frame (face_fps 12.5: every other) as a view; else a copy of those taken
            images = images[::step] if np.all(np.diff(s) == step) else images[s - s[0]]
            for i, found in zip(s, op.face_net.find(images, scale, regions[s], boxes[s], self.frame_size)):
                if found is not None:
                    face[i] = [*found.box, found.mouth_open, found.jaw_open, found.yaw, found.pitch,
                               found.roll, found.visibility]
        pc["face"].append(face)
        t0 = times[pc["first"]]
        # hands at hands_fps: the first frame of each 1/hands_fps slot of the track (sample_positions)
        sel = _new_slots(np.floor((t_f - t0) * self.hands_fps + 1e-6).astype(int), pc, "hand_slot")
        if len(sel):
            regions = person_region(boxes[sel])
            for c in range(0, len(sel), CHUNK):
                s = sel[c:c + CHUNK]
                crops = crop_boxes(np.stack([self._images(a + i, a + i + 1)[0] for i in s]), regions[c:c + CHUNK],
                                   HAND_CROP, scale=scale)
                for crop, region, box in zip(crops, regions[c:c + CHUNK], boxes[s]):
                    centres = op.hand_net.hand_centres(crop, region)
                    g = 0.1 * np.array([box[0] - box[2], box[1] - box[3], box[2] - box[0], box[3] - box[1]])
                    gb = box + g
                    pc["hand_counts"].append(int(np.sum((centres[:, 0] >= gb[0]) & (centres[:, 0] <= gb[2])
                                                        & (centres[:, 1] >= gb[1]) & (centres[:, 1] <= gb[3]))))
            pc["hand_t"].extend(t_f[sel].tolist())
        # static: box contents every STATIC_PAIR_S, 64 px grey, mean absolute change per pair
        sel = _new_slots(np.floor((t_f - t0) * (1.0 / STATIC_PAIR_S) + 1e-6).astype(int), pc, "static_slot")
        if len(sel):
            crops = crop_boxes(np.stack([self._images(a + i, a + i + 1)[0] for i in sel]), boxes[sel],
                               STATIC_CROP, scale=scale)
            grey = crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            if pc["grey"] is not None:
                grey = np.concatenate([pc["grey"], grey])
            pc["diffs"].extend(np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2)))
            pc["grey"] = grey[-1:]


def _new_slots(slots: np.ndarray, pc: dict, key: str) -> np.ndarray:
    """Positions in ``slots`` (consecutive frames of a track) where a new slot starts, continuing
    from the track's last slot ``pc[key]`` (the first frame of each slot, as sample_positions)."""
    prev = np.concatenate([[pc[key]], slots[:-1]])
    if len(slots):
        pc[key] = int(slots[-1])
    return np.flatnonzero(slots != prev)


# ---- helpers (pure functions) -----------------------------------------------------------------------
def sample_positions(times: np.ndarray, fps: float, keep_last: bool = False) -> np.ndarray:
    """Positions of ``times`` that sample them at about ``fps`` (the first frame of each 1/fps slot),
    plus the last one when ``keep_last``."""
    times = np.asarray(times, np.float64)
    if len(times) == 0:
        return np.zeros(0, int)
    slots = np.floor((times - times[0]) * fps + 1e-3).astype(int)   # float32 times: 0.23999999 s
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


FACE_NONE, FACE_MESH, FACE_BOX, FACE_FILLED = 0, 1, 2, 3   # face_source codes


def face_source(face: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Per frame of a track: FACE_MESH (landmarks measured on it), FACE_BOX (YuNet's box alone: the
    mesh found no face, e.g. a profile; NaN measures), FACE_FILLED (not analysed at ``face_fps``:
    interpolated from the analysed frames around it) or FACE_NONE."""
    box, mesh = np.isfinite(face[:, 0]), np.isfinite(face[:, 4])
    out = np.where(box, np.where(mesh, FACE_MESH, FACE_BOX), FACE_NONE)
    return np.where(box & ~np.asarray(measured, bool), FACE_FILLED, out).astype(np.int8)


def fill_faces(face: np.ndarray, times: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """A track's (n, 10) face values with the frames not measured (``face_fps`` below 25) filled:
    linearly between the measured frames around them when both have a face, else the nearest
    measured frame's values (NaN when it has none; a missing neighbour at the track's ends counts as
    farthest). Measured frames are unchanged."""
    idx = np.flatnonzero(measured)
    if len(idx) == len(face) or not len(idx):
        return face
    out = face.copy()
    rest = np.flatnonzero(~measured)
    j = np.searchsorted(idx, rest)                       # next measured frame (len = none)
    prev, nxt = idx[np.maximum(j - 1, 0)], idx[np.minimum(j, len(idx) - 1)]
    has_prev, has_next = j > 0, j < len(idx)
    ok = np.isfinite(face[:, 0])
    both = has_prev & has_next & ok[prev] & ok[nxt]
    w = np.where(both, (times[rest] - times[prev]) / np.maximum(times[nxt] - times[prev], 1e-9), 0.0)
    out[rest[both]] = (1 - w[both, None]) * face[prev[both]] + w[both, None] * face[nxt[both]]
    d_prev = np.where(has_prev, np.abs(times[rest] - times[prev]), np.inf)
    d_next = np.where(has_next, np.abs(times[rest] - times[nxt]), np.inf)
    near = np.where(d_prev <= d_next, prev, nxt)
    out[rest[~both]] = face[near[~both]]
    return out


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


def _static(boxes: np.ndarray, face: np.ndarray, pixel_change: float) -> tuple[float, float, float]:
    """(box motion, pixel change, face motion) of a track; see the module docstring (the pixel change
    is measured as the frames go by: ShotTracks._work)."""
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    hm = float(np.median(h))

    def spread(x):
        return float(np.percentile(x, 95) - np.percentile(x, 5))
    box_motion = max(spread((boxes[:, 0] + boxes[:, 2]) / 2) / hm, spread((boxes[:, 1] + boxes[:, 3]) / 2) / hm,
                     spread(np.log(h)))
    has = np.isfinite(face[:, 4])    # frames with landmark measures
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
