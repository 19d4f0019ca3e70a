"""Person detector (YOLOX-nano ONNX, ultralytics on a random model), ByteTrack wrapper and the
MediaPipe face / hand wrappers on real frames of the shared clips."""
from __future__ import annotations

import numpy as np
import pytest

from operators.nets import MissingWeights
from operators.nets.face_landmarks import FACE_CROP, FaceLandmarks, HandLandmarks, person_region, upper_body_region
from operators.nets.person_detector import (YOLOX_SIZE, YoloxDetector, _yolox_grid, load_person_detector, nms,
                                           yolox_input_shape)
from operators.nets.tracking import track_boxes


def frame(media, name: str, t: float) -> np.ndarray:
    from curation.media import import_decord
    decord = import_decord()
    vr = decord.VideoReader(str(media / name))
    return vr[int(round(t * vr.get_avg_fps()))].asnumpy()


@pytest.fixture(scope="module")
def yolox(models):
    return load_person_detector(models, "yolox", conf=0.3, threads=1)


@pytest.fixture(scope="module")
def face_net(models):
    return FaceLandmarks(models)


def test_yolox_finds_the_two_women_of_dj_video4(media, yolox):
    # at 1 s: the speaker on the left (x about 85-345), the hair-combing woman on the right (255-440)
    dets = yolox.detect([frame(media, "dj_video4.mp4", 1.0)])[0]
    assert dets.shape == (2, 5) and np.all(dets[:, 4] > 0.6)
    left, right = sorted(dets.tolist(), key=lambda d: d[0])
    assert 60 < left[0] < 110 and 320 < left[2] < 370
    assert 230 < right[0] < 280 and 420 < right[2] < 465
    assert all(d[1] > 100 and d[3] > 340 for d in dets)   # both run to the bottom edge (seated, cut off)
    assert yolox.backend == "yolox_nano_coco.onnx/onnxruntime"


def test_yolox_grid_decode_and_letterbox_ratio(yolox):
    # one synthetic output row per level: offsets (0.5, 0.5), log size 0, score 1 -> a box of one
    # stride centred in its cell, divided by the letterbox ratio r
    grid, strides = _yolox_grid()
    assert len(grid) == 3549 and strides[0, 0] == 8 and strides[-1, 0] == 32
    out = np.zeros((3549, 85), np.float32)
    out[:, :4] = [0.5, 0.5, 0.0, 0.0]
    row = 2704 + 26 * 3 + 5                               # stride 16, cell (x=5, y=3)
    out[row, 4] = 1.0
    out[row, 5] = 0.9
    det = yolox.decode(out, r=0.5)
    assert det.shape == (1, 5)
    np.testing.assert_allclose(det[0, :4], np.array([5 * 16, 3 * 16, 6 * 16, 4 * 16]) / 0.5, atol=1e-4)
    assert det[0, 4] == pytest.approx(0.9)
    x, r = YoloxDetector.letterbox(np.zeros((360, 480, 3), np.uint8))
    assert x.shape == (3, YOLOX_SIZE, YOLOX_SIZE) and r == pytest.approx(416 / 480)
    assert x[0, -1, 0] == 114                              # padded below the picture


@pytest.fixture(scope="module")
def yolox_square(models):
    return load_person_detector(models, "yolox", conf=0.3, threads=1, rect=False)


def test_rectangular_input_gives_the_square_inputs_boxes(media, yolox, yolox_square):
    # vr_face1's talking head (square frame), shrunk to 320 px and pasted inside a grey 16:9 and a
    # grey 9:16 frame: the rectangular canvas (256 x 416 / 416 x 256, a per-shape decode grid) finds
    # the square canvas's box to a pixel, where the pasted picture says it is
    import cv2
    assert yolox_input_shape(540, 960) == (256, 416) and yolox_input_shape(960, 540) == (416, 256)
    assert yolox_input_shape(360, 480) == (320, 416) and yolox_input_shape(700, 700) == (416, 416)
    assert yolox_input_shape(540, 960, square=True) == (416, 416)
    grid, strides = _yolox_grid(256, 416)
    assert len(grid) == 52 * 32 + 26 * 16 + 13 * 8 and grid[52, 1] == 1 and grid[51, 0] == 51
    out = yolox.session.run(None, {yolox.input: np.zeros((1, 3, 256, 416), np.float32)})[0]
    assert out.shape == (1, len(grid), 85)
    src = frame(media, "vr_face1.mp4", 2.0)
    (ref,) = yolox_square.detect([src])[0]
    person, k = cv2.resize(src, (320, 320), interpolation=cv2.INTER_AREA), 320 / src.shape[0]
    for w, h, x0, y0 in [(960, 540, 400, 110), (540, 960, 110, 330)]:
        image = np.full((h, w, 3), 60, np.uint8)
        image[y0:y0 + 320, x0:x0 + 320] = person
        (rect,), (square,) = yolox.detect([image])[0], yolox_square.detect([image])[0]
        np.testing.assert_allclose(rect[:4], square[:4], atol=2.0)          # measured: < 0.3 px
        np.testing.assert_allclose(rect[:4], ref[:4] * k + [x0, y0, x0, y0], atol=12.0)  # < 8 px
        assert rect[4] > 0.8


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.4], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]


