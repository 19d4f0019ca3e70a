"""shot_people: how many people each shot shows (LPM §2.1: drop shots without a visible person or
with excessive crowd density), from the ``tracks`` rows the ``people`` step wrote.

- ``person_count``: the most stable, non-static tracks present at the same moment in the shot
  (tracks are contiguous spans [start_s, end_s)); 0 when the shot has none.
- ``face_person_count``: the same, counting only tracks with a face on at least ``min_face_ratio`` of
  their frames (a cartoon character or a person seen from the back does not count).
- ``static_count``: tracks marked ``is_static`` (posters, photos, statues, screens) in the shot.
- ``crowd``: ``person_count`` above ``max_people``.
"""
from __future__ import annotations

import pyarrow as pa

from curation.operator import Operator, Param, Resources


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of half-open spans [start, end) that overlap at one instant."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # an end sorts before a start
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


class ShotPeople(Operator):
    name = "shot_people"
    summary = "person / face-person / static counts per shot, crowd flag"
    version = "1"
    input_table = "shots"
    output_table = "shots"
    reads = ("shots.shot_index", "tracks.shot_index", "tracks.start_s", "tracks.end_s",
             "tracks.is_static", "tracks.face_ratio")
    writes = pa.schema([
        pa.field("person_count", pa.int32()),
        pa.field("face_person_count", pa.int32()),
        pa.field("static_count", pa.int32()),
        pa.field("crowd", pa.bool_()),
    ])
    params = {
        "max_people": Param(5, type=int, help="a shot with more people at once is a crowd"),
        "min_face_ratio": Param(0.5, help="face_person_count: share of a track's frames with a face"),
    }
    resources = Resources(num_cpus=0.25)
    inline = True  # metadata only: the driver runs it

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        tracks = video.get("tables", {}).get("tracks", [])
        out = []
        for shot in rows:
            mine = [t for t in tracks if t.get("shot_index") == shot["shot_index"] and t.get("start_s") is not None]
            live = [t for t in mine if not t.get("is_static")]
            faces = [t for t in live if (t.get("face_ratio") or 0.0) >= float(self.p["min_face_ratio"])]
            count = most_at_once([(t["start_s"], t["end_s"]) for t in live])
            out.append({"person_count": count,
                        "face_person_count": most_at_once([(t["start_s"], t["end_s"]) for t in faces]),
                        "static_count": sum(1 for t in mine if t.get("is_static")),
                        "crowd": count > int(self.p["max_people"])})
        return out
