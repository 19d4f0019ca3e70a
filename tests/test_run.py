"""End to end: the demo workflow through the CLI on real clips and broken files, with Ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.cli import app
from curation.store import Store

ROOT = Path(__file__).resolve().parents[1]
CURATION = str(Path(sys.executable).parent / "curation")
SUBSET = ("fr_short_hamilton_clip.mp4", "lp_d0.mp4", "vr_face1.mp4", "pf_single_face.mp4",
          "pf_face_noface.mov")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The weight-free steps of workflows/demo.yaml: these tests are about the command line, the store and
# resume; the model steps of the demo run end to end in test_object_store.py (the whole demo.yaml)
# and in test_conversation.py, test_contract.py and the operators' own tests.
LIGHT = """name: light
steps:
  - {name: probe, op: probe}
  - {name: shots, op: shots, after: [probe], params: {detector: content, threshold: 27.0, min_scene_len_s: 0.5}}
  - {name: audio, op: audio, after: [probe]}
  - {name: clips, op: clips, after: [shots]}
  - {name: clip_speech, op: clip_speech, after: [clips, audio]}
  - {name: quality, op: quality, after: [clips]}
  - {name: temporal, op: temporal, after: [clips]}
filters:
  - {name: duration, where: "duration_s >= 2.0"}
  - {name: speech, where: "speech_ratio >= 0.3"}
  - {name: sharp, where: "sharpness >= 20"}
