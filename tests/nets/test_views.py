"""Reference-frame choice (LPM §2.4): facing angle, view classes, multi-view, global and expression
references. Hand-made arrays with known answers, and head yaw from MediaPipe's FaceLandmarker on real
clips: vr_face1 (a man facing the camera), dj_video4 (the woman in the green shirt in front faces the
camera, head turned a little to image left, from ~3 to ~10 s, and turns her head further to image
left, a three-quarter view, from ~11 s to the end).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import frames_of
from operators.nets.views import (Choice, body_yaw, choose_expressions, choose_global, choose_views,
                                  theta_from_yaw, view_class, yaw_from_face_matrix, yaw_from_shoulders)


def rot_y(deg: float) -> np.ndarray:
    """A 4x4 transform turning the canonical face (forward +z) by ``deg`` about the vertical axis."""
    a = np.radians(deg)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    return m


# -- angles and classes ----------------------------------------------------------------------------
def test_yaw_from_face_matrix_and_theta():
    for deg in (0.0, 30.0, -60.0, 170.0):
        assert yaw_from_face_matrix(rot_y(deg)) == pytest.approx(deg)
    yaws = yaw_from_face_matrix(np.stack([rot_y(10), rot_y(-100)]))
    assert yaws == pytest.approx([10, -100])
    assert theta_from_yaw([0, 25, -25, 90, -135, 180, 200]) == pytest.approx([180, 155, 155, 90, 45, 0, 20])


def test_view_class_thresholds():
    yaw = np.array([0, 25, -25, 25.5, -25.5, 90, -90, 134.5, -134.5, 135, -135, 180, np.nan])
    assert list(view_class(yaw)) == ["frontal", "frontal", "frontal", "right", "left", "right", "left",
                                     "right", "left", "rear", "rear", "rear", ""]
    # a slow turn from facing the camera to facing away, towards image left
    sweep = -np.arange(0, 181, 10.0)
    labels = view_class(sweep)
    assert set(labels[:3]) == {"frontal"}              # 0-20 deg: theta >= 155
    assert set(labels[3:14]) == {"left"}               # 30-130 deg
    assert set(labels[14:]) == {"rear"}                # 140-180 deg: theta <= 45


def test_yaw_from_shoulders():
    left, right = np.array([0.2, 0, 0]), np.array([-0.2, 0, 0])    # left shoulder at image right
    assert yaw_from_shoulders(left, right) == pytest.approx(0)        # facing the camera
    assert abs(yaw_from_shoulders(right, left)) == pytest.approx(180)  # back to the camera
    # turned to face image left: the left shoulder comes towards the camera (smaller z)
    assert yaw_from_shoulders(np.array([0, 0, -0.2]), np.array([0, 0, 0.2])) == pytest.approx(-90)
    assert view_class(yaw_from_shoulders(np.array([0.1, 0, -0.17]), np.array([-0.1, 0, 0.17])))[()] == "left"


def test_body_yaw_combines_face_and_shoulders():
    nan3 = [np.nan] * 3
    head = np.array([10.0, 40.0, np.nan, np.nan, np.nan, 20.0])
    vis = np.array([1.0, 1.0, 0.0, 0.0, 0.3, 0.8])
    shoulders = np.array([
        [[0.2, 0, 0.02], [-0.2, 0, -0.02]],   # front-facing shoulders, face seen: shoulders win
        [nan3, nan3],                          # no shoulders: head yaw
        [nan3, nan3],                          # no face, no shoulders: rear
        [[0.2, 0, -0.05], [-0.2, 0, 0.05]],    # no face but "front" shoulders: read as swapped
        [nan3, nan3],                          # half-seen face without estimate: unknown
        [[-0.2, 0, 0], [0.2, 0, 0]],           # face seen, shoulders say rear: trust the face
    ])
    yaw = body_yaw(head, vis, shoulders)
    assert yaw[0] == pytest.approx(np.degrees(np.arctan2(0.04, 0.4)))
    assert yaw[1] == pytest.approx(40.0)
    assert yaw[2] == pytest.approx(180.0)
    assert yaw[3] == pytest.approx(np.degrees(np.arctan2(-0.1, 0.4)) + 180.0)
    assert np.isnan(yaw[4])
    assert yaw[5] == pytest.approx(20.0)
    assert list(view_class(yaw)) == ["frontal", "right", "rear", "rear", "", "frontal"]
    assert body_yaw(head, vis)[0] == pytest.approx(10.0)   # shoulders optional


# -- multi-view references ------------------------------------------------------------------------
def test_choose_views_one_per_class():
    yaw = np.concatenate([np.full(10, 5.0), np.full(8, -70.0), np.full(5, 180.0), [60.0]])
    sharp = np.ones(len(yaw))
    sharp[4] = 3.0          # the sharpest frontal frame
    sharp[12] = 2.0         # the sharpest left frame
    size = np.ones(len(yaw))
    size[20] = 2.0          # the largest rear frame
    picks = choose_views(yaw, sharp, size)
    assert [(c.kind, c.index) for c in picks] == [("view_frontal", 4), ("view_left", 12), ("view_rear", 20)]
    assert all(isinstance(c, Choice) and c.label == c.kind[5:] for c in picks)
    # the single right-profile frame (index 23) is not a view: a class needs 3 frames by default
    assert [c.kind for c in choose_views(yaw, sharp, size, min_frames=1)][-1] == "view_right"
    # at most max_views: frontal first, then the classes with the most frames
    assert [c.kind for c in choose_views(yaw, sharp, size, max_views=2)] == ["view_frontal", "view_left"]
    # invalid frames are never chosen
    valid = np.ones(len(yaw), bool)
    valid[4] = False
    assert choose_views(yaw, sharp, size, valid=valid)[0].index != 4
    assert choose_views(np.full(5, np.nan)) == []


def test_choose_views_prefers_central_frames_in_class():
    # equal quality: the more frontal frame wins in the frontal class, the purer profile in a profile class
    yaw = np.array([20.0, 2.0, 15.0, -40.0, -88.0, -120.0])
    picks = {c.kind: c.index for c in choose_views(yaw, min_frames=1)}
    assert picks == {"view_frontal": 1, "view_left": 4}


# -- global references ----------------------------------------------------------------------------
def test_choose_global_inside_and_outside():
    times = np.arange(0, 60, 0.5)
    quality = np.ones(len(times))
    quality[np.searchsorted(times, 45.0)] = 5.0      # a very good frame late in the source
    picks = choose_global(times, 20.0, 30.0, quality, n_inside=1, n_outside=2, min_gap_s=1.0)
    inside = [times[c.index] for c in picks if c.label == "inside"]
    outside = [times[c.index] for c in picks if c.label == "outside"]
    assert len(inside) == 1 and 20.0 <= inside[0] < 30.0
    assert len(outside) == 2 and all(t < 19.0 or t >= 31.0 for t in outside)
    assert 45.0 in outside                             # best quality in its time bin
    assert min(outside) < 30.0 < max(outside)          # spread over the source, before and after
    assert all(c.kind == "global" for c in picks)


def test_choose_global_never_only_from_the_clip():
    times = np.arange(0, 10, 0.5)
    assert choose_global(times, 0.0, 10.0) == []                   # the clip is the whole source
    assert choose_global(times, 0.0, 9.2, min_gap_s=1.0) == []     # outside frames too close to it
    valid = np.ones(len(times), bool)
    valid[times >= 6.0] = False                                    # subject gone after 6 s
    assert choose_global(times, 0.0, 5.0, valid=valid) == []
    assert len(choose_global(times, 0.0, 5.0, valid=valid, min_gap_s=0.5)) == 2   # 5.5 s outside


# -- expression references ------------------------------------------------------------------------
def test_choose_expressions_rules():
    classes = ("angry", "happy", "neutral", "surprise")
    p = np.full((12, 4), 0.1)
    p[0:3, 1] = [0.6, 0.9, 0.7]     # happy, best at frame 1
    p[4:6, 2] = [0.8, 0.85]         # neutral, best at frame 5
    p[8, 3] = 0.95                  # surprise once
    p[10, 0] = 0.45                 # angry, below min_prob
    picks = choose_expressions(p, classes, 1920, 1080)
    assert [(c.label, c.index) for c in picks] == [("surprise", 8), ("happy", 1), ("neutral", 5)]
    assert all(c.kind == "expression" for c in picks)
    assert choose_expressions(p, classes, 1280, 720) == []            # source below 1080p
    assert len(choose_expressions(p, classes, 1080, 1920)) == 3       # portrait 1080x1920 is 1080p
    assert [c.label for c in choose_expressions(p, classes, 1920, 1080, min_frames=2)] == ["happy", "neutral"]
    one = np.full((5, 4), 0.1)
    one[:, 1] = 0.9
    assert choose_expressions(one, classes, 3840, 2160) == []         # one expression: subject skipped
    many = np.eye(9)[np.arange(18) % 9] * 0.9 + 0.01
    assert len(choose_expressions(many, tuple("abcdefghi"), 1920, 1080)) == 8   # capped at 8
    nan_rows = p.copy()
    nan_rows[8] = np.nan                                               # no face on frame 8
    assert "surprise" not in [c.label for c in choose_expressions(nan_rows, classes, 1920, 1080)]


# -- real clips: head yaw from MediaPipe --------------------------------------------------------------
def head_yaws(images: np.ndarray, models) -> tuple[np.ndarray, np.ndarray]:
    """(yaw deg, face height px) of the largest face per frame (NaN where none)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(models / "mediapipe/face_landmarker.task")),
        output_facial_transformation_matrixes=True, num_faces=2)
    yaw, height = np.full(len(images), np.nan), np.full(len(images), np.nan)
    with vision.FaceLandmarker.create_from_options(opts) as lm:
        for i, im in enumerate(images):
            r = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
            if not r.face_landmarks:
                continue
            h = [np.ptp([p.y for p in face]) * im.shape[0] for face in r.face_landmarks]
            k = int(np.argmax(h))
            yaw[i] = yaw_from_face_matrix(np.array(r.facial_transformation_matrixes[k]))
            height[i] = h[k]
    return yaw, height


