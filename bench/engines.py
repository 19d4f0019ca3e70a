#!/usr/bin/env python
"""The two Ray engines side by side, in one run on one machine: the streaming scheduler
(curation/scheduler.py) and the Ray Data pipeline (curation/raydata.py).

    .venv/bin/python bench/engines.py [--n 1000] [--workers 1,2] [--cases tiny,clips]
                                      [--media ../shared/media] [--models ../shared/models]
                                      [--raydata 'group;worker'] [--order abba|ab]
                                      [--out bench/results/NAME]

Cases: ``tiny``, N generated 1 s 160x120 videos (bench/scale.py's) through demo.yaml's weight-free
steps (seconds per video); ``clips``, the 12 shared clips through the whole demo workflow
(needs --models). For each case and worker count the engines run in ABBA order (scheduler,
Ray Data, Ray Data, scheduler; every Ray Data variant given), or with ``--order ab`` once each,
the order flipping from one worker count to the next; each run in a fresh child process
with its own local Ray and a fresh store; reported: the wall time of ``Runner.run`` (Ray's start
timed apart), worker calls in flight (time-averaged and peak), the driver's peak RSS, and the
load average before and after; Ray Data's execution stats of each run go next to the results
(``NAME-CASE-wWORKERS-ENGINE-I.stats.txt``). Speed is a ratio of the two engines measured side by
side, never an absolute: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def child(spec: dict) -> dict:
    """One measured run (in its own process)."""
    from scale import Sampler, weight_free_demo

    from curation.runner import Runner, init_ray
    from curation.store import Store
    from curation.workflow import load
    wf = load(weight_free_demo()) if spec["case"] == "tiny" else load(ROOT / "workflows" / "demo.yaml")
    t0 = time.perf_counter()
    init_ray(spec["workers"])
    ray_s = time.perf_counter() - t0
    runner = Runner(wf, Store(spec["store"]), model_dir=spec.get("models"), workers=spec["workers"],
                    engine=spec["engine"].split(":")[0])
    if spec["engine"].startswith("raydata"):   # raydata:COMMIT[:key=value,...] (engine options)
        parts = spec["engine"].split(":")
        opts = {"commit": parts[1]}
        for kv in (parts[2].split(",") if len(parts) > 2 else []):
            k, v = kv.split("=")
            opts[k] = json.loads(v)
        settings = {k[4:]: opts.pop(k) for k in list(opts) if k.startswith("ctx.")}
        import curation.raydata as rd
        real = rd.RayDataEngine.__init__

        def init(self, *a, **k):
            real(self, *a, **{**k, **opts, "settings": settings})
        rd.RayDataEngine.__init__ = init
    sampler = Sampler()
    sampler.reset()
    t0 = time.perf_counter()
    summary = runner.run(spec["inputs"])
    wall = time.perf_counter() - t0
    cpu = sampler.cpu_s()
    sampler.close()
    st = Store(spec["store"])
    failed = st.count("status", "ok = false") if st.exists("status") else 0
    return {"wall_s": wall, "cpu_s": cpu, "ray_init_s": ray_s, "calls_in_flight": summary.calls_in_flight,
            "max_calls_in_flight": summary.max_calls_in_flight, "peak_rss_mb": sampler.peak_rss_mb,
            "peak_private_mb": sampler.peak_private_mb, "videos": summary.videos,
            "status_rows": st.count("status"), "failed": failed,
            "steps": {s.step: [s.done, s.failed_videos, round(s.seconds, 2)] for s in summary.steps},
            "engine_stats": summary.engine_stats}


def measure(spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        spec = {**spec, "store": str(Path(tmp) / "store")}
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if r.returncode:
            return {"error": r.stderr[-1500:]}
        return json.loads(r.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--cases", default="tiny,clips")
    ap.add_argument("--media", default=os.environ.get("CURATION_MEDIA",
                                                      str(ROOT.parent / "shared" / "media")))
    ap.add_argument("--models", default=os.environ.get("CURATION_MODELS",
                                                       str(ROOT.parent / "shared" / "models")))
    ap.add_argument("--raydata", default="group", help="Ray Data variants, ';'-separated: "
                    "COMMIT[:key=json,...], e.g. 'group;worker;group:batch=32,ctx."
                    "op_resource_reservation_enabled=false'")
    ap.add_argument("--order", default="abba", choices=["abba", "ab"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    from scale import make_videos
    out = Path(a.out or ROOT / "bench" / "results" / f"engines-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tiny = Path(tempfile.gettempdir()) / f"engines-tiny-{a.n}"
    inputs = {"tiny": [str(tiny)], "clips": [a.media]}
    if "tiny" in a.cases:
        make_videos(tiny, a.n)
    ray_data = [f"raydata:{c}" for c in a.raydata.split(";")]
    results = []
    for case in a.cases.split(","):
        for i, workers in enumerate(int(w) for w in a.workers.split(",")):
            order = ["scheduler", *ray_data]
            order = [*order, *reversed(order)] if a.order == "abba" else order[::-1 if i % 2 else 1]
            for j, engine in enumerate(order):
                before = _load()
                r = measure({"case": case, "workers": workers, "engine": engine,
                             "inputs": inputs[case], "models": a.models if case == "clips" else None})
                r.update(case=case, workers=workers, engine=engine, load_before=before, load_after=_load())
                stats = r.pop("engine_stats", "")
                if stats:
                    name = engine.replace(":", "_").replace(",", "_").replace("=", "")
                    Path(f"{out}-{case}-w{workers}-{name}-{j}.stats.txt").write_text(stats)
                results.append(r)
                print(json.dumps(r), flush=True)
                out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(table(results))
    print(table(results))
    return 0


def table(results: list[dict]) -> str:
    lines = ["| case | workers | engine | runs | wall s (median) | s / video | vs scheduler | CPU s "
             "(median) | CPU vs scheduler | calls in flight (mean / peak) | driver peak RSS MB | load "
             "before-after |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["case"], r["workers"], r["engine"]), []).append(r)
    for (case, workers, engine), rs in groups.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"]["total"] for r in rs)
        base = groups.get((case, workers, "scheduler"))
        ratio = wall / statistics.median(r["wall_s"] for r in base) if base else None
        cratio = cpu / statistics.median(r["cpu_s"]["total"] for r in base) if base else None
        lines.append(
            f"| {case} | {workers} | {engine} | {len(rs)} | {wall:.1f} | {wall / rs[0]['videos']:.3f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {cpu:.1f} | "
            f"{'' if cratio is None else f'{cratio:.2f}'} | "
            f"{statistics.median(r['calls_in_flight'] for r in rs):.2f} / "
            f"{max(r['max_calls_in_flight'] for r in rs)} | "
            f"{max(r['peak_rss_mb'] for r in rs):.0f} | {rs[0]['load_before']} - {rs[-1]['load_after']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
