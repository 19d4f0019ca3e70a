"""operators/references.py on real media, called directly with a ``video`` dict whose ``tables`` hold a
track made with MediaPipe's FaceLandmarker (face box, head yaw from its transformation matrix) and
person clips over parts of it, as people.py / person_clips.py would give.

On screen: dj_video4 (a woman in front talks to the camera, turned a little to her left most of the
time, while a woman behind her combs her hair; at ~16.3-17.1 s she hides her face in her hands),
vr_face1 (a man talking to the camera, facing it), lp_d3 (a woman grimacing: pout with lowered brows
at 2-4 s, mouth wide open with raised brows at ~10 s; 512 px, here also upscaled to 1080 px).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import frames_of, which_ffmpeg
from curation.tracks import nearest
from operators.references import FPS, MATCH_S, References, facing_yaw
from operators.nets.views import yaw_from_face_matrix


def landmark_track(images: np.ndarray, times: np.ndarray, scale: float, models, track_id: str,
                   size_factor: float = 1.0) -> dict:
    """One face followed over the frames (the largest face first, then the face nearest the last one):
    face box, head yaw and a person box (the face grown to the shoulders) in display px x size_factor."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(models / "mediapipe/face_landmarker.task")),
        num_faces=2, output_facial_transformation_matrixes=True)
    h, w = images.shape[1:3]
    faces, yaws, last = [], [], None
    with vision.FaceLandmarker.create_from_options(opts) as lm:
        for im in images:
            res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
            cands = []
            for pts, m in zip(res.face_landmarks, res.facial_transformation_matrixes):
                xy = np.array([[p.x * w, p.y * h] for p in pts])
                cands.append((np.r_[xy.min(0), xy.max(0)] / scale, float(yaw_from_face_matrix(np.array(m)))))
            if not cands:
                faces.append(None), yaws.append(None)
                continue
            centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
            pick = (max(cands, key=lambda c: c[0][2] - c[0][0]) if last is None
                    else min(cands, key=lambda c: np.linalg.norm(centre(c[0]) - centre(last))))
            last = pick[0]
            faces.append(pick[0]), yaws.append(pick[1])
    fb = np.array([f if f is not None else [np.nan] * 4 for f in faces]) * size_factor
    fw, fh = fb[:, 2] - fb[:, 0], fb[:, 3] - fb[:, 1]
    pb = np.stack([fb[:, 0] - fw, fb[:, 1] - 0.4 * fh, fb[:, 2] + fw, fb[:, 3] + 2.0 * fh], 1)
    # frames without a face keep the last person box (the person is still there)
    for i in range(1, len(pb)):
        if not np.isfinite(pb[i]).all():
            pb[i] = pb[i - 1]
    lst = lambda a: [None if not np.isfinite(r).all() else [float(v) for v in r] for r in a]  # noqa: E731
    return {"track_id": track_id, "start_s": float(times[0]), "end_s": float(times[-1]) + 1 / FPS,
            "frame_times_s": [float(t) for t in times], "person_boxes": lst(pb), "face_boxes": lst(fb),
            "head_yaw": [None if y is None else y for y in yaws],
            "face_visibility": [None if f is None else 1.0 for f in faces]}


def person_clip(track: dict, k: int, start_s: float, end_s: float) -> dict:
    return {"clip_id": f"{track['track_id']}:c{k}", "clip_kind": "person", "track_id": track["track_id"],
            "start_s": start_s, "end_s": end_s}


