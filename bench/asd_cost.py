"""CPU cost of the `asd` and `sync` steps per second of video, and what a change does to the labels.

    .venv/bin/python bench/asd_cost.py --media ../shared/media --models ../shared/models \
        --store /tmp/asd-bench --save after.json [--compare before.json] [--code /path/to/other/tree]
        [--runtime torch] [--chunk-edges context]

Builds (once, in ``--store``; any store with person clips will do, e.g. a conversation run) the steps
the two read: people, person clips, separation and voice activity, on the shared talking clips; then, per person clip, decodes its frames once (25 fps, native
size, as the fused asd+sync stage does) and runs ``asd`` then ``sync`` on the same frames, timing
each with the process's CPU time (all threads: torch's included); then ``speaker_states`` and
``rerank`` on the results. Prints CPU-seconds per second of video of the decode (the limit of the
same files on the same machine), asd and sync, and, with ``--compare``, the share of frames whose
final state (frame_states) is the same in both runs and the logits' mean / 95th-percentile
difference. ``--code`` imports the operators from another checkout (e.g. main, for "before");
``--runtime`` sets asd's runtime (onnxruntime, its default, or torch) in this checkout,
``--chunk-edges`` its ``chunk_edges`` (padded, the operator's default, or context, the workflows').
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("vr_face1.mp4", "vr_face2.mp4", "vr_face3.mp4", "st_WDA_KatieHill_000.mp4", "dj_video4.mp4",
         "dj_video5.mp4")
PREP = ("probe", "shots", "audio", "clips", "people", "shot_people", "person_clips", "separation")


def prepare(store: str, media: Path, models: str) -> None:
    """The steps asd and sync read, from conversation.yaml (skipped when the store has them)."""
    import yaml

    from curation.runner import Runner
    from curation.store import Store
    from curation.workflow import load
    wf = yaml.safe_load((ROOT / "workflows" / "conversation.yaml").read_text())
    wf["steps"] = [s for s in wf["steps"] if s["name"] in PREP]
    wf["filters"] = []
    Runner(load(yaml.safe_dump(wf)), Store(store), model_dir=models, executor="local").run(
        [str(media / n) for n in CLIPS])


def measure(store: str, models: str, runtime: str | None = None, chunk_edges: str | None = None) -> dict:
    import numpy as np

    from curation.media import VideoDecoder
    from curation.store import Store
    from operators.asd import Asd
    from operators.rerank import Rerank
    from operators.speaker_states import SpeakerStates
    from operators.sync import Sync
    st = Store(store)
    videos = {v["video_id"]: v for v in st.query("videos").to_pylist()}
    tracks = st.query("tracks").to_pylist()
    kw = {k: v for k, v in (("runtime", runtime), ("chunk_edges", chunk_edges)) if v}
    asd, sync = Asd(models, **kw), Sync(models)
    asd.setup()
    sync.setup()
    cpu = {"decode": 0.0, "asd": 0.0, "sync": 0.0}
    seconds = 0.0
    out = {}
    by_video: dict[str, list] = {}
    for c in st.query("clips", where="clip_kind = 'person'").to_pylist():
        by_video.setdefault(c["video_id"], []).append(c)
    for vid, rows in sorted(by_video.items()):
        video = {**videos[vid], "tables": {"tracks": [t for t in tracks if t["video_id"] == vid]}}
        done = []
        for c in rows:
            t0 = time.process_time()
            frames = VideoDecoder(video["uri"], max_side=None).span(c["start_s"], c["end_s"], 25.0)
            t1 = time.process_time()
            a = asd.process_row(video, c, frames)
            t2 = time.process_time()
            s = sync.process_row(video, c, frames)
            t3 = time.process_time()
            cpu["decode"] += t1 - t0
            cpu["asd"] += t2 - t1
            cpu["sync"] += t3 - t2
            seconds += c["end_s"] - c["start_s"]
            done.append({**c, **a, **s})
        for r, o in zip(done, SpeakerStates().process(video, done)):
            r.update(o)
        for r, o in zip(done, Rerank().process(video, done)):
            out[r["clip_id"]] = {"name": Path(video["uri"]).name, "states": o["frame_states"],
                                 "logits": r["asd_logits"], "offset": r["sync_offset_frames"]}
    return {"cpu_s": cpu, "video_s": seconds, "clips": out}


def compare(a: dict, b: dict) -> str:
    import numpy as np
    same = n = 0
    diffs = []
    for k, x in a["clips"].items():
        y = b["clips"].get(k)
        if y is None or x["states"] is None or y["states"] is None:
            continue
        same += sum(p == q for p, q in zip(x["states"], y["states"]))
        n += len(x["states"])
        lx = np.array([np.nan if v is None else v for v in x["logits"]], float)
        ly = np.array([np.nan if v is None else v for v in y["logits"]], float)
        ok = np.isfinite(lx) & np.isfinite(ly)
        diffs.append(np.abs(lx[ok] - ly[ok]))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    if not len(d):
        return "nothing to compare"
    counts = {run: {s: sum(c["states"].count(s) for c in r["clips"].values() if c["states"])
                    for s in ("speak", "listen", "idle", "discard")} for run, r in (("this", a), ("other", b))}
    return (f"frame states the same: {same}/{n} = {same / max(n, 1):.4f}; states this run {counts['this']}, "
            f"the other {counts['other']}; asd logit |difference| mean {d.mean():.2g}, max {d.max():.2g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=os.environ.get("CURATION_MEDIA", str(ROOT.parent / "shared" / "media")))
    ap.add_argument("--models", default=os.environ.get("CURATION_MODELS", str(ROOT.parent / "shared" / "models")))
    ap.add_argument("--store", required=True)
    ap.add_argument("--code", default=None, help="import the operators from this checkout")
    ap.add_argument("--save", default=None)
    ap.add_argument("--compare", default=None)
    ap.add_argument("--runtime", default=None, choices=("onnxruntime", "torch"), help="asd's runtime")
    ap.add_argument("--chunk-edges", default=None, choices=("padded", "context"), help="asd's chunk_edges")
    args = ap.parse_args()
    sys.path.insert(0, args.code or str(ROOT))
    import torch
    torch.set_num_threads(1)   # a worker's share (the steps declare num_cpus=1)
    if not (Path(args.store) / "clips.lance").exists():
        prepare(args.store, Path(args.media), args.models)
    res = measure(args.store, args.models, args.runtime, args.chunk_edges)
    v = res["video_s"]
    print(f"{len(res['clips'])} person clips, {v:.1f} s of video; CPU-seconds per second of video:")
    for k, x in res["cpu_s"].items():
        print(f"  {k:7s} {x / v:.3f}   ({x:.1f} CPU-s; {x / max(res['cpu_s']['decode'], 1e-9):.1f}x the decode)")
    if args.save:
        Path(args.save).write_text(json.dumps(res))
    if args.compare:
        print(compare(res, json.loads(Path(args.compare).read_text())))


if __name__ == "__main__":
    main()
