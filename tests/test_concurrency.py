"""Several writers on one store: commits retried on conflict (no error, no lost row), and the run
lease (one line saying who holds the store since when; --wait; a dead holder's lease is taken)."""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curation.store import LeaseHeld, Store

CURATION = str(Path(sys.executable).parent / "curation")
PROBE_ONLY = "name: probe_only\nsteps:\n  - {name: probe, op: probe}\n"


def _writer(uri: str, i: int, n: int, out) -> None:
    """One process's share of a run's writes: new rows, annotations, status rows."""
    try:
        st = Store(uri)
        for k in range(n):
            vid = f"w{i}-{k}"
            st.upsert("videos", [{"video_id": vid, "uri": f"/x/{vid}.mp4"}])
            st.annotate("videos", [{"video_id": vid, "duration_s": float(k)}])
            st.upsert("status", [{"step": "probe", "video_id": vid, "ok": True}])
        out.put((i, None))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put((i, f"{type(e).__name__}: {e}"))


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_writers_never_fail_or_lose_rows(tmp_path, attempt):
    """Four processes start writing a store that does not exist yet (the creation race: Lance's
    ``mode="create"`` lets a second creator overwrite the first) and keep writing the same tables."""
    uri = str(tmp_path / "s")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, i, 5, q)) for i in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [err for _, err in results if err] == []
    st = Store(uri)
    videos = st.query("videos", columns=["video_id", "duration_s"]).to_pylist()
    assert len(videos) == 20 and len({v["video_id"] for v in videos}) == 20
    assert all(v["duration_s"] == float(v["video_id"].split("-")[1]) for v in videos)
    assert st.count("status") == 20


# ---- the lease --------------------------------------------------------------------------------------
def test_lease_names_its_holder_and_is_released(tmp_path):
    st = Store(str(tmp_path / "s"))
    first = st.lease("run-A").acquire()
    lease = first.read()
    assert lease["run_id"] == "run-A" and lease["pid"] == os.getpid()
    assert lease["host"] == socket.gethostname()
    with pytest.raises(LeaseHeld) as e:
        st.lease("run-B").acquire()
    msg = str(e.value)
    assert msg.startswith(f"store {st.uri} is in use by run run-A (host {socket.gethostname()}, "
                          f"pid {os.getpid()}) since ") and " UTC; use --wait" in msg
    assert "\n" not in msg
    first.release()
    assert first.read() is None
    second = st.lease("run-B").acquire()
    second.release()


def test_stale_leases_are_taken_over(tmp_path):
    st = Store(str(tmp_path / "s"))
    # held by a process that is gone (a run killed with SIGKILL): taken at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = st.lease("killed")
    lease._write({"run_id": "killed", "host": socket.gethostname(), "pid": dead.pid,
                  "since": time.time(), "heartbeat": time.time(), "token": "x"})
    taken = st.lease("next").acquire()
    assert taken.read()["run_id"] == "next"
    taken.release()
    # held elsewhere, heartbeat too old: taken; heartbeat fresh: not
    other = {"run_id": "remote", "host": "another-host", "pid": 1, "since": time.time() - 100,
             "token": "y"}
    lease._write({**other, "heartbeat": time.time()})
    with pytest.raises(LeaseHeld, match="run remote \\(host another-host"):
        st.lease("next", stale_s=30).acquire()
    lease._write({**other, "heartbeat": time.time() - 31})
    st.lease("next", stale_s=30).acquire().release()


def test_heartbeat_keeps_a_lease_fresh_and_wait_waits(tmp_path):
    st = Store(str(tmp_path / "s"))
    holder = st.lease("long-run", stale_s=0.8).acquire()
    beat0 = holder.read()["heartbeat"]
    time.sleep(1.0)
    assert holder.read()["heartbeat"] > beat0          # refreshed every stale_s / 4
    with pytest.raises(LeaseHeld):
        st.lease("impatient", stale_s=0.8).acquire()   # alive and beating: not stale
    threading.Timer(1.0, holder.release).start()
    t0 = time.time()
    waiter = st.lease("patient", stale_s=0.8).acquire(wait=True, poll_s=0.1)
    assert 0.8 < time.time() - t0 < 10 and waiter.read()["run_id"] == "patient"
    waiter.release()


@pytest.mark.slow
def test_a_second_run_exits_with_one_line_or_waits(tmp_path, tiny_videos):
    vids = tiny_videos[:2]
    wf = tmp_path / "probe.yaml"
    wf.write_text(PROBE_ONLY)
    st = Store(str(tmp_path / "s"))
    held = st.lease("someone-else").acquire()
    cmd = [CURATION, "run", str(wf), "--input", str(vids[0]), "--input", str(vids[1]), "--store",
           str(tmp_path / "s"), "--local"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: store {st.uri} is in use by run someone-else (host ")
    assert "since" in lines[0] and not st.exists("videos")
    waiting = subprocess.Popen(cmd + ["--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = waiting.stderr.readline()                  # says once whom it waits for
    assert "is in use by run someone-else" in first and first.strip().endswith("; waiting")
    time.sleep(1.5)
    assert waiting.poll() is None and not st.exists("videos")   # still waiting
    held.release()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err[-2000:]
    assert st.count("videos", "decoded_frames = 25") == 2


@pytest.mark.slow
def test_concurrent_runs_with_wait_all_complete_repeatedly(tmp_path, tiny_videos):
    vids = tiny_videos[:3]
    wf = tmp_path / "probe.yaml"
    wf.write_text(PROBE_ONLY)
    store = tmp_path / "s"
    inputs = [x for v in vids for x in ("--input", str(v))]
    for rnd in range(2):
        procs = [subprocess.Popen([CURATION, "run", str(wf), *inputs, "--store", str(store), "--local",
                                   "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        assert [code for code, _ in results] == [0, 0, 0], [err[-1500:] for _, err in results]
    st = Store(str(store))
    assert st.count("videos") == 3 and st.count("videos", "error IS NULL AND decoded_frames = 25") == 3
    assert st.count("status") == 3
    runs = st.query("runs", columns=["status"]).to_pylist()
    assert len(runs) == 6 and all(r["status"] == "completed" for r in runs)
    assert not (store / "_lease.json").exists()


def _library_run(uri: str, inputs: list[str], out) -> None:
    try:
        from curation.runner import Runner
        from curation.workflow import load
        Runner(load(PROBE_ONLY), Store(uri), executor="local").run(inputs)
        out.put(None)
    except Exception as e:  # noqa: BLE001
        out.put(f"{type(e).__name__}: {e}")


@pytest.mark.slow
def test_concurrent_runs_without_the_lease_still_lose_nothing(tmp_path, tiny_videos):
    """Library use (no CLI, no lease): three runners at once on a new store; commits conflict and
    are retried."""
    vids = [str(v) for v in tiny_videos[:3]]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_library_run, args=(str(tmp_path / "s"), vids, q)) for _ in range(3)]
    for p in procs:
        p.start()
    errors = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert errors == [None, None, None]
    st = Store(str(tmp_path / "s"))
    assert st.count("videos") == 3 and st.count("videos", "decoded_frames = 25") == 3
    assert st.count("status") == 3 and st.count("runs", "status = 'completed'") == 3
