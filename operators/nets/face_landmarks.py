"""Faces and hands of one person: MediaPipe Tasks FaceLandmarker and HandLandmarker on crops.

Models (shared/models/README.md): ``mediapipe/face_landmarker.task`` (BlazeFace short-range
detector + 478-point face mesh + 52 ARKit-style blendshapes, Apache-2.0) and
``mediapipe/hand_landmarker.task`` (palm detector + 21-point hand landmarks). Both run in IMAGE mode
(every crop on its own: results do not depend on which frames were analysed before, so batching and
sampling never change them).

Crops: faces are looked for in the *upper-body region* of a person box (:func:`upper_body_region`:
a square as wide as the box, from its top edge, grown by 15 % each side), hands in the square
around the whole person box (:func:`person_region`). Crops come from the full-size decode through
``curation.media.crop_boxes`` and are resized to ``FACE_CROP`` / ``HAND_CROP`` pixels (the
landmark networks resize their region of interest to 192 / 224 px internally, so larger crops would
add nothing).

Measures of one face (:class:`Face`, all in display pixels of the video frame):

- ``box``: x1, y1, x2, y2 of the 478 landmarks (forehead to chin, ear to ear);
- ``size_px``: the larger side of ``box``;
- ``mouth_open``: inner-lip gap over face scale, both in 3-D landmark space (x, y in pixels, z in
  the same scale as x, as MediaPipe defines it): |P13 - P14| / |P33 - P263|, i.e. the distance
  between the upper and lower inner-lip midpoints over the distance between the outer eye corners.
  3-D distances make it nearly independent of head yaw; the eye-corner distance does not move
  when the jaw opens. About 0.0-0.05 with lips closed, 0.2-0.5 wide open;
- ``jaw_open``: the ``jawOpen`` blendshape score (0-1);
- ``yaw``, ``pitch``, ``roll``: degrees, from the facial transformation matrix R (canonical face ->
  camera; MediaPipe's face geometry: x to the image right, y up, z towards the camera),
  decomposed as R = Ry(yaw) Rx(pitch) Rz(roll): yaw = atan2(R02, R22), pitch = asin(-R12),
  roll = atan2(R10, R11). Sign conventions, as seen in the image (checked in
  tests/nets/test_people_nets.py by mirroring and rotating real frames):
  yaw > 0: the face turns towards the image's right (the person's left); 0 = facing the camera.
  pitch > 0: the face tilts down (chin towards the chest); pitch < 0: looking up.
  roll > 0: the head is rotated anticlockwise in the image (its top towards the image's left).
  Mirroring the image negates yaw and roll; rotating it by +15 degrees (anticlockwise) adds about
  +15 to roll.
- ``visibility``: the share of the 478 landmarks that fall inside the video frame (the mesh is
  predicted for the whole face even where it leaves the frame): 1.0 = the whole face is in the
  picture, 0.5 = half of it is cut off by the frame edge. Occlusion by hands or objects is not
  measured (the mesh is predicted under it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators.nets import weight_path

FACE_FILE = "mediapipe/face_landmarker.task"
HAND_FILE = "mediapipe/hand_landmarker.task"
FACE_CROP = 256     # px, side of the square crop given to FaceLandmarker
HAND_CROP = 256     # px, side of the square crop given to HandLandmarker
UPPER_LIP, LOWER_LIP = 13, 14          # MediaPipe face mesh: inner-lip midpoints
EYE_OUTER_R, EYE_OUTER_L = 33, 263     # outer eye corners (person's right, left)


@dataclass
class Face:
    box: np.ndarray          # (4,) display px
    size_px: float
    mouth_open: float
    jaw_open: float
    yaw: float
    pitch: float
    roll: float
    visibility: float


def upper_body_region(box: np.ndarray, grow: float = 0.15) -> np.ndarray:
    """(N, 4) square regions (display px) where the face of the person in ``box`` (N, 4) is:
    as wide as the box, starting at its top (clipped to the box height), grown by ``grow`` per side."""
    box = np.asarray(box, np.float64).reshape(-1, 4)
    w = box[:, 2] - box[:, 0]
    h = box[:, 3] - box[:, 1]
    side = np.minimum(w, h) * (1 + 2 * grow)
    cx = (box[:, 0] + box[:, 2]) / 2
    cy = box[:, 1] + np.minimum(w, h) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def person_region(box: np.ndarray, grow: float = 0.1) -> np.ndarray:
    """(N, 4) squares around the person boxes (side = the longer box side, grown by ``grow``)."""
    box = np.asarray(box, np.float64).reshape(-1, 4)
    side = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * (1 + 2 * grow)
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def euler_from_matrix(m: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the rotation part of a 4x4 facial transformation matrix."""
    r = np.asarray(m, np.float64)[:3, :3]
    yaw = math.degrees(math.atan2(r[0, 2], r[2, 2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -r[1, 2]))))
    roll = math.degrees(math.atan2(r[1, 0], r[1, 1]))
    return yaw, pitch, roll