def test_real_head_yaw_sign_and_frontal_speaker(media, models):
    fr = frames_of(media / "vr_face1.mp4", fps=2)
    yaw, height = head_yaws(fr.images, models)
    assert np.isfinite(yaw).all()
    assert set(view_class(yaw)) == {"frontal"}                      # he faces the camera throughout
    mirrored, _ = head_yaws(fr.images[:, :, ::-1], models)
    assert np.allclose(mirrored, -yaw, atol=3.0)                     # mirroring flips the side
    picks = choose_views(yaw, size=height)
    assert [c.kind for c in picks] == ["view_frontal"]
    # vr_face1 is 700x700: too small a source for expression references
    probs = np.tile([0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.1], (len(yaw), 1))
    probs[:3] = [0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.9]
    classes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert choose_expressions(probs, classes, 700, 700) == []
    assert len(choose_expressions(probs, classes, 700, 700, min_side=700)) == 2


def test_real_views_dj_video4(media, models):
    fr = frames_of(media / "dj_video4.mp4", fps=2)
    yaw, height = head_yaws(fr.images, models)                       # the front woman's face is the largest
    t = fr.times
    labels = view_class(yaw)
    facing = (t >= 4.0) & (t <= 9.5)
    turned = (t >= 12.0) & (t <= 22.0) & np.isfinite(yaw)
    assert (labels[facing] == "frontal").mean() > 0.8
    assert (labels[turned] == "left").mean() > 0.8
    assert np.all(yaw[turned] < 0)                                   # towards image left
    picks = choose_views(yaw, size=height)
    kinds = {c.kind: c.index for c in picks}
    assert set(kinds) == {"view_frontal", "view_left"}
    assert 3.0 <= t[kinds["view_frontal"]] <= 10.5
    assert not 3.0 <= t[kinds["view_left"]] <= 10.5
