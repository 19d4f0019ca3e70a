"""A worker process that dies on one video (as a decoder segfault would) costs that video only."""
from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

from curation.operator import Operator
from curation.runner import Runner
from curation.store import Store
from curation.workflow import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class DiesOnLpD0(Operator):
    """Test double: kills its own worker process on lp_d0.mp4, like a native crash would."""
    name = "dies_on_lp_d0"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("survived", pa.bool_())])

    def process(self, video, rows):
        if video["uri"].endswith("lp_d0.mp4"):
            os._exit(1)
        return [{"survived": True}]


class DiesOnLpD0InActor(DiesOnLpD0):
    """The same in an actor pool (operators that load a model run as actors)."""
    name = "dies_on_lp_d0"
    needs_model = True


@pytest.mark.parametrize("op_cls", [DiesOnLpD0, DiesOnLpD0InActor], ids=["task", "actor"])
def test_a_dead_worker_loses_only_its_video(ray_session, media, tmp_path, op_cls):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    from operators import REGISTRY
    wf = load("name: crash\nsteps:\n  - {op: probe}\n  - {op: dies_on_lp_d0, after: [probe]}\n",
              registry={**REGISTRY, op_cls.name: op_cls})
    st = Store(str(tmp_path / "s"))
    files = [str(media / n) for n in ("vr_face2.mp4", "lp_d0.mp4", "pf_single_face.mp4")]
    summary = Runner(wf, st, workers=2).run(files)
    step = next(s for s in summary.steps if s.step == "dies_on_lp_d0")
    assert step.done == 3 and step.failed_videos == 1
    rows = {os.path.basename(r["uri"]): r for r in st.query("videos").to_pylist()}
    assert rows["lp_d0.mp4"]["error"] == "worker crashed while processing this video"
    assert rows["lp_d0.mp4"]["error_stage"] == "dies_on_lp_d0"
    assert rows["vr_face2.mp4"]["survived"] is True and rows["pf_single_face.mp4"]["survived"] is True
