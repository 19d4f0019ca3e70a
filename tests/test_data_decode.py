"""One pass over the file for a window's frames and audio (curation.data.decode.read_window with
``audio_rate``): the audio is the one ``curation.media.load_audio`` places on the container's timeline,
cut at round(first frame pts x 16000) to the sample, on real clips whose streams start at different
times; frames decode straight into a caller's buffer (a row of the batch) with the rest zeroed."""
from __future__ import annotations

import numpy as np
import pytest

from curation.data.conditions import cut_audio
from curation.data.decode import read_window
from curation.media import VideoDecoder, load_audio

N, SR = 50, 16000            # 2 s windows at 25 fps
NA = N * SR // 25

# (file, nominal start): the first frames of vr_face1 (first frame at 0.033 s, audio at 0); the
# hamilton clip's video starts 0.844 s after its audio; pf_face_noface's audio starts 2.43 s in
# (the window at 1.0 s holds 1.4 s of silence, then sound); seeks into dj_video4 (30 fps) and
# pf_single_face (MP3 audio)
WINDOWS = [("vr_face1.mp4", 0.0), ("fr_short_hamilton_clip.mp4", 0.0),
           ("pf_face_noface.mov", 1.0), ("dj_video4.mp4", 15.3),
           ("pf_single_face.mp4", 1.4)]


def _lag(a: np.ndarray, ref: np.ndarray) -> int:
    """The shift (samples) of ``a`` against ``ref`` that correlates best, within 8."""
    return max(range(-8, 9), key=lambda L: float(np.dot(np.roll(a, L)[8:-8], ref[8:-8])))


@pytest.mark.parametrize("name,start", WINDOWS)
def test_one_pass_audio_is_load_audio_cut_at_the_first_frame(media, name, start):
    path = str(media / name)
    both = read_window(path, start, N, 25.0, audio_rate=SR)
    alone = read_window(path, start, N, 25.0)
    np.testing.assert_array_equal(both.pts, alone.pts)
    assert np.array_equal(both.images, alone.images)
    assert both.audio is not None
    t0 = float(both.pts[0])
    got = cut_audio(both.audio, both.audio_first, t0, NA)
    whole = load_audio(path)                               # the file's audio, placed on its timeline
    a = int(round(t0 * SR))
    ref = np.zeros(NA, np.float32)
    ref[: len(whole[a: a + NA])] = whole[a: a + NA]
    assert (np.abs(ref) > 0.2 * np.abs(ref).max()).mean() > 0.01, "the window must hold sound"
    assert _lag(got, ref) in (-1, 0, 1)
    assert np.sqrt(np.mean((got - ref) ** 2)) < 0.25 * np.sqrt(np.mean(ref ** 2))
    if name == "pf_face_noface.mov" and start == 1.0:      # silence until the audio stream starts
        assert not got[: int((2.43 - t0) * SR) - 1].any() and np.abs(got[int((2.5 - t0) * SR):]).max() > 0.01


def test_frames_are_on_the_timeline_of_the_rest_of_curation(media):
    """The hamilton clip's container starts 8 ms before its audio stream: frame times are pts less
    the container start, as VideoDecoder's (and the store's frame_times)."""
    path = str(media / "fr_short_hamilton_clip.mp4")
    times = VideoDecoder(path, max_side=160).times
    for backend in ("pyav", "torchcodec", "decord"):
        w = read_window(path, 3.0, 5, 25.0, backend=backend)
        j = np.searchsorted(times, w.pts[0] - 1e-4)
        assert abs(times[j] - w.pts[0]) < 1e-4, backend


def test_no_audio_stream_and_a_seek_past_the_audio(media):
    assert read_window(str(media / "lp_d0.mp4"), 1.0, 5, 25.0, audio_rate=SR).audio is None
    # the hamilton clip's first video packet is stored after 0.85 s of audio: a seek for a window
    # at 0.9 s lands past the audio it needs, so the pass leaves it to load_audio (the stream does)
    assert read_window(str(media / "fr_short_hamilton_clip.mp4"), 0.9, 5, 25.0, audio_rate=SR).audio is None


def test_frames_decode_into_the_callers_buffer(media):
    path = str(media / "dj_video4.mp4")                      # 480x360, 30 fps
    out = np.full((N + 7, 360, 480, 3), 9, np.uint8)
    w = read_window(path, 15.3, N, 25.0, out=out)
    fresh = read_window(path, 15.3, N, 25.0)
    assert w.images.__array_interface__["data"][0] == out.__array_interface__["data"][0]
    assert np.array_equal(w.images, fresh.images)
    assert len(w.images) == N and not out[N:].any()
    small = np.zeros((N, 100, 100, 3), np.uint8)                 # another frame size: ignored
    assert read_window(path, 15.3, N, 25.0, out=small).images.shape == (N, 360, 480, 3)


def test_a_window_asked_before_the_first_frame_has_all_its_frames(media):
    """The hamilton clip's video starts 0.844 s in: a window asked at 0.221 s starts at that frame
    and still has its 50 frames, 1/25 s apart (it was cut at the nominal start + 2.5 s: 48 frames)."""
    path = str(media / "fr_short_hamilton_clip.mp4")
    got = {b: read_window(path, 0.221, N, 25.0, backend=b) for b in ("pyav", "torchcodec", "decord")}
    for b, w in got.items():
        assert len(w.pts) == N and abs(w.pts[0] - 0.844) < 0.01, (b, len(w.pts), w.pts[0])
        np.testing.assert_allclose(w.pts, got["decord"].pts, atol=1e-4)
