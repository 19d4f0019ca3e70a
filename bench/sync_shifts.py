"""The sync shift table: each shared talking clip with its audio moved by -10..+10 frames with ffmpeg
(-itsoffset on the audio, re-encoded to AAC, video stream copied: as a user makes such a copy), the
`sync` step run on every copy, recovered offset minus the applied shift.

    .venv/bin/python bench/sync_shifts.py --media ../shared/media --models ../shared/models \
        [--backend motion_energy|syncnet] [--shifts -10,-5,-2,0,2,5,10]

Faces come from the `people` step on the original (the copies carry the same video stream, so the
same tracks); voice activity from the `audio` step's VAD on each copy. Prints a Markdown table
(a cell is the error in frames, or `·` when the step gave no offset, with the reasons below) and the
count within +-1 frame of the truth (the truth is the applied shift: the originals are taken to be in
sync), and the share of cases where it answered.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# every shared clip with a visible talker: (file, span start, span end) of the talking part
TALKING = (("vr_face1.mp4", 0.1, 6.0), ("vr_face2.mp4", 0.1, 4.9), ("vr_face3.mp4", 0.1, 4.9),
           ("st_WDA_KatieHill_000.mp4", 0.1, 7.9), ("dj_video5.mp4", 0.1, 11.7),
           ("dj_video4.mp4", 13.0, 22.3))


def shifted_copy(src: Path, dst: Path, frames: int) -> Path:
    """The video stream copied, the audio moved by ``frames`` (25 fps; positive = later) with
    -itsoffset and re-encoded (AAC), as a user would."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-itsoffset", f"{frames * 0.04:.2f}",
                    "-i", str(src), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", str(dst)],
                   check=True)
    return dst


def talking_track(path: Path, start: float, end: float, models: str):
    """(video row with its tracks, the person-clip row of the largest face) from `people` on ``path``."""
    from curation.media import VideoDecoder, probe
    from operators.people import People
    video = {"video_id": path.stem, "uri": str(path), **probe(str(path))}
    op = People(models)
    op.setup()
    frames = VideoDecoder(str(path), max_side=People.frames.max_side).span(start, end, People.frames.fps)
    tracks = op.process_row(video, {"video_id": video["video_id"], "shot_index": 0, "start_s": start,
                                    "end_s": end}, frames)
    track = max(tracks, key=lambda t: t.get("face_size_px") or 0)
    video["tables"] = {"tracks": tracks}
    row = {"clip_id": f"{path.stem}:0:0:t0", "track_id": track["track_id"], "start_s": start, "end_s": end}
    return video, row


def sync_on(copy: Path, video: dict, row: dict, op, vad) -> dict:
    from curation.media import VideoDecoder, load_audio
    v = {**video, "uri": str(copy), "voice_segments": vad.segments(load_audio(str(copy)))}
    frames = VideoDecoder(str(copy), max_side=None).span(row["start_s"], row["end_s"], 25.0)
    return op.process_row(v, row, frames)


def table(media: Path, models: str, backend: str, shifts: list[int], work: Path, clips=TALKING):
    from operators.nets.vad import SileroVAD
    from operators.sync import Sync
    op = Sync(models, backend=backend)
    op.setup()
    vad = SileroVAD()
    rows, reasons = [], {}
    for name, start, end in clips:
        video, row = talking_track(media / name, start, end, models)
        cells = []
        for s in shifts:
            out = sync_on(shifted_copy(media / name, work / f"{Path(name).stem}_{s:+d}.mp4", s), video, row, op, vad)
            off = out["sync_offset_frames"]
            cells.append(None if off is None else off - s)
            if off is None:
                reasons[(name, s)] = out["sync_reason"]
        rows.append((name, cells))
    return rows, reasons


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--backend", default="motion_energy")
    ap.add_argument("--shifts", default="-10,-5,-2,0,2,5,10")
    args = ap.parse_args()
    shifts = [int(s) for s in args.shifts.split(",")]
    with tempfile.TemporaryDirectory() as work:
        rows, reasons = table(Path(args.media), args.models, args.backend, shifts, Path(work))
    print("| clip | " + " | ".join(f"{s:+d}" for s in shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for name, cells in rows:
        print(f"| {Path(name).stem} | " + " | ".join("·" if c is None else f"{c:+d}" for c in cells) + " |")
    cells = [c for _, cs in rows for c in cs]
    answered = [c for c in cells if c is not None]
    print(f"\nwithin +-1 frame: {sum(abs(c) <= 1 for c in answered)} of {len(cells)} cases "
          f"({sum(abs(c) <= 1 for c in answered)} of {len(answered)} answered); no offset on {len(cells) - len(answered)}")
    for (name, s), why in reasons.items():
        print(f"  {Path(name).stem} {s:+d}: {why}")


if __name__ == "__main__":
    main()
