"""Shot detection on clips with known hard cuts."""
from __future__ import annotations

import pytest

from curation.media import probe
from operators.shots import Shots


def _shots(path, **params):
    info = probe(str(path))
    video = {"video_id": "v", "uri": str(path), **info}
    return Shots(**params).process(video, [video])


def _cuts(shots):
    return [s["start_s"] for s in shots[1:]]


def test_hamilton_cuts_content_detector(media):
    shots = _shots(media / "fr_short_hamilton_clip.mp4")
    assert _cuts(shots) == pytest.approx([0.67, 2.74, 7.04], abs=0.1)
    assert [s["shot_index"] for s in shots] == [0, 1, 2, 3]
    assert shots[0]["start_s"] == 0.0 and shots[-1]["end_s"] == pytest.approx(9.18, abs=0.1)
    for a, b in zip(shots, shots[1:]):       # contiguous, no gaps or overlaps
        assert a["end_frame"] == b["start_frame"]
    assert all(s["detector"] == "pyscenedetect-content" for s in shots)


def test_hevc_cut_near_2_4s(media):
    shots = _shots(media / "pf_face_noface.mov")
    assert _cuts(shots) == pytest.approx([2.4], abs=0.1)


def test_adaptive_detector_finds_the_same_hard_cuts(media):
    cuts = _cuts(_shots(media / "fr_short_hamilton_clip.mp4", detector="adaptive", threshold=27.0))
    for expected in (0.67, 2.74, 7.04):
        assert min(abs(c - expected) for c in cuts) < 0.1


def test_single_shot_talking_head(media):
    shots = _shots(media / "vr_face2.mp4")
    assert len(shots) == 1 and shots[0]["end_s"] == pytest.approx(5.0, abs=0.1)


def test_unknown_detector_is_a_clear_error(media):
    with pytest.raises(Exception, match="unknown detector 'nope'"):
        _shots(media / "vr_face2.mp4", detector="nope")
