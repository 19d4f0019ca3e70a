"""The second chance for faces (operators/nets/face_finder.py: YuNet, MediaPipe's mesh on a zoomed
crop, YuNet's box alone) and people's face_fps fill, on small synthetic inputs and a few real frames."""
from __future__ import annotations

import math

import numpy as np
import pytest

from curation.media import crop_boxes
from operators.nets import MissingWeights
from operators.nets.face_detector import FaceDetector
from operators.nets.face_finder import (DETECT_CROP, FaceFinder, box_face, mesh_box, mesh_roi, pick,
                                        zoom_box)
from operators.nets.face_landmarks import FACE_CROP, upper_body_region
from operators.nets.face_mesh import FaceMesh
from operators.people import (FACE_BOX, FACE_FILLED, FACE_MESH, FACE_NONE, face_source, fill_faces,
                              sample_positions)
from test_people_nets import frame

NAN = math.nan


# ---- pure functions -----------------------------------------------------------------------------
def test_pick_takes_the_face_over_the_person_nearest_its_centre_line():
    person = np.array([100, 50, 200, 400.0])
    faces = np.array([[20, 60, 60, 100],       # left of the person box: not theirs
                      [160, 60, 200, 100],     # inside, centre 180 (0.3 of the width off the centre line)
                      [135, 70, 165, 110],     # inside, centre 150: on the centre line
                      [140, 420, 160, 440]])   # below the person box
    assert pick(faces, person) == 2
    assert pick(faces[[0, 3]], person) is None
    assert pick(np.zeros((0, 4)), person) is None


def test_zoom_box_roi_and_mesh_box_geometry():
    z = zoom_box(np.array([100, 100, 140, 160.0]), zoom=2.0)       # 40 x 60 face: 120 px square
    np.testing.assert_allclose(z, [60, 70, 180, 190])
    x, y, side, angle = mesh_roi(np.array([10, 20, 30, 20.0]))     # eyes level: no rotation
    assert (x, y, side, angle) == (0.5, 0.5, 0.75, 0.0)
    # the eye on the image's right 10 px lower over 20 px: MediaPipe's rotation for that region
    # (DetectionsToRects: target angle 0 minus the angle of the eye-to-eye vector, y up)
    assert mesh_roi(np.array([10, 20, 30, 30.0]))[3] == pytest.approx(math.atan2(10, 20))
    m = mesh_box(np.array([0, 0, 100, 100.0]))                      # YuNet box -> mesh box
    assert m[2] - m[0] == pytest.approx(102) and m[3] - m[1] == pytest.approx(89.5)
    assert (m[1] + m[3]) / 2 == pytest.approx(54.6)


def test_a_box_only_face_has_nan_measures_and_the_share_of_its_box_inside():
    f = box_face(np.array([-50, 0, 50, 100.0]), (640, 360))         # half of it left of the frame
    assert math.isnan(f.mouth_open) and math.isnan(f.yaw) and math.isnan(f.jaw_open)
    assert f.visibility == pytest.approx(0.5, abs=0.02)
    assert box_face(np.array([10, 10, 50, 50.0]), (640, 360)).visibility == 1.0


def test_fill_faces_interpolates_between_measured_frames_and_holds_the_nearest_at_edges():
    t = np.arange(9) * 0.04
    measured = np.zeros(9, bool)
    measured[[0, 3, 6]] = True                                      # face_fps 8.33 from frame 0
    face = np.full((9, 10), NAN)
    face[0] = np.arange(10)
    face[3] = np.arange(10) + 3.0
    out = fill_faces(face, t, measured)
    np.testing.assert_allclose(out[1], np.arange(10) + 1.0)         # linear between 0 and 3
    np.testing.assert_allclose(out[2], np.arange(10) + 2.0)
    np.testing.assert_allclose(out[4], face[3])                     # 3 has a face, 6 none: nearest (3)
    assert np.isnan(out[5, 0])                                      # nearest is 6: no face
    assert np.isnan(out[7, 0]) and np.isnan(out[8, 0])              # after the last measured frame: 6
    np.testing.assert_array_equal(out[measured], face[measured])    # measured frames unchanged
    src = face_source(out, measured)
    assert src.tolist() == [FACE_MESH, FACE_FILLED, FACE_FILLED, FACE_MESH, FACE_FILLED, FACE_NONE,
                            FACE_NONE, FACE_NONE, FACE_NONE]
    box_only = face.copy()
    box_only[0, 4:] = NAN
    assert face_source(box_only, np.ones(9, bool))[0] == FACE_BOX
    everything = np.ones(9, bool)
    np.testing.assert_array_equal(fill_faces(face, t, everything), face)


