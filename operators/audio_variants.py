"""audio_variants: speaker-only and listener-only audio of each person clip, and its audio mask.

LPM 1.0 §2.2 and StreamAvatar §3.2 (SPEC item 10). From the final per-frame states of the person
clips of one clip span (``rerank``), for person P:

- ``speaker_audio``: P's own speech kept, speech attributed to anyone else (frames where P listens)
  suppressed; idle regions kept.
- ``listener_audio``: the other role's speech (frames where P listens) kept, P's own speech
  suppressed; idle regions kept.
- ``audio_mask``: per frame of ``frame_times``: 1 = P speaks (speak audio), 2 = P listens to speech
  (listen audio), 0 = neither (idle, discard). StreamAvatar keeps this mask because separation
  alters waveforms; a trainer can rebuild either track from the clip's own audio with it.

Suppression is a gain of 0 with 10 ms linear fades at each edge, on the mix (``source: mix``, keeps
the room and the background) or on the separated vocals when separation ran (``source: vocals``).
The tracks are 16 kHz mono WAV files under the store (``<store>/artifacts/audio_variants/<video>/``),
named by clip; rows keep their URIs.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Param, Resources
from operators.separation import write_wav

SR = 16000
FRAME_S = 0.04
FADE = int(0.01 * SR)


def gain_curve(keep: np.ndarray, n_samples: int, start_s: float, times: np.ndarray) -> np.ndarray:
    """Sample gains (0/1 with 10 ms fades) from a per-frame keep mask at ``times``."""
    g = np.ones(n_samples, np.float32)
    if n_samples == 0:
        return g
    for k, t in enumerate(times):
        if not keep[k]:
            a = int(round((t - FRAME_S / 2 - start_s) * SR))
            b = int(round((t + FRAME_S / 2 - start_s) * SR))
            g[max(0, a):max(0, min(n_samples, b))] = 0.0
    if FADE > 1:   # soften the edges: a short moving average of the 0/1 curve
        k = np.ones(FADE, np.float32) / FADE
        g = np.convolve(g, k, mode="same").astype(np.float32)
    return g


def clip_audio(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples of [start_s, end_s) of a whole-file track (curation.media.load_audio), silence
    where the audio stream does not reach (it ends before the clip, or the clip lies past it)."""
    a, b = int(round(start_s * SR)), int(round(end_s * SR))
    seg = audio[max(0, a): max(0, b)]
    return seg if len(seg) == b - a else np.pad(seg, (0, max(0, b - a - len(seg))))


class AudioVariants(Operator):
    name = "audio_variants"
    summary = "person clips: speaker-only and listener-only WAVs, per-frame speak/listen audio mask"
    version = "2"   # 2: silence where the audio stream does not reach; the file's timeline
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.start_s", "clips.end_s", "clips.frame_times", "clips.frame_states",
             "clips.shot_index", "clips.clip_index", "clips.track_id", "videos.has_audio",
             "videos.vocals_uri", "videos.separation_ran")
    writes = pa.schema([
        pa.field("speaker_audio_uri", pa.string()),
        pa.field("listener_audio_uri", pa.string()),
        pa.field("audio_mask", pa.list_(pa.int8())),
        pa.field("audio_variant_source", pa.string()),
        pa.field("co_tracks", pa.int32()),     # other person clips in the same clip span
        pa.field("separation_ran", pa.bool_()),  # the video's vocals were separated (see videos)
    ])
    params = {"source": Param("mix", choices=("mix", "vocals"),
                              help="suppress speech in the mix, or in the separated vocals when separation ran")}
    resources = Resources(num_cpus=1)

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"error": "no audio stream: no audio variants", "error_stage": self.name}
                    for _ in rows]
        src = "mix"
        uri = video["uri"]
        if self.p["source"] == "vocals" and video.get("vocals_uri"):
            src, uri = "vocals", video["vocals_uri"]
        with local_path(uri) as path:
            try:
                audio = load_audio(path, SR)
            except MediaError as e:
                raise OperatorError(str(e)) from None
        groups: dict[tuple, int] = {}
        for r in rows:
            if r.get("frame_states"):
                key = (r.get("shot_index"), r.get("clip_index"))
                groups[key] = groups.get(key, 0) + 1
        out = []
        for r in rows:
            states = r.get("frame_states")
            if not states:
                out.append({"error": r.get("error") or "no frame states for this clip",
                            "error_stage": r.get("error_stage") or self.name})
                continue
            times = np.asarray(r["frame_times"], np.float64)
            st = np.asarray(states)
            mask = np.where(st == "speak", 1, np.where(st == "listen", 2, 0)).astype(np.int8)
            start, end = float(r["start_s"]), float(r["end_s"])
            seg = clip_audio(audio, start, end)
            speaker = seg * gain_curve(mask != 2, len(seg), start, times)
            listener = seg * gain_curve(mask != 1, len(seg), start, times)
            base = f"{self.artifact_dir(video['video_id'])}/{r['clip_id'].replace(':', '_')}"
            out.append({"speaker_audio_uri": write_wav(f"{base}_speaker.wav", speaker),
                        "listener_audio_uri": write_wav(f"{base}_listener.wav", listener),
                        "audio_mask": mask.tolist(), "audio_variant_source": src,
                        "separation_ran": bool(video.get("separation_ran")),
                        "co_tracks": groups.get((r.get("shot_index"), r.get("clip_index")), 1) - 1})
        return out