def decode(ref: dict) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(ref["image"], np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (ref["image_height"], ref["image_width"])
    return img


@pytest.fixture(scope="module")
def op(models):
    o = References(str(models))
    o.setup()
    return o


@pytest.fixture(scope="module")
def dj4(media, models, op):
    frames = frames_of(media / "dj_video4.mp4", fps=FPS, max_side=None)
    track = landmark_track(frames.images, frames.times, frames.scale, models, "dj4:0:0")
    clips = [person_clip(track, 0, 0.1, 10.1), person_clip(track, 1, 10.1, 20.1),
             {**person_clip(track, 9, 0.1, 10.1), "clip_kind": "shot", "track_id": None}]
    video = {"video_id": "dj4", "width": 480, "height": 360, "tables": {"clips": clips}}
    return track, op.process_row(video, track, frames)


def test_dj_video4_front_woman_frontal_and_left(dj4):
    track, refs = dj4
    yaw = np.array([np.nan if y is None else y for y in track["head_yaw"]], float)
    print("dj_video4 yaw 5/50/95 %:", np.nanpercentile(yaw, [5, 50, 95]).round(1))
    views = {r["kind"]: r for r in refs if r["kind"].startswith("view_")}
    assert set(views) == {"view_frontal", "view_left"}        # turned to her left, never away
    assert views["view_frontal"]["yaw_deg"] > -25 and views["view_left"]["yaw_deg"] < -25
    for r in views.values():
        assert r["clip_id"] is None and r["track_id"] == "dj4:0:0" and r["label"] == r["kind"][5:]
        img = decode(r)
        assert img.shape[0] >= 150 and img.shape[1] >= 150
    assert not any(r["kind"] == "expression" for r in refs)   # 480x360 source: below 1080p
    assert all(r["source_width"] == 480 and r["source_height"] == 360 for r in refs)
    assert len({r["ref_id"] for r in refs}) == len(refs)


def test_dj_video4_global_references_inside_and_outside(dj4):
    _, refs = dj4
    glob = [r for r in refs if r["kind"] == "global"]
    assert {r["clip_id"] for r in glob} == {"dj4:0:0:c0", "dj4:0:0:c1"}   # person clips only
    spans = {"dj4:0:0:c0": (0.1, 10.1), "dj4:0:0:c1": (10.1, 20.1)}
    for cid, (a, b) in spans.items():
        mine = [r for r in glob if r["clip_id"] == cid]
        outside = [r["frame_s"] for r in mine if r["label"] == "outside"]
        inside = [r["frame_s"] for r in mine if r["label"] == "inside"]
        assert len(outside) == 2 and len(inside) == 1
        assert all(t < a - 1.0 or t >= b + 1.0 for t in outside)
        assert all(a <= t < b for t in inside)
    # no appearance reference while she hides her face in her hands (~16.3-17.1 s)
    assert not any(16.3 <= r["frame_s"] <= 17.1 for r in glob)
    for r in glob:
        decode(r)


def test_vr_face1_views_and_no_global_from_the_clip_alone(media, models, op):
    frames = frames_of(media / "vr_face1.mp4", fps=FPS, max_side=None)
    track = landmark_track(frames.images, frames.times, frames.scale, models, "vr1:0:0")
    whole = person_clip(track, 0, 0.0, 6.2)        # the clip is the whole track: nothing outside
    video = {"video_id": "vr1", "width": 700, "height": 700, "tables": {"clips": [whole]}}
    refs = op.process_row(video, track, frames)
    assert [r["kind"] for r in refs] == ["view_frontal"]
    part = person_clip(track, 1, 0.0, 3.0)
    refs = op.process_row({**video, "tables": {"clips": [part]}}, track, frames)
    glob = [r for r in refs if r["kind"] == "global"]
    assert sorted(r["label"] for r in glob) == ["inside", "outside", "outside"]
    assert all(r["frame_s"] >= 4.0 for r in glob if r["label"] == "outside")
    # no person clip on this track: no references at all
    assert op.process_row({**video, "tables": {"clips": []}}, track, frames) == []


@pytest.fixture(scope="module")
def lp_d3_track(media, models):
    frames = frames_of(media / "lp_d3.mp4", 1.5, 10.6, fps=FPS, max_side=None)
    return frames, landmark_track(frames.images, frames.times, frames.scale, models, "lp3:0:0")


@pytest.mark.slow
def test_expressions_only_from_1080p_sources(lp_d3_track, media, models, op, tmp_path):
    frames, track = lp_d3_track
    clips = [person_clip(track, 0, 1.5, 4.5)]
    native = op.process_row({"video_id": "lp3", "width": 512, "height": 512, "tables": {"clips": clips}},
                            track, frames)
    assert native and not any(r["kind"] == "expression" for r in native)   # 512 px source
    big = tmp_path / "lp_d3_1080.mp4"
    subprocess.run([which_ffmpeg(), "-nostdin", "-v", "error", "-y", "-ss", "1.5", "-t", "9.1", "-i",
                    str(media / "lp_d3.mp4"), "-vf", "scale=1080:1080", "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-crf", "18", str(big)], check=True)
    frames_big = frames_of(big, fps=FPS, max_side=None)
    f = 1080 / 512
    shift = lambda v: None if v is None else [x * f for x in v]  # noqa: E731
    track_big = {**track, "frame_times_s": [t - 1.5 for t in track["frame_times_s"]],
                 "start_s": 0.0, "end_s": track["end_s"] - 1.5,
                 "face_boxes": [shift(b) for b in track["face_boxes"]],
                 "person_boxes": [shift(b) for b in track["person_boxes"]]}
    clips = [person_clip(track_big, 0, 0.0, 3.0)]
    refs = op.process_row({"video_id": "lp3big", "width": 1080, "height": 1080, "tables": {"clips": clips}},
                          track_big, frames_big)
    expr = [r for r in refs if r["kind"] == "expression"]
    labels = {r["label"] for r in expr}
    print("lp_d3 1080p expressions:", [(r["label"], round(r["frame_s"] + 1.5, 2), round(r["score"], 2))
                                       for r in expr])
    assert 2 <= len(expr) <= 8 and len(labels) == len(expr)      # one frame per distinct expression
    assert "surprise" in labels                                   # mouth wide open at ~10 s
    surprise = next(r for r in expr if r["label"] == "surprise")
    assert 9.5 <= surprise["frame_s"] + 1.5 <= 10.6
    for r in expr:
        img = decode(r)
        assert img.shape[0] == img.shape[1] >= 400                # square face crop at native pixels
        assert r["label_backend"] == "emotion_model.hdf5/onnxruntime" and r["clip_id"] is None


def test_facing_yaw_rear_only_for_long_runs_without_a_face():
    t = np.arange(0, 5, 0.04)
    faces = [[0, 0, 10, 10]] * len(t)
    for i in range(25, 50):          # 1 s without a face: unknown
        faces[i] = None
    for i in range(75, 125):         # 2 s without a face (to the end): back to the camera
        faces[i] = None
    track = {"frame_times_s": list(t), "face_boxes": faces, "head_yaw": [10.0] * len(t),
             "face_visibility": [None if f is None else 0.9 for f in faces]}
    yaw = facing_yaw(track, rear_min_s=2.0)
    assert np.all(yaw[:25] == 10.0) and np.isnan(yaw[25:50]).all() and np.all(yaw[75:] == 180.0)
    track["face_visibility"] = [0.3] * len(t)      # face mostly outside the frame: yaw not trusted
    assert np.isnan(facing_yaw(track, 2.0)[:25]).all()
    assert list(nearest([0.0, 0.04, 1.0], [0.01, 0.5, 0.97], MATCH_S)) == [0, -1, 2]


def test_workflows_load(monkeypatch):
    """workflows/references.yaml and emotion.yaml load: every column their steps read is written by
    an upstream step (the two operators are put in the registry here until operators/__init__.py
    registers them)."""
    import operators
    from curation.workflow import load
    from operators.emotion import Emotion
    for cls in (Emotion, References):
        if cls.name not in operators.REGISTRY:
            monkeypatch.setitem(operators.REGISTRY, cls.name, cls)
    for name, last in (("references", References), ("emotion", Emotion)):
        wf = load(Path(__file__).resolve().parents[2] / "workflows" / f"{name}.yaml")
        assert wf.steps[-1].op_cls is last
        assert [s.name for s in wf.steps][:5] == ["probe", "shots", "clips", "people", "person_clips"]


def test_expression_backends_declare_their_weights(tmp_path, models):
    from operators.nets import MissingWeights
    assert References(str(models)).weight_files() == ["emotion/emotion_model.hdf5"]
    assert References(str(models), expressions=False).weight_files() == []
    eff = References(str(models), expression_backend="emotiefflib")
    assert eff.weight_files() == ["emotiefflib/enet_b0_8_best_vgaf.onnx"]
    with pytest.raises(MissingWeights, match="emotiefflib/enet_b0_8_best_vgaf.onnx"):
        eff.setup()
    with pytest.raises(Exception, match="expression_backend"):
        References(str(models), expression_backend="other")
