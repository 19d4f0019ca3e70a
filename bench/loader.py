#!/usr/bin/env python
"""The loader against a bare decode of the same windows, its memory over many windows, and the padding
of its token buckets.

    .venv/bin/python bench/loader.py --media ../shared/media [--workers 0,2] [--memory-windows 20000]

1. **Delivered windows per second** (``ClipStream`` / ``make_loader``: decode, audio, states,
   conditions, online checks of ``--profile``) over ``--epochs`` epochs of 2 s windows of the shared clips (a
   store made with probe + shots + clips + audio_features, or ``--store``), as a ratio to a bare
   decode of the same windows (``curation.data.decode.read_window`` alone: the frames only, the same
   function, backend, decoder threads, size and malloc settings as the loader's, into one reused
   array per frame size: no allocation) on the same cores: in one process (0 workers), and with W
   processes each side (the loader's spawned DataLoader workers, which hand every batch to the main
   process, against a spawned ``multiprocessing`` pool of W decoding the same windows and returning
   their frame counts; the loader's consumer reads a byte of every page of each batch's frames, as
   a trainer's copy to the GPU would map them). Each side runs in a fresh process (in one process, one side's frees changed
   the other's page faults 2-5x); each repeat runs both, alternating which goes first. Reported:
   the ratios of windows per second and of CPU seconds per window (the process and its workers), of
   the whole run (from the first step asked for; the loader's stream is made before, as the bare
   decode's window list is) and of the steady state (after the first epoch: every video opened,
   every worker started), median and range over ``--repeats``, with the load average.
   And in one process **step by step** (``interleaved``): each step of the loader and a bare decode
   of its windows, alternating, so both see the same load.
2. **Resident memory** of the process while an endless stream (0 workers) delivers
   ``--memory-windows`` windows of tiny generated clips (tests/synthetic.py), sampled every 1,000.
3. **Padding** of the token buckets: windows of 2-6 s (``window_s=(2, 6)``) of the shared clips'
   shots, batches of ``--batch-tokens``: the padded share of frames over 5 epochs' plans.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORKFLOW = """name: bench_loader
steps:
  - {name: probe, op: probe, params: {decode_check: ends}}
  - {name: shots, op: shots, after: [probe]}
  - {name: clips, op: clips, after: [shots], params: {min_duration_s: 2.0, max_duration_s: 10.0}}
  - {name: audio_features, op: audio_features, after: [probe]}
  - {name: audio_pcm, op: audio_pcm, after: [probe]}
