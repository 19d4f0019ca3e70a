"""Who speaks on composites whose truth is known by construction (docs/av-labels.md, "Who speaks").

    .venv/bin/python bench/composites.py --media ../shared/media --models ../shared/models --store /tmp/comp
    .venv/bin/python bench/composites.py --store /tmp/comp --from speaker_states   # labels only, seconds

Builds every composite kind for both pairs (p1 = vr_face1 | vr_face2, p2 = st_WDA_KatieHill_000 |
vr_face3) and the mirrored ones, 18 face tracks: two faces side by side with the voice of one
(``mouthing_left`` / ``mouthing_right``), both talking with the first half of the audio from the left
one and the second from the right one (``alternating``), the right face talking in silence
(``silence``), one face with the other's voice (``dub_left`` / ``dub_right``: whose face). It runs the
conversation workflow's label steps (tests/conftest.py's LABEL_STEPS, the shipped params and filters)
into a store, then prints, per face track, the speak share on the speech frames of its own voice and
on the speech frames of another voice (pass: >= 0.90 and <= 0.10, as tests/test_conversation.py
checks). With ``--from speaker_states`` on an existing store only speaker_states and rerank run again
(from the stored asd scores and sync gains): the cheap loop for trying label rules.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABEL_STEPS = ("probe", "shots", "audio", "clips", "people", "shot_people", "person_clips", "separation",
               "asd", "sync", "speaker_states", "rerank")
PAIRS = {"p1": ("vr_face1.mp4", "vr_face2.mp4"), "p2": ("st_WDA_KatieHill_000.mp4", "vr_face3.mp4")}
V = "fps=25,scale=360:360,setsar=1"
HALF = 2.5   # the alternating composite's turn change, seconds


def composites(left: str, right: str) -> dict[str, tuple]:
    """kind -> (inputs, filter graph, audio map, owner side per half). Two faces side by side (360 x
    360 each) or one; 5 s."""
    two = f"[0:v]{V}[a];[1:v]{V}[b];[a][b]hstack[v]"
    return {
        "mouthing_right": ([left, right], two, "1:a", ("right", "right")),
        "mouthing_left": ([left, right], two, "0:a", ("left", "left")),
        "alternating": ([left, right], two + f";[0:a]aresample=44100,atrim=0:{HALF},asetpts=PTS-STARTPTS[x];"
                        f"[1:a]aresample=44100,atrim={HALF}:5,asetpts=PTS-STARTPTS[y];[x][y]concat=n=2:v=0:a=1[au]",
                        "[au]", ("left", "right")),
        "silence": ([right], f"[0:v]{V}[v];anullsrc=r=44100:cl=mono,atrim=0:5[au]", "[au]", (None, None)),
        "dub_right": ([right, left], f"[0:v]{V}[v]", "1:a", (None, None)),
        "dub_left": ([left, right], f"[0:v]{V}[v]", "1:a", (None, None)),
    }


def build(media: Path, out: Path, inputs, graph, audio) -> Path:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for name in inputs:
        cmd += ["-i", str(media / name)]
    cmd += ["-filter_complex", graph, "-map", "[v]", "-map", audio, "-t", "5", "-c:v", "libx264",
            "-preset", "veryfast", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True)
    return out


def label_workflow(out: Path) -> Path:
    """conversation.yaml cut to the label steps (its params and filters)."""
    import yaml
    wf = yaml.safe_load((ROOT / "workflows" / "conversation.yaml").read_text())
    wf["steps"] = [s for s in wf["steps"] if s["name"] in LABEL_STEPS]
    out.write_text(yaml.safe_dump(wf, sort_keys=False))
    return out


def side_of(track: dict) -> str:
    boxes = np.array([b for b in track["face_boxes"] if b is not None and np.isfinite(b).all()])
    return "left" if np.median((boxes[:, 0] + boxes[:, 2]) / 2) < 360 else "right"


def shares(clip: dict, track: dict, owners) -> tuple[float, float, str]:
    """(speak share on own-voice speech frames, on other-voice speech frames, side); NaN: none."""
    side = side_of(track)
    t = np.asarray(clip["frame_times"])
    own = np.where(t < HALF, owners[0] == side, owners[1] == side)
    speech = np.asarray(clip["speech_present"]) >= 0.5
    speak = np.asarray(clip["frame_states"]) == "speak"
    a = speak[speech & own].mean() if (speech & own).any() else np.nan
    b = speak[speech & ~own].mean() if (speech & ~own).any() else np.nan
    return float(a), float(b), side


def table(store: Path) -> int:
    """Print the composite table; returns how many face tracks pass."""
    from curation.store import Store
    st = Store(str(store))
    names = {v["video_id"]: Path(v["uri"]).name for v in st.query("videos").to_pylist()}
    tracks = {t["track_id"]: t for t in st.query("tracks").to_pylist()}
    clips = st.query("clips", where="clip_kind = 'person' AND frame_states IS NOT NULL").to_pylist()
    print("| composite | face | owner speak | other speak | pass |\n|---|---|---|---|---|")
    passed = total = 0
    for pair, (left, right) in PAIRS.items():
        for kind, spec in composites(left, right).items():
            rows = [c for c in clips if names[c["video_id"]] == f"{pair}_{kind}.mp4"]
            for c in sorted(rows, key=lambda c: side_of(tracks[c["track_id"]])):
                a, b, side = shares(c, tracks[c["track_id"]], spec[3])
                ok = (np.isnan(a) or a >= 0.9) and (np.isnan(b) or b <= 0.1)
                passed, total = passed + ok, total + 1
                face = (left if side == "left" else right) if "hstack" in spec[1] else spec[0][0]
                fmt = lambda x: "-" if np.isnan(x) else f"{x:.2f}"
                print(f"| {pair} {kind} | {face.rsplit('.', 1)[0]} ({side}) | {fmt(a)} | {fmt(b)} | "
                      f"{'yes' if ok else 'NO'} |")
    print(f"\n{passed} of {total} face tracks pass")
    return passed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=os.environ.get("CURATION_MEDIA", str(ROOT.parent / "shared" / "media")))
    ap.add_argument("--models", default=os.environ.get("CURATION_MODELS", str(ROOT.parent / "shared" / "models")))
    ap.add_argument("--store", required=True, help="directory: composites, workflow and store go here")
    ap.add_argument("--from", dest="from_step", default=None, help="re-run from this step (speaker_states)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    d, media = Path(args.store), Path(args.media)
    d.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        files = []
        for pair, (left, right) in PAIRS.items():
            for kind, spec in composites(left, right).items():
                out = d / f"{pair}_{kind}.mp4"
                files.append(out if out.exists() else build(media, out, *spec[:3]))
        cmd = [str(Path(sys.executable).parent / "curation"), "run", str(label_workflow(d / "labels.yaml")),
               "--store", str(d / "store"), "--models", args.models, "--local"]
        cmd += [x for f in files for x in ("--input", str(f))]
        if args.from_step:
            cmd += ["--from", args.from_step]
        subprocess.run(cmd, check=True)
    table(d / "store")


if __name__ == "__main__":
    main()