def test_batched_detection_equals_one_at_a_time(media, yolox):
    images = [frame(media, "dj_video4.mp4", 1.0), frame(media, "vr_face1.mp4", 2.0),
              frame(media, "fr_short_hamilton_clip.mp4", 8.0), frame(media, "dj_video1.mp4", 5.0),
              frame(media, "dj_video4.mp4", 12.0)]
    batched = yolox.detect(images)
    single = [yolox.detect([im])[0] for im in images]
    assert [len(b) for b in batched] == [len(s) for s in single]
    assert sum(len(b) for b in batched) >= 5
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b, s, atol=1e-3)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(MissingWeights, match="yolox_nano_coco.onnx"):
        load_person_detector(tmp_path, "yolox")
    with pytest.raises(MissingWeights, match="yolo/yolov8n.pt"):
        load_person_detector(tmp_path, "ultralytics")
    with pytest.raises(MissingWeights, match="face_landmarker.task"):
        FaceLandmarks(tmp_path)


@pytest.mark.slow
def test_ultralytics_backend_on_a_random_yolov8n(tmp_path, media):
    # no YOLO weights can be had here: build YOLOv8n from its config (random weights, no download),
    # save it where a real yolov8n.pt would go, and run the backend's code path on real frames
    import os
    os.environ["YOLO_AUTOINSTALL"] = "False"
    from ultralytics import YOLO
    (tmp_path / "yolo").mkdir()
    YOLO("yolov8n.yaml").save(str(tmp_path / "yolo" / "yolov8n.pt"))
    det = load_person_detector(tmp_path, "ultralytics", device="cpu", conf=1e-4, imgsz=320, batch_size=2)
    assert det.backend == "yolov8n.pt/ultralytics" and det.device == "cpu"
    images = [frame(media, "dj_video4.mp4", t) for t in (1.0, 5.0, 9.0)]
    batched = det.detect(images)
    assert len(batched) == 3
    for d, im in zip(batched, images):
        assert d.ndim == 2 and d.shape[1] == 5
        assert np.all(np.diff(d[:, 4]) <= 0)                       # best first
        assert np.all(d[:, [0, 2]] >= -1) and np.all(d[:, [0, 2]] <= im.shape[1] + 1)
    single = det.detect(images[:1])[0]
    np.testing.assert_allclose(single, batched[0], atol=1e-3)      # same-size frames: batching changes nothing


def test_bytetrack_keeps_two_crossing_people_apart():
    # two boxes walking towards each other and past, 30 frames; a dropped detection in the middle
    dets = []
    for i in range(30):
        a = [10 + 8 * i, 50, 90 + 8 * i, 250, 0.9]
        b = [400 - 8 * i, 60, 480 - 8 * i, 260, 0.8]
        dets.append(np.array([a, b] if i != 15 else [a], np.float32))
    tracks = track_boxes(dets, (360, 640), frame_rate=10.0)
    assert len(tracks) == 2
    by_start = sorted(tracks.values(), key=lambda t: t[0, 1])
    assert len(by_start[0]) == 30 and len(by_start[1]) == 29     # the missed frame is absent, not invented
    assert np.all(np.diff(by_start[0][:, 1]) > 0) and np.all(np.diff(by_start[1][:, 1]) < 0)
    np.testing.assert_allclose(by_start[1][0, 1:5], [400, 60, 480, 260])   # boxes are the detections


def test_upper_body_and_person_regions():
    standing = np.array([[100, 50, 200, 350]])       # 100 x 300 box: the face region is its top square
    np.testing.assert_allclose(upper_body_region(standing, grow=0.0), [[100, 50, 200, 150]])
    wide = np.array([[0, 100, 400, 300]])            # shoulders-up box wider than tall: height-limited
    np.testing.assert_allclose(upper_body_region(wide, grow=0.0), [[100, 100, 300, 300]])
    np.testing.assert_allclose(person_region(standing, grow=0.0), [[0, 50, 300, 350]])