"""


def make_store(media: str, models: str, root: Path) -> str:
    (root / "wf.yaml").write_text(WORKFLOW)
    cmd = [str(Path(sys.executable).parent / "curation"), "run", str(root / "wf.yaml"), "--store",
           str(root / "store"), "--models", models, "--local", "--input", media]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return str(root / "store")


_OUT: dict = {}     # the bare decode's output arrays, one per frame size, reused window after window


def _bare(job):
    """Decode one window's frames into this process's reused array of its size (no allocation:
    the decode limit; the loader's step buffers are reused too)."""
    import numpy as np

    from curation import malloc
    from curation.data.decode import read_window
    malloc.tune()             # as the loader's processes (ClipStream) do
    path, start, n, fps, size, hw, audio_rate = job
    out = _OUT.get(hw)
    if out is None or len(out) < n:
        out = _OUT[hw] = np.empty((n + 8, *hw, 3), np.uint8)
    return len(read_window(path, start, n, fps, size, out=out, audio_rate=audio_rate).images)


def bare_jobs(stream, epochs: int, audio: bool = False) -> list:
    """Every window of the epochs' plans, in step order; with ``audio``, its audio (16 kHz mono) is
    decoded in the same pass as its frames, as the loader does."""
    jobs = []
    for b in (b for e in range(epochs) for b in stream.plan(e).batches):
        for i in b:
            w = stream.windows[i]
            video = stream.video_row(w.video_id)
            jobs.append((video["uri"], w.start_s, w.frames, stream.fps, stream.size,
                         tuple(stream.size or (w.height, w.width)),
                         16000 if audio and video.get("has_audio") else None))
    return jobs


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _cpu_tree() -> float:
    """CPU seconds (user + sys) so far of this process and its live and finished children (the
    DataLoader's or the pool's workers)."""
    import psutil
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])          # user, system, children_user, children_system
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def run_side(args, store: str, side: str, workers: int) -> dict:
    """One side (``bare``, ``bare_av`` or ``loader``) in this process: its arrivals (seconds from the start of
    the iteration, windows so far, CPU seconds of the process tree so far). The loader's stream is
    made, and the bare decode's window list read, before the clock starts."""
    from curation.data import ClipStream
    from curation.data.loader import make_loader
    stream = ClipStream(store, profile=args.profile, window_s=2.0, seed=0, epochs=args.epochs,
                        size=args.size, divisible_by=1, batch_windows=2, verdicts=False)
    per_epoch = sum(map(len, stream.plan(0).batches))
    jobs = bare_jobs(stream, args.epochs, audio=side == "bare_av")
    arrivals = []
    c0, t0 = _cpu_tree(), time.perf_counter()

    def arrive(n):
        arrivals.append((time.perf_counter() - t0, n, _cpu_tree() - c0))
    if side == "loader":
        n = 0
        for b in make_loader(stream, num_workers=workers):
            n += len(b["clip_id"])
            # a byte of every page, as the trainer's copy to the GPU maps them; in numpy, on one
            # thread as that copy is (torch's sum runs on OpenMP threads)
            b["frames"].numpy().reshape(-1)[::4096].sum()
            arrive(n)
    elif workers:
        with mp.get_context("spawn").Pool(workers) as pool:
            for n, _ in enumerate(pool.imap(_bare, jobs, chunksize=1), start=1):
                arrive(n)
    else:
        for n, job in enumerate(jobs, start=1):
            _bare(job)
            arrive(n)
    return {"arrivals": arrivals, "per_epoch": per_epoch, "windows": len(jobs)}


