#!/usr/bin/env python
"""How much the speak / listen / idle / discard labels change when the input changes by what a viewer
cannot see: label_agreement.py's four clips re-encoded (libx264 at ``--crf``, the same frames at the
same timestamps: ``-fps_mode passthrough -copyts``; the audio stream copied), both labelled by
workflows/conversation.yaml.

    .venv/bin/python bench/label_stability.py --media ../shared/media --models ../shared/models [--crf 18]

Printed: per person clip (matched by video file, track and start), the share of frames (matched by
time) with the same state and the most common changes; the speak - listen probability margin
(``frame_state_probs``, before re-ranking) on the frames whose state changed against all speak or
listen frames; and each run's agreement with the reference labels (label_agreement.score). A label
that flips under such a change rests on evidence near a decision boundary.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from label_agreement import CLIPS, run_workflow, score  # noqa: E402


def reencode(media: Path, out: Path, crf: int, names=CLIPS) -> None:
    """``names`` of ``media`` re-encoded into ``out``: libx264 at ``crf``, every frame at its own
    timestamp, the other streams copied."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(media / name), "-map", "0",
                        "-c:v", "libx264", "-crf", str(crf), "-preset", "medium", "-fps_mode", "passthrough",
                        "-copyts", "-c:a", "copy", str(out / name)], check=True)


def person_clips(store: str) -> dict:
    """(file, track, start) -> (frame times, states, speak - listen probability margin)."""
    from curation.store import Store
    st = Store(store)
    names = {v["video_id"]: Path(v["uri"]).name for v in st.query("videos", columns=["video_id", "uri"]).to_pylist()}
    out = {}
    for c in st.query("clips", where="clip_kind = 'person' AND frame_states IS NOT NULL").to_pylist():
        margin = np.array([p["speak"] - p["listen"] for p in c["frame_state_probs"]])
        out[(names[c["video_id"]], c["track_id"].rsplit(":", 1)[-1], round(c["start_s"], 1))] = (
            np.round(np.asarray(c["frame_times"]), 3), np.asarray(c["frame_states"]), margin)
    return out


def compare(a: dict, b: dict) -> None:
    print("| clip | track | start s | frames | same state | most common changes (original -> re-encoded) |")
    print("|---|---|---|---|---|---|")
    same = total = 0
    flipped, talk = [], []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"| {key[0]} | {key[1]} | {key[2]} | - | only in the {'original' if key in a else 're-encoded'} run | |")
            continue
        (ta, sa, ma), (tb, sb, _) = a[key], b[key]
        _, ia, ib = np.intersect1d(ta, tb, return_indices=True)
        eq = sa[ia] == sb[ib]
        same, total = same + int(eq.sum()), total + len(ia)
        changes = Counter(f"{x} -> {y}" for x, y in zip(sa[ia][~eq], sb[ib][~eq])).most_common(3)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {len(ia)} | {eq.mean():.3f} | "
              + ", ".join(f"{c}: {n}" for c, n in changes) + " |")
        sl = np.isin(sa[ia], ["speak", "listen"])
        talk += list(np.abs(ma[ia][sl]))
        flipped += list(np.abs(ma[ia][sl & ~eq & np.isin(sb[ib], ["speak", "listen"])]))
    print(f"| all | | | {total} | **{same / max(total, 1):.3f}** | |")
    if flipped:
        print(f"\n|speak - listen| margin: {np.median(flipped):.3f} (median) on the {len(flipped)} frames that "
              f"changed between speak and listen; {np.median(talk):.3f} on all {len(talk)} speak / listen frames")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--keep", default=None, help="directory for the copies and both stores (default: a temporary one)")
    args = ap.parse_args()
    from curation.store import Store
    root = Path(args.keep or tempfile.mkdtemp(prefix="stability-"))
    reencode(Path(args.media), root / "reencoded", args.crf)
    stores = {}
    for what, media in (("original", args.media), ("re-encoded", root / "reencoded")):
        stores[what] = str(root / f"store_{what}")
        run_workflow(str(media), args.models, stores[what])
    print(f"## the same state after a re-encode at crf {args.crf} (stores in {root})\n")
    compare(person_clips(stores["original"]), person_clips(stores["re-encoded"]))
    for what, store in stores.items():
        print(f"\n### agreement with the reference labels, {what}\n")
        score(Store(store))


if __name__ == "__main__":
    main()
