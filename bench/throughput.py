#!/usr/bin/env python
"""Throughput of the pipeline against the decode limit of the same files on the same machine.

    .venv/bin/python bench/throughput.py --media ../shared/media [--workflow workflows/demo.yaml]
                                         [--out bench/results/NAME] [--repeats 3] [--skip-e2e]

For each clip (*.mp4, *.mov) of the media directory:

  a. decode limit: frames/s of ``ffmpeg -v error -i FILE -map 0:v:0 -f null -`` (ffmpeg's default
     threading), and of the same with ``-threads 1`` (one core, like one pipeline worker);
  b. frame-operator stage: the workflow's fused frame steps (e.g. quality + temporal, one shared decode)
     run in this process by ``curation.operator.run_steps_on_video`` on one row spanning the whole
     video, as frames of the video per second; also the decord decode alone at the stage's frame spec;
  c. the ratio b / a.

Then (d) the whole workflow end to end with Ray (num_cpus = --ray-cpus) at 1 and 2 workers into fresh
temporary stores, wall-clock seconds and speed-up. Every timing is the median of --repeats runs
(end-to-end: one run each, after an untimed warm-up run). Results are printed as markdown and written to
OUT.json and OUT.md (default bench/results/throughput-<UTC time>). See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEDIA_SUFFIXES = {".mp4", ".mov"}


# ---- helpers ------------------------------------------------------------------------------------------
def media_files(media_dir: Path) -> list[Path]:
    return sorted(p for p in media_dir.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


def count_frames(path: Path) -> tuple[int, str]:
    """Number of video frames: packets of the first video stream (read, not decoded), else the
    container's nb_frames, else duration x frame rate. Returns (frames, how)."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
           "stream=nb_read_packets,nb_frames,duration,avg_frame_rate", "-of", "json", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    s = (json.loads(r.stdout).get("streams") or [{}])[0]
    for key in ("nb_read_packets", "nb_frames"):
        if str(s.get(key, "")).isdigit() and int(s[key]) > 0:
            return int(s[key]), key
    num, _, den = str(s.get("avg_frame_rate", "0/1")).partition("/")
    fps = float(num) / float(den or 1) if float(den or 1) else 0.0
    return int(round(float(s.get("duration") or 0) * fps)), "duration*fps"


def timed(fn, repeats: int) -> dict:
    """Run ``fn`` ``repeats`` times; wall-clock and CPU seconds (this process and its children)."""
    walls, cpus = [], []
    result = None
    for _ in range(repeats):
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    i = walls.index(statistics.median_low(walls))
    return {"seconds": statistics.median(walls), "runs_s": [round(w, 4) for w in walls],
            "cpu_seconds": statistics.median(cpus),
            "cpu_per_wall": cpus[i] / walls[i] if walls[i] > 0 else None, "result": result}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def ffmpeg_decode(path: Path, threads: int | None = None) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if threads:
        cmd += ["-threads", str(threads)]  # before -i: a decoder option
    cmd += ["-i", str(path), "-map", "0:v:0", "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path.name}: {r.stderr.strip()[-300:]}")


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def cpu_busy(seconds: float = 3.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (/proc/stat), sampled while this script is idle: the
    load from other processes when taken between measurements."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except (OSError, ValueError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def machine_info() -> dict:
    from curation.media import import_decord
    decord = import_decord()
    import ray
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                capture_output=True, text=True).stdout.strip())
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "ffmpeg": _version(["ffmpeg", "-version"]), "decord": decord.__version__,
            "ray": ray.__version__, "git_commit": commit + ("+dirty" if dirty else ""),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "cpu_busy_by_others_start": cpu_busy()}


# ---- (a) (b) (c): per file ------------------------------------------------------------------------------
def frame_stages(wf) -> list[list]:
    return [stage for stage in wf.stages() if all(s.op_cls.frames is not None for s in stage)]


