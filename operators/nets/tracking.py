"""Person tracks within one shot: ByteTrack (Zhang et al., ECCV 2022) as ultralytics implements it
(``ultralytics.trackers.byte_tracker.BYTETracker``), run on our own detections.

``track_boxes(detections, frame_rate, ...)`` feeds the per-frame detections (the (K, 5)
``x1, y1, x2, y2, score`` arrays of operators.nets.person_detector) to a fresh tracker, one frame
at a time, and returns ``{track_id: (M, 6) float32}`` with rows ``frame_position, x1, y1, x2, y2,
score`` for the frames where the track was matched to a detection. Boxes are the *detections*
matched to the track (the tracker's ``idx`` column), not its Kalman prediction, so a returned box
is always something the detector saw; frames where the track was lost are absent.

Thresholds default to ultralytics' ``cfg/trackers/bytetrack.yaml`` (track_high_thresh 0.25,
track_low_thresh 0.1, new_track_thresh 0.25, match_thresh 0.8, fuse_score True);
``track_buffer`` (frames a lost track is kept for re-identification) is given in seconds and
converted at ``frame_rate`` (the yaml's 30 frames at 30 fps = 1 s).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np


def make_tracker(frame_rate: float, high: float = 0.25, low: float = 0.1, new: float = 0.25,
                 match: float = 0.8, buffer_s: float = 1.0, fuse_score: bool = True):
    os.environ["YOLO_AUTOINSTALL"] = "False"  # ultralytics would pip-install `lap` at run time
    from ultralytics.trackers.byte_tracker import BYTETracker

    args = SimpleNamespace(track_high_thresh=high, track_low_thresh=low, new_track_thresh=new,
                           match_thresh=match, track_buffer=max(1, int(round(buffer_s * frame_rate))),
                           fuse_score=fuse_score)
    return BYTETracker(args)


def track_boxes(detections: list[np.ndarray], image_shape: tuple[int, int], frame_rate: float,
                **thresholds) -> dict[int, np.ndarray]:
    """ByteTrack over consecutive frames' detections. ``image_shape`` is (height, width) of the
    images the boxes are in; ``frame_rate`` the rate of ``detections`` (frames per second)."""
    from ultralytics.engine.results import Boxes

    tracker = make_tracker(frame_rate, **thresholds)
    rows: dict[int, list[list[float]]] = {}
    for pos, det in enumerate(detections):
        det = np.asarray(det, np.float32).reshape(-1, 5)
        data = np.concatenate([det, np.zeros((len(det), 1), np.float32)], 1)  # class 0 = person
        out = tracker.update(Boxes(data, tuple(image_shape)))
        for r in np.asarray(out).reshape(-1, 8):
            x1, y1, x2, y2, tid, score, _cls, idx = r
            box = det[int(idx), :4]
            rows.setdefault(int(tid), []).append([pos, *box, score])
    return {tid: np.asarray(v, np.float32) for tid, v in rows.items()}
