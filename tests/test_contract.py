"""The operator contract's newer parts, run for real on shared clips: typed parameters, declared
weights, multi-table inputs, emitting frame operators with a scope, batches of videos per call,
staged large outputs, and streaming across stages (a video's next step starts before the previous
step has finished every video)."""
from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from curation.media import FrameSpec
from curation.operator import Operator, Param
from curation.runner import INLINE_BYTES, Runner, StageWorker
from curation.store import Store
from curation.workflow import MissingWeightsError, WorkflowError, load
from operators import REGISTRY

BASE = """
name: contract
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe]}
  - {name: clips, op: clips, after: [shots]}
"""


class Typed(Operator):
    name = "typed"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("typed_value", pa.float64())])
    params = {"mode": Param("fast", choices=("fast", "exact")), "scale": 1.0,
              "count": Param(3, type=int)}
    weights = ("typed/weights.bin",)

    def weight_files(self):
        return [] if self.p["mode"] == "fast" else list(self.weights)

    def process(self, video, rows):
        return [{"typed_value": float(self.p["scale"]) * self.p["count"]} for _ in rows]


class ShotsSeen(Operator):
    """Over clips; reads shots of the same video (a multi-table input)."""
    name = "shots_seen"
    input_table = output_table = "clips"
    reads = ("clips.start_s", "shots.start_s", "shots.end_s")
    writes = pa.schema([pa.field("shots_in_video", pa.int32()),
                        pa.field("covering_shot", pa.int32())])

    def process(self, video, rows):
        shots = video["tables"]["shots"]
        out = []
        for r in rows:
            cover = [s["shot_index"] for s in shots if s["start_s"] <= r["start_s"] < s["end_s"]]
            out.append({"shots_in_video": len(shots), "covering_shot": cover[0] if cover else None})
        return out


class FakeTracks(Operator):
    """An emitting frame operator: one 'track' per shot with a per-frame mean luma list."""
    name = "fake_tracks"
    input_table = "shots"
    output_table = "tracks"
    reads = ("shots.start_s", "shots.end_s", "shots.shot_index")
    writes = pa.schema([pa.field("track_id", pa.string()), pa.field("video_id", pa.string()),
                        pa.field("shot_index", pa.int32()),
                        pa.field("frame_times_s", pa.list_(pa.float64())),
                        pa.field("luma", pa.list_(pa.float32())),
                        pa.field("padding", pa.list_(pa.float32()))])
    frames = FrameSpec(fps=5.0, max_side=None)
    params = {"pad": 0}

    def process_row(self, video, row, frames):
        assert frames.scale == pytest.approx(1.0, abs=0.01)   # max_side None: native size
        return [{"track_id": f"{video['video_id']}:{row['shot_index']}:0", "video_id": video["video_id"],
                 "shot_index": row["shot_index"], "frame_times_s": frames.times.tolist(),
                 "luma": frames.images.mean(axis=(1, 2, 3)).astype(np.float32).tolist(),
                 "padding": [0.0] * int(self.p["pad"])}]


class Slow(Operator):
    name = "slow"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("slow_done", pa.bool_())])
    params = {"seconds": 1.0}

    def process(self, video, rows):
        time.sleep(float(self.p["seconds"]))
        return [{"slow_done": True}]


class SlowToo(Slow):
    name = "slow_too"
    writes = pa.schema([pa.field("slow_too_done", pa.bool_())])

    def process(self, video, rows):
        time.sleep(float(self.p["seconds"]))
        return [{"slow_too_done": True}]


REG = {**REGISTRY, **{c.name: c for c in (Typed, ShotsSeen, FakeTracks, Slow, SlowToo)}}


def test_typed_parameters_are_checked_at_load():
    ok = load(BASE + "  - {op: typed, after: [probe], params: {mode: exact, scale: 2}}\n", registry=REG)
    assert ok.by_name["typed"].make().p == {"mode": "exact", "scale": 2, "count": 3}
    with pytest.raises(WorkflowError, match=r"step 'typed'.*'mode' must be one of fast, exact; got 'slow'"):
        load(BASE + "  - {op: typed, after: [probe], params: {mode: slow}}\n", registry=REG)
    with pytest.raises(WorkflowError, match=r"'count' must be int, got 'three'"):
        load(BASE + "  - {op: typed, after: [probe], params: {count: three}}\n", registry=REG)
    with pytest.raises(WorkflowError, match=r"'scale' must be int or float, got 'big'"):
        load(BASE + "  - {op: typed, after: [probe], params: {scale: big}}\n", registry=REG)
    with pytest.raises(WorkflowError, match=r"batch_size must be a positive integer"):
        load(BASE + "  - {op: typed, after: [probe], batch_size: 0}\n", registry=REG)


