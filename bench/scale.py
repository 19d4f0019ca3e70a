#!/usr/bin/env python
"""Scale: seconds per video, fixed cost per tiny video, re-run time and driver memory against N.

    .venv/bin/python bench/scale.py --n 100,1000 [--workflows probe,demo] [--workers 2]
                                    [--out bench/results/NAME] [--profile] [--keep]

For each N (number of videos) and workflow (``probe``: a one-step workflow with the ``probe``
operator; ``demo``: workflows/demo.yaml) a fresh child process (its own local Ray, so the numbers
of one run do not leak into the next) does:

  1. ``init_ray(workers)``, timed apart (Ray's start is paid once per run, not per video);
  2. ``Runner(workflow, Store(fresh dir), workers=W).run([video dir])``: the first run, timed, with the
     wall time of its phases (ingest, plan, the streaming loop, index optimisation, tag) taken by
     wrapping those functions (no change to the code measured);
  3. the same run again on the now all-done store (the re-run: nothing to do but ingest and plan);
  4. the driver's peak RSS during step 2 and during step 3 (sampled every 0.5 s: ``ru_maxrss`` is
     no use here, Linux carries it over from the parent across exec), the CPU seconds of the process
     tree during step 2 (driver, Ray's processes, workers with the ffmpeg they ran), and the number
     of Lance fragments per table of the store after the first run.

With ``--profile`` the first run is run under cProfile (the driver only; workers are other processes)
and the top functions by cumulative and by own time are written next to the results.

Inputs (the issue's benchmark: "1-second 160x120 video"): two ffmpeg encodes of 1 s of ``testsrc``
at 160x120, 25 fps, H.264 (yuv420p), one with a 440 Hz AAC tone and one without; video i is a copy of
one of them (even i: with audio, odd i: without) with a 16-byte ISO-BMFF ``free`` box appended at the
end holding i (ISO/IEC 14496-12 section 8.1.2: a free box's contents are irrelevant and may be
ignored), so every file is a valid MP4 with its own content hash. Generating 10,000 takes seconds.

Seconds per video = first-run wall seconds / N (Ray's start excluded, reported apart). Fixed cost
per tiny video = the least-squares slope of first-run wall seconds over N across the Ns measured
(what one more video costs); the issue's baseline: demo 0.36 s, probe 0.19 s per video at
``--workers 2`` (issue 5, measured on the code before the streaming runner).

Output: a JSON of every measurement and a markdown table, under bench/results/ (gitignored),
named ``scale-<UTC time>`` unless ``--out`` is given. bench/SCALE.md holds the reported numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROBE_WORKFLOW = "name: probe_only\nsteps:\n  - {name: probe, op: probe}\n"
BASELINE_S = {"demo": 0.36, "probe": 0.19}   # issue 5: s per 1 s 160x120 video at --workers 2
TARGET_FACTOR = 3.0                           # issue 5, item 7: "drop at least 3x"


# ---- inputs -------------------------------------------------------------------------------------------
def _encode(path: Path, audio: bool, seconds: float, size: str) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc=size={size}:rate=25:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25"]
    cmd += ["-c:a", "aac", "-shortest"] if audio else ["-an"]
    subprocess.run(cmd + [str(path)], check=True)


def free_box(i: int) -> bytes:
    """A 16-byte top-level ``free`` box (size, type, 8 bytes of payload: i)."""
    return struct.pack(">I4sQ", 16, b"free", i)


def make_videos(directory: Path, n: int, seconds: float = 1.0, size: str = "160x120") -> list[Path]:
    """``n`` distinct valid MP4s in ``directory`` (reused when it already holds them)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / ".made"
    spec = f"{n} {seconds} {size}"
    files = [directory / f"v{i:05d}.mp4" for i in range(n)]
    if marker.exists() and marker.read_text() == spec and all(f.exists() for f in files):
        return files
    with tempfile.TemporaryDirectory() as tmp:
        bases = []
        for audio in (True, False):
            p = Path(tmp) / f"base_{int(audio)}.mp4"
            _encode(p, audio, seconds, size)
            bases.append(p.read_bytes())
    for i, f in enumerate(files):
        f.write_bytes(bases[i % 2] + free_box(i))
    marker.write_text(spec)
    return files


def check_videos(files: list[Path]) -> dict:
    """ffprobe the first two copies: valid, 1 s, with / without audio."""
    out = {}
    for f in files[:2]:
        r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
                            "-of", "json", str(f)], capture_output=True, text=True, check=True)
        info = json.loads(r.stdout)
        out[f.name] = {"duration_s": float(info["format"]["duration"]),
                       "streams": sorted(s["codec_type"] for s in info["streams"])}
    return out


