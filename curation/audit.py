"""Audit material for sampled clips: contact sheets, mp4 excerpts and metadata JSON."""
from __future__ import annotations

import json
import os
import random
import subprocess
from typing import Callable

import numpy as np

from curation.media import MediaError, VideoDecoder, file_size, local_path
from curation.store import Store, StoreError, one_line, sql_quote

# Scores shown on a contact sheet when the clip has them (first ones first).
KEY_SCORES = ("duration_s", "speech_ratio", "sharpness", "brightness_mean", "text_coverage", "still_score",
              "motion_intensity", "camera_motion", "jump_count", "duplicate_frame_ratio")


def sample_clips(uri: str, where: str | None, n: int, out_dir: str, seed: int = 0,
                 n_frames: int = 8, on_skip: Callable[[str, str], None] | None = None) -> list[dict]:
    """Write a contact sheet, an mp4 excerpt and the metadata of ``n`` random clips matching
    ``where``. A clip whose source video is gone is skipped (``on_skip(clip_id, reason)``) and
    another matching clip is drawn in its place; a clip whose media fails to decode is written
    with a ``warning``. Returns one record per written clip, sorted by clip id."""
    store = Store(uri)
    if not store.exists("clips"):
        raise StoreError(f"no clips table in {uri}")
    ids = store.query("clips", where=where, columns=["clip_id"])["clip_id"].to_pylist()
    if not ids:
        raise StoreError(f"no clip matches {where!r}")
    rng = random.Random(seed)
    first = rng.sample(ids, min(n, len(ids)))
    taken = set(first)
    rest = [i for i in ids if i not in taken]
    rng.shuffle(rest)
    queue = sorted(first) + rest
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for cid in queue:
        if len(written) >= n:
            break
        clip = store.query("clips", where=f"clip_id = {sql_quote(cid)}").to_pylist()[0]
        videos = store.query("videos", where=f"video_id = {sql_quote(clip['video_id'])}").to_pylist()
        gone = "its video row is missing" if not videos else _source_gone(videos[0]["uri"])
        if gone:
            if on_skip:
                on_skip(cid, gone)
            continue
        video = videos[0]
        stem = os.path.join(out_dir, cid.replace(":", "_"))
        rec = {"clip_id": cid, "png": stem + ".png", "mp4": stem + ".mp4", "json": stem + ".json"}
        with open(rec["json"], "w") as f:
            json.dump({"clip": _plain(clip), "video": _plain(video)}, f, indent=2, default=str)
        try:
            with local_path(video["uri"]) as path:
                contact_sheet(path, video, clip, rec["png"], n_frames)
                cut_clip(path, clip["start_s"], clip["end_s"], rec["mp4"])
        except Exception as e:  # noqa: BLE001 - one bad clip (decoder error) never ends the sample
            rec["warning"] = one_line(e)
        written.append(rec)
    return sorted(written, key=lambda r: r["clip_id"])


def _source_gone(uri: str) -> str | None:
    """Why the video file at ``uri`` cannot be read any more, or None when it is there."""
    try:
        if "://" not in uri or uri.startswith("file://"):
            path = uri.removeprefix("file://")
            if not os.path.exists(path):
                return f"source file is gone: {uri}"
            if not os.access(path, os.R_OK):
                return f"source file is not readable: {uri}"
            return None
        file_size(uri)
        return None
    except (OSError, MediaError) as e:
        return f"source file is gone: {uri} ({one_line(e, 120)})"


def _plain(row: dict) -> dict:
    return {k: (f"<{len(v)} bytes>" if isinstance(v, (bytes, bytearray)) else v) for k, v in row.items()}


def contact_sheet(path: str, video: dict, clip: dict, out_png: str, n_frames: int = 8,
                  thumb_side: int = 320) -> None:
    from PIL import Image, ImageDraw, ImageFont

    dec = VideoDecoder(path, rotation=video.get("rotation") or 0, max_side=thumb_side)
    start, end = clip["start_s"], clip["end_s"]
    all_frames = dec.span(start, end)
    if len(all_frames) == 0:
        raise MediaError(f"no frames between {start:.2f} and {end:.2f} s")
    pick = np.unique(np.linspace(0, len(all_frames) - 1, n_frames).round().astype(int))
    images, times = all_frames.images[pick], all_frames.times[pick]
    h, w = images.shape[1:3]
    cols = min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    font = ImageFont.load_default(size=14)
    header = 54
    sheet = Image.new("RGB", (cols * w, header + rows * h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    scores = [f"{k}={_fmt(clip[k])}" for k in KEY_SCORES if clip.get(k) is not None]
    draw.text((6, 4), f"{clip['clip_id']}  {os.path.basename(video['uri'])}  "
                      f"{start:.2f}-{end:.2f} s", fill=(255, 255, 255), font=font)
    draw.text((6, 22), "  ".join(scores[:6]), fill=(200, 220, 255), font=font)
    draw.text((6, 38), "  ".join(scores[6:12]) + (f"  error={clip['error']}" if clip.get("error") else ""),
              fill=(200, 220, 255), font=font)
    for i, (im, t) in enumerate(zip(images, times)):
        x, y = (i % cols) * w, header + (i // cols) * h
        sheet.paste(Image.fromarray(im), (x, y))
        draw.rectangle([x, y, x + 64, y + 18], fill=(0, 0, 0))
        draw.text((x + 4, y + 2), f"{t:.2f}s", fill=(255, 255, 0), font=font)
    sheet.save(out_png)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def cut_clip(path: str, start_s: float, end_s: float, out_mp4: str) -> None:
    """Re-encode the span (frame-accurate) with its audio, if any."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start_s:.3f}", "-i", path,
           "-t", f"{end_s - start_s:.3f}", "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "libx264",
           "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-movflags", "+faststart", out_mp4]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise MediaError(f"ffmpeg could not cut the clip: {r.stderr.strip().splitlines()[-1:]}")
