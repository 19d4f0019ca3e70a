"""CPU-seconds per second of video, per step, for whole workflows run in one process (``--local``).

    .venv/bin/python bench/cost.py [--workflows demo,conversation] [--clips vr_face1.mp4,...]
        [--out cost.json] [--baseline old.json]

Each workflow runs on the clips into a fresh store with ``executor="local"`` (what
``curation run --local`` does: every stage in this process, one call at a time), so the process's
user + sys CPU time (``getrusage``, this process and any child it waited for) between the start and
the end of a stage call is that call's cost. A call of a fused frame stage (one decode feeding
several steps) is split between its steps in proportion to the seconds the runner reports for each
(its decode shared equally). Setting a stage up (loading its models) is counted apart, as
``setup``; what the runner does between calls (ingest, commits, planning) is ``runner``.
Reported per step: CPU s, CPU s per video s, share of the run; the total per video s; the process's
CPU since it started (imports before the bench's clock included: for the first workflow of the
command, the whole run as ``/usr/bin/time`` counts it, less the interpreter's exit); the wall time;
the load average before and after (CPU is shared on this machine: compare runs made side by side).

With ``--out`` the per-frame speak / listen / idle / discard states of every person clip of the
conversation workflow (and the face coverage of every track) are saved; ``--baseline`` compares
them with a saved run: per-frame agreement of the states on the frames both runs have (same video,
track and time), frames only one run has, and face coverage per track before and after. When the
clips are bench/label_agreement.py's, its agreement with the reference labels is printed too.

``--marginal`` runs the command twice, each in a fresh process: on the clips, and on the clips plus a
remuxed copy of each (the same streams, other bytes: another video), and prints the cost of the
second pass of video alone per step (the difference of the two runs over the difference of their
video seconds): what a second of video costs once a process is warm (imports, model set-up and the
first calls' costs paid), i.e. on a long run. ``--copies N`` runs on the clips plus N - 1 copies.

Run the same command on two code versions (e.g. ``git stash`` or an exported tree with
``PYTHONPATH``) one after the other; the numbers of one run alone are noisy under load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CLIPS = ("vr_face1.mp4", "vr_face2.mp4", "dj_video4.mp4", "lp_d3.mp4")   # label_agreement's


def cpu_now() -> float:
    """User + sys CPU seconds of this process and its waited-for children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class CpuMeter:
    """Wraps the runner's StageWorker so each stage call's and set-up's CPU is counted per step."""

    def __init__(self):
        self.steps: dict[str, float] = defaultdict(float)
        self.setup: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def install(self):
        from curation import runner
        meter, cls = self, runner.StageWorker
        init, call = cls.__init__, cls.__call__

        def timed_init(worker, specs, *a, **k):
            c0 = cpu_now()
            init(worker, specs, *a, **k)
            spent = cpu_now() - c0
            for name, _cls, _p in specs:
                meter.setup[name] += spent / len(specs)

        def timed_call(worker, video_ids):
            c0 = cpu_now()
            out = call(worker, video_ids)
            spent = cpu_now() - c0
            secs: dict[str, float] = defaultdict(float)
            for _vid, results in out:
                for r in results:
                    secs[r.step] += r.seconds
            total = sum(secs.values())
            names = worker.names
            for n in names:
                meter.steps[n] += spent * (secs[n] / total if total > 0 else 1.0 / len(names))
                meter.calls[n] += 1
            return out

        cls.__init__, cls.__call__ = timed_init, timed_call
        return init, call

    @staticmethod
    def uninstall(saved):
        from curation import runner
        runner.StageWorker.__init__, runner.StageWorker.__call__ = saved


def run_workflow(name: str, inputs: list[str], models: str, store_dir: str) -> dict:
    from curation.runner import Runner
    from curation.store import Store
    from curation.workflow import load
    meter = CpuMeter()
    saved = meter.install()
    load0 = os.getloadavg()[0]
    st = Store(store_dir)
    c0, t0 = cpu_now(), time.perf_counter()
    path = Path(name) if name.endswith(".yaml") else ROOT / "workflows" / f"{name}.yaml"
    try:
        Runner(load(path), st, model_dir=models, executor="local").run(inputs)
    finally:
        CpuMeter.uninstall(saved)
    cpu, wall = cpu_now() - c0, time.perf_counter() - t0
    videos = st.query("videos").to_pylist()
    dur = sum(v["duration_s"] or 0 for v in videos)
    return {"workflow": name, "video_s": dur, "cpu_s": cpu, "wall_s": wall,
            "load_before": load0, "load_after": os.getloadavg()[0],
            "process_cpu_s": cpu_now(),   # since the process started: imports included
            "steps": dict(meter.steps), "setup": dict(meter.setup), "calls": dict(meter.calls),
            "runner": cpu - sum(meter.steps.values()) - sum(meter.setup.values()),
            "store": store_dir, **labels_of(st)}