def test_missing_weights_stop_the_run_before_any_step(tmp_path, media):
    wf = load(BASE + "  - {op: typed, after: [probe], params: {mode: exact}}\n", registry=REG)
    st = Store(str(tmp_path / "s"))
    with pytest.raises(MissingWeightsError, match=r"step 'typed' needs .*typed/weights.bin") as e:
        Runner(wf, st, model_dir=str(tmp_path / "models"), executor="local").run(
            [str(media / "pf_single_face.mp4")])
    assert e.value.exit_code == 2
    assert not st.exists("videos")        # nothing ran
    (tmp_path / "models" / "typed").mkdir(parents=True)
    (tmp_path / "models" / "typed" / "weights.bin").write_bytes(b"x")
    Runner(wf, st, model_dir=str(tmp_path / "models"), executor="local").run(
        [str(media / "pf_single_face.mp4")])
    assert st.query("videos", columns=["typed_value"]).to_pylist() == [{"typed_value": 3.0}]


def test_multi_table_inputs_and_emitting_frame_operator(tmp_path, media):
    text = BASE + ("  - {op: shots_seen, after: [clips]}\n"
                   "  - {op: fake_tracks, after: [shots]}\n")
    st = Store(str(tmp_path / "s"))
    Runner(load(text, registry=REG), st, executor="local").run(
        [str(media / "fr_short_hamilton_clip.mp4")])
    clips = st.query("clips").to_pylist()
    assert len(clips) == 3 and all(c["shots_in_video"] == 4 for c in clips)
    assert sorted(c["covering_shot"] for c in clips) == sorted(c["shot_index"] for c in clips)
    tracks = st.query("tracks").to_pylist()
    assert len(tracks) == 4                       # one per shot (cuts at 0.67, 2.74, 7.04 s)
    t = max(tracks, key=lambda r: len(r["frame_times_s"]))   # the 4.3 s shot: ~21 frames at 5 fps
    assert 19 <= len(t["frame_times_s"]) <= 23 and len(t["luma"]) == len(t["frame_times_s"])
    assert all(0 < v < 255 for v in t["luma"])


def test_large_outputs_are_staged_by_the_worker(tmp_path, media):
    """A result over the inline limit is written by the worker: as a staged file under the store
    while its table does not exist yet, then as uncommitted Lance fragments of the table (the driver
    commits their metadata only). Either way it lands in the table."""
    st = Store(str(tmp_path / "s"))
    text = BASE + f"  - {{op: fake_tracks, after: [shots], params: {{pad: {INLINE_BYTES // 4 + 10}}}}}\n"
    wf = load(text, registry=REG)
    Runner(wf, st, executor="local").run([str(media / "pf_single_face.mp4")])
    vid = st.query("videos").to_pylist()[0]["video_id"]
    step = wf.by_name["fake_tracks"]
    worker = StageWorker([(step.name, step.op_cls, step.params)], None, "shots", st.uri, None, "r1")
    [(got_vid, [result])] = worker([vid])
    assert got_vid == vid and isinstance(result.rows, dict)
    assert "staged" not in result.rows and result.rows["rows"] == st.count("tracks")
    assert sum(f.physical_rows for f in result.rows["fragments"]) == result.rows["rows"]
    assert st.count("tracks") == result.rows["rows"]     # written, not committed by the worker
    assert len(st.query("tracks").to_pylist()[0]["padding"]) == INLINE_BYTES // 4 + 10


@pytest.mark.slow
@pytest.mark.ray
def test_stages_stream_and_batches_give_the_same_rows(ray_session, tmp_path, media):
    """Six videos through two 1-second steps with 2 workers: the second step starts on the first
    videos before the first step has finished them all; batching changes nothing in the rows. (With
    four, a slot shared by both steps could end slow's last video and slow_too's first in the same
    second: a fresh-clone CI run missed by 15 ms.)"""
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    files = [str(media / n) for n in ("vr_face1.mp4", "vr_face2.mp4", "vr_face3.mp4", "lp_d3.mp4",
                                         "pf_single_face.mp4", "dj_video5.mp4")]
    text = ("name: s\nsteps:\n  - {op: probe}\n  - {op: slow, after: [probe]}\n"
            "  - {op: slow_too, after: [slow]}\n")
    st = Store(str(tmp_path / "a"))
    Runner(load(text, registry=REG), st, workers=2, flush_every=1).run(files)
    status = st.query("status").to_pylist()
    slow_end = max(r["updated_at"] for r in status if r["step"] == "slow")
    too_start = min(r["updated_at"] for r in status if r["step"] == "slow_too")
    assert too_start < slow_end        # streaming: slow_too committed a video before slow finished
    batched = Store(str(tmp_path / "b"))
    text_b = text.replace("{op: slow, after: [probe]}", "{op: slow, after: [probe], batch_size: 4}")
    Runner(load(text_b, registry=REG), batched, workers=2).run(files)
    cols = ["video_id", "slow_done", "slow_too_done", "duration_s"]
    rows = lambda s: sorted(s.query("videos", columns=cols).to_pylist(), key=lambda r: r["video_id"])  # noqa: E731
    assert rows(st) == rows(batched) and all(r["slow_too_done"] for r in rows(st))