# ---- one measured run (child process) ----------------------------------------------------------------
def _wrap_timers(timings: dict) -> None:
    """Time the runner's phases by wrapping them (the code measured is not changed)."""
    import curation.runner as runner
    from curation.store import Store

    def wrap(owner, name, label):
        fn = getattr(owner, name, None)
        if fn is None:   # older code (--code) without that function
            return

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[label] = timings.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, name, timed)

    import curation.commit as commit
    import curation.plan as plan
    wrap(runner, "ingest", "ingest")
    wrap(runner, "resolve_inputs", "resolve_inputs")
    wrap(runner, "needed", "plan")
    wrap(plan, "needed", "plan")
    wrap(runner.Runner, "stream", "stream (plan included)")
    wrap(runner.Runner, "_stream", "stream (plan included)")   # older code (--code)
    wrap(commit.Committer, "commit", "commit (driver writes of rows)")
    wrap(Store, "optimize_indices", "optimize_indices")
    wrap(Store, "tag", "tag")
    wrap(Store, "upsert", "store.upsert (all callers)")
    wrap(Store, "annotate", "store.annotate (all callers)")


def _fragments(store_uri: str) -> dict[str, int]:
    import lance
    out = {}
    for d in sorted(Path(store_uri).glob("*.lance")):
        try:
            out[d.stem] = len(lance.dataset(str(d)).get_fragments())
        except Exception as e:  # noqa: BLE001
            out[d.stem] = f"error: {e}"
    return out


