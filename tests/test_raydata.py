"""The Ray Data engine (curation/raydata.py): a run through ray.data keeps the scheduler's
guarantees. The kill, signal, lease and multi-node tests run it too (test_reliability.py,
test_multinode.py); here: its operators in Ray Data's stats, crash isolation, the
store the scheduler writes (test_run.py checks the values), a setup failure."""
from __future__ import annotations

import dataclasses
import os
import sys

import pyarrow as pa
import pytest

from curation import failures
from curation.operator import Operator
from curation.runner import Runner
from curation.store import Store
from curation.workflow import load
from operators import REGISTRY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class DiesOnLpD0(Operator):
    """Kills its own worker process on lp_d0.mp4, like a native crash would (an actor pool)."""
    name = "dies_on_lp_d0"
    input_table = output_table = "videos"
    needs_model = True
    writes = pa.schema([pa.field("survived", pa.bool_())])

    def process(self, video, rows):
        if video["uri"].endswith("lp_d0.mp4"):
            os._exit(1)
        return [{"survived": True}]


WF = """name: rd
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe]}
  - {name: clips, op: clips, after: [shots]}
  - {name: dies, op: dies_on_lp_d0, after: [probe]}
"""


def test_a_run_through_ray_data_isolates_a_crash_and_writes_what_the_scheduler_would(
        ray_session, media, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    wf = load(WF, registry={**REGISTRY, "dies_on_lp_d0": DiesOnLpD0})
    files = [str(media / n) for n in ("fr_short_hamilton_clip.mp4", "lp_d0.mp4", "vr_face2.mp4")]
    st = Store(str(tmp_path / "s"))
    summary = Runner(wf, st, workers=2, engine="raydata").run(files)
    assert {s.step: (s.done, s.failed_videos) for s in summary.steps} == {
        "probe": (3, 0), "shots": (3, 0), "clips": (3, 0), "dies": (3, 1)}
    for op in ("Stage_probe", "Stage_shots", "Stage_clips", "Stage_dies"):   # Ray Data operators
        assert f"MapBatches({op})" in summary.engine_stats
    from curation.cli.run import save_engine_stats     # what `curation run` keeps of them
    saved = save_engine_stats(st, summary)
    assert saved == tmp_path / "s" / "_logs" / f"{summary.run_id}-ray-data-stats.txt"
    assert "MapBatches(Stage_dies)" in saved.read_text()
    assert save_engine_stats(st, dataclasses.replace(summary, engine_stats="")) is None   # scheduler
    videos = {os.path.basename(r["uri"]): r for r in st.query("videos").to_pylist()}
    assert videos["lp_d0.mp4"]["error"] == failures.CRASHED
    assert videos["lp_d0.mp4"]["error_stage"] == "dies"
    assert videos["vr_face2.mp4"]["survived"] is True and videos["vr_face2.mp4"]["error"] is None
    assert st.query("status", where="step = 'dies' AND ok = false",
                    columns=["failure"]).to_pylist() == [{"failure": "crash"}]
    ham = videos["fr_short_hamilton_clip.mp4"]["video_id"]   # the same cuts as the scheduler's
    cuts = sorted(r["start_s"] for r in st.query("shots", where=f"video_id = '{ham}'").to_pylist())
    # 0.67, 2.74, 7.04 s into its video, which starts 0.844 s into the file (the audio starts first)
    assert cuts[1:] == pytest.approx([1.514, 3.584, 7.884], abs=0.1) and st.count("clips") >= 4


class BrokenSetup(Operator):
    name = "broken_setup"
    input_table = output_table = "videos"
    needs_model = True
    writes = pa.schema([pa.field("broken_ok", pa.bool_())])

    def setup(self):
        raise OSError("cannot reach the captioning service at http://h:8000/v1")

    def process(self, video, rows):
        return [{"broken_ok": True}]


def test_a_setup_failure_fails_the_run_and_is_retried(ray_session, tiny_videos, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    wf = load("name: s\nsteps:\n  - {op: probe}\n  - {op: broken_setup, after: [probe]}\n",
              registry={**REGISTRY, "broken_setup": BrokenSetup})
    st = Store(str(tmp_path / "s"))
    with pytest.raises(failures.SetupFailed, match="cannot reach the captioning service"):
        Runner(wf, st, workers=2, engine="raydata").run([str(v) for v in tiny_videos[:3]])
    assert st.count("status", "step = 'probe' AND ok = true") == 3
    assert st.count("status", "step = 'broken_setup' AND failure = 'setup'") == 3
    assert st.query("runs", columns=["status"]).to_pylist() == [{"status": "failed"}]
