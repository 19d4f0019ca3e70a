"""`curation stats` says when one workflow filter removes every clip, which filter, and which of the
columns it reads are NULL (a step that did not run, a backend that left the value out)."""
from __future__ import annotations

from typer.testing import CliRunner

from curation.cli import app
from curation.stats import compute, filter_columns
from curation.store import Store

WORKFLOW = """
name: clips_and_filters
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe]}
  - {name: clips, op: clips, after: [shots]}
filters:
  - {name: long_enough, where: "duration_s >= 1.0"}
  - {name: first_track, where: "track_id LIKE '%:t0'"}
  - {name: short, where: "duration_s < 100"}
  - {name: impossible, where: "duration_s > 1000"}
"""


def test_a_filter_that_removes_every_clip_is_named_with_its_null_columns(tmp_path, media):
    from curation.runner import Runner
    from curation.workflow import load
    st = Store(str(tmp_path / "store"))
    Runner(load(WORKFLOW), st, executor="local").run([str(media / "vr_face2.mp4")])
    s = compute(str(tmp_path / "store"))
    # shot clips have no track: the first filter leaves nothing, and the last passes no clip at all
    assert s["warnings"] == [
        "filter 'first_track' removes all 1 clips left before it: track_id LIKE '%:t0' "
        "(track_id is NULL on 1 of 1)",
        "filter 'impossible' removes every one of the 1 clips without an error, on its own: "
        "duration_s > 1000"]
    out = CliRunner().invoke(app, ["stats", "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert "warning: filter 'first_track' removes all 1 clips" in " ".join(out.output.split())


def test_filter_columns():
    assert filter_columns("sync_confidence >= 1.0 AND abs(sync_offset_frames) <= 3") == \
        ["sync_confidence", "sync_offset_frames"]
    assert filter_columns("clip_kind = 'person'") == ["clip_kind"]