def labels_of(st) -> dict:
    """Per-frame states of the person clips and face coverage of the tracks (for --baseline)."""
    out = {"states": {}, "coverage": {}}
    if not st.exists("tracks"):
        return out
    for t in st.query("tracks", columns=["track_id", "face_ratio", "face_size_px", "num_frames"]).to_pylist():
        out["coverage"][t["track_id"]] = [t["face_ratio"], t["face_size_px"], t["num_frames"]]
    cols = st.schema("clips").names
    if "frame_states" in cols:
        for c in st.query("clips", where="clip_kind = 'person' AND frame_states IS NOT NULL",
                          columns=["track_id", "frame_times", "frame_states"]).to_pylist():
            per = out["states"].setdefault(c["track_id"], {})
            for t, s in zip(c["frame_times"], c["frame_states"]):
                per[f"{t:.3f}"] = s
    return out


def print_cost(r: dict) -> None:
    vs = r["video_s"]
    print(f"\n### {r['workflow']}: {vs:.1f} s of video, {r['cpu_s']:.0f} CPU s "
          f"({r['cpu_s'] / vs:.2f} per video s), {r['wall_s']:.0f} s wall, "
          f"load {r['load_before']:.1f} -> {r['load_after']:.1f}\n")
    print("| step | CPU s | CPU s / video s | share |")
    print("|---|---|---|---|")
    rows = sorted(r["steps"].items(), key=lambda kv: -kv[1])
    rows += [("setup (all steps)", sum(r["setup"].values())), ("runner", r["runner"])]
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {s / vs:.3f} | {s / r['cpu_s']:.0%} |")
    print(f"| **total** | {r['cpu_s']:.1f} | **{r['cpu_s'] / vs:.2f}** | |")
    if "process_cpu_s" in r:   # the first workflow of the command: its whole process, imports included
        print(f"\nthe process so far (imports included): {r['process_cpu_s']:.1f} CPU s, "
              f"{r['process_cpu_s'] / vs:.2f} per video s of this workflow")


def compare(new: dict, old: dict) -> None:
    """States per frame and face coverage per track, this run against a saved one."""
    agree = n = only_new = only_old = 0
    confusion: dict[tuple[str, str], int] = defaultdict(int)
    for tid in set(new["states"]) | set(old["states"]):
        a, b = new["states"].get(tid, {}), old["states"].get(tid, {})
        for t in set(a) | set(b):
            if t in a and t in b:
                n += 1
                agree += a[t] == b[t]
                confusion[(b[t], a[t])] += a[t] != b[t]
            elif t in a:
                only_new += 1
            else:
                only_old += 1
    print(f"\nstates against the baseline: {agree}/{n} frames agree ({agree / max(n, 1):.3f}); "
          f"{only_new} frames only in this run, {only_old} only in the baseline")
    changes = sorted(((k, v) for k, v in confusion.items() if v), key=lambda kv: -kv[1])
    if changes:
        print("changed (baseline -> now): " + ", ".join(f"{a}->{b} {v}" for (a, b), v in changes))
    print("\n| track | face ratio before | after | face px before | after | frames |")
    print("|---|---|---|---|---|---|")
    for tid in sorted(set(new["coverage"]) | set(old["coverage"])):
        a, b = new["coverage"].get(tid), old["coverage"].get(tid)
        f = lambda x, i: "-" if x is None or x[i] is None else f"{x[i]:.2f}" if i == 0 else f"{x[i]:.0f}"  # noqa: E731
        print(f"| {tid} | {f(b, 0)} | {f(a, 0)} | {f(b, 1)} | {f(a, 1)} | {(a or b)[2]} |")


