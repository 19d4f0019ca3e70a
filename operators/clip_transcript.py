"""clip_transcript: the ASR sentence units inside each clip's span, as ``transcript_segments``.

A unit belongs to a clip when at least half of it lies inside the clip (so a sentence cut by the clip
edge goes with the clip that holds most of it); times stay in video seconds. ``transcript_text`` joins
the texts; ``sentence_bounded`` says whether the clip starts and ends between sentence units (LPM §2.3:
sentence-bounded variable-length segments), within ``tolerance_s``.
"""
from __future__ import annotations

import pyarrow as pa

from curation.operator import Operator, Param, Resources
from schemas.labels import SENTENCE


class ClipTranscript(Operator):
    name = "clip_transcript"
    summary = "the sentence units inside each clip"
    version = "1"
    input_table = output_table = "clips"
    reads = ("clips.start_s", "clips.end_s", "videos.asr_sentences")
    writes = pa.schema([
        pa.field("transcript_segments", pa.list_(SENTENCE)),
        pa.field("transcript_text", pa.string()),
        pa.field("sentence_bounded", pa.bool_()),
    ])
    params = {"tolerance_s": Param(0.1)}
    resources = Resources(num_cpus=0.25)
    inline = True

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        units = video.get("asr_sentences") or []
        tol = float(self.p["tolerance_s"])
        out = []
        for r in rows:
            a, b = r["start_s"], r["end_s"]
            mine = [u for u in units
                    if min(b, u["end_s"]) - max(a, u["start_s"]) >= 0.5 * max(u["end_s"] - u["start_s"], 1e-3)]
            cut = any(u["start_s"] < a - tol < u["end_s"] or u["start_s"] < b + tol < u["end_s"]
                      for u in units if not (u["start_s"] >= a - tol and u["end_s"] <= b + tol))
            out.append({"transcript_segments": mine,
                        "transcript_text": " ".join(u["text"] for u in mine),
                        "sentence_bounded": not cut})
        return out
