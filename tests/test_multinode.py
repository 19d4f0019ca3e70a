"""Two Ray nodes on this machine: a model step that asks for a custom resource runs on the node that
has it; the other steps run anywhere.

The cluster is two ``ray start --block`` processes, each in its own session (process group) and
with its own ``--temp-dir``: a head (1 CPU) and a second node (1 CPU and the custom resource
``accelerator: 1``, standing in for a GPU). Own temp dirs keep ``/tmp/ray/ray_current_cluster``
untouched (a plain ``ray.init()`` of another process on this machine would otherwise join this
cluster); teardown ends the two process groups this test started (never ``ray stop``, which stops
every Ray on the machine). ``RAY_AUTH_MODE=disabled``: Ray 2.60's ``ray start --head`` turns token
authentication on when ``~/.ray/auth_token`` exists, and the second node and the driver would then
need the token too (see ray/_private/authentication/authentication_token_setup.py).

The workflow runs in a subprocess with ``RAY_ADDRESS`` set, as ``curation run`` on a cluster does
(``curation.runner.init_ray`` joins the cluster named by ``RAY_ADDRESS``). Its two test operators,
defined in that subprocess's ``__main__`` (so Ray ships them to the workers by value), record
``ray.get_runtime_context().get_node_id()`` of the process they ran in.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
CLIPS = ("vr_face1.mp4", "pf_single_face.mp4", "lp_d0.mp4")

DRIVER = r'''
import json, os, sys, time
import pyarrow as pa
import ray
from curation.operator import Operator
from curation.runner import Runner, init_ray
from curation.store import Store
from curation.workflow import load


class WhereModel(Operator):
    """A model step: an actor (needs_model) that records the node it runs on."""
    name = "where_model"
    input_table = output_table = "videos"
    needs_model = True
    writes = pa.schema([pa.field("model_node", pa.string())])

    def process(self, video, rows):
        return [{"model_node": ray.get_runtime_context().get_node_id()}]


class WhereCpu(Operator):
    """A stateless step (a Ray task) that records the node it runs on."""
    name = "where_cpu"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("cpu_node", pa.string())])

    def process(self, video, rows):
        return [{"cpu_node": ray.get_runtime_context().get_node_id()}]


WORKFLOW = """
name: multinode
steps:
  - {name: probe, op: probe}
  - {name: where_cpu, op: where_cpu, after: [probe]}
  - name: where_model
    op: where_model
    after: [probe]
    workers: 1
    resources: {custom: {accelerator: 1}}
"""

store_dir, files = sys.argv[1], sys.argv[2:]
init_ray(2)      # joins the cluster of RAY_ADDRESS
deadline = time.time() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
    time.sleep(0.5)
from operators import REGISTRY
wf = load(WORKFLOW, registry={**REGISTRY, "where_model": WhereModel, "where_cpu": WhereCpu})
engines = {}
for engine in ("scheduler", "raydata"):   # both engines on the same cluster, a store each
    store = Store(f"{store_dir}-{engine}")
    summary = Runner(wf, store, workers=2, engine=engine).run(files)
    engines[engine] = {
        "rows": store.query("videos", columns=["uri", "duration_s", "model_node", "cpu_node",
                                               "error"]).to_pylist(),
        "steps": {s.step: [s.done, s.failed_videos] for s in summary.steps}}
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
print("RESULT " + json.dumps({
    "driver_node": ray.get_runtime_context().get_node_id(), "nodes": nodes, "engines": engines}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    """Every port a node opens, free ones (two raylets on one host must not share any)."""
    out = []
    for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port"):
        out += [flag, str(_free_port())]
    return out


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _started(p: subprocess.Popen, log: Path, timeout: float = 90.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def _start_node(args: list[str], tmp: Path, name: str, env: dict, procs: list,
                attempts: int = 3) -> None:
    """``ray start`` with retries: on a loaded machine a raylet gives its dashboard agent a fixed
    15 s to write its port file and aborts the node ("The current node timed out during
    startup"); that is Ray starting slowly, not what this test checks."""
    for i in range(attempts):
        log = tmp / f"{name}-{i}.log"
        p = _start([*args, "--temp-dir", str(tmp / f"{name}{i}"), *_ports()], log, env)
        procs.append(p)
        if _started(p, log):
            return
        _stop(p)
    pytest.fail(f"ray start ({name}) failed {attempts} times: "
                f"{log.read_text(errors='replace')[-1500:]}")


def _stop(p: subprocess.Popen) -> None:
    """End the process group this test started (ray start and the processes it spawned), then any
    of its descendants still alive (Ray puts each worker in a process group of its own)."""
    import psutil
    try:
        kids = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    _stop_group(p)
    for k in kids:
        try:
            if k.is_running():
                k.kill()
        except psutil.Error:
            pass


def _stop_group(p: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:   # ray start is gone: its children of the group too
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@pytest.fixture
def cluster(tmp_path_factory):
    import tempfile
    # unix socket paths are limited to ~107 bytes: a short temp dir, not pytest's long one
    tmp = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    procs = []
    try:
        _start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                     "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false"],
                    tmp, "head", env, procs)
        _start_node(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                     "--num-cpus", "1", "--num-gpus", "0",
                     "--resources", json.dumps({"accelerator": 1})],
                    tmp, "node", env, procs)
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        for p in reversed(procs):
            _stop(p)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def test_model_step_lands_on_the_node_with_the_resource(cluster, media, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    files = [str(media / name) for name in CLIPS]
    env = {**cluster["env"], "RAY_ADDRESS": cluster["address"]}
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), *files],
                       capture_output=True, text=True, env=env, timeout=300, cwd=str(ROOT))
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, (p.stdout + p.stderr)[-3000:]
    r = json.loads(line[-1][len("RESULT "):])

    alive = [n for n in r["nodes"] if n["alive"]]
    assert len(alive) == 2, r["nodes"]
    accel = [n["id"] for n in alive if n["resources"].get("accelerator") == 1]
    assert len(accel) == 1, r["nodes"]
    other = next(n["id"] for n in alive if n["id"] != accel[0])
    assert r["driver_node"] == other          # the driver joined the head, not the resource's node

    for engine, got in r["engines"].items():
        assert got["steps"] == {"probe": [3, 0], "where_cpu": [3, 0], "where_model": [3, 0]}, engine
        rows = {Path(x["uri"]).name: x for x in got["rows"]}
        assert set(rows) == set(CLIPS)
        for name, row in rows.items():
            assert row["error"] is None, row
            assert row["duration_s"] and row["duration_s"] > 1.0            # probe really ran
            assert row["model_node"] == accel[0], (engine, name, row)      # only where it is
            assert row["cpu_node"] in {n["id"] for n in alive}             # anywhere
