"""audio_pcm: each video's audio as 16 kHz mono PCM in the store, for the trainer's loader.

The loader gives every window its audio (16 kHz mono, the first sample at round(pts of the first
frame x 16000)). Without this column it decodes and resamples the window's audio from the video file
in the pass that decodes its frames: on the shared clips about a tenth of a window's decode CPU,
paid again every epoch. With it, the loader reads the window's slice of this blob instead (a byte
range by row id, like the Whisper features), and the file pass decodes the frames only.

Stored: ``curation.media.load_audio(path, 16000)`` (PyAV / libswresample, placed on the
presentation timeline from 0 s: sample k is at k / 16000 s; the same samples the other audio steps
read) as int16 little-endian bytes, 32 kB per second of audio (115 MB an hour, a few percent of a
typical video's bytes). A video without an audio stream gets none (``audio_pcm_samples`` 0).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Resources
from schemas import blob_field

SR = 16000


class AudioPcm(Operator):
    name = "audio_pcm"
    summary = "the audio as 16 kHz mono int16 PCM (a blob the loader slices per window)"
    version = "1"
    input_table = output_table = "videos"
    reads = ("videos.has_audio",)
    writes = pa.schema([
        blob_field("audio_pcm"),                       # int16 little-endian, mono
        pa.field("audio_pcm_rate", pa.int32()),        # 16000
        pa.field("audio_pcm_samples", pa.int64()),     # 0: no audio stream
        pa.field("audio_pcm_start_s", pa.float64()),   # time of sample 0 (presentation timeline)
    ])
    resources = Resources(num_cpus=1)

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"audio_pcm": None, "audio_pcm_rate": SR, "audio_pcm_samples": 0,
                     "audio_pcm_start_s": 0.0}]
        with local_path(video["uri"]) as path:
            try:
                audio = load_audio(path, SR)
            except MediaError as e:
                raise OperatorError(str(e)) from None
        pcm = to_int16(audio)
        return [{"audio_pcm": pcm.astype("<i2").tobytes(), "audio_pcm_rate": SR,
                 "audio_pcm_samples": len(pcm), "audio_pcm_start_s": 0.0}]


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 samples of load_audio (s16 / 32768) back to the int16 they were: exact."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
