"""clip_speech: how much of each clip has speech, from the video's voice-activity segments."""
from __future__ import annotations

import pyarrow as pa

from curation.operator import Operator, Resources


def overlap(segments: list[dict], start: float, end: float) -> float:
    return sum(max(0.0, min(end, s["end_s"]) - max(start, s["start_s"])) for s in segments or [])


class ClipSpeech(Operator):
    name = "clip_speech"
    summary = "voice activity share of each clip"
    version = "1"
    input_table = output_table = "clips"
    reads = ("videos.speech_segments", "videos.has_audio", "clips.start_s", "clips.end_s")
    writes = pa.schema([
        pa.field("speech_ratio", pa.float64()),   # speech time inside the clip / clip duration
        pa.field("speech_s", pa.float64()),
        pa.field("has_audio", pa.bool_()),
    ])
    resources = Resources(num_cpus=0.25)
    inline = True  # metadata only: the driver runs it

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        segs = video.get("speech_segments") or []
        out = []
        for r in rows:
            dur = max(1e-9, r["end_s"] - r["start_s"])
            s = overlap(segs, r["start_s"], r["end_s"])
            out.append({"speech_ratio": min(1.0, s / dur), "speech_s": s,
                        "has_audio": bool(video.get("has_audio"))})
        return out
