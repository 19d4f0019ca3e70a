"""Issue 13, one test per defect: a failed step is never "done" (retry policy), Ctrl-C / SIGTERM
stop cleanly and resume exactly, the lease fences a paused holder, unloadable weights are named
before any step, long filters cost no time, silent inputs say so, messages name what they are about.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from curation import failures
from curation.media import MediaError
from curation.operator import Operator
from curation.runner import Runner
from curation.store import LeaseLost, Store, StoreError
from curation.workflow import load
from operators import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


# ---- 1. a failure that is not the video's fault is retried; nothing runs on a failed step's output
def _models_with(tmp_path: Path, models: Path, rel: str, corrupt) -> Path:
    """A copy of the model folder (links) whose file ``rel`` is ``corrupt(its bytes)``."""
    d = tmp_path / "models"
    for src in models.rglob("*"):
        if src.is_file():
            dst = d / src.relative_to(models)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.relative_to(models).as_posix() == rel:
                dst.write_bytes(corrupt(src.read_bytes()))
            else:
                dst.symlink_to(src)
    return d


def _flip(data: bytes, start: int = 1000, n: int = 2000) -> bytes:
    """Bytes flipped inside the first member of a zip: its directory is whole, its CRC is not."""
    out = bytearray(data)
    for k in range(start, start + n):
        out[k] ^= 0x5A
    return bytes(out)


def test_setup_failure_is_retried_next_run_and_blocks_downstream(tmp_path, media, models):
    """The issue's reproduction, with a face_landmarker.task whose zip directory is whole (so the
    pre-check passes) and whose first member is corrupt: MediaPipe fails in setup()."""
    clip = tmp_path / "pf2.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(media / "pf_single_face.mp4"),
                    "-t", "2", "-c", "copy", str(clip)], check=True)
    bad = _models_with(tmp_path, models, "mediapipe/face_landmarker.task", _flip)
    wf = load(ROOT / "workflows" / "people.yaml")
    st = Store(str(tmp_path / "s"))
    with pytest.raises(failures.SetupFailed) as e:
        Runner(wf, st, model_dir=str(bad), executor="local").run([str(clip)])
    msg = str(e.value)
    assert e.value.exit_code == 1 and "\n" not in msg
    assert "setup of step 'people' failed (model files mediapipe/face_landmarker.task: corrupt zip " \
           "archive (member 'face_detector.tflite' fails its CRC check))" in msg
    status = {r["step"]: r for r in st.query("status").to_pylist()}
    assert status["people"]["ok"] is False and status["people"]["failure"] == "setup"
    assert "shot_people" not in status and "person_clips" not in status   # not on its output
    assert st.query("runs", columns=["status"]).to_pylist() == [{"status": "failed"}]
    again = Runner(wf, st, model_dir=str(models), executor="local").run([str(clip)])
    done = {s.step: s.done for s in again.steps}
    assert done == {"probe": 0, "shots": 0, "clips": 0, "people": 1, "shot_people": 1,
                    "person_clips": 1}
    shot = st.query("shots", columns=["person_count", "error"]).to_pylist()
    assert shot == [{"person_count": 1, "error": None}]
    assert st.count("clips", "clip_kind = 'person'") == 1


class Flaky(Operator):
    """Test double: fails on some videos with the exception its file name asks for."""
    name = "flaky"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("flaky_ok", pa.bool_())])
    RAISES = {"tiny1": RuntimeError("a bug, or this video's own problem"),
              "tiny2": MediaError("corrupt video: 3 undecodable packet(s)"),
              "tiny3": MemoryError("out of memory"),
              "tiny4": OSError(errno.ENOSPC, "No space left on device"),
              "tiny5": StoreError("write fragments of clips (/s/clips.lance): LanceError(IO)")}

    def process(self, video, rows):
        e = self.RAISES.get(Path(video["uri"]).stem)
        if e is not None:
            raise e
        return [{"flaky_ok": True}]


class Downstream(Operator):
    name = "downstream"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("downstream_ok", pa.bool_())])

    def process(self, video, rows):
        return [{"downstream_ok": True}]


class BrokenSetup(Downstream):
    name = "broken_setup"
    writes = pa.schema([pa.field("broken_ok", pa.bool_())])

    def setup(self):
        raise OSError("cannot reach the captioning service at http://h:8000/v1")


# (video, the kind its failure is recorded as, whether the next run repeats the step)
POLICY_TABLE = [("tiny0", None, False), ("tiny1", "video", False), ("tiny2", "video", False),
                ("tiny3", "memory", True), ("tiny4", "store", True), ("tiny5", "store", True),
                ("tiny6", "crash", True), ("tiny7", "setup (a row of an older store)", True)]
POLICY_WF = """name: policy
steps:
  - {name: probe, op: probe}
  - {name: flaky, op: flaky, after: [probe]}
  - {name: downstream, op: downstream, after: [flaky]}
  - {name: broken, op: broken_setup, after: [probe]}