def bench_file(path: Path, stages: list[list], repeats: int, model_dir: str | None) -> dict:
    from curation.media import FrameSpec, VideoDecoder, content_id, probe
    from curation.operator import run_steps_on_video
    from schemas import KEYS

    video = probe(str(path))
    video.update(video_id=content_id(str(path)), uri=str(path))
    frames, frames_from = count_frames(path)
    out = {"file": path.name, "width": video["width"], "height": video["height"],
           "codec": video["video_codec"], "fps": round(video["fps"], 3),
           "duration_s": round(video["duration_s"], 3), "frames": frames, "frames_from": frames_from}

    a = timed(lambda: ffmpeg_decode(path), repeats)
    a1 = timed(lambda: ffmpeg_decode(path, threads=1), repeats)
    out["decode"] = {"seconds": a["seconds"], "runs_s": a["runs_s"], "fps": frames / a["seconds"],
                     "cpu_seconds": a["cpu_seconds"], "cpu_per_wall": a["cpu_per_wall"]}
    out["decode_1thread"] = {"seconds": a1["seconds"], "runs_s": a1["runs_s"],
                             "fps": frames / a1["seconds"], "cpu_seconds": a1["cpu_seconds"],
                             "cpu_per_wall": a1["cpu_per_wall"]}

    out["stages"] = []
    for stage in stages:
        table = stage[0].op_cls.input_table
        keys = KEYS[table]
        if table == "videos":
            rows = [video]
        else:  # one row spanning the whole video, with the key columns of the stage's input table
            rows = [{"video_id": video["video_id"], "clip_id": "bench", "shot_index": 0,
                     "clip_index": 0, "track_id": "bench", "start_s": 0.0,
                     "end_s": video["duration_s"], "duration_s": video["duration_s"]}]
        steps = [(s.name, s.make(model_dir)) for s in stage]
        for _, op in steps:
            op.setup()
        spec = FrameSpec.union([op.frames for _, op in steps])

        def decoder():
            return VideoDecoder(str(path), rotation=video.get("rotation") or 0, max_side=spec.max_side,
                                display_size=(video["width"], video["height"]))

        def decode_only():  # one decode of the span into each operator's view (union FrameSpec)
            return len(decoder().span(0.0, video["duration_s"], spec))

        def union_stage():
            """The stage as run_stage runs it, with the span decoded for the union spec (each
            operator's view made straight from the decoded pictures)."""
            dec, errs = decoder(), []
            for row in rows:
                frames = dec.span(row.get("start_s", 0.0), row.get("end_s") or 1e9, spec)
                for name, op in steps:
                    got = op.process_rows([(video, row, frames.sample(op.frames.fps,
                                                                      op.frames.max_side))])
                    errs += [f"{name}: {g}" for g in got if isinstance(g, BaseException)]
            return errs

        d = timed(decode_only, repeats)
        b = timed(lambda: run_steps_on_video(steps, video, rows, keys), repeats)
        u = timed(union_stage, repeats) if spec.parts else None
        errors = []
        for r in b["result"]:
            if r.error:
                errors.append(f"{r.step}: {r.error}")
            elif r.rows is not None and "error" in r.rows.column_names:
                errors += [f"{r.step}: {e}" for e in r.rows["error"].to_pylist() if e]
        per_step = {r.step: round(r.seconds, 4) for r in b["result"]}
        out["stages"].append({
            "stage": "+".join(s.name for s in stage),
            "frame_spec": {"fps": spec.fps, "max_side": spec.max_side},
            "decord_decode": {"seconds": d["seconds"], "runs_s": d["runs_s"],
                              "fps": frames / d["seconds"], "frames_decoded": d["result"],
                              "cpu_seconds": d["cpu_seconds"], "cpu_per_wall": d["cpu_per_wall"]},
            "frame_ops": {"seconds": b["seconds"], "runs_s": b["runs_s"], "fps": frames / b["seconds"],
                          "cpu_seconds": b["cpu_seconds"], "cpu_per_wall": b["cpu_per_wall"],
                          "step_seconds_last_run": per_step},
            "union_ops": None if u is None else {
                "seconds": u["seconds"], "runs_s": u["runs_s"], "fps": frames / u["seconds"],
                "cpu_seconds": u["cpu_seconds"], "cpu_per_wall": u["cpu_per_wall"],
                "ratio_vs_decode": (frames / u["seconds"]) / out["decode"]["fps"],
                "ratio_vs_decode_1thread": (frames / u["seconds"]) / out["decode_1thread"]["fps"],
                "ratio_cpu_vs_decode_1thread": _div(a1["cpu_seconds"], u["cpu_seconds"]),
                "errors": u["result"]},
            "ratio_vs_decode": (frames / b["seconds"]) / out["decode"]["fps"],
            "ratio_vs_decode_1thread": (frames / b["seconds"]) / out["decode_1thread"]["fps"],
            # the same ratio in CPU time (frames per CPU-second): less sensitive to a busy machine
            "ratio_cpu_vs_decode_1thread": _div(a1["cpu_seconds"], b["cpu_seconds"]),
            "decode_share": d["seconds"] / b["seconds"],
            "errors": errors,
        })
    return out


