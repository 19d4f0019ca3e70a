"""Voice activity with silero-vad on real speech, on silence and on a video without audio."""
from __future__ import annotations

import pytest

from curation.media import probe
from operators.audio import Audio
from operators.clip_speech import ClipSpeech


@pytest.fixture(scope="module")
def vad():
    op = Audio()
    op.setup()
    return op


def _run(op, path):
    info = probe(str(path))
    video = {"video_id": "v", "uri": str(path), **info}
    (out,) = op.process(video, [video])
    return video, out


def test_speech_in_vr_face1(vad, media):
    _, out = _run(vad, media / "vr_face1.mp4")
    assert out["has_speech"] is True
    assert out["speech_ratio"] > 0.5                 # ~0.61: speech from 0 to 2.5 s and 3.5 to 4.7 s
    assert out["speech_segments"][0]["start_s"] < 0.3
    assert out["vad_backend"].startswith("silero-vad")


def test_talking_heads_are_mostly_speech(vad, media):
    for name in ("vr_face3.mp4", "st_WDA_KatieHill_000.mp4"):
        assert _run(vad, media / name)[1]["speech_ratio"] > 0.8, name


def test_no_speech_in_silent_clips(vad, media):
    assert _run(vad, media / "pf_single_face.mp4")[1]["speech_ratio"] < 0.05
    assert _run(vad, media / "lp_d3.mp4")[1]["speech_ratio"] < 0.05   # lips move, no speech


def test_no_audio_stream_is_not_a_crash(vad, media):
    video, out = _run(vad, media / "lp_d0.mp4")
    assert video["has_audio"] is False
    assert out == {"speech_segments": [], "speech_ratio": 0.0, "speech_s": 0.0, "has_speech": False,
                   "audio_rms_db": None, "vad_backend": "no-audio"}


def test_clip_speech_ratio_from_segments():
    video = {"has_audio": True, "speech_segments": [{"start_s": 0.0, "end_s": 2.5},
                                                    {"start_s": 3.5, "end_s": 4.7}]}
    rows = [{"start_s": 0.0, "end_s": 2.0}, {"start_s": 2.0, "end_s": 4.0}, {"start_s": 5.0, "end_s": 6.0}]
    out = ClipSpeech().process(video, rows)
    assert [round(o["speech_ratio"], 3) for o in out] == [1.0, 0.5, 0.0]