def _faces(net, im):
    h, w = im.shape[:2]
    region = person_region(np.array([0, 0, w, h], float), grow=0.0)[0]
    from curation.media import crop_boxes
    crop = crop_boxes(im[None], region[None], FACE_CROP)[0]
    return net.faces(crop, region, (w, h))


def test_face_measures_on_vr_face1(media, face_net):
    im = frame(media, "vr_face1.mp4", 2.0)
    faces = _faces(face_net, im)
    assert len(faces) == 1
    f = faces[0]
    # the man's face: centre of a 700 x 700 frame, about a third of its height
    assert 250 < f.box[0] < 320 and 450 < f.box[2] < 520 and 180 < f.size_px < 300
    assert f.visibility == 1.0
    assert 0 < f.yaw < 25 and abs(f.pitch) < 15 and abs(f.roll) < 15   # turned a little to the image right
    assert face_net.backend == "face_landmarker.task/mediapipe-tasks"


def test_head_pose_signs_by_mirroring_and_rotating(media, face_net):
    import cv2
    im = frame(media, "vr_face1.mp4", 2.0)
    f0 = _faces(face_net, im)[0]
    fm = _faces(face_net, np.ascontiguousarray(im[:, ::-1]))[0]
    assert fm.yaw == pytest.approx(-f0.yaw, abs=3) and fm.roll == pytest.approx(-f0.roll, abs=3)
    assert fm.pitch == pytest.approx(f0.pitch, abs=3)
    h, w = im.shape[:2]
    turned = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0), (w, h))  # anticlockwise
    assert _faces(face_net, turned)[0].roll - f0.roll == pytest.approx(15, abs=4)


def test_face_cut_by_the_frame_edge_has_lower_visibility(media, face_net):
    # keep the frame right of x = 360: the left edge now runs through the face (x about 280-500);
    # the crop reaches 150 px past the edge (black padding) so the mesh is still found
    from curation.media import crop_boxes
    im = frame(media, "vr_face1.mp4", 2.0)
    part = np.ascontiguousarray(im[:, 360:])
    h, w = part.shape[:2]
    side = max(w + 150, h)
    region = np.array([-150, 0, -150 + side, side], float)
    face = face_net.faces(crop_boxes(part[None], region[None], FACE_CROP)[0], region, (w, h))[0]
    assert face.box[0] < 0                       # the mesh continues past the frame edge
    assert 0.6 < face.visibility < 0.9           # measured 0.81: about a fifth of the face is cut off
    assert _faces(face_net, im)[0].visibility == 1.0


def test_mouth_moves_while_talking_and_not_for_a_held_smile(media, face_net):
    from curation.media import import_decord
    decord = import_decord()

    def series(name):
        vr = decord.VideoReader(str(media / name))
        idx = list(range(0, min(len(vr), 60)))
        out = []
        for im in vr.get_batch(idx).asnumpy():
            f = _faces(face_net, im)[0]
            out.append((f.mouth_open, f.jaw_open))
        return np.array(out)

    talk, smile = series("vr_face1.mp4"), series("pf_single_face.mp4")
    # vr_face1 talks: the lips close and open many times; pf_single_face goes from a closed mouth to
    # a broad smile with parted lips once and holds it
    assert talk[:, 0].min() < 0.02 and talk[:, 0].max() > 0.12
    motion = lambda x: np.mean(np.abs(np.diff(x)))
    assert motion(talk[:, 0]) > 2 * motion(smile[:, 0])
    assert np.std(talk[:, 1]) > 2 * np.std(smile[:, 1])              # jawOpen: talking opens the jaw
    assert smile[:5, 0].max() < 0.02 and smile[-15:-5, 0].min() > 0.1  # closed, then parted lips


def test_hands_on_the_singer_and_none_on_the_talking_head(media, models):
    from curation.media import crop_boxes
    net = HandLandmarks(models)

    def count(name, t):
        im = frame(media, name, t)
        h, w = im.shape[:2]
        region = person_region(np.array([0, 0, w, h], float), grow=0.0)[0]
        return len(net.hand_centres(crop_boxes(im[None], region[None], 256)[0], region))

    assert count("fr_short_hamilton_clip.mp4", 5.0) >= 1   # his open left hand, raised beside the mic
    assert count("vr_face1.mp4", 2.0) == 0
    assert count("vr_face1.mp4", 1.49) == 0                 # his chin: a hand at MediaPipe's default 0.5