# ---- (d): end to end ---------------------------------------------------------------------------------------
def make_copies(files: list[Path], k: int, out_dir: Path) -> list[str]:
    """K remuxed copies of each file (stream copy, a different comment tag): same pictures and
    sound, different bytes, so the store sees K * len(files) distinct videos."""
    out = []
    for path in files:
        for i in range(k):
            dst = out_dir / f"{path.stem}-copy{i}{path.suffix}"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-map", "0",
                            "-c", "copy", "-metadata", f"comment=bench copy {i}", str(dst)], check=True)
            out.append(str(dst))
    return out


def bench_e2e(workflow_path: str, inputs: list[str], worker_counts: list[int], ray_cpus: int,
              model_dir: str | None, warmup_files: list[str], repeats: int = 2) -> dict:
    import logging
    import warnings

    import ray

    from curation.runner import Runner, init_ray
    from curation.store import Store
    from curation.workflow import load

    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    warnings.filterwarnings("ignore", message=r"The (maximum|minimum) number of concurrent")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    init_ray(ray_cpus)  # already initialised: only sets the runner's logging and warning filters
    out = {"ray_init_s": time.perf_counter() - t0,
           "ray_cpus": ray.cluster_resources().get("CPU"), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        if warmup_files:  # Ray worker start-up, imports, first map_batches: not timed. As many
            # files as the most workers, so that every worker process is started and warm
            t = time.perf_counter()
            Runner(load(workflow_path), Store(os.path.join(tmp, "warmup")), model_dir=model_dir,
                   workers=max(worker_counts)).run(warmup_files)
            out["warmup"] = {"files": [Path(f).name for f in warmup_files],
                             "seconds": time.perf_counter() - t}
        # repeats in ABBA order (1, 2, 2, 1, ...): a drift of the machine's load cancels out
        order = []
        for i in range(repeats):
            order += worker_counts if i % 2 == 0 else worker_counts[::-1]
        by_n: dict[int, list[dict]] = {n: [] for n in worker_counts}
        for k, n in enumerate(order):
            store = os.path.join(tmp, f"store-{k}-{n}")
            t = time.perf_counter()
            summary = Runner(load(workflow_path), Store(store), model_dir=model_dir,
                             workers=n).run(inputs)
            wall = time.perf_counter() - t
            by_n[n].append({
                "seconds": wall, "videos": summary.videos,
                "calls_in_flight": round(summary.calls_in_flight, 2),
                "max_calls_in_flight": summary.max_calls_in_flight,
                "steps": [{"step": s.step, "seconds": round(s.seconds, 3), "done": s.done,
                           "failed_videos": s.failed_videos, "failed_rows": s.failed_rows,
                           "rows": s.rows} for s in summary.steps]})
            print(f"end to end, {n} worker(s): {wall:.1f} s, worker calls in flight "
                  f"{summary.calls_in_flight:.2f} on average, {summary.max_calls_in_flight} at most",
                  flush=True)
            shutil.rmtree(store, ignore_errors=True)
    for n in worker_counts:
        runs = sorted(by_n[n], key=lambda r: r["seconds"])
        median_run = runs[(len(runs) - 1) // 2]
        out["runs"].append({"workers": n, "seconds": statistics.median(r["seconds"] for r in runs),
                            "runs_s": [round(r["seconds"], 2) for r in by_n[n]],
                            "videos": median_run["videos"], "steps": median_run["steps"],
                            "calls_in_flight": statistics.median(r["calls_in_flight"] for r in runs),
                            "max_calls_in_flight": max(r["max_calls_in_flight"] for r in runs)})
    base = out["runs"][0]["seconds"]
    for r in out["runs"]:
        r["speedup"] = base / r["seconds"]
    return out


# ---- report -------------------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def _f(x, digits=0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Throughput ({report['date']})", "",
             f"Machine: {m['cpu_count']} CPUs ({m['cpu']}), load average at start "
             f"{', '.join(map(str, m['loadavg_start']))}, at end "
             f"{', '.join(map(str, m.get('loadavg_end', [])))}; CPUs busy with other processes "
             f"(3 s sample) at start {_pct(m.get('cpu_busy_by_others_start'))}"
             + (f", before the end-to-end runs {_pct(m['cpu_busy_by_others_before_e2e'])}"
                if "cpu_busy_by_others_before_e2e" in m else "")
             + f". {m['ffmpeg'].split(' Copyright')[0]}; decord {m['decord']}; "
             f"ray {m['ray']}; commit {m['git_commit']}.",
             f"Workflow: `{report['workflow']}`. Median of {report['repeats']} runs per number.", ""]
    stage_names = report["frame_stages"]
    if not stage_names:
        lines += [f"**No frame operators in the workflow**: frame-ops columns skipped. "
                  f"{report.get('note', '')}", ""]
    lines += ["## Per file: decode limit vs the frame-operator stage", ""]
    if stage_names:
        lines += [f"Frame stage: `{' / '.join(stage_names)}` "
                  f"(frame spec of the first: {report['files'][0]['stages'][0]['frame_spec']}).", ""]
    head = ["file", "resolution", "codec", "frames", "decode fps", "decode fps 1 thread"]
    if stage_names:
        head += ["stage decode fps", "frame-ops fps", "ratio", "ratio vs 1 thread",
                 "CPU-time ratio vs 1 thread", "frame-ops CPU/wall", "one-pass frame-ops fps",
                 "one-pass ratio", "one-pass CPU-time ratio vs 1 thread"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in report["files"]:
        if "error" in f:
            lines.append(f"| {f['file']} | error: {f['error']} |")
            continue
        row = [f["file"], f"{f['width']}x{f['height']}", f["codec"], str(f["frames"]),
               _f(f["decode"]["fps"]), _f(f["decode_1thread"]["fps"])]
        for s in f["stages"][:1]:
            row += [_f(s["decord_decode"]["fps"]), _f(s["frame_ops"]["fps"]),
                    _f(s["ratio_vs_decode"], 3), _f(s["ratio_vs_decode_1thread"], 3),
                    _f(s["ratio_cpu_vs_decode_1thread"], 3), _f(s["frame_ops"]["cpu_per_wall"], 2)]
            u = s.get("union_ops")
            row += ["-", "-", "-"] if not u else [_f(u["fps"]), _f(u["ratio_vs_decode"], 3),
                                                  _f(u["ratio_cpu_vs_decode_1thread"], 3)]
            if s["errors"]:
                row[-1] += f" ({len(s['errors'])} errors: {s['errors'][0][:80]})"
        lines.append("| " + " | ".join(row) + " |")
    tot = report.get("totals")
    if tot:
        row = ["**all files**", "", "", str(tot["frames"]), _f(tot["decode_fps"]),
               _f(tot["decode_1thread_fps"])]
        if stage_names:
            row += [_f(tot.get("decord_fps")), _f(tot.get("frame_ops_fps")), _f(tot.get("ratio"), 3),
                    _f(tot.get("ratio_1thread"), 3), _f(tot.get("ratio_cpu_1thread"), 3), "",
                    _f(tot.get("union_fps")), _f(tot.get("union_ratio"), 3),
                    _f(tot.get("union_ratio_cpu_1thread"), 3)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "decode fps: `ffmpeg -v error -i FILE -map 0:v:0 -f null -` (default threads); "
              "1 thread: with `-threads 1`. frame-ops fps: frames of the video / seconds of "
              "`run_steps_on_video` over one row spanning the whole video (decode included). "
              "ratio = frame-ops fps / decode fps. CPU-time ratio: the same with CPU seconds instead of "
              "wall seconds (1-thread ffmpeg vs the frame ops), robust to a busy machine. "
              "CPU/wall: cores the frame ops used on average (< 1: the machine was busy). "
              "one-pass: the same stage with the span decoded once for the union FrameSpec "
              "(`VideoDecoder.span(start, end, spec)`: each operator's view made from the decoded "
              "pictures at its own rate and size) instead of once at the largest size and resized.",
              ""]
    e2e = report.get("e2e")
    if e2e:
        copies = e2e.get("copies", 1)
        lines += ["## End to end (Ray, whole workflow over the same files"
                  + (f", {copies} distinct copies of each" if copies > 1 else "") + ")", "",
                  f"Ray num_cpus = {e2e['ray_cpus']}; ray.init {e2e['ray_init_s']:.1f} s; "
                  + (f"untimed warm-up run on {', '.join(e2e['warmup']['files'])}: "
                     f"{e2e['warmup']['seconds']:.1f} s."
                     if e2e.get("warmup") else "no warm-up run."), "",
                  "| workers | videos | wall s (median) | runs s | speed-up | videos/min | frames/s "
                  "| calls in flight, mean (max) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in e2e["runs"]:
            lines.append(f"| {r['workers']} | {r['videos']} | {r['seconds']:.1f} | "
                         f"{', '.join(f'{x:.1f}' for x in r['runs_s'])} | {r['speedup']:.2f}x | "
                         f"{60 * r['videos'] / r['seconds']:.1f} | "
                         f"{_f(tot['frames'] * copies / r['seconds'] if tot else None)} | "
                         f"{r.get('calls_in_flight', 0):.2f} ({r.get('max_calls_in_flight', '-')}) |")
        steps = [s["step"] for s in e2e["runs"][0]["steps"]]
        lines += ["", "Seconds per stage, from the median run (a fused stage's steps share one number):", "",
                  "| step | " + " | ".join(f"{r['workers']} worker(s)" for r in e2e["runs"]) + " |",
                  "|---|" + "---|" * len(e2e["runs"])]
        for name in steps:
            cells = []
            for r in e2e["runs"]:
                s = next((x for x in r["steps"] if x["step"] == name), None)
                cells.append("-" if s is None else
                             f"{s['seconds']:.1f}" + (f" ({s['failed_videos']} failed)"
                                                      if s["failed_videos"] else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", required=True, help="directory of clips (*.mp4, *.mov)")
    ap.add_argument("--workflow", default=None,
                    help="workflow YAML (default: the steps of workflows/demo.yaml that load no "
                         "model weights, as bench/scale.py; pass --models to bench the others)")
    ap.add_argument("--models", default=None, help="model directory (for operators that need one)")
    ap.add_argument("--out", default=None,
                    help="output path without suffix (writes .json and .md); default "
                         "bench/results/throughput-<UTC time>")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="worker counts of the end-to-end runs")
    ap.add_argument("--ray-cpus", type=int, default=2, help="num_cpus of the local Ray instance")
    ap.add_argument("--e2e-repeats", type=int, default=2,
                    help="end-to-end runs per worker count (median; ABBA order)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--files", default=None, help="comma-separated file names: only these")
    ap.add_argument("--copies", type=int, default=1,
                    help="end to end over K distinct copies of each file (remuxed with another "
                         "comment tag, so each is a new video): more work per Ray stage")
    args = ap.parse_args(argv)

    from curation.workflow import load

    if args.workflow is None:
        from scale import weight_free_demo   # bench/scale.py
        path = Path(tempfile.mkdtemp(prefix="bench-wf-")) / "demo_weight_free.yaml"
        path.write_text(weight_free_demo())
        args.workflow = str(path)
    media_dir = Path(args.media).resolve()
    files = media_files(media_dir)
    if args.files:
        wanted = set(args.files.split(","))
        files = [f for f in files if f.name in wanted]
    if not files:
        print(f"no *.mp4 / *.mov files in {media_dir}", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"throughput-{stamp}"
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)

    wf = load(args.workflow)
    stages = frame_stages(wf)
    report = {"date": stamp, "workflow": args.workflow, "workflow_name": wf.name,
              "media": str(media_dir), "repeats": args.repeats, "machine": machine_info(),
              "frame_stages": ["+".join(s.name for s in st) for st in stages], "files": []}
    if not stages:
        from operators import REGISTRY
        frame_ops = sorted(n for n, c in REGISTRY.items() if c.frames is not None)
        report["note"] = ("Frame operators registered but not in this workflow: "
                          f"{', '.join(frame_ops)}; add them as steps to measure them."
                          if frame_ops else "No frame operator is registered yet (operators/).")
        print(f"workflow {wf.name!r} has no frame operators: skipping the frame-ops stage and the "
              f"ratio (b, c). {report['note']}", flush=True)
    else:
        print(f"frame stage(s): {', '.join(report['frame_stages'])}", flush=True)

    t_all = time.perf_counter()
    for path in files:
        t = time.perf_counter()
        try:
            res = bench_file(path, stages, args.repeats, args.models)
        except Exception as e:  # noqa: BLE001 - one bad file does not end the bench
            res = {"file": path.name, "error": f"{type(e).__name__}: {e}"}
        report["files"].append(res)
        msg = f"{path.name}: {time.perf_counter() - t:.1f} s"
        if "error" not in res:
            msg += f", decode {res['decode']['fps']:.0f} fps"
            for s in res["stages"]:
                msg += f", {s['stage']} {s['frame_ops']['fps']:.0f} fps (ratio {s['ratio_vs_decode']:.3f})"
                if s.get("union_ops"):
                    msg += (f", one pass {s['union_ops']['fps']:.0f} fps "
                            f"(ratio {s['union_ops']['ratio_vs_decode']:.3f})")
        else:
            msg += f", {res['error']}"
        print(msg, flush=True)

    ok = [f for f in report["files"] if "error" not in f]
    if ok:
        frames = sum(f["frames"] for f in ok)
        tot = {"frames": frames,
               "decode_fps": frames / sum(f["decode"]["seconds"] for f in ok),
               "decode_1thread_fps": frames / sum(f["decode_1thread"]["seconds"] for f in ok)}
        if stages:
            tot["decord_fps"] = frames / sum(f["stages"][0]["decord_decode"]["seconds"] for f in ok)
            tot["frame_ops_fps"] = frames / sum(f["stages"][0]["frame_ops"]["seconds"] for f in ok)
            tot["ratio"] = tot["frame_ops_fps"] / tot["decode_fps"]
            tot["ratio_1thread"] = tot["frame_ops_fps"] / tot["decode_1thread_fps"]
            tot["ratio_cpu_1thread"] = _div(sum(f["decode_1thread"]["cpu_seconds"] for f in ok),
                                            sum(f["stages"][0]["frame_ops"]["cpu_seconds"] for f in ok))
            if all(f["stages"][0].get("union_ops") for f in ok):
                tot["union_fps"] = frames / sum(f["stages"][0]["union_ops"]["seconds"] for f in ok)
                tot["union_ratio"] = tot["union_fps"] / tot["decode_fps"]
                tot["union_ratio_cpu_1thread"] = _div(
                    sum(f["decode_1thread"]["cpu_seconds"] for f in ok),
                    sum(f["stages"][0]["union_ops"]["cpu_seconds"] for f in ok))
        report["totals"] = tot
    report["per_file_seconds"] = time.perf_counter() - t_all

    if not args.skip_e2e:
        report["machine"]["cpu_busy_by_others_before_e2e"] = cpu_busy()
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
        shortest = sorted(ok, key=lambda f: f["frames"])[:max(counts)]
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-copies-") as copies_dir:
            inputs = [str(f) for f in files] if args.copies <= 1 else \
                make_copies(files, args.copies, Path(copies_dir))
            report["e2e"] = bench_e2e(args.workflow, inputs, counts, args.ray_cpus,
                                      args.models, [str(media_dir / f["file"]) for f in shortest],
                                      args.e2e_repeats)
        report["e2e"]["copies"] = args.copies
        report["e2e"]["total_seconds"] = time.perf_counter() - t

    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    md = markdown(report)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
