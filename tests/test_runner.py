"""Runner bookkeeping (in-process executor, no Ray): resume, staleness, per-row errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation.runner import Runner
from curation.store import Store
from curation.workflow import load

ROOT = Path(__file__).resolve().parents[1]
SHOTS_ONLY = """
name: shots_only
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe]}
"""
CLIPS = SHOTS_ONLY + """
  - {name: clips, op: clips, after: [shots]}
"""


def _run(store, text, inputs, **kw):
    return Runner(load(text), store, executor="local").run([str(i) for i in inputs], **kw)


def _done(summary, step):
    return next(s for s in summary.steps if s.step == step).done


def test_a_step_reruns_when_its_input_changed_after_it_ran(tmp_path, media):
    st = Store(str(tmp_path / "s"))
    clip = media / "fr_short_hamilton_clip.mp4"
    first = _run(st, CLIPS, [clip])
    assert _done(first, "clips") == 1 and st.count("clips") == 3
    # shots run again on their own (as in a run killed after shots, before clips) ...
    assert _done(_run(st, SHOTS_ONLY, [clip], from_step="shots"), "shots") == 1
    # ... so the next full run redoes clips, though clips' own status says "done"
    again = _run(st, CLIPS, [clip])
    assert _done(again, "shots") == 0 and _done(again, "clips") == 1
    assert st.count("clips") == 3
    assert _done(_run(st, CLIPS, [clip]), "clips") == 0       # and then it is up to date


def test_changed_parameters_rerun_the_step_and_downstream(tmp_path, media):
    st = Store(str(tmp_path / "s"))
    clip = media / "fr_short_hamilton_clip.mp4"
    _run(st, CLIPS, [clip])
    stricter = CLIPS.replace("{name: clips, op: clips, after: [shots]}",
                             "{name: clips, op: clips, after: [shots], params: {min_duration_s: 2.0}}")
    s = _run(st, stricter, [clip])
    assert _done(s, "shots") == 0 and _done(s, "clips") == 1
    assert st.count("clips") == 1       # only the 4.3 s shot is >= 2 s after trimming


def test_failed_upstream_step_skips_downstream_steps(tmp_path, bad_inputs, media):
    st = Store(str(tmp_path / "s"))
    s = _run(st, CLIPS, [bad_inputs["text"], media / "pf_single_face.mp4"])
    probe = next(x for x in s.steps if x.step == "probe")
    assert probe.failed_videos == 1 and probe.done == 2
    assert _done(s, "shots") == 1 and next(x for x in s.steps if x.step == "shots").skipped == 1
    status = st.query("status", where="ok = false").to_pylist()
    assert [(r["step"], r["error"][:25]) for r in status] == [("probe", "not a readable media file")]


def test_run_is_recorded_and_tagged(tmp_path, media):
    st = Store(str(tmp_path / "s"))
    s = _run(st, CLIPS, [media / "pf_single_face.mp4"])
    run = st.query("runs").to_pylist()[0]
    assert run["run_id"] == s.run_id and run["status"] == "completed" and "shots_only" in run["workflow_yaml"]
    for table in ("videos", "shots", "clips"):
        assert s.run_id in st.tags(table)
    with pytest.raises(ValueError, match="no step 'nope'"):
        _run(st, CLIPS, [media / "pf_single_face.mp4"], from_step="nope")


def test_one_steps_row_error_is_not_cleared_by_another_step(tmp_path, media):
    """Framework contract: a frame operator failing on one clip marks that clip only, and the values
    another step writes to the same clip leave that error in place."""
    import pyarrow as pa

    from curation.media import FrameSpec
    from curation.operator import Operator
    from operators import REGISTRY

    class FailsOnFirstClip(Operator):   # a test double of a frame operator, registered only here
        name = "fails_on_first_clip"
        input_table = output_table = "clips"
        frames = FrameSpec(fps=1.0, max_side=64)
        writes = pa.schema([pa.field("mean_luma", pa.float64())])

        def process_row(self, video, row, frames):
            if row["clip_index"] == 0 and row["shot_index"] == 1:
                raise RuntimeError("boom on the first clip")
            return {"mean_luma": float(frames.images.mean())}

    registry = {**REGISTRY, FailsOnFirstClip.name: FailsOnFirstClip}
    text = CLIPS + """
  - {name: failing, op: fails_on_first_clip, after: [clips]}
  - {name: quality, op: quality, after: [clips]}
