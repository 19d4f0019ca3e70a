"""person_clips: person-centric clips (LPM §2.2: multi-person clips are turned into single-person
clips along the person tracks), next to the shot clips in the ``clips`` table.

For each track that is not static and each shot clip of the same shot (``clip_kind = 'shot'``) it
overlaps, one clip row over the intersection of the two spans, when it lasts at least
``min_duration_s`` and the track has a face on at least ``min_face_ratio`` of its frames inside it
(a cartoon character, a person seen from the back, a face-less detection never makes a person clip).

``clip_id = "<shot clip_id>:<k>"`` where k is the track's index in its shot (the last part of its
``track_id``); ``clip_kind = 'person'``; ``track_id`` names the track; ``clip_index`` is the shot
clip's; ``width``/``height``/``fps`` are copied from the shot clip (the video's).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.operator import Operator, Param, Resources
from curation.tracks import FRAME_TIMES, has_face, in_span
from schemas import CLIPS

_COLUMNS = ("clip_id", "video_id", "shot_index", "clip_index", "clip_kind", "track_id", "start_s", "end_s",
            "duration_s", "width", "height", "fps")


class PersonClips(Operator):
    name = "person_clips"
    summary = "one person clip per non-static track with a face per shot clip span"
    version = "1"
    input_table = "tracks"
    output_table = "clips"
    reads = ("tracks.track_id", "tracks.shot_index", "tracks.start_s", "tracks.end_s", "tracks.is_static",
             "tracks.frame_times_s", "tracks.face_boxes",
             "clips.clip_id", "clips.clip_kind", "clips.shot_index", "clips.clip_index", "clips.start_s",
             "clips.end_s", "clips.width", "clips.height", "clips.fps")
    writes = pa.schema([CLIPS.field(c) for c in _COLUMNS])
    emit_scope = "clip_kind = 'person'"
    params = {
        "min_duration_s": Param(1.0, help="shortest person clip (seconds)"),
        "min_face_ratio": Param(0.5, help="share of the clip's track frames that must have a face"),
    }
    resources = Resources(num_cpus=0.25)
    inline = True  # metadata only: the driver runs it

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        shot_clips = [c for c in video.get("tables", {}).get("clips", [])
                      if c.get("clip_kind") in (None, "shot")]
        out = []
        for track in sorted(rows, key=lambda r: r["track_id"]):
            if track.get("is_static") or track.get("start_s") is None:
                continue
            k = track["track_id"].rsplit(":", 1)[1]
            times = np.asarray(track.get(FRAME_TIMES) or [], np.float64)
            face = has_face(track)
            for clip in sorted(shot_clips, key=lambda c: c["clip_id"]):
                if clip.get("shot_index") != track.get("shot_index"):
                    continue
                a, b = max(clip["start_s"], track["start_s"]), min(clip["end_s"], track["end_s"])
                if b - a < float(self.p["min_duration_s"]) - 1e-9:
                    continue
                inside = in_span(times, a, b)
                if not inside.any() or face[inside].mean() < float(self.p["min_face_ratio"]):
                    continue
                out.append({"clip_id": f"{clip['clip_id']}:{k}", "video_id": video["video_id"],
                            "shot_index": clip["shot_index"], "clip_index": clip.get("clip_index"),
                            "clip_kind": "person", "track_id": track["track_id"], "start_s": round(a, 4),
                            "end_s": round(b, 4), "duration_s": round(b - a, 4), "width": clip.get("width"),
                            "height": clip.get("height"), "fps": clip.get("fps")})
        return out
