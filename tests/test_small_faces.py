"""A shared clip scaled down so its face is about 30 px (vr_face1 at 1/8 in a 640 x 360 frame) still
gets a track with a face on most frames and, through the conversation workflow, the states of the
original (the session's conversation store, tests/conftest.py) on most frames."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, which_ffmpeg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory, media, models):
    """vr_face1 (700 x 700, face about 250 px) scaled to 86 x 86 and placed low in the middle of a grey
    640 x 360 frame (its face about 30 px), with its own sound, through the conversation workflow."""
    from curation.store import Store
    d = tmp_path_factory.mktemp("small")
    clip = d / "vr_face1_small.mp4"
    subprocess.run([which_ffmpeg(), "-nostdin", "-v", "error", "-y", "-i", str(media / "vr_face1.mp4"),
                    "-filter_complex", "[0:v]scale=86:86[s];color=c=gray:s=640x360:r=30[bg];"
                    "[bg][s]overlay=x=277:y=250:shortest=1", "-c:v", "libx264", "-preset", "veryfast",
                    "-crf", "18", "-c:a", "aac", str(clip)], check=True)
    cmd = [str(Path(sys.executable).parent / "curation"), "run", str(ROOT / "workflows" / "conversation.yaml"),
           "--store", str(d / "store"), "--models", str(models), "--local", "--input", str(clip)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return Store(str(d / "store"))


def _states(clips) -> dict[float, str]:
    return {round(t, 2): s for c in clips for t, s in zip(c["frame_times"], c["frame_states"] or [])}


def test_a_30_px_face_is_found_on_most_frames_with_the_states_of_the_original(small, conversation_store):
    tracks = small.query("tracks").to_pylist()
    assert len(tracks) == 1
    t = tracks[0]
    assert 22 < t["face_size_px"] < 40                   # the face is about 30 px
    assert t["face_ratio"] > 0.9
    src = np.asarray(t["face_source"])
    assert np.mean(src == 1) > 0.4                       # landmarks measured (face_fps 12.5: half the frames)
    assert np.mean(np.isfinite(np.asarray(t["mouth_open"], float))) > 0.8   # a mouth opening on most frames
    mine = _states(small.query("clips", where="clip_kind = 'person'").to_pylist())
    _, _, clips, _ = conversation_store
    original = _states(clips["vr_face1.mp4"])
    common = sorted(set(mine) & set(original))
    assert len(common) > 80                               # most of the 6 s clip in both
    agree = np.mean([mine[k] == original[k] for k in common])
    speak = np.mean([mine[k] == "speak" for k in common])
    print(f"30 px vr_face1: states agree with the original on {agree:.2f} of {len(common)} frames; "
          f"speak on {speak:.2f}")
    assert agree > 0.7 and speak > 0.5