class Sampler:
    """Every ``interval`` s: the driver's RSS (its peak is the driver's peak memory) and the CPU
    seconds of the process tree, split into the driver, Ray's own processes (GCS, raylet, ...) and
    Ray workers. A worker's CPU includes the children it waited for (ffmpeg, ffprobe), whose own
    entries are skipped; a process that exits between two samples loses its last interval."""

    def __init__(self, interval: float = 0.5):
        import threading

        import psutil
        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.peak_private_mb = 0.0
        self.cpu: dict[tuple, tuple[str, float]] = {}
        self.base: dict[tuple, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def sample(self) -> None:
        ps = self.psutil
        try:
            m = self.me.memory_info()
            self.peak_rss_mb = max(self.peak_rss_mb, m.rss / 2**20)
            # RSS less shared pages (Ray's object store is mapped into the driver: those pages
            # count in its RSS but belong to the plasma store)
            self.peak_private_mb = max(self.peak_private_mb, (m.rss - m.shared) / 2**20)
            procs = self.me.children(recursive=True)
        except ps.Error:
            return
        workers = set()
        for p in [self.me, *procs]:
            try:
                name = " ".join(p.cmdline()[:1])
                if p.pid != self.me.pid and p.ppid() in workers:
                    continue          # counted in its worker's children times once waited for
                t = p.cpu_times()
                if name.startswith("ray::"):
                    workers.add(p.pid)
                    kind, sec = "workers", t.user + t.system + t.children_user + t.children_system
                else:
                    kind = "driver" if p.pid == self.me.pid else "ray processes"
                    sec = t.user + t.system
                self.cpu[(p.pid, p.create_time())] = (kind, sec)
            except ps.Error:
                continue

    def reset(self) -> None:
        self.sample()
        self.base = {k: v for k, (_, v) in self.cpu.items()}
        self.peak_rss_mb = self.peak_private_mb = 0.0
        self.sample()

    def cpu_s(self) -> dict[str, float]:
        self.sample()
        out = {"driver": 0.0, "ray processes": 0.0, "workers": 0.0}
        for k, (kind, v) in self.cpu.items():
            out[kind] += v - self.base.get(k, 0.0)
        out["total"] = sum(out.values())
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def weight_free_demo(code: Path = ROOT) -> str:
    """The steps of workflows/demo.yaml that load no model weights: probe, shots, audio, clips,
    clip_speech, quality, temporal - the demo the issue's baseline (0.36 s per tiny video) was
    measured on, before the model steps joined it."""
    import yaml
    doc = yaml.safe_load((code / "workflows" / "demo.yaml").read_text())
    names = {"probe", "shots", "audio", "clips", "clip_speech", "quality", "temporal"}
    kept: list[dict] = []
    for step in doc["steps"]:
        if step.get("name", step["op"]) in names:
            kept.append({**step, "after": [a for a in step.get("after", []) if a in names]})
    doc["steps"] = kept
    doc.pop("filters", None)
    doc.pop("description", None)
    doc["name"] = "demo_weight_free"
    return yaml.safe_dump(doc, sort_keys=False)


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def run_one(workflow: str, videos: Path, store_dir: Path, workers: int, profile: Path | None,
            code: Path = ROOT) -> dict:
    import cProfile
    import pstats

    sys.path.insert(0, str(code))

    t0 = time.perf_counter()
    from curation.runner import Runner, init_ray
    from curation.store import Store
    from curation.workflow import load
    t_import = time.perf_counter() - t0
    wf = load(PROBE_WORKFLOW) if workflow == "probe" else load(weight_free_demo(code))
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    for attempt in range(3):   # on a loaded machine a raylet may abort its own start (Ray's fixed
        try:                   # 15 s wait for its dashboard agent): try again
            init_ray(workers)
            break
        except Exception as e:  # noqa: BLE001
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            import ray
            ray.shutdown()
    t_ray = time.perf_counter() - t0
    rss_ray = _rss_mb()
    timings: dict = {}
    _wrap_timers(timings)
    store = Store(str(store_dir))
    runner = Runner(wf, store, workers=workers)
    prof = cProfile.Profile() if profile else None
    sampler = Sampler()
    sampler.reset()
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    s1 = runner.run([str(videos)])
    if prof:
        prof.disable()
    first = time.perf_counter() - t0
    first_cpu = sampler.cpu_s()
    first_peak = sampler.peak_rss_mb
    first_private = sampler.peak_private_mb
    first_phases = dict(timings)
    rss_first = _rss_mb()
    frags = _fragments(str(store_dir))
    errors: dict = {}
    for row in store.query("status", where="error IS NOT NULL", columns=["step", "error"]).to_pylist():
        key = f"{row['step']}: {row['error'][:160]}"
        errors[key] = errors.get(key, 0) + 1
    timings.clear()
    sampler.reset()
    t0 = time.perf_counter()
    s2 = runner.run([str(videos)])
    rerun = time.perf_counter() - t0
    sampler.sample()
    rerun_peak = sampler.peak_rss_mb
    rerun_private = sampler.peak_private_mb
    sampler.close()
    rerun_phases = dict(timings)
    rss_rerun = _rss_mb()
    steps = [{"step": s.step, "done": s.done, "skipped": s.skipped, "failed_videos": s.failed_videos,
              "rows": s.rows, "worker_seconds": round(s.seconds, 3)} for s in s1.steps]
    rerun_done = sum(s.done for s in s2.steps)
    if prof:
        with open(profile.with_suffix(".txt"), "w") as f:
            for key in ("cumulative", "tottime"):
                f.write(f"==== sorted by {key} ====\n")
                pstats.Stats(prof, stream=f).sort_stats(key).print_stats(45)
        prof.dump_stats(str(profile))
    import ray
    ray.shutdown()
    return {"workflow": workflow, "n": s1.videos, "workers": workers, "import_s": t_import,
            "ray_init_s": t_ray, "first_s": first, "first_cpu_s": first_cpu, "driver_peak_rss_mb": {"first": first_peak,
            "rerun": rerun_peak}, "driver_peak_private_mb": {"first": first_private, "rerun": rerun_private}, "first_phases_s": first_phases,
            "rerun_s": rerun, "rerun_phases_s": rerun_phases, "rerun_steps_done": rerun_done,
            "failed_inputs": getattr(s1, "failed_inputs", None), "steps": steps, "errors": errors, "fragments": frags,
            "rss_mb": {"start": rss_start, "after_ray_init": rss_ray, "after_first": rss_first,
                       "after_rerun": rss_rerun}}   # current RSS at those points


# ---- the report -------------------------------------------------------------------------------------
def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of seconds over N (s per extra video)."""
    if len({n for n, _ in points}) < 2:
        return None
    mx = sum(n for n, _ in points) / len(points)
    my = sum(s for _, s in points) / len(points)
    den = sum((n - mx) ** 2 for n, _ in points)
    return sum((n - mx) * (s - my) for n, s in points) / den


def table(results: list[dict]) -> str:
    lines = ["| workflow | N | first run s | s / video | CPU s / video | Ray start s | ingest s | stream s | "
             "optimize s | re-run s | driver peak RSS less shared, MB (first / re-run) | fragments (status, videos) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['workflow']} | {r['n']} | failed: {r['error'][:120]} |||||||||")
            continue
        p = r["first_phases_s"]
        fr = r["fragments"]
        lines.append(
            f"| {r['workflow']} | {r['n']:,} | {r['first_s']:.1f} | {r['first_s'] / r['n']:.3f} | "
            f"{r['first_cpu_s']['total'] / r['n']:.3f} | "
            f"{r['ray_init_s']:.1f} | {p.get('ingest', 0):.1f} | {p.get('stream (plan included)', 0):.1f} | "
            f"{p.get('optimize_indices', 0):.1f} | {r['rerun_s']:.1f} | "
            f"{_private(r, 'first')} / {_private(r, 'rerun')} | "
            f"{fr.get('status', '-')}, {fr.get('videos', '-')} |")
    lines.append("")
    for wf in dict.fromkeys(r["workflow"] for r in results):
        pts = [(r["n"], r["first_s"]) for r in results if r["workflow"] == wf and "error" not in r]
        b = slope(pts)
        if b is not None:
            base = BASELINE_S.get(wf)
            lines.append(f"- {wf}: fixed cost per video (slope over N = "
                         f"{', '.join(str(n) for n, _ in pts)}): **{b:.3f} s** (baseline {base} s, "
                         f"target < {base / TARGET_FACTOR:.3f} s)")
    return "\n".join(lines) + "\n"


def _private(r: dict, which: str) -> str:
    m = r.get("driver_peak_private_mb") or {}
    return f"{m[which]:.0f}" if which in m else "?"


def _code_sha(code: Path) -> dict[str, str]:
    """Short blake2b of the runner and store sources measured (the working tree may be ahead of
    any commit; these say which version a number belongs to)."""
    import hashlib
    return {f: hashlib.blake2b((code / "curation" / f).read_bytes(), digest_size=6).hexdigest()
            for f in ("runner.py", "store.py", "ingest.py") if (code / "curation" / f).exists()}


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="100,1000", help="comma-separated numbers of videos")
    ap.add_argument("--workflows", default="probe,demo", help="probe and/or demo")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--videos-root", default=None, help="where the synthetic videos go (kept)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="cProfile the driver of each first run")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--code", default=str(ROOT), help="run the curation code of this checkout "
                    "(e.g. an older commit exported with git archive), for an A/B under the same load")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per measured run")
    ap.add_argument("--one", nargs=4, metavar=("WORKFLOW", "VIDEOS", "STORE", "PROFILE"),
                    help=argparse.SUPPRESS)   # internal: one measured run in this process
    a = ap.parse_args(argv)
    if a.one:
        wf, videos, store, prof = a.one
        r = run_one(wf, Path(videos), Path(store), a.workers, Path(prof) if prof != "-" else None,
                    Path(a.code))
        print("RESULT " + json.dumps(r))
        return 0

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"scale-{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    vroot = Path(a.videos_root) if a.videos_root else Path(tempfile.gettempdir()) / "curation-scale-videos"
    meta = {"code": a.code, "code_sha": _code_sha(Path(a.code)), "started": stamp, "machine": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average_start": _load_average(),
            "workers": a.workers}
    results = []
    for n in [int(x) for x in a.n.split(",")]:
        t0 = time.perf_counter()
        files = make_videos(vroot / f"n{n}", n)
        made = time.perf_counter() - t0
        meta[f"make_{n}_s"] = made
        meta["check"] = check_videos(files)
        print(f"# {n} videos in {vroot / f'n{n}'} ({made:.1f} s)", flush=True)
        for wf in a.workflows.split(","):
            store = Path(tempfile.mkdtemp(prefix=f"scale-{wf}-{n}-"))
            prof = f"{out}-{wf}-{n}.prof" if a.profile else "-"
            load0 = _load_average()
            cmd = [sys.executable, __file__, "--workers", str(a.workers), "--code", a.code, "--one", wf,
                   str(vroot / f"n{n}"), str(store / "s"), prof]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout,
                                   env={**os.environ, "PYTHONPATH": a.code})
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"])
                r = json.loads(line[-1][len("RESULT "):])
            except Exception as e:  # noqa: BLE001 - recorded, the next measurement still runs
                r = {"workflow": wf, "n": n, "error": str(e)}
            r["load_average"] = {"before": load0, "after": _load_average()}
            results.append(r)
            print(json.dumps(r), flush=True)
            if not a.keep:
                shutil.rmtree(store, ignore_errors=True)
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = table(results)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
