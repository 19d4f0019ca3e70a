"""One presentation timeline for audio and video (curation.media): frames and audio samples are placed
by their pts on the file's timeline in every decode path, so a flash and a beep made at the same
instant stay together, and ffmpeg -itsoffset copies (as a user makes them) move the beep by exactly
the applied amount, whichever stream starts first."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from curation.media import (FrameSpec, VideoDecoder, _load_audio_av, _load_audio_ffmpeg, load_audio,
                            stream_origins)

FLASH_S = 1.0   # a white frame at 1.00 s (25 fps) and a 1 kHz beep from 1.00 s to 1.10 s


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("timeline")
    src = d / "src.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=160x120:r=25:d=3,drawbox=enable='between(t,1.0,1.039)'"
            ":x=0:y=0:w=160:h=120:color=white:t=fill",
            "-f", "lavfi", "-i", "aevalsrc='0.5*sin(2*PI*1000*t)*between(t,1.0,1.1)':s=44100:d=3",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", src)
    out = {"src": (src, 0.0)}
    # audio moved against the untouched video: re-encoded (AAC priming in the new stream) and copied
    for name, shift, codec in (("a+0.16", 0.16, "aac"), ("a-0.16", -0.16, "aac"), ("a+0.5", 0.5, "copy")):
        f = d / f"{name}.mp4"
        _ffmpeg("-i", src, "-itsoffset", shift, "-i", src, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                "-c:a", codec, f)
        out[name] = (f, shift)
    f = d / "v+0.5.mp4"   # the video starts 0.5 s after the audio: the beep comes 0.5 s early
    _ffmpeg("-itsoffset", 0.5, "-i", src, "-i", src, "-map", "0:v", "-map", "1:a", "-c", "copy", f)
    out["v+0.5"] = (f, -0.5)
    return out


def _flash(frames) -> float:
    return float(frames.times[np.argmax(frames.images.reshape(len(frames), -1).mean(axis=1))])


def _onset(audio: np.ndarray, start_s: float = 0.0) -> float:
    return start_s + float(np.argmax(np.abs(audio) > 0.1)) / 16000


@pytest.mark.parametrize("name", ["src", "a+0.16", "a-0.16", "a+0.5", "v+0.5"])
def test_beep_minus_flash_is_the_applied_shift_in_every_decode_path(files, name):
    path, shift = files[name]
    path = str(path)
    flashes = []
    dec = VideoDecoder(path, max_side=160)                       # decord
    flashes.append(_flash(dec.span(0, 10)))
    spec = FrameSpec.union([FrameSpec(None, 160), FrameSpec(5.0, 80)])
    flashes.append(_flash(dec.span(0, 10, spec)))                # PyAV, one decode into views
    ff = VideoDecoder(path, max_side=160)
    ff.backend = "ffmpeg"                                        # the ffmpeg pipe
    flashes.append(_flash(ff.span(0, 10)))
    assert max(flashes) - min(flashes) < 1e-3, flashes
    video_start = 0.5 if name == "v+0.5" else 0.0
    assert flashes[0] == pytest.approx(FLASH_S + video_start, abs=1e-3)
    onsets = [_onset(f(path, 16000, 0.0, None)) for f in (_load_audio_av, _load_audio_ffmpeg)]
    onsets += [_onset(f(path, 16000, 0.7, 1.0), 0.7) for f in (_load_audio_av, _load_audio_ffmpeg)]
    assert max(onsets) - min(onsets) < 1e-3, onsets
    # within 2 ms: the AAC frame edges of a re-encode, a sample or two of resampling
    assert onsets[0] - flashes[0] == pytest.approx(shift, abs=0.002), (onsets, flashes)


def test_late_audio_stream_starts_with_silence(files):
    path = str(files["a+0.5"][0])
    origin, video_start = stream_origins(path)
    assert origin == 0.0 and video_start == 0.0
    whole = load_audio(path)
    assert np.abs(whole[: int(0.45 * 16000)]).max() == 0.0         # no stream yet: silence
    part = load_audio(path, start_s=0.2, duration_s=1.5)
    np.testing.assert_array_equal(part, whole[int(0.2 * 16000): int(1.7 * 16000)])
    late = load_audio(path, start_s=2.5, duration_s=0.5)           # the seeking path
    np.testing.assert_allclose(late, whole[40000:48000], atol=2 / 32768)


def test_early_audio_puts_the_first_frame_later(files):
    path = str(files["v+0.5"][0])
    assert stream_origins(path) == (0.0, pytest.approx(0.5))
    assert VideoDecoder(path, max_side=160).times[0] == pytest.approx(0.5)


def test_real_clips_on_the_file_timeline(media):
    # pf_face_noface.mov: the audio stream starts 2.43 s in (the animation after the cut at 2.4 s)
    pcm = load_audio(str(media / "pf_face_noface.mov"))
    assert np.abs(pcm[: int(2.4 * 16000)]).max() == 0.0 and np.abs(pcm[int(2.5 * 16000):]).max() > 0.01
    assert len(pcm) / 16000 == pytest.approx(2.43 + 3.99, abs=0.05)
    # fr_short_hamilton_clip: the audio starts at the container's start, the video 0.844 s later
    dec = VideoDecoder(str(media / "fr_short_hamilton_clip.mp4"), max_side=160)
    assert dec.times[0] == pytest.approx(0.844, abs=1e-3) and dec.offset_s == pytest.approx(0.844, abs=1e-3)
    # vr_face1: the first frame's pts is 0.033 s (audio at 0)
    assert VideoDecoder(str(media / "vr_face1.mp4"), max_side=160).times[0] == pytest.approx(0.033, abs=1e-3)