"""
    st = Store(str(tmp_path / "s"))
    wf = load(text, registry=registry)
    assert [s.name for s in wf.stages()[-1]] == ["failing", "quality"]   # fused: one decode
    s = Runner(wf, st, executor="local").run([str(media / "fr_short_hamilton_clip.mp4")])
    failing = next(x for x in s.steps if x.step == "failing")
    assert failing.failed_rows == 1 and failing.failed_videos == 0
    rows = {(r["shot_index"], r["clip_index"]): r for r in st.query("clips").to_pylist()}
    bad = rows[(1, 0)]
    assert bad["error"] == "RuntimeError: boom on the first clip" and bad["error_stage"] == "failing"
    assert bad["mean_luma"] is None and bad["sharpness"] is not None   # quality still scored it
    assert all(r["error"] is None and r["mean_luma"] > 0 for k, r in rows.items() if k != (1, 0))


def test_odd_inputs_each_end_as_a_row(tmp_path, media):
    """1 fps, 120 fps, 16x16 pixels, 2 frames, 0.2 s and VP9/Opus in WebM: no crash, sensible rows."""
    import subprocess
    src = str(media / "vr_face1.mp4")
    odd = tmp_path / "odd"
    odd.mkdir()
    variants = {"one_fps.mp4": ["-vf", "fps=1", "-c:a", "copy"],
                "fps120.mp4": ["-vf", "fps=120", "-t", "3"],
                "tiny16.mp4": ["-vf", "scale=16:16", "-t", "3"],
                "two_frames.mp4": ["-frames:v", "2", "-an"],
                "short.mp4": ["-t", "0.2"],
                "vp9.webm": ["-t", "3", "-c:v", "libvpx-vp9", "-b:v", "200k", "-c:a", "libopus"]}
    for name, args in variants.items():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, *args, str(odd / name)],
                       check=True)
    st = Store(str(tmp_path / "s"))
    text = CLIPS + "  - {name: quality, op: quality, after: [clips]}\n" \
                   "  - {name: temporal, op: temporal, after: [clips]}\n"
    Runner(load(text), st, executor="local").run([str(odd)])
    videos = {Path(v["uri"]).name: v for v in st.query("videos").to_pylist()}
    assert set(videos) == set(variants)
    assert all(v["error"] is None for v in videos.values()), {k: v["error"] for k, v in videos.items()}
    assert videos["one_fps.mp4"]["fps"] == pytest.approx(1.0) and videos["fps120.mp4"]["fps"] == 120
    assert videos["two_frames.mp4"]["num_frames"] == 2 and videos["vp9.webm"]["video_codec"] == "vp9"
    clips = {c["video_id"]: c for c in st.query("clips").to_pylist()}
    # clips need >= 1 s: the 2-frame and the 0.2 s videos have none; the others one each, scored
    assert {n for n, v in videos.items() if v["video_id"] in clips} == \
        {"one_fps.mp4", "fps120.mp4", "tiny16.mp4", "vp9.webm"}
    for c in clips.values():
        assert c["error"] is None and c["sharpness"] is not None and c["jump_count"] is not None


def test_large_emitted_rows_are_written_by_the_worker_as_fragments(tmp_path, media, monkeypatch):
    """Emitted rows over the inline limit are Lance fragments the worker writes; the driver commits
    their metadata only. The store ends the same as with everything inline, and a re-run replaces
    the rows instead of adding to them."""
    import curation.worker as worker_mod
    clip = media / "fr_short_hamilton_clip.mp4"
    inline = Store(str(tmp_path / "inline"))
    _run(inline, CLIPS, [clip])

    written = []
    real = Store.write_fragments

    def spy(self, table, data):
        out = real(self, table, data)
        written.append((table, data.num_rows, out is not None))
        return out

    monkeypatch.setattr(worker_mod, "INLINE_BYTES", 0)
    monkeypatch.setattr(Store, "write_fragments", spy)
    st = Store(str(tmp_path / "fragments"))
    _run(st, CLIPS, [clip])
    # the first shots write creates the table (no fragments can be written ahead of it); clips
    # likewise; a forced re-run then writes fragments for both
    _run(st, CLIPS, [clip], from_step="shots")
    assert ("shots", 4, False) in written and ("shots", 4, True) in written
    assert ("clips", 3, True) in written

    def rows(store, table):
        t = store.query(table).drop_columns(["run_id"]).to_pylist()
        return sorted(t, key=lambda r: str(r.get("clip_id") or r.get("shot_id")))
    assert st.count("shots") == 4 and st.count("clips") == 3      # replaced, not duplicated
    for table in ("shots", "clips"):
        assert rows(st, table) == rows(inline, table)


def test_replacing_rows_is_one_commit_and_never_duplicates(tmp_path):
    """append(replace_where=...) deletes and adds in one commit: two writers replacing the same
    video's rows end with one copy of them."""
    import pyarrow as pa
    import threading
    st = Store(str(tmp_path / "s"))
    st.upsert("clips", [{"clip_id": f"v:{j}", "video_id": "v", "start_s": 0.0} for j in range(3)]
              + [{"clip_id": "w:0", "video_id": "w", "start_s": 0.0}])
    before = len(st.versions("clips"))
    new = pa.table({"clip_id": ["v:a", "v:b"], "video_id": ["v", "v"], "duration_s": [1.0, 2.0]})
    assert st.append("clips", new, replace_where="video_id = 'v'") == 2
    assert len(st.versions("clips")) == before + 1      # one commit: readers never see neither
    assert sorted(r["clip_id"] for r in st.query("clips").to_pylist()) == ["v:a", "v:b", "w:0"]

    errors = []

    def writer(k):
        try:
            for i in range(4):
                rows = pa.table({"clip_id": [f"v:{k}-{i}"], "video_id": ["v"], "duration_s": [1.0]})
                Store(str(tmp_path / "s")).append("clips", rows, replace_where="video_id = 'v'")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert st.count("clips", "video_id = 'v'") == 1 and st.count("clips", "video_id = 'w'") == 1