def with_copies(inputs: list[str], copies: int, work: Path) -> list[str]:
    """``inputs`` plus ``copies`` - 1 remuxed copies of each (streams copied, the container's
    metadata changed: other bytes, so another video id; the same frames and sound)."""
    import subprocess
    out = list(inputs)
    for k in range(1, copies):
        for src in inputs:
            dst = work / f"{Path(src).stem}_copy{k}{Path(src).suffix}"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, "-map", "0", "-c", "copy",
                            "-metadata", f"comment=cost.py copy {k}", str(dst)], check=True)
            out.append(str(dst))
    return out


def marginal(args) -> None:
    """The per-step cost of the second pass of video: two fresh processes (copies 1 and 2)."""
    import subprocess
    runs = []
    for copies in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="cost-marginal-")) / "run.json"
        subprocess.run([sys.executable, __file__, "--media", args.media, "--models", args.models,
                        "--workflows", args.workflows, "--clips", args.clips, "--copies", str(copies),
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        runs.append(json.loads(out.read_text()))
    for name in runs[0]:
        a, b = runs[0][name], runs[1][name]
        dv = b["video_s"] - a["video_s"]
        steps = sorted(set(a["steps"]) | set(b["steps"]), key=lambda s: -b["steps"].get(s, 0))
        print(f"\n### {name}: {a['video_s']:.1f} s of video -> {b['video_s']:.1f} s, in fresh processes "
              f"(load {a['load_before']:.1f} -> {b['load_after']:.1f})\n")
        print("| step | first pass CPU s / video s | second pass alone |")
        print("|---|---|---|")
        for s in steps:
            print(f"| {s} | {a['steps'].get(s, 0) / a['video_s']:.3f} | "
                  f"{(b['steps'].get(s, 0) - a['steps'].get(s, 0)) / dv:.3f} |")
        for key, label in (("setup", "setup (all steps)"), ("runner", "runner")):
            va, vb = (sum(r[key].values()) if key == "setup" else r[key] for r in (a, b))
            print(f"| {label} | {va / a['video_s']:.3f} | {(vb - va) / dv:.3f} |")
        print(f"| **total** | **{a['cpu_s'] / a['video_s']:.2f}** | **{(b['cpu_s'] - a['cpu_s']) / dv:.2f}** |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--workflows", default="demo,conversation",
                    help="names under workflows/ or paths of workflow YAML files")
    ap.add_argument("--clips", default=",".join(CLIPS), help="file names under --media")
    ap.add_argument("--out", default=None, help="save the results (JSON) for a later --baseline")
    ap.add_argument("--baseline", default=None, help="a JSON saved by --out to compare with")
    ap.add_argument("--copies", type=int, default=1, help="run on the clips plus N - 1 remuxed copies")
    ap.add_argument("--marginal", action="store_true",
                    help="the cost of a second pass of video in a warm process (two fresh runs)")
    args = ap.parse_args()
    if args.marginal:
        return marginal(args)
    inputs = with_copies([str(Path(args.media) / c) for c in args.clips.split(",")], args.copies,
                         Path(tempfile.mkdtemp(prefix="cost-copies-")))
    results = {}
    for name in args.workflows.split(","):
        store = tempfile.mkdtemp(prefix=f"cost-{Path(name).stem}-")
        key = Path(name).stem          # a workflow file is compared under its file name's stem
        results[key] = run_workflow(name, inputs, args.models, store)
        print_cost(results[key])
    conv = next((r for r in results.values() if r["states"]), None)
    if conv and set(Path(i).name for i in inputs) == set(CLIPS):
        from label_agreement import score
        from curation.store import Store
        print("\nagreement with the reference labels (bench/label_agreement.py):\n")
        score(Store(conv["store"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.baseline:
        old = json.loads(Path(args.baseline).read_text())
        for name, r in results.items():
            if name in old:
                b = old[name]
                print(f"\n## {name} against the baseline: {b['cpu_s'] / b['video_s']:.2f} -> "
                      f"{r['cpu_s'] / r['video_s']:.2f} CPU s per video s")
                steps = sorted(set(r["steps"]) | set(b["steps"]), key=lambda s: -b["steps"].get(s, 0))
                print("\n| step | before CPU s / video s | after |")
                print("|---|---|---|")
                for s in steps:
                    print(f"| {s} | {b['steps'].get(s, 0) / b['video_s']:.3f} | "
                          f"{r['steps'].get(s, 0) / r['video_s']:.3f} |")
                if r["states"] or b["states"]:
                    compare(r, b)


if __name__ == "__main__":
    main()
