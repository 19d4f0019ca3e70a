"""separation: vocals apart from music and noise where there is any, and voice activity on them.

Per video (issue 7 items 3-4): the soundtrack (44.1 kHz stereo) goes through a 2-stem separator
(Spleeter 2stems by default, Demucs htdemucs from the model directory as the second backend); the
accompaniment stem measures the music/noise level (``operators/nets/audio_scene.py``: share of 0.5 s
windows where the accompaniment carries >= 10 % of the energy and is audible). When that share is at
least ``min_music_ratio`` the vocals are used downstream: written as a 16 kHz mono WAV under the
store (``vocals_uri``) and voice activity (silero-vad) runs on them; otherwise the mix's voice
activity from the ``audio`` step is kept. When separation ran, the voice segments are by default the
union of the VAD on the vocals and the VAD on the mix (``voice: union``): on dj_video4 (music 56 % of
the windows) the vocals alone kept 2.8 s of the 7.6 s of speech the mix VAD found (Spleeter
attenuates quiet speech under music), while the vocals find speech that loud music hides in the mix.
The row says whether separation ran, on what measure, and which signal the voice segments come from.
"""
from __future__ import annotations

import io
import wave

import numpy as np
import pyarrow as pa

from curation.media import local_path
from curation.operator import Operator, OperatorError, Param, Resources
from schemas import SPANS

SR = 16000


def write_wav(uri: str, wav: np.ndarray, sample_rate: int = SR) -> str:
    """Write mono float audio as 16-bit PCM WAV to a local path or object-store URI."""
    import pyarrow.fs as pafs
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.clip(np.round(np.asarray(wav) * 32767), -32768, 32767).astype("<i2").tobytes())
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), uri.removeprefix("file://")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(buf.getvalue())
    return uri


def union(a: list[dict], b: list[dict]) -> list[dict]:
    """Union of two lists of {start_s, end_s} spans, merged and sorted."""
    out: list[dict] = []
    for seg in sorted(a + b, key=lambda x: x["start_s"]):
        if out and seg["start_s"] <= out[-1]["end_s"]:
            out[-1] = {"start_s": out[-1]["start_s"], "end_s": max(out[-1]["end_s"], seg["end_s"])}
        else:
            out.append({"start_s": seg["start_s"], "end_s": seg["end_s"]})
    return out


class Separation(Operator):
    name = "separation"
    summary = ("Spleeter 2-stem (or Demucs) vocals where music/noise is measured, voice activity on "
               "them")
    version = "3"   # 3: vocals on the file's presentation timeline
    input_table = output_table = "videos"
    reads = ("videos.has_audio", "videos.speech_segments", "videos.vad_backend")
    writes = pa.schema([
        pa.field("separation_ran", pa.bool_()),
        pa.field("separation_reason", pa.string()),
        pa.field("music_ratio", pa.float32()),
        pa.field("accompaniment_db", pa.float32()),
        pa.field("separation_backend", pa.string()),
        pa.field("vocals_uri", pa.string()),
        pa.field("voice_segments", SPANS),
        pa.field("voice_source", pa.string()),
    ])
    params = {
        "backend": Param("spleeter", choices=("spleeter", "demucs")),
        "demucs_weights": Param("separation/demucs/955717e8-8726e21a.th",
                                help="demucs checkpoint (.th) or bag (.yaml), relative to --models"),
        "min_music_ratio": Param(0.1, help="share of 0.5 s windows with music/noise that triggers separation"),
        "force": Param(False, help="use the vocals whatever the measure says"),
        "voice": Param("union", choices=("union", "vocals"),
                       help="voice segments when separation ran: VAD on the vocals joined with the "
                            "mix's, or on the vocals only"),
    }
    resources = Resources(num_cpus=1)
    needs_model = True

    def weight_files(self) -> list[str]:
        if self.p["backend"] == "spleeter":
            from operators.nets.spleeter import WEIGHTS
            return [WEIGHTS]
        return [self.p["demucs_weights"]]

    def setup(self) -> None:
        import torch
        torch.set_num_threads(1)
        if self.p["backend"] == "spleeter":
            from operators.nets.spleeter import Spleeter
            self.sep = Spleeter(self.model_dir)
            self.backend = f"spleeter-2stems ({self.sep.weights.name})"
        else:
            from operators.nets.demucs_sep import Demucs
            self.sep = Demucs(self.model_dir, weights=self.p["demucs_weights"])
            self.backend = f"demucs ({self.p['demucs_weights'].rsplit('/', 1)[-1]})"
        from operators.nets.vad import SileroVAD
        self.vad = SileroVAD()

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"separation_ran": False, "separation_reason": "no audio stream",
                     "music_ratio": None, "accompaniment_db": None, "vocals_uri": None,
                     "voice_segments": [], "voice_source": "no-audio", "separation_backend": None}]
        from operators.nets import audio_scene
        from operators.nets.spleeter import read_audio, resample
        with local_path(video["uri"]) as path:
            try:
                wav = read_audio(path, 44100, 2)
            except Exception as e:  # noqa: BLE001
                raise OperatorError(f"audio extraction failed: {e}") from None
        level = audio_scene.measure(wav, wav, np.zeros_like(wav), 44100)   # silence check first
        vocals = None
        if level.mix_db >= audio_scene.SILENT_DBFS and len(wav):
            v, a = self.sep.separate(wav, 44100)
            level = audio_scene.measure(wav, v, a, 44100, min_ratio=float(self.p["min_music_ratio"]))
            vocals = v
        use = vocals is not None and (level.separate or bool(self.p["force"]))
        out = {"separation_ran": bool(use), "separation_reason": level.reason,
               "music_ratio": level.music_ratio, "accompaniment_db": level.accompaniment_db,
               "separation_backend": self.backend}
        if use:
            mono = resample(vocals.mean(1) if vocals.ndim == 2 else vocals, 44100, SR)
            uri = write_wav(f"{self.artifact_dir(video['video_id'])}/vocals.wav", mono)
            voice = self.vad.segments(mono.astype(np.float32))
            if self.p["voice"] == "union":
                voice = union(voice, video.get("speech_segments") or [])
            out.update(vocals_uri=uri, voice_segments=voice,
                       voice_source="vocals" if self.p["voice"] == "vocals" else "vocals+mix")
        else:
            out.update(vocals_uri=None, voice_segments=video.get("speech_segments") or [],
                       voice_source="mix")
        return [out]
