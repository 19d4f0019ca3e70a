#!/usr/bin/env python
"""Seek-and-read of one training window with each decoder (PyAV, torchcodec, decord).

    .venv/bin/python bench/decode_window.py --media ../shared/media [--windows 12] [--window-s 2]
                                            [--fps 25] [--size 256x256] [--repeats 3]

For every clip of the media directory, ``--windows`` window starts drawn with a fixed seed; each
backend of ``curation.data.decode.read_window`` reads every window (a reader opened and closed per
window, as the loader does), in alternating order, ``--repeats`` times; the median seconds per window
are reported per file and over all files, with the ratio to the fastest. The frames each backend
returns for a window are compared (same pts, mean absolute pixel difference).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.data.decode import BACKENDS, read_window  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=os.environ.get("CURATION_MEDIA", str(ROOT.parent / "shared" / "media")))
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default=None, help="HxW, e.g. 256x256 (default: native size)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x")) if args.size else None
    n = int(round(args.window_s * args.fps))
    files = sorted(p for p in Path(args.media).iterdir() if p.suffix.lower() in (".mp4", ".mov"))
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; {n} frames at {args.fps} fps, size {size or 'native'}")
    print("| file | " + " | ".join(f"{b} s/window" for b in BACKENDS) + " | max pts diff | max pixel diff |")
    print("|---|" + "---|" * (len(BACKENDS) + 2))
    totals = {b: 0.0 for b in BACKENDS}
    failed_files: list = []
    for path in files:
        import av
        with av.open(str(path)) as c:
            dur = float(c.duration or 0) / 1e6
        starts = rng.uniform(0, max(0.0, dur - args.window_s - 0.2), args.windows)
        times = {b: [] for b in BACKENDS}
        failed: dict[str, str] = {}
        outs = {}
        for r in range(args.repeats):
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
            for b in order:
                t0 = time.perf_counter()
                try:
                    res = [read_window(str(path), float(s), n, args.fps, size, backend=b) for s in starts]
                except Exception as e:  # noqa: BLE001 - a backend that cannot read the file
                    failed[b] = str(e).strip().splitlines()[-1][:60]
                    continue
                times[b].append((time.perf_counter() - t0) / len(starts))
                outs[b] = res
        med = {b: statistics.median(v) if v else float("nan") for b, v in times.items()}
        for b in BACKENDS:
            totals[b] += med[b] * len(starts) if b not in failed else 0.0
        ref = outs["pyav"]
        ok = [b for b in BACKENDS if b in outs]
        dpts = max(float(np.max(np.abs(o.pts - r.pts))) if len(o.pts) == len(r.pts) and len(r.pts) else
                   float("inf") for b in ok for o, r in zip(outs[b], ref))
        dpix = max(float(np.abs(o.images.astype(np.int16) - r.images).mean())
                   if o.images.shape == r.images.shape else float("inf")
                   for b in ok for o, r in zip(outs[b], ref))
        print(f"| {path.name} | " + " | ".join(f"{med[b]:.3f}" if b not in failed else "fails"
                                              for b in BACKENDS) + f" | {dpts:.4f} | {dpix:.1f} |")
        for b, why in failed.items():
            print(f"  ({b} on {path.name}: {why})")
            failed_files.append((b, path.name))
    best = min(totals.values())
    print("| **all files** | " + " | ".join(f"**{totals[b]:.2f} s** ({totals[b] / best:.2f}x)"
                                           for b in BACKENDS) + " | | |")
    if failed_files:
        print("failed (not in the totals): " + ", ".join(f"{b} on {f}" for b, f in failed_files))


if __name__ == "__main__":
    main()