"""


def test_retry_policy_table(tmp_path, tiny_videos):
    """For each failure kind, whether the next run repeats the (video, step), and that nothing
    downstream runs on a failed step's output. A lost worker (tiny6) and an older store's
    setup failure without the ``failure`` column (tiny7) are written into the status as the
    runner records them (a worker crash needs Ray: test_worker_crash.py)."""
    reg = {**REGISTRY, "flaky": Flaky, "downstream": Downstream, "broken_setup": BrokenSetup}
    wf = load(POLICY_WF, registry=reg)
    st = Store(str(tmp_path / "s"))
    files = [str(v) for v in tiny_videos]
    with pytest.raises(failures.SetupFailed, match="setup of step 'broken' failed: OSError: cannot "
                                                   "reach the captioning service"):
        Runner(wf, st, executor="local").run(files)
    ids = {Path(r["uri"]).stem: r["video_id"] for r in st.query("videos").to_pylist()}
    st.upsert("status", [{"step": "flaky", "video_id": ids["tiny6"], "ok": False,
                          "error": failures.CRASHED, "failure": "crash"},
                         {"step": "flaky", "video_id": ids["tiny7"], "ok": False,
                          "error": "setup failed: RuntimeError: Unable to open zip archive.",
                          "failure": None}])
    first = {(r["step"], r["video_id"]): r for r in st.query("status").to_pylist()}
    with pytest.raises(failures.SetupFailed):
        Runner(wf, st, executor="local").run(files)
    second = {(r["step"], r["video_id"]): r for r in st.query("status").to_pylist()}
    for name, kind, repeated in POLICY_TABLE:
        vid = ids[name]
        before, after = first[("flaky", vid)], second[("flaky", vid)]
        assert (after["run_id"] != before["run_id"]) is repeated, name
        if kind and name in ("tiny1", "tiny2", "tiny3", "tiny4", "tiny5"):
            assert before["failure"] == kind and before["ok"] is False, name
            assert ("downstream", vid) not in second, name   # never on a failed step's output
        elif repeated:   # tiny6, tiny7 succeed when repeated: downstream follows in the same run
            assert after["ok"] and second[("downstream", vid)]["run_id"] == after["run_id"], name
        else:
            assert second[("downstream", vid)]["run_id"] == before["run_id"], name
    for vid in ids.values():   # a failed setup: every video again, every run
        assert second[("broken", vid)]["failure"] == "setup"
        assert second[("broken", vid)]["run_id"] != first[("broken", vid)]["run_id"]
    assert {k: failures.retried(k) for k in failures.POLICY} == {
        "video": False, "setup": True, "crash": True, "memory": True, "store": True}
    docs = (ROOT / "docs" / "running.md").read_text()
    for kind, (retried, _) in failures.POLICY.items():   # the documented table is this one
        assert re.search(rf"\| {kind} \| {'yes' if retried else 'no'} \|", docs), kind


# ---- 2. Ctrl-C and SIGTERM stop cleanly, say what was committed, exit 130 / 143, resume exactly --
DRIVER = '''
import sys, time
import pyarrow as pa
import operators
from curation.operator import Operator


class Slow(Operator):
    name = "slow"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("slow_done", pa.bool_())])

    def process(self, video, rows):
        time.sleep(0.4)
        return [{"slow_done": True}]


operators.REGISTRY["slow"] = Slow
from curation.cli import main
main()
'''
SLOW_WF = """name: slow
steps:
  - {name: probe, op: probe}
  - {name: slow, op: slow, after: [probe], batch_size: 1}