def _side_in_fresh_process(args, side: str, workers: int) -> dict:
    import json
    cmd = [sys.executable, __file__, "--side", side, "--workers", str(workers), "--store", args.store,
           "--epochs", str(args.epochs)] + (["--profile", args.profile] if args.profile else []) + \
        (["--size", "x".join(map(str, args.size))] if args.size else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _rates(res: dict) -> tuple[float, float, float, float, float]:
    """(windows/s of the whole run, windows/s after the first epoch (the steady state: every video
    opened once, every worker started), CPU s per window of each, seconds to the first step)."""
    arr = res["arrivals"]
    t_end, n_end, c_end = arr[-1]
    k = next(i for i, a in enumerate(arr) if a[1] >= res["per_epoch"])     # the first epoch's end
    t_k, n_k, c_k = arr[k]
    return (n_end / t_end, (n_end - n_k) / (t_end - t_k), c_end / n_end, (c_end - c_k) / (n_end - n_k),
            arr[0][0])


def throughput(args, store: str) -> None:
    """Each side runs in a fresh process (so none inherits another's allocator and page-cache state:
    in one process, one side's large frees changed glibc's mmap threshold, and with it the other's
    page faults, 2-5x); each repeat runs the sides back to back, in an order rotated between
    repeats. Ratios of the loader to each bare decode (``bare``: the frames; ``bare_av``: the frames
    and the window's audio, decoded in the same pass as the loader does), of the whole run and of
    the steady state (after the first epoch), in windows per second and in CPU seconds (the process
    and its workers) per window; median and range over the repeats."""
    args.store = store
    sides = ["bare", "bare_av", "loader"]
    print(f"\n## delivered windows / s vs bare decode (2 s windows at 25 fps, {args.epochs} epochs, size "
          f"{args.size or 'native'}, profile {args.profile}, each side in a fresh process, "
          f"{args.repeats} repeats: median (range))\n")
    print("| workers | bare decode of | windows | bare windows/s (steady) | loader windows/s (steady) | "
          "ratio | steady ratio | CPU-time ratio | steady CPU-time ratio | first step: bare / loader s | "
          "load average |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for workers in args.workers:
        runs, loads, n = [], [], 0
        for r in range(args.repeats):
            loads.append(os.getloadavg()[0])
            got = {}
            for side in sides[r % 3:] + sides[:r % 3]:
                res = _side_in_fresh_process(args, side, workers)
                got[side], n = _rates(res), res["windows"]
            runs.append(got)
            loads.append(os.getloadavg()[0])
            lo = got["loader"]
            print(f"  repeat {r}: " + ", ".join(
                f"{b}: ratio {lo[0] / got[b][0]:.3f}, steady {lo[1] / got[b][1]:.3f}, CPU "
                f"{got[b][2] / lo[2]:.3f}, steady CPU {got[b][3] / lo[3]:.3f}" for b in sides[:2])
                + f", load {loads[-2]:.1f}-{loads[-1]:.1f}", file=sys.stderr)
        for b, what in (("bare", "frames"), ("bare_av", "frames + audio")):
            ratios = [(g["loader"][0] / g[b][0], g["loader"][1] / g[b][1], g[b][2] / g["loader"][2],
                       g[b][3] / g["loader"][3]) for g in runs]
            cols = [_spread([x[k] for x in ratios]) for k in range(4)]
            med = lambda side, k: statistics.median(g[side][k] for g in runs)   # noqa: E731
            print(f"| {workers} | {what} | {n} | {med(b, 1):.2f} | {med('loader', 1):.2f} | {cols[0]} | "
                  f"**{cols[1]}** | {cols[2]} | **{cols[3]}** | {med(b, 4):.2f} / {med('loader', 4):.2f} | "
                  f"{min(loads):.1f}-{max(loads):.1f} |", flush=True)


def interleaved(args, store: str) -> None:
    """In one process, step by step: the loader's next step (``make_loader``, 0 workers) and a bare
    decode of the same windows, alternating which goes first, each timed (wall and CPU of the
    process); the ratios of the sums. Pairs ~0.5 s apart see the same load, so this is the measure
    that survives other jobs on the machine."""
    from curation.data import ClipStream
    from curation.data.loader import make_loader
    stream = ClipStream(store, profile=args.profile, window_s=2.0, seed=0, epochs=args.epochs,
                        size=args.size, divisible_by=1, batch_windows=2, verdicts=False)
    steps = [b for e in range(args.epochs) for b in stream.plan(e).batches]
    loads = [os.getloadavg()[0]]
    tot = {"bare": [0.0, 0.0], "loader": [0.0, 0.0]}
    per = []
    for r in range(args.repeats):
        it = iter(make_loader(ClipStream(store, profile=args.profile, window_s=2.0, seed=0,
                                         epochs=args.epochs, size=args.size, divisible_by=1,
                                         batch_windows=2, verdicts=False), num_workers=0))
        run = {"bare": [0.0, 0.0], "loader": [0.0, 0.0]}
        for k, batch in enumerate(steps):
            for what in (("bare", "loader") if (k + r) % 2 == 0 else ("loader", "bare")):
                c, t = time.process_time(), time.perf_counter()
                if what == "bare":
                    for i in batch:
                        w = stream.windows[i]
                        _bare((stream.video_row(w.video_id)["uri"], w.start_s, w.frames, stream.fps,
                               stream.size, tuple(stream.size or (w.height, w.width)), None))
                else:
                    next(it)
                run[what][0] += time.perf_counter() - t
                run[what][1] += time.process_time() - c
        per.append((run["bare"][0] / run["loader"][0], run["bare"][1] / run["loader"][1]))
        for what in tot:
            tot[what] = [tot[what][0] + run[what][0], tot[what][1] + run[what][1]]
        loads.append(os.getloadavg()[0])
    n = sum(map(len, steps)) * args.repeats
    print(f"\n## step-interleaved, one process ({n} windows: {args.repeats} x {len(steps)} steps)\n")
    print("| bare decode windows/s | loader windows/s | ratio | CPU-time ratio | per repeat (wall / CPU) "
          "| load average |\n|---|---|---|---|---|---|")
    print(f"| {n / tot['bare'][0]:.2f} | {n / tot['loader'][0]:.2f} | "
          f"**{tot['bare'][0] / tot['loader'][0]:.3f}** | {tot['bare'][1] / tot['loader'][1]:.3f} | "
          + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in per) + f" | {min(loads):.1f}-{max(loads):.1f} |",
          flush=True)


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(args, root: Path) -> None:
    import synthetic as syn

    from curation.data import ClipStream
    uri, _ = syn.build_store(root / "mem", [(f"c{i}", "ok", 250) for i in range(40)])
    stream = ClipStream(uri, window_s=0.4, seed=0, divisible_by=1, batch_windows=8)   # endless
    print(f"\n## resident memory over {args.memory_windows} windows (0.4 s of 96x128 generated clips, "
          f"{len(stream.windows)} windows an epoch, endless stream)\n")
    print("| windows | RSS MB | windows/s |\n|---|---|---|")
    t0 = time.perf_counter()
    for n, _ in enumerate(stream, start=1):
        if n % 1000 == 0 or n == 1:
            print(f"| {n} | {rss_mb():.0f} | {n / (time.perf_counter() - t0):.0f} |", flush=True)
        if n >= args.memory_windows:
            break


def padding(args, store: str) -> None:
    """The plan alone (metadata, no decode): 10,000 clips of 2-20 s at three frame sizes."""
    import numpy as np

    from curation.data.plan import cut_windows, epoch_plan
    rng = np.random.default_rng(0)
    sizes = [(256, 256), (320, 192), (192, 320)]
    clips = [{"clip_id": f"c{i:05d}", "video_id": f"v{i}", "start_s": 0.0,
              "end_s": float(rng.uniform(2, 20)), "height": sizes[i % 3][0], "width": sizes[i % 3][1]}
             for i in range(10000)]
    windows = cut_windows(clips, (2.0, 6.0), 25.0)
    lengths = sorted({w.frames for w in windows})
    print(f"\n## token-bucket padding ({len(windows)} windows of 2-6 s from 10,000 clips of 2-20 s, "
          f"{len(lengths)} lengths {lengths[0]}-{lengths[-1]} frames, 3 frame sizes, budget "
          f"{args.batch_tokens:,} tokens a global batch, batches a multiple of 8 windows)\n")
    print("| epoch | global batches | windows per batch | padding (frames) | pad slots (repeats) |\n|---|---|---|---|---|")
    for e in range(3):
        p = epoch_plan(windows, 0, e, batch_tokens=args.batch_tokens, divisible_by=8)
        n = [len(b) for b in p.batches]
        pads = sum(map(len, p.pads.values()))
        print(f"| {e} | {len(n)} | {min(n)}-{max(n)} | {p.padding:.4f} | {pads} ({pads / sum(n):.2%}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=os.environ.get("CURATION_MEDIA", str(ROOT.parent / "shared" / "media")))
    ap.add_argument("--models", default=os.environ.get("CURATION_MODELS", str(ROOT.parent / "shared" / "models")))
    ap.add_argument("--store", default=None)
    ap.add_argument("--profile", default=None, help="validate online with this profile (default none)")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the throughput runs")
    ap.add_argument("--size", default=None, help="HxW (default native)")
    ap.add_argument("--memory-windows", type=int, default=20000)
    ap.add_argument("--batch-tokens", type=int, default=256 * 256 * 150 * 16)
    ap.add_argument("--skip", default="", help="comma list of: interleaved, throughput, memory, padding")
    ap.add_argument("--side", choices=("bare", "bare_av", "loader"), help=argparse.SUPPRESS)   # one side, as JSON
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.size = tuple(int(x) for x in args.size.split("x")) if args.size else None
    if args.side:
        import json
        print(json.dumps(run_side(args, args.store, args.side, args.workers[0])))
        return
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = args.store or (make_store(args.media, args.models, root)
                               if not {"throughput", "interleaved"} <= skip else None)
        if "interleaved" not in skip:
            interleaved(args, store)
        if "throughput" not in skip:
            throughput(args, store)
        if "padding" not in skip:
            padding(args, store)
        if "memory" not in skip:
            memory(args, root)


if __name__ == "__main__":
    main()
