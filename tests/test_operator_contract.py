"""The operator contract's finishing parts (issue 16, item 5): teardown when a worker ends, the
process_row <-> process_rows adapter, a forgotten column failing its test, operators found without
a shared registry file, label types from schemas/ (no operator imports another operator)."""
from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

from curation.media import FrameSpec
from curation.operator import Operator, run_stage
from curation.runner import Runner
from curation.store import Store
from curation.worker import StageWorker
from curation.workflow import load
from operators import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
CLOSED: list[str] = []


class Closing(Operator):
    name = "closing"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("closing_ok", pa.bool_())])

    def setup(self):
        self.held = "a native graph"

    def process(self, video, rows):
        return [{"closing_ok": True}]

    def teardown(self):
        CLOSED.append(self.held)


def test_teardown_is_called_when_a_worker_ends(tmp_path, tiny_videos):
    CLOSED.clear()
    wf = load("name: t\nsteps:\n  - {op: probe}\n  - {op: closing, after: [probe]}\n",
              registry={**REGISTRY, "closing": Closing})
    Runner(wf, Store(str(tmp_path / "s")), executor="local").run([str(v) for v in tiny_videos[:3]])
    assert CLOSED == ["a native graph"]          # one worker for the stage, closed at the end


def test_people_teardown_closes_mediapipe(models, monkeypatch):
    from operators.nets import face_landmarks
    closed = []
    for cls in (face_landmarks.FaceLandmarks, face_landmarks.HandLandmarks):
        monkeypatch.setattr(cls, "close", lambda self, _c=cls.__name__: closed.append(_c))
    w = StageWorker([("people", REGISTRY["people"], {})], str(models), "shots", "/nonexistent",
                    None, "r")
    assert w.setup_error is None
    w.close()
    assert sorted(closed) == ["FaceLandmarks", "HandLandmarks"]


class OnlyRows(Operator):
    name = "only_rows"
    input_table = output_table = "videos"
    frames = FrameSpec(fps=1.0, max_side=32)
    writes = pa.schema([pa.field("n_frames", pa.int32())])

    def process_rows(self, items):
        return [ValueError("no frames") if not len(f) else {"n_frames": len(f)} for _, _, f in items]


class OnlyRow(OnlyRows):
    name = "only_row"

    def process_row(self, video, row, frames):
        return {"n_frames": len(frames)}


OnlyRow.process_rows = Operator.process_rows


def test_process_row_and_process_rows_adapt_to_each_other(media):
    from conftest import frames_of
    frames = frames_of(media / "vr_face1.mp4", 0, 3, fps=1.0, max_side=32)
    item = ({"video_id": "v"}, {}, frames)
    assert OnlyRows().process_row(*item) == {"n_frames": 3}          # from process_rows
    assert OnlyRow().process_rows([item, item]) == [{"n_frames": 3}] * 2
    with pytest.raises(ValueError, match="no frames"):                   # its exception, raised
        OnlyRows().process_row({"video_id": "v"}, {}, frames_of(media / "vr_face1.mp4", 0, 0, fps=1.0))
    bare = type("Bare", (Operator,), {"name": "bare", "frames": FrameSpec(fps=1.0)})()
    with pytest.raises(NotImplementedError, match="neither process_row nor process_rows"):
        bare.process_row({}, {}, frames)


class Forgetful(Operator):
    name = "forgetful"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("kept", pa.int32()), pa.field("forgotten", pa.float32())])

    def process(self, video, rows):
        return [{"kept": 1}]


def test_an_operator_that_forgets_a_declared_column_fails_its_test(media):
    """(tests/conftest.py sets CURATION_STRICT_COLUMNS=1; a run outside tests writes null.)"""
    import curation.operator as operator
    assert operator.STRICT_COLUMNS
    video = {"video_id": "v", "uri": str(media / "vr_face1.mp4")}
    [[r]] = run_stage([("forgetful", Forgetful())], [(video, [video])], ("video_id",))
    assert r.error == "operator 'forgetful' did not return column(s) forgotten"


def test_operators_are_found_without_a_shared_file():
    text = (ROOT / "operators" / "__init__.py").read_text()
    files = sorted(p.stem for p in (ROOT / "operators").glob("*.py") if p.stem != "__init__")
    for cls in REGISTRY.values():
        assert cls.__name__ not in text                                 # not listed by hand
        assert cls.__module__.split(".")[-1] in files
    for f in files:   # every operator file provides its operators, named in it
        assert any(c.__module__ == f"operators.{f}" for c in REGISTRY.values()), f


def test_label_types_come_from_schemas_not_from_other_operators():
    labels = {"STATES", "STATE_PROBS", "SENTENCE", "WORD"}
    for path in (ROOT / "operators").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("operators.") \
                    and not node.module.startswith("operators.nets"):
                assert not labels & {a.name for a in node.names}, (path.name, node.module)
