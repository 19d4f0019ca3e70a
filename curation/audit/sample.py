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
        tracks, strips = _people_of(store, clip)
        try:
            with local_path(video["uri"]) as path:
                contact_sheet(path, video, clip, rec["png"], n_frames, tracks=tracks, strips=strips)
                cut_clip(path, clip["start_s"], clip["end_s"], rec["mp4"])
                track = next((t for t in tracks if t["track_id"] == clip.get("track_id")), None)
                if track is not None:   # person clip: also the track's crop, following its box
                    rec["track_mp4"] = stem + "_track.mp4"
                    cut_track(path, video, track, clip["start_s"], clip["end_s"], rec["track_mp4"])
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


def _people_of(store: Store, clip: dict) -> tuple[list[dict], list[tuple[str, list, list]]]:
    """The video's tracks in the clip's shot (boxes for the sheet) and the state timelines of the
    person clips of the clip's span (this one first)."""
    tracks, strips = [], []
    if store.exists("tracks"):
        where = f"video_id = {sql_quote(clip['video_id'])} AND shot_index = {int(clip['shot_index'])}"
        cols = [c for c in ("track_id", "frame_times_s", "person_boxes", "face_boxes", "is_static")
                if c in store.schema("tracks").names]
        tracks = store.query("tracks", where=where, columns=cols).to_pylist()
    if "frame_states" in store.schema("clips").names:
        where = (f"video_id = {sql_quote(clip['video_id'])} AND shot_index = {int(clip['shot_index'])} "
                 f"AND clip_index = {int(clip['clip_index'])} AND clip_kind = 'person'")
        rows = store.query("clips", where=where, columns=["clip_id", "track_id", "frame_times",
                                                          "frame_states", "role"]).to_pylist()
        rows.sort(key=lambda r: (r["clip_id"] != clip["clip_id"], r["clip_id"]))
        for r in rows:
            if r.get("frame_states"):
                label = f"{(r['track_id'] or '').rsplit(':', 1)[-1]} {r.get('role') or ''}"
                strips.append((f"track {label}", r["frame_times"], r["frame_states"]))
    return tracks, strips


def _box_at(track: dict, t: float, key: str):
    times = track.get("frame_times_s") or []
    boxes = track.get(key) or []
    if not times or not boxes:
        return None
    k = int(np.argmin(np.abs(np.asarray(times) - t)))
    if abs(times[k] - t) > 0.1 or boxes[k] is None or not np.all(np.isfinite(boxes[k])):
        return None
    return boxes[k]


def cut_track(path: str, video: dict, track: dict, start_s: float, end_s: float, out_mp4: str,
              size: int = 384, smooth: int = 13) -> None:
    """The track's crop as an mp4 with the clip's audio: every frame cropped around the person box
    (moving average over ``smooth`` frames, grown 10 %, square), scaled to ``size`` px."""
    from curation.media import crop_boxes
    dec = VideoDecoder(path, rotation=video.get("rotation") or 0, max_side=None,
                       display_size=(video.get("width"), video.get("height")))
    frames = dec.span(start_s, end_s)
    boxes = np.array([_box_at(track, t, "person_boxes") or [np.nan] * 4 for t in frames.times], float)
    ok = np.all(np.isfinite(boxes), axis=1)
    if not ok.any():
        raise MediaError("the track has no box in this clip")
    idx = np.where(ok)[0]
    boxes = boxes[idx[np.clip(np.searchsorted(idx, np.arange(len(boxes))), 0, len(idx) - 1)]]
    k = np.ones(smooth) / smooth
    pad = np.pad(boxes, ((smooth // 2, smooth - 1 - smooth // 2), (0, 0)), mode="edge")
    boxes = np.stack([np.convolve(pad[:, j], k, mode="valid") for j in range(4)], axis=1)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 1.1
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    square = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
    crops = crop_boxes(frames.images, square, size, scale=frames.scale)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
           f"{size}x{size}", "-r", f"{frames.fps:.4f}", "-i", "-", "-ss", f"{start_s:.3f}", "-t",
           f"{end_s - start_s:.3f}", "-i", path, "-map", "0:v", "-map", "1:a:0?", "-c:v", "libx264",
           "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", out_mp4]
    r = subprocess.run(cmd, input=crops.tobytes(), capture_output=True)
    if r.returncode != 0:
        raise MediaError(f"track crop failed: {r.stderr.decode(errors='replace').strip()[-200:]}")


def contact_sheet(path: str, video: dict, clip: dict, out_png: str, n_frames: int = 8,
                  thumb_side: int = 320, tracks: list[dict] | None = None,
                  strips: list | None = None) -> None:
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
    scale = all_frames.scale
    for i, (im, t) in enumerate(zip(images, times)):
        x, y = (i % cols) * w, header + (i // cols) * h
        sheet.paste(Image.fromarray(im), (x, y))
        for tr in tracks or []:   # person boxes (green: this clip's track, white: others), faces
            mine = tr["track_id"] == clip.get("track_id")
            for key, colour in (("person_boxes", (0, 255, 0) if mine else (255, 255, 255)),
                                ("face_boxes", (255, 160, 0))):
                b = _box_at(tr, float(t), key)
                if b is not None:
                    draw.rectangle([x + b[0] * scale, y + b[1] * scale, x + b[2] * scale,
                                    y + b[3] * scale], outline=colour, width=2)
        draw.rectangle([x, y, x + 64, y + 18], fill=(0, 0, 0))
        draw.text((x + 4, y + 2), f"{t:.2f}s", fill=(255, 255, 0), font=font)
    if strips:   # speak / listen / idle / discard per frame of each track of the clip span
        from curation.timeline import draw_strips
        sheet = draw_strips(sheet, strips, start, end)
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
