"""Face coverage per track, and people's CPU, with and without the second chance for faces (YuNet)
and at several ``face_fps``, on the shared clips.

    .venv/bin/python bench/face_coverage.py [--clips vr_face1.mp4,...] [--variants v3,v4,v4@12.5]

Each clip is cut into shots (PySceneDetect's content detector, as the ``shots`` step does by
default) and each shot goes through the ``people`` operator called the way a worker calls it
(frames at 25 fps, long side 960), once per variant:

- ``v3``: the FaceLandmarker alone (``yunet_faces: false``), faces on every frame (people v3);
- ``v4``: with YuNet's second chance (the default), every frame;
- ``v4@F``: the same at ``face_fps`` F (frames in between interpolated).

Printed per track (tracks do not depend on the faces, so they line up across variants): its span,
face size, the share of its frames with a face (``face_ratio``: landmarks or YuNet's box) and
with a mouth opening (landmarks measured, or interpolated between measured frames) per variant;
then people's CPU seconds per video second per variant (this process's user + sys time; noisy
under load: compare the variants of one run).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIPS = ("vr_face1.mp4", "vr_face2.mp4", "lp_d3.mp4", "dj_video4.mp4", "dj_video5.mp4",
         "fr_short_hamilton_clip.mp4")


def shots(path: str) -> list[tuple[float, float]]:
    from scenedetect import ContentDetector, detect
    from curation.media import probe
    cuts = detect(path, ContentDetector(threshold=27.0))
    if not cuts:
        return [(0.0, float(probe(path)["duration_s"]))]
    return [(a.seconds, b.seconds) for a, b in cuts]


def make_op(models: str, variant: str):
    from operators.people import People
    name, _, fps = variant.partition("@")
    op = People(models, yunet_faces=(name != "v3"), face_fps=float(fps or 25.0))
    op.setup()
    return op


def run_variant(op, path: str, spans) -> tuple[list[dict], float]:
    from curation.media import VideoDecoder, probe
    video = {"video_id": Path(path).stem, "uri": path, **probe(path)}
    rows, cpu = [], 0.0
    for k, (a, b) in enumerate(spans):
        frames = VideoDecoder(path, max_side=op.frames.max_side).span(a, b, op.frames.fps)
        c = time.process_time()
        rows += op.process_row(video, {"video_id": video["video_id"], "shot_index": k, "start_s": a,
                                       "end_s": b}, frames)
        cpu += time.process_time() - c
    return rows, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--clips", default=",".join(CLIPS))
    ap.add_argument("--variants", default="v3,v4,v4@12.5,v4@8.33")
    args = ap.parse_args()
    variants = args.variants.split(",")
    ops = {v: make_op(args.models, v) for v in variants}
    table, cpu, video_s = {}, {v: 0.0 for v in variants}, 0.0
    for clip in args.clips.split(","):
        path = str(Path(args.media) / clip)
        spans = shots(path)
        video_s += spans[-1][1] - spans[0][0]
        for v in variants:
            rows, c = run_variant(ops[v], path, spans)
            cpu[v] += c
            for r in rows:
                src = np.asarray(r["face_source"])
                mouth = np.isfinite(np.asarray(r["mouth_open"], np.float64))
                t = table.setdefault((clip, r["track_id"].split(":", 1)[1]), {
                    "span": f"{r['start_s']:.1f}-{r['end_s']:.1f}", "frames": len(src)})
                t[v] = (r["face_ratio"], float(np.mean(mouth)), r["face_size_px"])
    head = " | ".join(f"{v} face | {v} mouth" for v in variants)
    print(f"| clip | track | span s | frames | face px | {head} |")
    print("|---|---|---|---|---|" + "---|---|" * len(variants))
    for (clip, tid), t in table.items():
        px = next((t[v][2] for v in variants if v in t and t[v][2]), None)
        cells = " | ".join(f"{t[v][0]:.2f} | {t[v][1]:.2f}" if v in t else "- | -" for v in variants)
        print(f"| {clip} | {tid} | {t['span']} | {t['frames']} | {px or 0:.0f} | {cells} |")
    print(f"\npeople, {video_s:.1f} s of video: " + ", ".join(
        f"{v} {cpu[v] / video_s:.2f}" for v in variants) + " CPU s per video s (this process)")


if __name__ == "__main__":
    main()
