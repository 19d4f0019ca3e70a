"""Voice activity with silero-vad (its models ship inside the wheel: no download).

The wheel's ONNX export runs through onnxruntime (one thread): the same speech spans as its
TorchScript model on every shared clip, at 0.54x the CPU time (silero calls the network once per
32 ms window, and ORT's per-call overhead is the smaller). TorchScript is the fallback when
onnxruntime is missing.

``SileroVAD().segments(wav16k)`` -> speech spans in seconds. Used by the ``audio`` operator on the
mix and by ``separation`` on the separated vocals.
"""
from __future__ import annotations

from importlib.metadata import version

import numpy as np

SAMPLE_RATE = 16000


class SileroVAD:
    def __init__(self, threshold: float = 0.5, min_speech_ms: int = 250, min_silence_ms: int = 100,
                 speech_pad_ms: int = 30):
        import torch
        from silero_vad import get_speech_timestamps, load_silero_vad
        self._torch = torch
        try:
            import onnxruntime  # noqa: F401
            self._model, kind = load_silero_vad(onnx=True), "onnx"
        except ImportError:
            self._model, kind = load_silero_vad(), "jit"
        self._timestamps = get_speech_timestamps
        self.kw = dict(threshold=threshold, min_speech_duration_ms=min_speech_ms,
                       min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
        self.backend = f"silero-vad {version('silero-vad')} ({kind}, bundled model)"

    def segments(self, wav: np.ndarray) -> list[dict]:
        """Speech spans of mono float32 16 kHz audio in [-1, 1], as [{start_s, end_s}]."""
        if len(wav) == 0:
            return []
        stamps = self._timestamps(self._torch.from_numpy(np.ascontiguousarray(wav, np.float32)),
                                  self._model, sampling_rate=SAMPLE_RATE, return_seconds=False,
                                  **self.kw)
        self._model.reset_states()
        return [{"start_s": s["start"] / SAMPLE_RATE, "end_s": s["end"] / SAMPLE_RATE} for s in stamps]
