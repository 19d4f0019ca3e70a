"""Frame-level agreement of the speak / listen / idle labels with reference labels made by hand.

    .venv/bin/python bench/label_agreement.py --media ../shared/media --models ../shared/models

How the reference labels were made (no audio playback here, so two sources, each checked by eye):
- *when* someone speaks: the word times of Whisper's transcript of the clip (words merged across
  gaps under 0.3 s), read against contact sheets of the frames (mouth open / closed);
- *who* speaks: by looking at the frames: vr_face1 and vr_face2 show one person talking to the camera
  (she or he is the only talker); in dj_video4 the woman in front (the larger face) talks and the
  woman behind her combs her hair and never talks; lp_d3 has no speech at all (grimaces).
Reference per frame: the talker is ``speak`` inside speech and ``idle`` outside; anyone else is
``listen`` inside speech and ``idle`` outside. For lp_d3 ``idle`` and ``discard`` are both right
(lips move without speech: LPM's rule discards such frames), so it is scored as "not speak/listen".

Reported per clip: frames, agreement over all frames, agreement over the frames the pipeline keeps
(not discard), and the discard share. The pipeline's speech detection (silero-vad) and its lip
sync (LR-ASD) are independent of Whisper's word times, so the agreement is not circular; it is not
a substitute for human labels on unseen clips either.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIPS = ("vr_face1.mp4", "vr_face2.mp4", "dj_video4.mp4", "lp_d3.mp4")


def speech_spans(sentences: list[dict], gap: float = 0.3) -> list[tuple[float, float]]:
    words = sorted((w["start_s"], w["end_s"]) for s in sentences for w in s.get("words") or [])
    out: list[list[float]] = []
    for a, b in words:
        if out and a - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def reference(times: np.ndarray, spans, talker: bool) -> np.ndarray:
    inside = np.zeros(len(times), bool)
    for a, b in spans:
        inside |= (times >= a) & (times < b)
    return np.where(inside, "speak" if talker else "listen", "idle")


def score(st) -> dict:
    """Print the agreement table of a conversation store; returns its videos by id."""
    videos = {v["video_id"]: v for v in st.query("videos").to_pylist()}
    tracks = {t["track_id"]: t for t in st.query("tracks").to_pylist()}
    clips = st.query("clips", where="clip_kind = 'person' AND frame_states IS NOT NULL").to_pylist()
    rows, tot = [], {"n": 0, "agree": 0, "kept": 0, "kept_agree": 0}
    for c in sorted(clips, key=lambda c: c["clip_id"]):
        v = videos[c["video_id"]]
        name = Path(v["uri"]).name
        times = np.asarray(c["frame_times"])
        states = np.asarray(c["frame_states"])
        if name == "lp_d3.mp4":
            ok = np.isin(states, ["idle", "discard"])
            ref = None
        else:
            same_shot = [t for t in tracks.values() if t["video_id"] == c["video_id"]]
            front = max(same_shot, key=lambda t: t.get("face_size_px") or 0)["track_id"]
            ref = reference(times, speech_spans(v.get("asr_sentences") or []), c["track_id"] == front)
            ok = states == ref
        kept = states != "discard"
        rows.append((name, c["track_id"].rsplit(":", 1)[-1], f"{c['start_s']:.1f}-{c['end_s']:.1f}",
                     len(states), ok.mean(), ok[kept].mean() if kept.any() else float("nan"),
                     1 - kept.mean()))
        tot["n"] += len(states)
        tot["agree"] += int(ok.sum())
        tot["kept"] += int(kept.sum())
        tot["kept_agree"] += int(ok[kept].sum())
    print(f"| clip | track | span s | frames | agreement | on kept frames | discarded |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} |")
    print(f"| all | | | {tot['n']} | {tot['agree'] / tot['n']:.2f} | "
          f"{tot['kept_agree'] / max(1, tot['kept']):.2f} | {1 - tot['kept'] / tot['n']:.2f} |")
    return videos


def run_workflow(media: str, models: str, store: str) -> float:
    """conversation.yaml on the four clips of ``media`` into ``store``; returns the wall seconds."""
    from curation.runner import Runner
    from curation.store import Store
    from curation.workflow import load
    t0 = time.perf_counter()
    Runner(load(ROOT / "workflows" / "conversation.yaml"), Store(store), model_dir=models,
           executor="local").run([str(Path(media) / n) for n in CLIPS])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--store", default=None)
    args = ap.parse_args()
    from curation.store import Store
    store = args.store or tempfile.mkdtemp(prefix="agreement-")
    wall = run_workflow(args.media, args.models, store)
    videos = score(Store(store))
    dur = sum(v["duration_s"] for v in videos.values())
    print(f"\nconversation workflow: {wall:.0f} s wall for {dur:.0f} s of video (store {store})")


if __name__ == "__main__":
    main()
