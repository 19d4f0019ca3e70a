"""audio_pcm: the video's audio as 16 kHz mono int16 PCM, the samples load_audio gives, exactly."""
from __future__ import annotations

import numpy as np

from curation.media import load_audio, probe
from operators.audio_pcm import AudioPcm


def test_pcm_is_the_whole_decode_of_the_audio(media):
    path = media / "vr_face1.mp4"
    video = {"video_id": "v", "uri": str(path), **probe(str(path))}
    (row,) = AudioPcm().process(video, [video])
    audio = load_audio(str(path), 16000)
    pcm = np.frombuffer(row["audio_pcm"], "<i2")
    assert row["audio_pcm_rate"] == 16000 and row["audio_pcm_start_s"] == 0.0
    assert row["audio_pcm_samples"] == len(pcm) == len(audio)
    assert abs(len(pcm) / 16000 - video["duration_s"]) < 0.1          # about the clip's 6 s
    np.testing.assert_array_equal(pcm.astype(np.float32) / 32768.0, audio)
    assert np.abs(audio).max() > 0.1                                   # speech


def test_no_audio_stream_gives_no_pcm(media):
    path = media / "lp_d0.mp4"
    video = {"video_id": "v", "uri": str(path), **probe(str(path))}
    (row,) = AudioPcm().process(video, [video])
    assert row["audio_pcm"] is None and row["audio_pcm_samples"] == 0