def measure_face(points: np.ndarray, side: int, region: np.ndarray, frame_size: tuple[int, int],
                 jaw_open: float, matrix: np.ndarray) -> Face:
    """The measures of one face (see the module docstring) from its (478, 3) landmarks normalised to a
    square crop of ``side`` px showing ``region`` (display px), its jawOpen score and its facial
    transformation matrix."""
    p = np.asarray(points, np.float64) * side   # crop px (z in x scale)
    eye = np.linalg.norm(p[EYE_OUTER_R] - p[EYE_OUTER_L])
    lip = np.linalg.norm(p[UPPER_LIP] - p[LOWER_LIP])
    k = (region[2] - region[0]) / side          # display px per crop px
    xy = p[:, :2] * k + region[:2]
    box = np.array([*xy.min(0), *xy.max(0)], np.float32)
    inside = ((xy[:, 0] >= 0) & (xy[:, 0] < frame_size[0]) & (xy[:, 1] >= 0) & (xy[:, 1] < frame_size[1]))
    yaw, pitch, roll = euler_from_matrix(matrix)
    return Face(box=box, size_px=float(max(box[2] - box[0], box[3] - box[1])),
                mouth_open=float(lip / max(eye, 1e-6)), jaw_open=float(jaw_open), yaw=yaw, pitch=pitch,
                roll=roll, visibility=float(inside.mean()))


def _image(rgb: np.ndarray):
    import mediapipe as mp
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


class FaceLandmarks:
    """FaceLandmarker (up to ``num_faces`` per crop, blendshapes and transformation matrix on)."""

    def __init__(self, model_dir: str | Path | None, num_faces: int = 2, min_confidence: float = 0.5):
        from mediapipe.tasks import python as mpt
        from mediapipe.tasks.python import vision

        path = weight_path(model_dir, FACE_FILE)
        self.landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
            base_options=mpt.BaseOptions(model_asset_path=str(path)), running_mode=vision.RunningMode.IMAGE,
            num_faces=num_faces, min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence, output_face_blendshapes=True,
            output_facial_transformation_matrixes=True))
        self.backend = f"{path.name}/mediapipe-tasks"

    def faces(self, crop: np.ndarray, region: np.ndarray, frame_size: tuple[int, int]) -> list[Face]:
        """Faces in ``crop`` (RGB square image of ``region``, display px) as display-pixel measures;
        ``frame_size`` = (width, height) of the display frame (for ``visibility``)."""
        res = self.landmarker.detect(_image(crop))
        out = []
        for i, lms in enumerate(res.face_landmarks):
            p = np.array([[lm.x, lm.y, lm.z] for lm in lms], np.float64)
            jaw = next((c.score for c in res.face_blendshapes[i] if c.category_name == "jawOpen"), float("nan"))
            out.append(measure_face(p, crop.shape[1], region, frame_size, jaw,
                                    res.facial_transformation_matrixes[i]))
        return out

    def close(self) -> None:
        self.landmarker.close()


class HandLandmarks:
    """HandLandmarker: hands found in a crop, as their landmark centres in display px.

    Detection and presence confidence 0.6 (MediaPipe's default is 0.5): at 0.5 the chin of the
    vr_face1 man is taken for a hand on one frame in ten; at 0.6 it is not, and the singer's raised
    hands in fr_short_hamilton_clip are still found."""

    def __init__(self, model_dir: str | Path | None, num_hands: int = 4, min_confidence: float = 0.6):
        from mediapipe.tasks import python as mpt
        from mediapipe.tasks.python import vision

        path = weight_path(model_dir, HAND_FILE)
        self.landmarker = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
            base_options=mpt.BaseOptions(model_asset_path=str(path)), running_mode=vision.RunningMode.IMAGE,
            num_hands=num_hands, min_hand_detection_confidence=min_confidence,
            min_hand_presence_confidence=min_confidence))
        self.backend = f"{path.name}/mediapipe-tasks"

    def hand_centres(self, crop: np.ndarray, region: np.ndarray) -> np.ndarray:
        """(K, 2) display-pixel centres of the hands found in ``crop`` (RGB square image of ``region``)."""
        res = self.landmarker.detect(_image(crop))
        side = crop.shape[1]
        k = (region[2] - region[0]) / side
        return np.array([np.mean([[lm.x, lm.y] for lm in lms], 0) * side * k + region[:2]
                         for lms in res.hand_landmarks], np.float64).reshape(-1, 2)

    def close(self) -> None:
        self.landmarker.close()
