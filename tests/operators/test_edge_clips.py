"""Edge clips through the conversation operators (asd, sync, speaker_states, rerank, audio_variants):
a face that appears after the audio stream has ended, a one-frame face, a span where every frame is
discarded. Each gives a result or a clear one-line reason, never a numpy / Python message."""
from __future__ import annotations

import subprocess
import wave

import numpy as np
import pytest

from curation.media import VideoDecoder, probe
from curation.operator import OperatorError
from operators.asd import face_span
from operators.audio_variants import AudioVariants
from operators.rerank import Rerank
from operators.speaker_states import STATES, SpeakerStates
from operators.sync import Sync

FACE = [120.0, 60.0, 240.0, 220.0]   # vr_face2's face in a 360 x 360 frame


@pytest.fixture(scope="module")
def late_face(tmp_path_factory, media):
    """3 s of black, then 3 s of vr_face2 (360 x 360); the audio stream is its first 2 s only: the
    face appears after the sound has ended (the noface -> face kind of clip)."""
    out = tmp_path_factory.mktemp("edge") / "late_face.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=black:s=360x360:r=25:d=3", "-i", str(media / "vr_face2.mp4"), "-filter_complex",
                    "[1:v]scale=360:360,setsar=1,trim=0:3,setpts=PTS-STARTPTS[f];[0:v][f]concat=n=2:v=1:a=0[v];"
                    "[1:a]atrim=0:2,asetpts=PTS-STARTPTS[a]", "-map", "[v]", "-map", "[a]",
                    "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(out)], check=True)
    return out


def _track(t0: float, t1: float, fps: float = 25.0, face=FACE) -> dict:
    times = np.arange(t0, t1 - 1e-9, 1 / fps)
    rng = np.random.default_rng(0)
    return {"track_id": "v:0:t0", "frame_times_s": times.tolist(), "face_boxes": [face] * len(times),
            "mouth_open": (0.05 + 0.05 * rng.random(len(times))).tolist()}


def _video(path, track) -> dict:
    return {"video_id": "v", "uri": str(path), **probe(str(path)), "voice_segments": [],
            "tables": {"tracks": [track]}}


def test_face_after_the_audio_ends_gets_silence_not_an_error(late_face, tmp_path):
    track = _track(3.04, 5.96)
    video = _video(late_face, track)
    row = {"clip_id": "v:0:0:t0", "track_id": "v:0:t0", "start_s": 3.1, "end_s": 5.9,
           "shot_index": 0, "clip_index": 0}
    frames = VideoDecoder(str(late_face), max_side=None).span(3.1, 5.9, 25.0)
    has_face, seg, boxes, pcm = face_span(video, row, frames, 0.2, "test")
    assert has_face.all() and len(pcm) == (len(frames) + 1) * 640 and not pcm.any()   # silence
    # states from a face with no speech: idle or discard, and audio variants of the clip's length
    n = len(frames)
    row.update(frame_times=frames.times.tolist(), asd_prob=[0.1] * n)
    states = SpeakerStates().process(video, [row])[0]
    assert "error" not in states and set(states["frame_states_raw"]) <= {"idle", "discard"}
    row.update(states)
    row.update(Rerank().process(video, [row])[0])
    op = AudioVariants()
    op.artifact_root = str(tmp_path)
    out = op.process(video, [row])[0]
    assert "error" not in out, out
    with wave.open(out["speaker_audio_uri"]) as w:
        assert w.getnframes() == pytest.approx(2.8 * 16000, abs=2)


def test_one_frame_face(late_face, tmp_path):
    track = _track(4.0, 4.04)
    video = _video(late_face, track)
    row = {"clip_id": "v:0:0:t0", "track_id": "v:0:t0", "start_s": 3.1, "end_s": 5.9,
           "shot_index": 0, "clip_index": 0}
    frames = VideoDecoder(str(late_face), max_side=None).span(3.1, 5.9, 25.0)
    has_face, seg, boxes, pcm = face_span(video, row, frames, 0.02, "test")
    assert has_face.sum() == 1 and len(boxes) == 1
    with pytest.raises(OperatorError, match="fewer than 10 frames with a face"):
        Sync(max_gap_s=0.02).process_row(video, row, frames)
    n = len(frames)
    prob = [None] * n
    prob[int(np.argmax(has_face))] = 0.9
    row.update(frame_times=frames.times.tolist(), asd_prob=prob)
    states = SpeakerStates().process(video, [row])[0]
    assert states["frame_states_raw"].count("discard") >= n - 1     # no face: discard
    row.update(states)
    ranked = Rerank().process(video, [row])[0]
    assert len(ranked["frame_states"]) == n and ranked["discard_ratio"] >= (n - 1) / n - 1e-6


def test_all_discard_span(late_face, tmp_path):
    n = 50
    times = (3.1 + np.arange(n) * 0.04).tolist()
    rows = [{"clip_id": f"v:0:0:t{k}", "track_id": f"v:0:t{k}", "start_s": 3.1, "end_s": 5.1,
             "shot_index": 0, "clip_index": 0, "frame_times": times,
             "frame_state_probs": [dict(zip(STATES, (0.0, 0.0, 0.0, 1.0)))] * n,
             "frame_states_raw": ["discard"] * n, "speech_present": [0.0] * n, "lip_motion": [None] * n}
            for k in range(2)]
    video = _video(late_face, _track(3.0, 6.0))
    ranked = Rerank().process(video, rows)
    for r, out in zip(rows, ranked):
        assert out["frame_states"] == ["discard"] * n and out["role"] == "mixed"
        assert set(out["frame_discard_reasons"]) == {"no_face"}
        r.update(out)
    op = AudioVariants()
    op.artifact_root = str(tmp_path)
    for out in op.process(video, rows):
        assert "error" not in out and out["audio_mask"] == [0] * n