"""


class Slow(Operator):   # the same operator (name, version, params) for the resuming run
    name = "slow"
    input_table = output_table = "videos"
    writes = pa.schema([pa.field("slow_done", pa.bool_())])

    def process(self, video, rows):
        return [{"slow_done": True}]


def _slow_run(tmp_path: Path, tiny_videos, store: Path, *extra: str, env: dict | None = None):
    driver, wf = tmp_path / "driver.py", tmp_path / "slow.yaml"
    driver.write_text(DRIVER)
    wf.write_text(SLOW_WF)
    cmd = [sys.executable, str(driver), "run", str(wf), "--input", str(tiny_videos[0].parent),
           "--store", str(store), "--flush-every", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_sigint_default)


def _sigint_default() -> None:
    """A shell starts background jobs with SIGINT ignored, and children inherit that: the run under
    test must take Ctrl-C however pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _when_committed(st: Store, step: str, n: int, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if st.exists("status") and st.count("status", f"step = '{step}'") >= n:
            return
        time.sleep(0.1)
    pytest.fail(f"the run ended or stalled before {n} {step} results were committed")


def _stopped_run_resumes_exactly(tmp_path, tiny_videos, sig, code, name, *extra):
    store = tmp_path / "s"
    st = Store(str(store))
    proc = _slow_run(tmp_path, tiny_videos, store, *extra)
    _when_committed(st, "slow", 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert proc.returncode == code, err[-1500:]
    m = re.fullmatch(rf"interrupted: stopped by {name}; committed \(videos per step\): probe (\d)/8, "
                     r"slow (\d)/8; re-run the same command to resume", last)
    assert m, last
    run1 = st.query("runs", columns=["run_id", "status"]).to_pylist()
    assert [r["status"] for r in run1] == ["interrupted"]
    committed = {s: st.count("status", f"step = '{s}'") for s in ("probe", "slow")}
    assert committed == {"probe": int(m.group(1)), "slow": int(m.group(2))} and committed["slow"] < 8
    wf = load(SLOW_WF, registry={**REGISTRY, "slow": Slow})
    again = Runner(wf, st, executor="local").run([str(tiny_videos[0].parent)])
    assert {s.step: s.done for s in again.steps} == {s: 8 - n for s, n in committed.items()}
    assert st.count("status") == 16 and st.count("videos", "slow_done = true") == 8
    assert st.count("status", f"run_id = '{run1[0]['run_id']}'") == sum(committed.values())


def test_ctrl_c_stops_cleanly_and_resumes_exactly(tmp_path, tiny_videos):
    _stopped_run_resumes_exactly(tmp_path, tiny_videos, signal.SIGINT, 130, r"SIGINT \(Ctrl-C\)",
                                 "--local")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("engine", ["scheduler", "raydata"])
def test_sigterm_with_ray_stops_cleanly_and_resumes_exactly(tmp_path, tiny_videos, engine):
    _stopped_run_resumes_exactly(tmp_path, tiny_videos, signal.SIGTERM, 143, "SIGTERM",
                                 "--workers", "1", "--engine", engine)


# ---- 3. the lease fences a paused holder ------------------------------------------------------------
def test_a_paused_holder_that_lost_its_lease_stops_before_writing(tmp_path, tiny_videos):
    store = tmp_path / "s"
    st = Store(str(store))
    proc = _slow_run(tmp_path, tiny_videos, store, "--local", env={"CURATION_LEASE_STALE_S": "1"})
    try:
        _when_committed(st, "slow", 2, proc)
        proc.send_signal(signal.SIGSTOP)              # run A, paused past its lease's staleness
        paused = st.count("status")
        time.sleep(2.0)
        b = st.lease("run-B", stale_s=1).acquire()    # run B takes the store over, and writes
        st.upsert("runs", [{"run_id": "run-B", "status": "completed"}])
        b.release()
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == LeaseLost.exit_code == 3, err[-1500:]
    assert err.strip().splitlines()[-1].startswith(
        f"error: the lease on store {store} was taken over by another run")
    assert st.count("status") == paused                # A wrote nothing after it resumed
    runs = {r["run_id"]: r["status"] for r in st.query("runs").to_pylist()}
    assert sorted(runs.values()) == ["completed", "running"]   # A never said "completed"


# ---- 4. unloadable weights are named before any step ----------------------------------------------
@pytest.mark.parametrize("rel", ["detector/yolox_nano_coco.onnx", "mediapipe/face_landmarker.task",
                                 "emotion/emotion_model_quantized.tflite", "asd/LR-ASD_pretrain_AVA.model",
                                 "separation/spleeter_2stems.safetensors", "emotion/emotion_model.hdf5"])
def test_weight_files_that_cannot_load_are_named(tmp_path, models, rel):
    from curation.weights import problem
    data = (models / rel).read_bytes()
    assert problem(models / rel) is None
    for label, blob in (("empty", b""), ("half", data[: len(data) // 2]), ("tail", data[:-100]),
                        ("random", os.urandom(len(data)))):
        f = tmp_path / f"{label}{Path(rel).suffix}"
        f.write_bytes(blob)
        assert problem(f), (rel, label)


def test_a_bad_model_file_fails_the_run_before_any_step(tmp_path, media, models, cli):
    """The issue's file: random bytes of the same size in place of face_landmarker.task."""
    bad = _models_with(tmp_path, models, "mediapipe/face_landmarker.task",
                       lambda data: os.urandom(len(data)))
    store = tmp_path / "s"
    r = cli("run", ROOT / "workflows" / "people.yaml", "--input", media / "pf_single_face.mp4",
            "--store", store, "--models", bad)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and len(lines[0]) <= 300, r.stderr
    assert lines[0].startswith(f"error: model file(s) missing or not loadable: step 'people' needs "
                               f"{bad}/mediapipe/face_landmarker.task (not a whole zip archive")
    assert not store.exists()        # no store directory, no leftover _lease.lock


# ---- 5. long filters: linear error lines, unknown columns refused at load -------------------------
def test_a_one_megabyte_filter_costs_no_time_and_unknown_columns_are_refused(tmp_path, cli):
    from curation.stats import funnel
    from curation.store import one_line
    t0 = time.perf_counter()
    assert len(one_line("Schema error: No field named " + "x" * 1_000_000)) == 300
    assert time.perf_counter() - t0 < 0.5
    st = Store(str(tmp_path / "s"))
    st.upsert("clips", [{"clip_id": f"c{i}", "video_id": "v", "duration_s": float(i)} for i in range(5)])
    t0 = time.perf_counter()
    rows = funnel(st, "filters:\n  - {name: long, where: '%s > 1'}\n" % ("y" * 1_000_000))
    assert time.perf_counter() - t0 < 10 and rows[-1]["note"].startswith("not applied")
    wf = tmp_path / "bad_filter.yaml"
    wf.write_text("name: f\nsteps:\n  - {name: probe, op: probe}\nfilters:\n"
                  "  - {name: sharp, where: \"sharpnes > 20\"}\n")
    r = cli("run", wf, "--input", tmp_path, "--store", tmp_path / "never", "--local")
    assert r.returncode == 2 and not (tmp_path / "never").exists()
    assert r.stderr.strip() == ("error: invalid workflow: filter 'sharp' reads sharpnes, which is not "
                                "a column of clips that this workflow writes; see `curation schema "
                                "clips`")


def test_commands_the_docs_say_take_where_do():
    from typer.testing import CliRunner

    from curation.cli import app
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    m = re.search(r"`--where` is parsed completely \(sqlglot\) wherever it is accepted \(([^)]*)\)", text)
    assert m, "the docs no longer say where --where is accepted"
    names = [w for w in re.split(r",\s*|\s+and\s+", m.group(1)) if w and w != "workflow filters"]
    assert names and "stats" not in names
    for name in names:
        assert "--where" in CliRunner().invoke(app, [name, "--help"]).output, name


# ---- 7. silent inputs -----------------------------------------------------------------------------
def test_inputs_with_no_video_are_named_and_the_rest_run(tmp_path, tiny_videos, bad_inputs, cli):
    wf = tmp_path / "probe.yaml"
    wf.write_text("name: p\nsteps:\n  - {name: probe, op: probe}\n")
    (tmp_path / "x.mp4").mkdir()
    (tmp_path / "empty").mkdir()
    r = cli("run", wf, "--input", tmp_path / "x.mp4", "--input", tmp_path / "empty",
            "--store", tmp_path / "s0", "--local")
    assert r.returncode == 2 and not (tmp_path / "s0").exists()
    assert r.stderr.startswith("error: no video files to process (")
    assert "x.mp4: a directory with no video file in it" in r.stderr
    store = tmp_path / "s"
    r = cli("run", wf, "--input", tiny_videos[0], "--input", tmp_path / "missing.mp4", "--input",
            tmp_path / "empty", "--input", bad_inputs["text"], "--store", store, "--local")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: input {tmp_path / 'missing.mp4'}: not found; the other inputs are "
                        f"processed and it counts as failed",
                        f"warning: input {tmp_path / 'empty'}: a directory with no video file in it"]
    failed = next(ln for ln in r.stdout.splitlines() if ln.startswith("failed videos"))
    assert failed == ("failed videos (2): missing.mp4 (ingest: cannot read file: file not found), "
                      "not_a_video.mp4 (probe: not a readable media file: Invalid data found when "
                      "processing input)")
    assert "--table status --where \"run_id = '" in r.stdout
    assert Store(str(store)).count("videos", "error IS NULL AND decoded_frames = 25") == 1


# ---- 8. messages ------------------------------------------------------------------------------------
def test_disk_full_names_the_path(tmp_path, monkeypatch):
    """On a 1 MB tmpfs when this machine lets us mount one; else Lance's own error is injected."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    try:
        st = Store(str(mnt / "s"))
        st.upsert("videos", [{"video_id": "a", "uri": "a.mp4"}])
        if mounted:
            with pytest.raises(OSError), open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        else:
            import lance

            def full(*a, **k):
                raise OSError("LanceError(IO): No space left on device (os error 28), "
                              "/home/runner/work/lance/rust/lance-io/src/object_writer.rs:123:45")
            monkeypatch.setattr(lance.LanceDataset, "merge_insert", full)
        with pytest.raises(StoreError) as e:
            st.upsert("videos", [{"video_id": "b", "uri": "b" * 100_000}])
        assert str(e.value) == (f"upsert into videos ({mnt}/s/videos.lance): LanceError(IO): No space "
                                f"left on device (os error 28)")
        assert failures.kind_of(e.value) == "store" and failures.retried("store")
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)


def test_range_errors_name_the_option(tmp_path, cli):
    r = cli("query", "--store", tmp_path, "--limit", "-1")
    assert r.returncode == 2 and r.stderr.startswith("error: Invalid value for '--limit' / '-n': ")
    r = cli("sample", "--store", tmp_path, "-n", "0", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error: Invalid value for '-n'")


def test_local_runs_send_native_log_lines_to_the_run_log(tmp_path, capfd):
    """MediaPipe's glog/absl lines are written to file descriptor 2 by native code: with --local
    they go to <store>/_logs/<run>.log; the command's own lines still reach the terminal."""
    from curation.cli.run import _native_logs
    st = Store(str(tmp_path / "s"))
    with _native_logs(st, "r1", local=True):
        os.write(2, b"W0000 inference_feedback_manager.cc:114] Feedback manager requires a model\n")
        print("warning: ours", file=sys.stderr, flush=True)
    err = capfd.readouterr().err
    assert "warning: ours" in err and "inference_feedback_manager" not in err
    assert "inference_feedback_manager" in (tmp_path / "s" / "_logs" / "r1.log").read_text()


def test_a_gcs_that_does_not_answer_leaves_the_last_cpu_budget(monkeypatch):
    """RayExecutor.cpu_budget reads the cluster's CPUs from the GCS with a deadline: a read that
    never returns (seen once in a driver that had run Ray Train and Ray Data) keeps the last budget."""
    import threading as th
    from curation.executors import RayExecutor
    gate = th.Event()

    class FakeRay:
        calls = 0

        def cluster_resources(self):
            FakeRay.calls += 1
            if FakeRay.calls > 1:
                gate.wait()              # the GCS stops answering
            return {"CPU": 6.0}

    ex = RayExecutor(lambda stage: (), workers=1)
    ex.ray = FakeRay()
    monkeypatch.setattr(RayExecutor, "BUDGET_TIMEOUT_S", 0.2)
    assert ex.cpu_budget() == 6.0
    t0 = time.perf_counter()
    assert ex.cpu_budget() == 6.0 and ex.cpu_budget() == 6.0     # the last known budget
    assert time.perf_counter() - t0 < 1.0 and FakeRay.calls == 2  # one read pending, not one per call
    gate.set()
