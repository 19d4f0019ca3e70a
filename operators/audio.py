"""audio: 16 kHz mono extraction (ffmpeg) and voice activity (silero-vad, whose wheel ships the model).

Writes speech segments and the speech ratio of each video. Videos without an audio stream get
``has_speech = false``, no segments and ``vad_backend = "no-audio"``.
"""
from __future__ import annotations

import math

import pyarrow as pa

from curation.media import load_audio, local_path
from curation.operator import Operator, Resources
from schemas import SPANS

SAMPLE_RATE = 16000


class Audio(Operator):
    name = "audio"
    summary = ("16 kHz mono audio (PyAV, in-process), voice activity (silero-vad, model in its "
               "wheel)")
    version = "3"   # 3: audio on the file's presentation timeline (2: the ONNX VAD)
    input_table = output_table = "videos"
    reads = ("videos.has_audio", "videos.duration_s")
    writes = pa.schema([
        pa.field("speech_segments", SPANS),        # seconds from the start of the video
        pa.field("speech_ratio", pa.float64()),    # speech time / video duration
        pa.field("speech_s", pa.float64()),
        pa.field("has_speech", pa.bool_()),
        pa.field("audio_rms_db", pa.float64()),    # loudness of the whole track, dBFS
        pa.field("vad_backend", pa.string()),
    ])
    params = {"threshold": 0.5, "min_speech_ms": 250, "min_silence_ms": 100, "speech_pad_ms": 30}
    resources = Resources(num_cpus=1)
    needs_model = True  # the VAD network is loaded once per worker (it ships inside silero-vad)

    def setup(self) -> None:
        import torch

        from operators.nets.vad import SileroVAD
        torch.set_num_threads(1)
        self._vad = SileroVAD(threshold=self.p["threshold"], min_speech_ms=self.p["min_speech_ms"],
                              min_silence_ms=self.p["min_silence_ms"],
                              speech_pad_ms=self.p["speech_pad_ms"])   # model bundled in the wheel
        self._backend = self._vad.backend

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"speech_segments": [], "speech_ratio": 0.0, "speech_s": 0.0, "has_speech": False,
                     "audio_rms_db": None, "vad_backend": "no-audio"}]
        if not hasattr(self, "_vad"):
            self.setup()
        with local_path(video["uri"]) as path:
            wav = load_audio(path, SAMPLE_RATE)
        duration = video.get("duration_s") or len(wav) / SAMPLE_RATE
        if len(wav) == 0:
            return [{"speech_segments": [], "speech_ratio": 0.0, "speech_s": 0.0, "has_speech": False,
                     "audio_rms_db": None, "vad_backend": self._backend}]
        segments = self._vad.segments(wav)
        speech = sum(s["end_s"] - s["start_s"] for s in segments)
        rms = float((wav.astype("float64") ** 2).mean() ** 0.5)
        return [{"speech_segments": segments, "speech_ratio": min(1.0, speech / duration) if duration else 0.0,
                 "speech_s": speech, "has_speech": bool(segments),
                 "audio_rms_db": 20 * math.log10(rms) if rms > 0 else -120.0,
                 "vad_backend": self._backend}]
