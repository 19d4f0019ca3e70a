"""Probe, decode and audio extraction on the real clips and on broken files."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from curation.media import (MediaError, VideoDecoder, check_decodable, content_id, extract_wav,
                            load_audio, probe)

# fr_short_hamilton_clip: the video stream starts at 0.852 s, the audio at 0.008 s (the container's
# start): its first frame is 0.844 s into the file's presentation timeline
HAMILTON_V0 = 0.844


def test_probe_facts_of_real_clips(media):
    d0 = probe(str(media / "lp_d0.mp4"))
    assert d0["has_audio"] is False and d0["audio_codec"] is None
    assert (d0["width"], d0["height"]) == (512, 512)
    assert d0["duration_s"] == pytest.approx(3.12, abs=0.05)

    v5 = probe(str(media / "dj_video5.mp4"))
    assert (v5["width"], v5["height"]) == (362, 640)  # portrait
    assert v5["fps"] == pytest.approx(24.0, abs=0.01)

    hevc = probe(str(media / "pf_face_noface.mov"))
    assert hevc["video_codec"] == "hevc"
    assert hevc["variable_fps"] is True            # avg 26.4 fps against a nominal 30
    assert hevc["fps"] == pytest.approx(26.4, abs=0.2)

    st = probe(str(media / "st_WDA_KatieHill_000.mp4"))
    assert st["video_codec"] == "mpeg4" and st["audio_sample_rate"] == 16000

    v1 = probe(str(media / "vr_face1.mp4"))
    assert v1["has_audio"] is True and v1["variable_fps"] is True
    assert v1["fps_nominal"] == pytest.approx(30.0)


def test_probe_rejects_bad_files(bad_inputs):
    with pytest.raises(MediaError, match="empty file"):
        probe(str(bad_inputs["zero"]))
    with pytest.raises(MediaError, match="not a readable media file"):
        probe(str(bad_inputs["text"]))
    with pytest.raises(MediaError, match="no video stream"):
        probe(str(bad_inputs["audio_only"]))
    info = probe(str(bad_inputs["truncated"]))  # the header is intact...
    with pytest.raises(MediaError, match="truncated"):  # ...the end of the stream is gone
        check_decodable(str(bad_inputs["truncated"]), info["duration_s"])


def test_check_decodable_passes_real_clips(media):
    for name in ("vr_face1.mp4", "pf_face_noface.mov", "st_WDA_KatieHill_000.mp4"):
        info = probe(str(media / name))
        check_decodable(str(media / name), info["duration_s"])


def test_rotation_metadata_is_applied(media, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(media / "pf_single_face.mp4"),
                    "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated)], check=True)
    info = probe(str(rotated))
    assert info["rotation"] in (90, 270)
    assert (info["width"], info["height"]) == (360, 640)   # 640x360 coded, shown portrait
    frames = VideoDecoder(str(rotated), rotation=info["rotation"], max_side=320).span(0, 0.5)
    assert frames.images.shape[1:3] == (320, 180)            # decoded frames are portrait too
    known = VideoDecoder(str(rotated), max_side=320, display_size=(info["width"], info["height"]))
    assert known.span(0, 0.5).images.shape[1:3] == (320, 180)  # as a run opens it (probed size)


def test_decoder_spans_and_sampling(media):
    dec = VideoDecoder(str(media / "dj_video4.mp4"), max_side=240)
    assert len(dec) == 673                          # 22.43 s at 30 fps
    f = dec.span(2.0, 4.0)
    assert len(f) == 60 and f.times[0] == pytest.approx(2.0, abs=0.04)
    assert max(f.images.shape[1:3]) == 240
    two = f.sample(2.0)
    assert len(two) == 4 and np.allclose(np.diff(two.times), 0.5, atol=0.04)
    small = f.sample(None, max_side=120)
    assert max(small.images.shape[1:3]) == 120 and len(small) == 60


def test_content_id_is_stable_and_distinct(media, tmp_path):
    a = content_id(str(media / "vr_face1.mp4"))
    copy = tmp_path / "same_content.mp4"
    copy.write_bytes((media / "vr_face1.mp4").read_bytes())
    assert content_id(str(copy)) == a
    assert content_id(str(media / "vr_face2.mp4")) != a


def test_audio_extraction_16k_mono(media, tmp_path):
    wav = extract_wav(str(media / "vr_face1.mp4"), str(tmp_path / "a.wav"))
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels",
                          "-of", "csv=p=0", wav], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "16000,1"
    pcm = load_audio(str(media / "vr_face1.mp4"))
    assert pcm.dtype == np.float32 and len(pcm) == pytest.approx(6.1 * 16000, rel=0.02)
    with pytest.raises(MediaError, match="audio extraction failed"):
        load_audio(str(media / "lp_d0.mp4"))        # no audio stream


def test_hevc_mov_decodes_every_frame(media):
    # decord fails on consecutive frames of this HEVC stream; the decoder falls back to ffmpeg
    dec = VideoDecoder(str(media / "pf_face_noface.mov"), max_side=480)
    frames = dec.span(0.0, 10.0)
    assert len(frames) == 169 and frames.images.shape[1:] == (270, 480, 3)
    assert np.all(np.diff(frames.times) > 0) and frames.images[-1].mean() > 5


def test_union_spec_decodes_once_into_each_view(media):
    # quality (2 fps at 480 px) and temporal (every frame at 160 px) from one decode of the span:
    # the same frames and times as decoding each spec on its own, pictures within a grey level or two
    from curation.media import FrameSpec
    spec = FrameSpec.union([FrameSpec(2.0, 480), FrameSpec(None, 160)])
    assert (spec.fps, spec.max_side) == (None, 480) and len(spec.parts) == 2
    for name, shape480, shape160 in (("dj_video4.mp4", (360, 480), (120, 160)),
                                     ("pf_face_noface.mov", (270, 480), (90, 160))):
        dec = VideoDecoder(str(media / name), max_side=480)
        frames = dec.span(2.0, 4.0, spec)
        q, t = frames.sample(2.0, 480), frames.sample(None, 160)
        alone = VideoDecoder(str(media / name), max_side=160).span(2.0, 4.0)
        assert np.array_equal(t.times, alone.times) and t.images.shape[1:3] == shape160
        assert np.abs(t.images.astype(int) - alone.images.astype(int)).mean() < 2.5
        assert len(q) == 4 and q.images.shape[1:3] == shape480
        assert np.array_equal(q.times, dec.span(2.0, 4.0, 2.0).times)
        assert q.scale == pytest.approx(480 / max(dec.display_size), abs=0.01)


def test_exact_size_for_networks(media):
    # TransNetV2 wants 48x27 (odd height): decoded at twice the size and halved
    dec = VideoDecoder(str(media / "fr_short_hamilton_clip.mp4"), size=(48, 27))
    frames = dec.span(HAMILTON_V0, HAMILTON_V0 + 1.0)   # its video starts 0.844 s into the file
    assert frames.images.shape == (30, 27, 48, 3) and frames.times[0] == pytest.approx(HAMILTON_V0, abs=1e-3)
    assert 5 < frames.images.mean() < 250


def test_decoding_video_does_not_break_blas_in_the_same_process(media):
    """decord2's import preloads every CUDA library of the nvidia pip packages with RTLD_GLOBAL,
    libnvblas among them, which took over BLAS: Whisper's mel spectrogram after a video decode
    segfaulted the worker. A fresh process decodes, then runs that matrix product."""
    import sys
    code = ("from curation.media import VideoDecoder, FrameSpec, load_audio\n"
            "import whisper.audio as wa\n"
            f"d = VideoDecoder({str(media / 'vr_face1.mp4')!r}, max_side=160)\n"
            "assert len(d.span(0, 1.0, FrameSpec(fps=5, max_side=160))) == 5\n"
            f"mel = wa.log_mel_spectrogram(load_audio({str(media / 'vr_face1.mp4')!r}), 80)\n"
            "print(tuple(mel.shape))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    assert r.stdout.strip().endswith("(80, 610)")
