"""cluster.yaml is a valid Ray cluster launcher config, checked offline (no AWS call, no Ray started).

``ray up`` does ``prepare_config`` (merge the provider's defaults.yaml, merge setup commands, fill per
node type min/max workers) then ``validate_config`` (ray-schema.json plus cross-field checks) before
it contacts the cloud; the tests do the same two steps, then check what the project relies on.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config
    return prepare_config(copy.deepcopy(raw))


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import validate_config
    validate_config(config)


def test_ray_accepts_the_config(raw, prepared):
    import jsonschema
    import ray.autoscaler
    # the file as written matches Ray's schema (prepare_config only adds defaults on top of it)
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(raw, json.loads(schema_path.read_text()))
    # what `ray up` checks before it launches anything
    _validate(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    assert prepared["cluster_name"] == "curation"
    assert not prepared.get("docker"), "plain AMIs: no docker section"


@pytest.mark.parametrize("break_it, error", [
    (lambda c: c.update(no_such_key=1), "jsonschema"),
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="one"), "jsonschema"),
    (lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"), "jsonschema"),
    (lambda c: c.update(head_node_type="no_such_type"), ValueError),
    (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=100), ValueError),
], ids=["unknown-top-level-key", "non-integer-resource", "no-node-config", "unknown-head-type",
        "min-workers-over-global-max"])
def test_ray_rejects_a_broken_copy(prepared, break_it, error):
    import jsonschema
    bad = copy.deepcopy(prepared)
    break_it(bad)
    expected = jsonschema.ValidationError if error == "jsonschema" else error
    with pytest.raises(expected):
        _validate(bad)


def test_node_types(prepared):
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert head in types
    assert types[head]["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != head}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    cpu = {n: t for n, t in workers.items()
           if t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU")}
    assert gpu, "a GPU worker type (resources GPU >= 1) for operators that declare num_gpus"
    assert cpu, "a CPU-only worker type for the decode-bound operators"
    for t in workers.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert t["node_config"]["InstanceType"]
        assert str(t["node_config"]["ImageId"]).startswith("ami-")
    assert sum(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert {t["node_config"]["InstanceType"] for t in gpu.values()} == {"g5.2xlarge"}


def test_setup_installs_the_project(raw, prepared):
    setup = "\n".join(raw["setup_commands"])
    assert "apt-get" in setup and "ffmpeg" in setup
    assert "python3.11 -m venv" in setup
    assert "-r requirements.lock" in setup
    assert "--no-deps -e ." in setup
    assert "~/curation" in raw["file_mounts"] and raw["file_mounts"]["~/curation"] == "."
    # merged by prepare_config: both kinds of node get the common setup
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert prepared[key][:len(raw["setup_commands"])] == raw["setup_commands"]
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the AWS autoscaler needs it
    head_start = " ".join(raw["head_start_ray_commands"])
    worker_start = " ".join(raw["worker_start_ray_commands"])
    assert "ray stop" in raw["head_start_ray_commands"][0]
    assert "ray stop" in raw["worker_start_ray_commands"][0]
    assert "--head --port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in worker_start


def test_setup_matches_the_lock_file():
    """The setup commands read the torch and ray pins from requirements.lock; the cluster must run
    the Ray version this machine runs (ray up / job submit talk to it)."""
    import ray
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lock if "==" in line and not line.startswith("#"))
    assert "torch" in pins
    assert pins["ray"] == ray.__version__
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".venv/" in ignored or ".venv" in ignored  # rsync_filter .gitignore keeps the venv local


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_commands_are_valid_shell(prepared):
    cmds = (prepared["head_setup_commands"] + prepared["worker_setup_commands"]
            + prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    for cmd in cmds:
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True,
                           env={**os.environ, "LC_ALL": "C"})
        assert r.returncode == 0, f"{cmd!r}: {r.stderr}"


# ---- resources: what the node types advertise against what the workflows' steps ask for -------------
def _placeable(request, types: dict) -> list[str]:
    """Worker node types that can hold one task / actor of ``request`` (a curation Resources)."""
    out = []
    for name, t in types.items():
        res = t["resources"]
        if (res.get("CPU", 0) >= request.num_cpus and res.get("GPU", 0) >= request.num_gpus
                and all(res.get(k, 0) >= v for k, v in request.custom)):
            out.append(name)
    return out


def _workers(prepared) -> dict:
    return {n: t for n, t in prepared["available_node_types"].items()
            if n != prepared["head_node_type"]}


def test_gpu_workers_advertise_gpu_and_card(prepared):
    gpu = {n: t for n, t in _workers(prepared).items() if t["resources"].get("GPU", 0) >= 1}
    for name, t in gpu.items():
        custom = set(t["resources"]) - {"CPU", "GPU", "memory", "object_store_memory"}
        assert custom, f"{name}: a custom resource naming the card, for steps that need that card"
        assert all(isinstance(v, int) and v >= 1 for v in t["resources"].values())
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}   # nothing scheduled next to the driver


def test_every_workflow_step_has_a_node_type(prepared):
    """Each step of workflows/*.yaml can be placed on some worker type (the autoscaler only adds a
    node whose declared resources satisfy the request; otherwise the step waits forever)."""
    from curation.workflow import WorkflowError, load
    types = _workers(prepared)
    checked = set()
    for f in sorted((ROOT / "workflows").glob("*.yaml")):
        try:
            wf = load(f)
        except WorkflowError:   # a workflow whose operators are not written yet: tests/test_workflow
            continue
        for step in wf.steps:
            req = step.resource_request()
            assert _placeable(req, types), f"{f.name}: step {step.name} asks for {req}"
        checked.add(f.name)
    assert {"demo.yaml", "general.yaml"} <= checked


def test_step_resources_pick_the_node_type(prepared):
    """The keys a workflow step uses on this cluster (the example in cluster.yaml's header)."""
    from curation.workflow import load
    types = _workers(prepared)
    card = next(k for k in types["gpu_worker"]["resources"] if k not in ("CPU", "GPU"))
    wf = load(f"""
name: gpu
steps:
  - {{name: probe, op: probe}}
  - {{name: any_gpu, op: audio, after: [probe], workers: 8, batch_size: 32, resources: {{num_gpus: 1}}}}
  - {{name: this_card, op: audio, after: [probe], resources: {{custom: {{{card}: 1}}}}}}
  - {{name: no_such, op: audio, after: [probe], resources: {{custom: {{tpu_v5: 1}}}}}}
  - {{name: too_big, op: audio, after: [probe], resources: {{num_cpus: 32}}}}
""")
    by = {s.name: s for s in wf.steps}
    assert by["any_gpu"].workers == 8 and by["any_gpu"].batch_size == 32
    assert set(_placeable(by["probe"].resource_request(), types)) == {"cpu_worker", "gpu_worker"}
    assert _placeable(by["any_gpu"].resource_request(), types) == ["gpu_worker"]
    assert _placeable(by["this_card"].resource_request(), types) == ["gpu_worker"]
    assert _placeable(by["no_such"].resource_request(), types) == []
    assert _placeable(by["too_big"].resource_request(), types) == []
