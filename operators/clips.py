"""clips: candidate training clips cut from shots.

A shot shorter than ``min_duration_s`` gives no clip; a longer one is cut into equal consecutive
clips of at most ``max_duration_s`` (each at least ``min_duration_s``). ``trim_s`` is cut off both
ends of a shot first so that frames next to a cut never enter a clip. The video's display size and
frame rate are copied onto each clip, so subsets can be cut by resolution without a join. These
rows have ``clip_kind = 'shot'``; person-centric clips (one track in a clip span) are emitted into the
same table by ``person_clips``.
"""
from __future__ import annotations

import math

import pyarrow as pa

from curation.operator import Operator, Resources
from schemas import CLIPS

_COLUMNS = ("clip_id", "video_id", "shot_index", "clip_index", "clip_kind", "start_s", "end_s",
            "duration_s", "width", "height", "fps")


def split_span(start: float, end: float, min_s: float, max_s: float) -> list[tuple[float, float]]:
    length = end - start
    if length < min_s or length <= 0:
        return []
    n = max(1, math.ceil(length / max_s - 1e-9))
    step = length / n
    return [(start + i * step, start + (i + 1) * step) for i in range(n)]


class Clips(Operator):
    name = "clips"
    summary = "candidate shot clips from shots"
    version = "2"
    input_table = "shots"
    output_table = "clips"
    reads = ("shots.start_s", "shots.end_s", "shots.shot_index", "videos.width", "videos.height",
             "videos.fps")
    writes = pa.schema([CLIPS.field(c) for c in _COLUMNS])
    params = {"min_duration_s": 1.0, "max_duration_s": 10.0, "trim_s": 0.1}
    resources = Resources(num_cpus=0.25)
    inline = True  # metadata only: the driver runs it
    emit_scope = "clip_kind = 'shot' OR clip_kind IS NULL"   # person clips belong to person_clips

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        out = []
        trim = float(self.p["trim_s"])
        for shot in sorted(rows, key=lambda r: r["shot_index"]):
            spans = split_span(shot["start_s"] + trim, shot["end_s"] - trim,
                               float(self.p["min_duration_s"]), float(self.p["max_duration_s"]))
            for i, (a, b) in enumerate(spans):
                out.append({"clip_id": f"{video['video_id']}:{shot['shot_index']}:{i}",
                            "video_id": video["video_id"], "shot_index": shot["shot_index"],
                            "clip_index": i, "clip_kind": "shot",
                            "start_s": round(a, 4), "end_s": round(b, 4),
                            "duration_s": round(b - a, 4), "width": video.get("width"),
                            "height": video.get("height"), "fps": video.get("fps")})
        return out
