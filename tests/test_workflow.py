"""The workflow loader validates the DAG and plans stages."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation.workflow import WorkflowError, load

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_workflows_load():
    for path in sorted((ROOT / "workflows").glob("*.yaml")):
        wf = load(path)
        assert wf.steps, path


def test_rejects_a_cycle():
    text = """
name: bad
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe, clips]}
  - {name: clips, op: clips, after: [shots]}
"""
    with pytest.raises(WorkflowError, match=r"cycle between steps: (shots -> clips -> shots|clips -> shots -> clips)"):
        load(text)


def test_rejects_unknown_operator():
    with pytest.raises(WorkflowError, match="step 'x': unknown operator 'nope'; known operators: .*probe"):
        load("name: bad\nsteps:\n  - {name: x, op: nope}\n")


def test_rejects_unknown_param_and_key():
    with pytest.raises(WorkflowError, match="operator 'shots' has no parameter.* treshold"):
        load("name: b\nsteps:\n  - {op: probe}\n  - {op: shots, after: [probe], params: {treshold: 3}}\n")
    with pytest.raises(WorkflowError, match="unknown key.* aftr"):
        load("name: b\nsteps:\n  - {op: probe}\n  - {op: shots, aftr: [probe]}\n")


def test_rejects_inputs_not_made_upstream():
    # clips takes shots rows: without the shots step upstream, nothing makes them
    with pytest.raises(WorkflowError, match="'clips'.*takes rows of 'shots'"):
        load("name: b\nsteps:\n  - {op: probe}\n  - {op: clips, after: [probe]}\n")
    # clip_speech reads videos.speech_segments: the audio step must be upstream of it
    with pytest.raises(WorkflowError, match="reads videos.speech_segments"):
        load("name: b\nsteps:\n  - {op: probe}\n  - {op: shots, after: [probe]}\n"
             "  - {op: clips, after: [shots]}\n  - {op: clip_speech, after: [clips]}\n")
    with pytest.raises(WorkflowError, match="'after' names unknown step 'prob'"):
        load("name: b\nsteps:\n  - {op: probe}\n  - {op: shots, after: [prob]}\n")


def test_demo_plan_order():
    wf = load(ROOT / "workflows" / "demo.yaml")
    order = [s.name for stage in wf.stages() for s in stage]
    assert order.index("probe") < order.index("shots") < order.index("clips")
    assert order.index("audio") < order.index("clip_speech")
    assert wf.descendants("shots") >= {"clips", "clip_speech"}
    assert "audio" not in wf.descendants("shots")
