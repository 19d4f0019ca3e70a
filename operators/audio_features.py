"""audio_features: Whisper-encoder features of each video's audio, precomputed for the trainer
(LongCat §3.2; FlowAct-R1 §2.3).

The audio (16 kHz mono, ``curation.media.load_audio``) is cut into 30 s pieces (Whisper's context),
each piece's log-mel spectrogram goes through the encoder, and every hidden state is kept: the
embedding (after the positional embedding) and each block's output, the last one after ``ln_post``
(S = layers + 1 states; 5 for tiny.en, 33 for large). They are pooled into G = 5 groups by mean: the
first S - 1 states in 4 consecutive groups, the last one alone (large: 4 x 8 + 1, as LongCat; tiny.en:
4 x 1 + 1). The result, (F, 5, D) at 50 Hz (frame f covers the audio from f / 50 s; D = 384 for
tiny.en, 1280 for large), is stored as float16 bytes in a blob column of ``videos`` with its shape,
rate and start; the loader resamples it linearly to a window's frame times
(``curation.data.conditions.features_at``). A video without audio gets no features
(``audio_features_backend = "no-audio"``).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Param, Resources
from schemas import blob_field

SR = 16000
CHUNK = 30 * SR          # whisper.audio.N_SAMPLES
HOP = 320                # samples per encoder frame (50 Hz)
GROUPS = 5


def group_states(states: list[np.ndarray]) -> np.ndarray:
    """(S, F, D) hidden states -> (F, 5, D): the first S - 1 in 4 consecutive groups (means), the
    last alone."""
    head = np.array_split(np.arange(len(states) - 1), GROUPS - 1)
    groups = [np.mean([states[i] for i in idx], axis=0) for idx in head] + [states[-1]]
    return np.stack(groups, axis=1)


class AudioFeatures(Operator):
    name = "audio_features"
    summary = ("Whisper-encoder features for the trainer: every hidden state, 5 groups (mean), 50 Hz, "
               "float16 (LongCat §3.2)")
    version = "1"
    input_table = output_table = "videos"
    reads = ("videos.has_audio",)
    writes = pa.schema([
        blob_field("audio_features"),                       # float16 bytes, shape below
        pa.field("audio_features_shape", pa.list_(pa.int32())),   # [F, 5, D]
        pa.field("audio_features_hz", pa.float64()),        # 50.0
        pa.field("audio_features_start_s", pa.float64()),   # time of frame 0 (the audio's start)
        pa.field("audio_features_backend", pa.string()),    # "whisper:tiny.en", "no-audio"
    ])
    params = {"model": Param("tiny.en", help="checkpoint under whisper/ in the model directory")}
    resources = Resources(num_cpus=1)
    needs_model = True

    def weight_files(self) -> list[str]:
        return [f"whisper/{self.p['model']}.pt"]

    def setup(self) -> None:
        import torch
        import whisper

        from operators.nets import weight_path
        torch.set_num_threads(max(1, int(self.resources.num_cpus)))
        path = weight_path(self.model_dir, f"whisper/{self.p['model']}.pt")
        self.model = whisper.load_model(str(path), device="cpu").eval()

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"audio_features": None, "audio_features_shape": None, "audio_features_hz": None,
                     "audio_features_start_s": None, "audio_features_backend": "no-audio"}]
        with local_path(video["uri"]) as path:
            try:
                audio = load_audio(path, SR)
            except MediaError as e:
                raise OperatorError(str(e)) from None
        feats = self.features(np.asarray(audio, np.float32))
        return [{"audio_features": feats.astype(np.float16).tobytes(),
                 "audio_features_shape": list(feats.shape), "audio_features_hz": SR / HOP,
                 "audio_features_start_s": 0.0, "audio_features_backend": f"whisper:{self.p['model']}"}]

    def features(self, audio: np.ndarray) -> np.ndarray:
        """(F, 5, D) float32 for ``audio`` (16 kHz), F = ceil(len / 320)."""
        out = []
        for a in range(0, max(1, len(audio)), CHUNK):
            piece = audio[a:a + CHUNK]
            frames = max(1, -(-len(piece) // HOP))
            out.append(group_states([s[:frames] for s in self.hidden_states(piece)]))
        return np.concatenate(out)

    def hidden_states(self, piece: np.ndarray) -> list[np.ndarray]:
        """Every hidden state of the encoder on one piece of at most 30 s: (1500, D) each."""
        import torch
        import torch.nn.functional as F
        import whisper
        enc = self.model.encoder
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(piece)),
                                          n_mels=self.model.dims.n_mels)
        with torch.inference_mode():
            x = F.gelu(enc.conv1(mel[None]))
            x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
            x = (x + enc.positional_embedding[: x.shape[1]]).to(x.dtype)
            states = [x]
            for i, block in enumerate(enc.blocks):
                x = block(x)
                states.append(enc.ln_post(x) if i == len(enc.blocks) - 1 else x)
        return [s[0].float().numpy() for s in states]
