"""Contact sheets of validated windows (``curation windows``): the frames a trainer would get, with the
window's verdict, the reason and every measured value in the header (green: kept, red: dropped)."""
from __future__ import annotations

import os
import random

import numpy as np

from curation.store import Store, StoreError, sql_quote
from curation.validate.profile import load_profile

THUMB_W = 200


def window_sheets(uri: str, profile_path: str, out_dir: str, n: int = 6, kept: bool | None = None,
                  seed: int = 0, n_frames: int = 8) -> list[dict]:
    """Draw ``n`` windows of the profile's verdicts (only kept / only dropped with ``kept``) and write
    ``CLIP_START.png`` for each into ``out_dir``. Returns one record per sheet."""
    profile = load_profile(profile_path)
    store = Store(uri)
    if not store.exists("windows"):
        raise StoreError(f"no windows table in {uri}: run `curation validate` first")
    where = f"profile = {sql_quote(profile.name)}" + ("" if kept is None else f" AND kept = {str(kept).lower()}")
    rows = store.query("windows", where).to_pylist()
    if not rows:
        raise StoreError(f"no window verdicts match {where!r}")
    rows.sort(key=lambda r: (r["clip_id"], r["start_s"]))
    picked = random.Random(seed).sample(rows, min(n, len(rows)))
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for r in sorted(picked, key=lambda r: (r["clip_id"], r["start_s"])):
        video = store.query("videos", f"video_id = {sql_quote(r['video_id'])}",
                            ["uri", "rotation"]).to_pylist()[0]
        png = os.path.join(out_dir, f"{r['clip_id'].replace(':', '_')}_{r['start_s']:.2f}.png")
        sheet(video, r, png, n_frames)
        out.append({"clip_id": r["clip_id"], "start_s": r["start_s"], "kept": r["kept"],
                    "reason": r["reason"], "png": png})
    return out


def sheet(video: dict, row: dict, png: str, n_frames: int) -> None:
    from PIL import Image, ImageDraw

    from curation.data.decode import read_window
    from curation.media import local_path
    with local_path(video["uri"]) as path:
        wf = read_window(path, row["start_s"], int(row["frames"]), float(row["fps"]),
                         rotation=int(video.get("rotation") or 0))
    pick = np.linspace(0, max(0, len(wf.images) - 1), min(n_frames, max(1, len(wf.images)))).round().astype(int)
    thumbs = [Image.fromarray(wf.images[i]) for i in pick] if len(wf.images) else []
    th = int(THUMB_W * (wf.images.shape[1] / max(1, wf.images.shape[2]))) if len(wf.images) else 100
    cols = 4
    lines = _header(row)
    head = 16 * len(lines) + 8
    rows_n = max(1, (len(thumbs) + cols - 1) // cols)
    img = Image.new("RGB", (cols * THUMB_W, head + rows_n * (th + 16)), (20, 20, 20))
    d = ImageDraw.Draw(img)
    colour = (90, 220, 90) if row["kept"] else (240, 80, 80)
    for k, text in enumerate(lines):
        d.text((6, 4 + 16 * k), text, fill=colour if k == 0 else (220, 220, 220))
    for k, (i, t) in enumerate(zip(pick, thumbs)):
        x, y = (k % cols) * THUMB_W, head + (k // cols) * (th + 16)
        img.paste(t.resize((THUMB_W, th)), (x, y))
        d.text((x + 4, y + th + 1), f"{wf.pts[i]:.2f} s", fill=(200, 200, 200))
    img.save(png)


def _header(row: dict) -> list[str]:
    verdict = "KEPT" if row["kept"] else f"DROPPED by {row['failed_check']}: {row['reason']}"
    values = "  ".join(f"{c['check']}={'-' if c['value'] is None else format(c['value'], '.3g')}"
                       f"{'' if c['keep'] else '(x)'}" for c in row.get("checks") or [])
    lines = [f"{row['clip_id']}  {row['start_s']:.2f}-{row['end_s']:.2f} s  {verdict}"[:130]]
    while values:
        lines.append(values[:130])
        values = values[130:]
    return lines
