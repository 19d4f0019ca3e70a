"""The face of one person on a frame: MediaPipe's FaceLandmarker, and for the frames it misses YuNet
and MediaPipe's mesh on a crop zoomed on the face YuNet finds (or YuNet's box alone).

Measured on the shared clips (docs/faces.md): size is not what the FaceLandmarker misses (faces of
20-40 px in a 362 x 640 frame were found on 0.98-0.99 of their frames); it misses profiles, faces
looking down and faces behind hands, which YuNet finds.

:class:`FaceFinder` per frame of a track (given its upper-body region and person box):

1. the FaceLandmarker on the upper-body crop resized to ``FACE_CROP`` (256) px; the person's face
   among those found: :func:`pick` (centre inside the person box horizontally and not below it,
   nearest the box's centre line);
2. where it finds none of the person's: YuNet (operators.nets.face_detector) on the upper-body crop
   resized to ``DETECT_CROP`` px, the person's face among YuNet's (:func:`pick`), and MediaPipe's
   mesh, blendshape and geometry graphs (operators.nets.face_mesh, without the FaceLandmarker's
   own detector) on a square crop ``zoom`` times that face's larger side, from the full decoded
   frame, resized to ``FACE_CROP`` px, its region rotated by YuNet's eyes (:func:`mesh_roi`);
3. where the mesh rejects that face too (its presence score is 0 on profiles), YuNet's box alone
   when its score reaches ``box_min_score``, with NaN measures (:func:`box_face`).

Every measure (mouth opening, jawOpen, head pose, visibility) comes from MediaPipe's mesh;
``counts`` says how many frames each step gave.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from curation.media import crop_boxes
from operators.nets.face_detector import FaceDetector
from operators.nets.face_landmarks import FACE_CROP, Face, FaceLandmarks
from operators.nets.face_mesh import FaceMesh

DETECT_CROP = 224    # px, side of the upper-body crop YuNet looks at
ZOOM = 2.0           # side of the mesh's crop over the face box's larger side
ROI_SCALE = 1.5      # side of the mesh's region over the face box's larger side (MediaPipe's 1.5)
# YuNet box -> the mesh's box (forehead to chin, ear to ear): measured on 374 faces of 9 shared clips
# where both were found: centre 0.046 of the height lower, width x 1.02, height x 0.895 (10-90 %:
# 0.02-0.07, 0.98-1.08, 0.85-0.97)
MESH_DY, MESH_W, MESH_H = 0.046, 1.02, 0.895


def pick(boxes: np.ndarray, person: np.ndarray) -> int | None:
    """Index of the face of the person in ``person`` among ``boxes`` (N, 4; display px): centre
    inside the person box horizontally and not below it, nearest the box's centre line; None when
    none qualifies."""
    best, best_d = None, math.inf
    w = max(person[2] - person[0], 1e-6)
    for i, b in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        if not (person[0] <= cx <= person[2]) or cy > person[3]:
            continue
        d = abs(cx - (person[0] + person[2]) / 2) / w
        if d < best_d:
            best, best_d = i, d
    return best


def mesh_roi(eyes: np.ndarray, zoom: float = ZOOM, scale: float = ROI_SCALE) -> tuple[float, float, float, float]:
    """The mesh's region in a crop made by :func:`zoom_box`: centred, ``scale / zoom`` of its side,
    rotated as MediaPipe rotates a detection's region (the eyes level: ``eyes`` = x, y of the eye on
    the image's left, then of the other)."""
    angle = -math.atan2(-(eyes[3] - eyes[1]), eyes[2] - eyes[0])
    angle = (angle + math.pi) % (2 * math.pi) - math.pi
    return 0.5, 0.5, scale / zoom, angle