"""


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory, media, bad_inputs, ray_session):
    store = tmp_path_factory.mktemp("run") / "store"
    workflow = store.parent / "light.yaml"
    workflow.write_text(LIGHT)
    inputs = [x for name in SUBSET for x in ("--input", media / name)]
    inputs += [x for p in bad_inputs.values() for x in ("--input", p)]
    result = _invoke("run", workflow, *inputs, "--store", store, "--workers", 2)
    assert result.exit_code == 0, result.output
    return store, inputs, result.output, workflow


def _by_uri(store: Store) -> dict[str, dict]:
    return {Path(r["uri"]).name: r for r in store.query("videos").to_pylist()}


def test_run_records_every_video_and_per_row_errors(demo_store):
    path, _, output, _ = demo_store
    st = Store(str(path))
    videos = _by_uri(st)
    assert len(videos) == len(SUBSET) + 4
    assert videos["zero_bytes.mp4"]["error"] == "empty file (0 bytes)"
    assert videos["not_a_video.mp4"]["error"].startswith("not a readable media file")
    assert "truncated" in videos["truncated_dj_video4.mp4"]["error"]
    assert videos["audio_only.mp4"]["error"].startswith("no video stream")
    for name in ("zero_bytes.mp4", "not_a_video.mp4", "truncated_dj_video4.mp4", "audio_only.mp4"):
        assert videos[name]["error_stage"] == "probe"
    for name in SUBSET:
        assert videos[name]["error"] is None, videos[name]
    assert "failed" in output and "probe" in output


def test_run_values_on_real_clips(demo_store):
    st = Store(str(demo_store[0]))
    videos = _by_uri(st)
    assert videos["lp_d0.mp4"]["has_audio"] is False and videos["lp_d0.mp4"]["speech_ratio"] == 0.0
    assert videos["vr_face1.mp4"]["speech_ratio"] > 0.5
    assert videos["pf_single_face.mp4"]["speech_ratio"] < 0.05
    ham = videos["fr_short_hamilton_clip.mp4"]["video_id"]
    shots = st.query("shots", where=f"video_id = '{ham}'").to_pylist()
    cuts = sorted(s["start_s"] for s in shots)[1:]
    assert cuts == pytest.approx([1.514, 3.584, 7.884], abs=0.1)   # 0.67, 2.74, 7.04 s into its video,
    # which starts 0.844 s into the file (the audio starts first)
    mov = videos["pf_face_noface.mov"]["video_id"]
    assert [round(s["start_s"], 1) for s in st.query("shots", where=f"video_id = '{mov}'")
            .to_pylist() if s["shot_index"] == 1] == [2.4]
    clips = st.query("clips").to_pylist()
    assert all(c["run_id"] for c in clips) and all(c["speech_ratio"] is not None for c in clips)
    assert {c["video_id"] for c in clips} == {videos[n]["video_id"] for n in SUBSET}
    assert len({c["clip_id"] for c in clips}) == len(clips)


def test_query_filter_returns_exactly_the_matching_rows(demo_store):
    path = demo_store[0]
    result = _invoke("query", "--store", path, "--table", "clips", "--where",
                     "speech_ratio > 0.5 AND duration_s >= 2", "--columns", "clip_id,speech_ratio",
                     "--format", "jsonl")
    assert result.exit_code == 0, result.output
    got = {json.loads(line)["clip_id"] for line in result.stdout.splitlines() if line.strip()}
    every = Store(str(path)).query("clips").to_pylist()
    expected = {c["clip_id"] for c in every if c["speech_ratio"] > 0.5 and c["duration_s"] >= 2}
    assert got == expected and 0 < len(expected) < len(every)
    csv_out = _invoke("query", "--store", path, "--table", "videos", "--where", "has_audio = false",
                      "--columns", "uri,has_audio", "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "uri,has_audio" and len(csv_out) == 2 and "lp_d0.mp4" in csv_out[1]


def test_stats_show_and_sample(demo_store, tmp_path):
    path = demo_store[0]
    stats = _invoke("stats", "--store", path)
    assert stats.exit_code == 0, stats.output
    assert "errors by stage" in stats.output and "probe" in stats.output
    assert "clip funnel" in stats.output and "candidate clips" in stats.output
    vid = _by_uri(Store(str(path)))["vr_face1.mp4"]["video_id"]
    show = _invoke("show", "--store", path, vid[:10])
    assert show.exit_code == 0 and "vr_face1.mp4" in show.output and "speech_segments" in show.output
    out = tmp_path / "audit"
    res = _invoke("sample", "--store", path, "--where", "speech_ratio > 0.5", "-n", "2", "--out", out)
    assert res.exit_code == 0, res.output
    pngs, mp4s = sorted(out.glob("*.png")), sorted(out.glob("*.mp4"))
    assert len(pngs) == 2 and len(mp4s) == 2
    meta = json.loads(sorted(out.glob("*.json"))[0].read_text())
    assert meta["clip"]["speech_ratio"] > 0.5
    dur = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                                "csv=p=0", str(mp4s[0])], capture_output=True, text=True).stdout)
    assert dur == pytest.approx(meta["clip"]["duration_s"], abs=0.15)


def test_rerun_skips_done_work_and_from_reruns_downstream(demo_store):
    path, inputs, _, workflow = demo_store
    st = Store(str(path))
    counts = {t: st.count(t) for t in ("videos", "shots", "clips")}
    again = _invoke("run", workflow, *inputs, "--store", path)
    assert again.exit_code == 0
    assert {t: st.count(t) for t in counts} == counts
    runs = st.query("runs").to_pylist()
    latest = max(runs, key=lambda r: r["started_at"])
    assert len(runs) == 2 and latest["status"] == "completed"
    assert st.count("status", f"run_id = '{latest['run_id']}'") == 0   # nothing was redone
    assert "up to date" in again.output
    before = {r["clip_id"]: r["run_id"] for r in st.query("clips").to_pylist()}
    redo = _invoke("run", workflow, *inputs, "--store", path, "--from", "clips")
    assert redo.exit_code == 0, redo.output
    after = st.query("clips").to_pylist()
    assert {t: st.count(t) for t in counts} == counts
    assert all(before[c["clip_id"]] != c["run_id"] for c in after)   # clips were rewritten
    shot_runs = {r["run_id"] for r in st.query("status", where="step = 'shots'").to_pylist()}
    assert all(r not in shot_runs for r in {c["run_id"] for c in after})  # shots were not


def test_invalid_workflow_exits_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "cycle.yaml"
    bad.write_text("name: c\nsteps:\n  - {name: a, op: probe, after: [b]}\n  - {name: b, op: shots, after: [a]}\n")
    r = subprocess.run([CURATION, "run", str(bad), "--input", "x.mp4", "--store", str(tmp_path / "s")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: invalid workflow: cycle between steps: a -> b -> a"] \
        or r.stderr.strip().splitlines() == ["error: invalid workflow: cycle between steps: b -> a -> b"]
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: u\nsteps:\n  - {name: x, op: lipsync9000}\n")
    r = subprocess.run([CURATION, "run", str(unknown), "--input", "x.mp4", "--store", str(tmp_path / "s")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown operator 'lipsync9000'" in r.stderr
    assert "Traceback" not in r.stderr




def test_killed_run_resumes_without_losing_or_duplicating_rows(media, bad_inputs, tmp_path):
    """The runner's resume on every shared clip (the weight-free steps of the demo workflow: the
    model steps are covered by the demo run above and by their own tests)."""
    store = tmp_path / "store"
    light = tmp_path / "light.yaml"
    light.write_text(LIGHT)
    cmd = [CURATION, "run", str(light), "--input", str(media),
           "--input", str(bad_inputs["zero"]), "--store", str(store), "--workers", "2",
           "--flush-every", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    st = Store(str(store))
    deadline = time.time() + 240
    killed_midway = False
    while time.time() < deadline and proc.poll() is None:
        if st.exists("status") and st.count("status", "step = 'shots'") >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_midway = True
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert killed_midway, "the run finished before it could be killed"
    n_media = len([p for p in media.iterdir() if p.suffix in (".mp4", ".mov")])
    assert st.count("status") < n_media * 5           # it really stopped part-way
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    videos = st.query("videos").to_pylist()
    assert len(videos) == n_media + 1 and len({v["video_id"] for v in videos}) == len(videos)
    shots = st.query("shots", columns=["video_id", "shot_index", "start_s", "end_s"]).to_pylist()
    keys = [(s["video_id"], s["shot_index"]) for s in shots]
    assert len(keys) == len(set(keys))
    by_video: dict[str, list] = {}
    for s in shots:
        by_video.setdefault(s["video_id"], []).append(s)
    good = [v for v in videos if v["error"] is None]
    assert len(good) == n_media
    for v in good:                                    # one complete, contiguous set of shots each
        ss = sorted(by_video[v["video_id"]], key=lambda s: s["shot_index"])
        assert [s["shot_index"] for s in ss] == list(range(len(ss)))
        # from the first frame (0.844 s into the file for hamilton, whose audio starts first)
        assert ss[0]["start_s"] < 0.9
        assert ss[-1]["end_s"] - ss[0]["start_s"] == pytest.approx(v["duration_s"], abs=0.9)
    clips = st.query("clips", columns=["clip_id", "speech_ratio"]).to_pylist()
    assert len({c["clip_id"] for c in clips}) == len(clips) and all(c["speech_ratio"] is not None
                                                                   for c in clips)
    assert len(by_video.get(_vid(videos, "fr_short_hamilton_clip.mp4"), [])) == 4


def _vid(videos, name):
    return next(v["video_id"] for v in videos if v["uri"].endswith(name))