def test_face_fps_frames_are_the_first_of_each_slot():
    t = np.arange(50) / 25.0
    assert sample_positions(t, 12.5).tolist() == list(range(0, 50, 2))
    assert sample_positions(t, 25.0).tolist() == list(range(50))
    t32 = (np.arange(125) / 25.0).astype(np.float32)               # decoders' times: 0.23999999 s
    assert sample_positions(t32, 25.0).tolist() == list(range(125))
    assert sample_positions(t32, 12.5).tolist() == list(range(0, 125, 2))


# ---- real frames --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finder(models):
    return FaceFinder(models)


def _region_crop(im, region, side):
    return crop_boxes(im[None], region[None], side)[0]


def test_yunet_and_the_mesh_measure_a_frontal_face_as_the_face_landmarker_does(media, finder):
    im = frame(media, "vr_face1.mp4", 2.0)                          # 700 x 700, the woman facing us
    h, w = im.shape[:2]
    region = np.array([0, 0, w, h], np.float64)
    det = finder.detector.detect(_region_crop(im, region, DETECT_CROP))
    assert len(det) >= 1 and det[0, 4] > 0.8
    k = w / DETECT_CROP
    box = det[0, :4] * k
    assert 150 < box[2] - box[0] < 350                              # a face of about 250 px
    ref = finder.landmarks.faces(_region_crop(im, region, FACE_CROP), region, (w, h))[0]
    zoom = zoom_box(box)
    got = finder.mesh.face(_region_crop(im, zoom, FACE_CROP), mesh_roi(det[0, 5:9]), zoom, (w, h))
    assert got is not None
    assert abs(got.mouth_open - ref.mouth_open) < 0.03
    assert abs(got.yaw - ref.yaw) < 6 and abs(got.pitch - ref.pitch) < 6 and abs(got.roll - ref.roll) < 4
    iou_w = min(got.box[2], ref.box[2]) - max(got.box[0], ref.box[0])
    assert iou_w > 0.85 * (ref.box[2] - ref.box[0])
    assert finder.mesh.backend == "face_landmarker.task/mediapipe-graph"


def test_a_profile_face_is_kept_as_a_box_without_measures(media, finder):
    # dj_video5 at 1 s: the woman in profile (her face looks left): the FaceLandmarker finds no
    # face and the mesh's presence score is 0; YuNet finds it (score about 0.8)
    im = frame(media, "dj_video5.mp4", 1.0)
    h, w = im.shape[:2]
    person = np.array([40, 30, 330, 640], np.float64)
    region = upper_body_region(person)
    faces = finder.find(im[None], 1.0, region, person[None], (w, h))
    assert faces[0] is not None
    f = faces[0]
    assert math.isnan(f.mouth_open) and 50 < f.size_px < 130
    assert person[0] < (f.box[0] + f.box[2]) / 2 < person[2] and f.box[3] < 300


def test_without_yunet_the_profile_is_missed(media, models):
    im = frame(media, "dj_video5.mp4", 1.0)
    person = np.array([40, 30, 330, 640], np.float64)
    only = FaceFinder(models, detector=False)
    assert only.find(im[None], 1.0, upper_body_region(person), person[None], im.shape[1::-1]) == [None]


def test_missing_yunet_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeights, match="yunet_face.onnx"):
        FaceDetector(tmp_path)
    with pytest.raises(MissingWeights, match="face_landmarker.task"):
        FaceMesh(tmp_path)