def mesh_box(box: np.ndarray) -> np.ndarray:
    """A YuNet face box (display px) as the box the face mesh would have (see MESH_DY)."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + MESH_DY * h
    return np.array([cx - w * MESH_W / 2, cy - h * MESH_H / 2, cx + w * MESH_W / 2, cy + h * MESH_H / 2])


def box_face(box: np.ndarray, frame_size: tuple[int, int]) -> Face:
    """A face known by its box alone (the mesh found none): NaN measures; visibility = the share of
    the box inside the frame."""
    b = mesh_box(box)
    w, h = b[2] - b[0], b[3] - b[1]
    inside = (max(0.0, min(b[2], frame_size[0]) - max(b[0], 0.0))
              * max(0.0, min(b[3], frame_size[1]) - max(b[1], 0.0)))
    nan = float("nan")
    return Face(box=b.astype(np.float32), size_px=float(max(w, h)), mouth_open=nan, jaw_open=nan, yaw=nan,
                pitch=nan, roll=nan, visibility=float(inside / max(w * h, 1e-6)))


def zoom_box(face: np.ndarray, zoom: float = ZOOM) -> np.ndarray:
    """The square (display px) centred on ``face`` (x1, y1, x2, y2), ``zoom`` times its larger side."""
    side = max(face[2] - face[0], face[3] - face[1]) * zoom
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float64)


class FaceFinder:
    """The FaceLandmarker on the upper-body crop, then YuNet and the mesh on a zoomed crop for the
    frames it missed (see the module docstring); ``detector=False``: the first step alone (people.py
    before small faces)."""

    def __init__(self, model_dir: str | Path | None, zoom: float = ZOOM, min_score: float = 0.5,
                 box_min_score: float = 0.6, detector: bool = True):
        self.landmarks = FaceLandmarks(model_dir)
        self.detector = FaceDetector(model_dir, min_score=min_score) if detector else None
        self.mesh = FaceMesh(model_dir) if detector else None
        self.zoom = zoom
        self.box_min_score = box_min_score   # a YuNet face the mesh rejects is kept as a box from here
        self.backend = (f"{self.landmarks.backend}|{self.detector.backend}+{self.mesh.backend}" if detector
                        else self.landmarks.backend)
        self.counts = {"region": 0, "zoomed": 0, "box": 0, "none": 0}   # where each frame's face came from

    def close(self) -> None:
        """MediaPipe's graphs (the FaceLandmarker's and the mesh's) and their threads."""
        self.landmarks.close()
        if self.mesh is not None:
            self.mesh.close()

    def find(self, images: np.ndarray, scale: float, regions: np.ndarray, boxes: np.ndarray,
             frame_size: tuple[int, int]) -> list[Face | None]:
        """The person's face on each of ``images`` (N decoded frames, ``scale`` = image px per display
        px), given their upper-body ``regions`` and person ``boxes`` (N, 4; display px)."""
        out: list[Face | None] = [None] * len(images)
        for i, crop in enumerate(crop_boxes(images, regions, FACE_CROP, scale=scale)):
            faces = self.landmarks.faces(crop, regions[i], frame_size)
            j = pick(np.array([f.box for f in faces]).reshape(-1, 4), boxes[i])
            out[i] = None if j is None else faces[j]
        todo = [i for i in range(len(images)) if out[i] is None]
        self.counts["region"] += len(images) - len(todo)
        if todo and self.detector is not None:
            for i, face in zip(todo, self._zoomed(images[todo], scale, regions[todo], boxes[todo], frame_size)):
                out[i] = face
            self.counts["zoomed"] += sum(out[i] is not None and np.isfinite(out[i].mouth_open) for i in todo)
            self.counts["box"] += sum(out[i] is not None and not np.isfinite(out[i].mouth_open) for i in todo)
        self.counts["none"] += sum(f is None for f in out)
        return out

    def _zoomed(self, images, scale, regions, boxes, frame_size) -> list[Face | None]:
        """YuNet on the upper-body crops, the mesh on a crop zoomed on the person's face."""
        out: list[Face | None] = [None] * len(images)
        for i, (crop, region, box) in enumerate(zip(crop_boxes(images, regions, DETECT_CROP, scale=scale),
                                                    regions, boxes)):
            det = self.detector.detect(crop)
            disp = det[:, :4] * ((region[2] - region[0]) / DETECT_CROP) + np.tile(region[:2], 2)
            j = pick(disp, box)
            if j is not None:
                zoom = zoom_box(disp[j], self.zoom)
                face_crop = crop_boxes(images[i:i + 1], zoom[None], FACE_CROP, scale=scale)[0]
                out[i] = self.mesh.face(face_crop, mesh_roi(det[j, 5:9], self.zoom), zoom, frame_size)
                if out[i] is None and det[j, 4] >= self.box_min_score:
                    out[i] = box_face(disp[j], frame_size)
        return out
