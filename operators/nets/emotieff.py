"""EmotiEffLib facial emotion backend (Savchenko; the frame-level recognizer of LongCat §2.4 and LPM §2.4).

Uses the library's own ONNX engine (``emotiefflib.facial_analysis.EmotiEffLibRecognizerOnnx``,
emotiefflib 1.1.1): its preprocessing (RGB crop resized to 224 px, 260 px for B2 models, 112 px for
MobileFaceNet; ImageNet mean/std), its split of the classifier layer and its softmax.

Weights: ``MODEL_DIR/emotiefflib/<model_name>.onnx`` (the files of the EmotiEffLib repository's
``models/affectnet_emotions/onnx/``). The library itself looks for ``~/.emotiefflib/<name>.onnx`` and
downloads it from GitHub when absent; here its path lookup is replaced, while the recognizer is built,
by the file in the model directory, so nothing is downloaded or written to the home directory, and a
missing file raises :class:`operators.nets.MissingWeights` naming it.

Classes: 8-class models (names without ``_7``) give Anger, Contempt, Disgust, Fear, Happiness, Neutral,
Sadness, Surprise (AffectNet-8); ``_7`` models the same without Contempt. :meth:`EmotiEff.predict`
maps them to the FER2013 order of :mod:`operators.nets.fer` (angry, disgust, fear, happy, sad,
surprise, neutral) so both backends fill the same columns: each class goes to its namesake and
Contempt, which FER2013 lacks, is added to disgust (the nearest FER2013 class; the probabilities
still sum to 1). :meth:`EmotiEff.predict_raw` keeps the library's own classes, e.g. for the eight
expression categories of LPM §2.4's expression references.

Face crops: RGB, the face detector's box without margin (the library's examples crop MTCNN boxes
as they are); see :func:`face_crops`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from unittest import mock

import numpy as np

from operators.nets import weight_path
from operators.nets.fer import CLASSES as FER_CLASSES

WEIGHTS_DIR = "emotiefflib"
DEFAULT_MODEL = "enet_b0_8_best_vgaf"  # the library's default model name
CLASSES_8 = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
CLASSES_7 = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
TO_FER = {"Anger": "angry", "Contempt": "disgust", "Disgust": "disgust", "Fear": "fear",
          "Happiness": "happy", "Neutral": "neutral", "Sadness": "sad", "Surprise": "surprise"}

_build_lock = threading.Lock()  # the path lookup is patched module-wide while a recognizer is built


def weights_for(model_name: str = DEFAULT_MODEL) -> str:
    """The model file of ``model_name`` relative to the model directory."""
    return f"{WEIGHTS_DIR}/{model_name}.onnx"


def mapping_matrix(classes: tuple[str, ...]) -> np.ndarray:
    """(len(classes), 7) 0/1 matrix: library class probabilities @ M -> FER2013-order probabilities."""
    m = np.zeros((len(classes), len(FER_CLASSES)), np.float32)
    for i, c in enumerate(classes):
        m[i, FER_CLASSES.index(TO_FER[c])] = 1.0
    return m


class EmotiEff:
    """EmotiEffLib recognizer on face crops; ``predict(crops) -> (T, 7)`` in FER2013 order."""

    def __init__(self, model_dir: str | Path | None, model_name: str = DEFAULT_MODEL):
        self.path = weight_path(model_dir, weights_for(model_name))
        self.model_name = model_name
        from emotiefflib import facial_analysis
        with _build_lock, mock.patch.object(facial_analysis, "get_model_path_onnx",
                                            lambda name: str(self.path)):
            self.recognizer = facial_analysis.EmotiEffLibRecognizerOnnx(model_name)
        self.classes = CLASSES_7 if "_7" in model_name else CLASSES_8
        self.to_fer = mapping_matrix(self.classes)

    def predict_raw(self, crops) -> np.ndarray:
        """RGB face crops (list or (T, H, W, 3) uint8) -> (T, K) probabilities in :attr:`classes` order."""
        crops = [np.ascontiguousarray(c) for c in crops]
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32)
        _, scores = self.recognizer.predict_emotions(crops, logits=False)
        return np.asarray(scores, np.float32)[:, :len(self.classes)]  # MTL models: drop valence/arousal

    def predict(self, crops) -> np.ndarray:
        """RGB face crops -> (T, 7) probabilities in FER2013 order (Contempt added to disgust)."""
        return self.predict_raw(crops) @ self.to_fer


def face_crops(images: np.ndarray, boxes: np.ndarray, scale: float = 1.0, size: int = 224) -> np.ndarray:
    """EmotiEffLib crops of ``images`` (N, H, W, 3) RGB at face ``boxes`` (N, 4: x1, y1, x2, y2 in
    display pixels; NaN rows give blank crops): the box as it is, resized to ``size`` (224 px for
    the B0 models; the library resizes again to its model's size). Returns (N, size, size, 3)."""
    from curation.media import crop_boxes
    return crop_boxes(images, boxes, size, scale=scale, expand=1.0)
