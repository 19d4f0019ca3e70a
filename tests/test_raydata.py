"""The Ray Data engine (curation/raydata.py): a run through ray.data keeps the scheduler's
guarantees. The kill, signal, lease and multi-node tests run it too (test_reliability.py,
test_multinode.py); here: its operators in Ray Data's stats, crash isolation, the same store as
the scheduler's, and a setup failure."""
from __future__ import annotations

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
  - {name: quality, op: quality, after: [clips]}
  - {name: dies, op: dies_on_lp_d0, after: [probe]}
"""


def _rows(store: Store, table: str, *key: str) -> list[dict]:
    rows = store.query(table).drop_columns(["run_id"]).to_pylist()
    return sorted(rows, key=lambda r: tuple(r[k] for k in key))


def test_a_run_through_ray_data_matches_the_scheduler_and_isolates_a_crash(ray_session, media,
                                                                            tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    wf = load(WF, registry={**REGISTRY, "dies_on_lp_d0": DiesOnLpD0})
    files = [str(media / n) for n in ("fr_short_hamilton_clip.mp4", "lp_d0.mp4", "vr_face2.mp4")]
    stores = {}
    for engine in ("raydata", "scheduler"):
        stores[engine] = Store(str(tmp_path / engine))
        summary = Runner(wf, stores[engine], workers=2, engine=engine).run(files)
        steps = {s.step: (s.done, s.failed_videos) for s in summary.steps}
        assert steps == {"probe": (3, 0), "shots": (3, 0), "clips": (3, 0), "quality": (3, 0),
                         "dies": (3, 1)}, engine
        if engine == "raydata":   # the stages ran as Ray Data operators
            for op in ("Stage_probe", "Stage_shots", "Stage_clips", "Stage_quality", "Stage_dies"):
                assert f"MapBatches({op})" in summary.engine_stats
    rd, sc = stores["raydata"], stores["scheduler"]
    videos = {os.path.basename(r["uri"]): r for r in rd.query("videos").to_pylist()}
    assert videos["lp_d0.mp4"]["error"] == failures.CRASHED
    assert videos["lp_d0.mp4"]["error_stage"] == "dies"
    assert videos["vr_face2.mp4"]["survived"] is True and videos["vr_face2.mp4"]["error"] is None
    assert rd.query("status", where="step = 'dies' AND ok = false",
                    columns=["failure"]).to_pylist() == [{"failure": "crash"}]
    # the same store as the scheduler's (one shot per cut of hamilton, its clips scored)
    assert _rows(rd, "shots", "video_id", "shot_index") == _rows(sc, "shots", "video_id", "shot_index")
    assert _rows(rd, "clips", "clip_id") == _rows(sc, "clips", "clip_id")
    assert rd.count("shots") == 4 + 1 + 1 and rd.count("clips", "sharpness IS NOT NULL") >= 3


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
