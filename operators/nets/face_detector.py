"""Face boxes with YuNet (``detector/yunet_face.onnx``, shared/models/README.md), through OpenCV's
``cv2.FaceDetectorYN`` (OpenCV 5 here; the model takes any input size).

YuNet finds faces from about 10 px (at its input) to the whole image, frontal to profile, where the
FaceLandmarker finds none (profiles, faces looking down, hands over the face).
operators.nets.face_finder uses it on a person's upper-body crop for the frames the FaceLandmarker
missed, then MediaPipe's mesh on a crop zoomed on that face (operators.nets.face_mesh).

``detect(rgb)`` -> (N, 9) float32 rows x1, y1, x2, y2, score, then the centres of the eyes (x, y
of the one on the image's left, then the other) in the image's pixels, best first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from operators.nets import weight_path

YUNET_FILE = "detector/yunet_face.onnx"


class FaceDetector:
    """YuNet; ``min_score``: lowest face score kept (OpenCV's sample uses 0.9 for whole photos; in a
    person's own upper-body crop a lower one finds small and turned faces, and the landmarks that
    follow reject what is not a face), ``nms``: IoU of YuNet's non-maximum suppression."""

    def __init__(self, model_dir: str | Path | None, min_score: float = 0.5, nms: float = 0.3,
                 top_k: int = 20):
        import cv2
        self.path = weight_path(model_dir, YUNET_FILE)
        self.net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), min_score, nms, top_k)
        self.size = (320, 320)
        self.backend = f"{self.path.name}/opencv-{cv2.__version__}"

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if (w, h) != self.size:
            self.net.setInputSize((w, h))
            self.size = (w, h)
        _, faces = self.net.detect(np.ascontiguousarray(rgb[..., ::-1]))   # YuNet takes BGR
        if faces is None or not len(faces):
            return np.zeros((0, 9), np.float32)
        f = np.asarray(faces, np.float32)   # x, y, w, h, 5 points (eyes, nose, mouth corners), score
        out = np.concatenate([f[:, :2], f[:, :2] + f[:, 2:4], f[:, 14:15], f[:, 4:8]], 1)
        return out[np.argsort(-out[:, 4])]
