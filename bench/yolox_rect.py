"""YOLOX-nano on rectangular inputs against the 416 x 416 square: CPU per frame and box differences.

    .venv/bin/python bench/yolox_rect.py [--media ../shared/media] [--models ../shared/models]
        [--clips dj_video1.mp4,...] [--fps 10] [--repeats 3]

Per clip: its frames at ``--fps`` (decoded with PyAV, shrunk to at most 960 px as ``people`` sees
them), detected by two YoloxDetectors of one process (one onnxruntime thread, 2 frames a call as
``people``'s ``det_batch``), rectangular and square, alternating which goes first, ``--repeats``
times; the median CPU ms per frame of each. Then the boxes (score >= 0.25) of the square path
matched to the nearest rectangular box: the median, 90th percentile and largest difference of any
coordinate in frame pixels, and how many boxes differ by more than 20 px or were not found.
Results: docs/faces.md#yolox-nano-on-rectangular-inputs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIPS = ("dj_video1.mp4", "fr_short_hamilton_clip.mp4", "dj_video5.mp4", "pf_face_noface.mov",
         "dj_video4.mp4", "vr_face1.mp4")


def frames(path: Path, fps: float, max_side: int = 960) -> list[np.ndarray]:
    """RGB frames at ``fps`` from the start, the longer side at most ``max_side``."""
    import av
    import cv2
    out, due = [], 0.0
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            if f.time is None or f.time + 1e-6 < due:
                continue
            due += 1 / fps
            im = f.to_ndarray(format="rgb24")
            k = max_side / max(im.shape[:2])
            out.append(cv2.resize(im, (round(im.shape[1] * k), round(im.shape[0] * k)),
                                  interpolation=cv2.INTER_AREA) if k < 1 else im)
    return out


def box_differences(rect: list[np.ndarray], square: list[np.ndarray], min_score: float = 0.25):
    """Per square box the largest coordinate difference to its nearest rectangular box (px); and
    the count of square boxes with none within 20 px."""
    diffs, far = [], 0
    for a, b in zip(rect, square):
        for row in b[b[:, 4] >= min_score]:
            d = np.abs(a[:, :4] - row[:4]).max(1).min() if len(a) else np.inf
            diffs.append(d) if d <= 20 else None
            far += d > 20
    return np.array(diffs), far


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--clips", default=",".join(CLIPS))
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from operators.nets.person_detector import load_person_detector, yolox_input_shape
    paths = {True: "rect", False: "square"}
    nets = {k: load_person_detector(a.models, "yolox", threads=1, batch_size=2, rect=k) for k in paths}
    print("| clip | frame | network input | frames | ms a frame, rect | square | ratio | boxes | "
          "median px | p90 px | max px | over 20 px |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.clips.split(","):
        ims = frames(Path(a.media) / name, a.fps)
        ms, boxes = {True: [], False: []}, {}
        for rep in range(a.repeats):
            for k in ((True, False) if rep % 2 == 0 else (False, True)):
                t0 = time.process_time()
                boxes[k] = nets[k].detect(ims)
                ms[k].append((time.process_time() - t0) / len(ims) * 1000)
        d, far = box_differences(boxes[True], boxes[False])
        r, s = np.median(ms[True]), np.median(ms[False])
        stats = (f"{np.median(d):.2f} | {np.percentile(d, 90):.2f} | {d.max():.2f}" if len(d) else "- | - | -")
        h, w = ims[0].shape[:2]
        print(f"| {name} | {w} x {h} | {yolox_input_shape(h, w)[0]} x {yolox_input_shape(h, w)[1]} | "
              f"{len(ims)} | {r:.1f} | {s:.1f} | {r / s:.2f} | {len(d) + far} | {stats} | {far} |", flush=True)


if __name__ == "__main__":
    main()
