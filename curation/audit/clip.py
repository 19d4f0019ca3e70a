"""What a clip page shows, gathered from the store (read only): the clip's row, its video, the
tracks of its shot over the clip span (boxes per frame), the state timeline of every person clip of
the span, references, why it was kept or dropped, and the validator's window verdicts.

Everything here is plain JSON-able data; the page's script draws it. No string is turned into HTML
on the server.
"""
from __future__ import annotations

import math
import os
from urllib.parse import quote

import numpy as np

from curation.audit import funnel
from curation.store import Store, StoreError, sql_quote

# Codecs the browser plays from the original file (others are re-encoded for the page).
PLAYABLE_VIDEO = {"h264", "vp8", "vp9", "av1"}
PLAYABLE_AUDIO = {None, "aac", "mp3", "opus", "vorbis", "flac"}
WINDOW_COLUMNS = ("profile", "start_s", "end_s", "kept", "failed_check", "reason", "checks", "run_id")
TRACK_COLUMNS = ("track_id", "frame_times_s", "person_boxes", "face_boxes", "is_static")
TIMELINE_COLUMNS = ("clip_id", "track_id", "role", "frame_times", "frame_states")
REF_COLUMNS = ("ref_id", "kind", "label", "frame_s", "score", "image_width", "image_height")


def plain(v):
    """JSON-safe value: NaN and infinities as null, bytes as their size."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return plain(v.item())
    return v


def one_clip(store: Store, clip_id: str) -> dict:
    rows = store.query("clips", where=f"clip_id = {sql_quote(clip_id)}").to_pylist()
    if not rows:
        raise KeyError(clip_id)
    return rows[0]


def video_of(store: Store, video_id: str) -> dict | None:
    rows = store.query("videos", where=f"video_id = {sql_quote(video_id)}").to_pylist()
    return rows[0] if rows else None


def playable(video: dict) -> bool:
    """True when the browser can play the original file (else the page gets a re-encoded span)."""
    local = "://" not in video["uri"] or video["uri"].startswith("file://")
    return bool(local and video.get("video_codec") in PLAYABLE_VIDEO
                and video.get("audio_codec") in PLAYABLE_AUDIO and not video.get("error"))


def _spans_in(spans, start: float, end: float) -> list[dict]:
    return [s for s in spans or [] if s and s.get("end_s", 0) > start and s.get("start_s", 0) < end]


def _cols(store: Store, table: str, wanted) -> list[str]:
    names = store.schema(table).names
    return [c for c in wanted if c in names]


def tracks_of(store: Store, clip: dict, margin_s: float = 0.2) -> list[dict]:
    """The tracks of the clip's shot, their per-frame boxes cut to the clip span (± margin)."""
    if not store.exists("tracks"):
        return []
    where = f"video_id = {sql_quote(clip['video_id'])} AND shot_index = {int(clip['shot_index'])}"
    out = []
    for t in store.query("tracks", where=where, columns=_cols(store, "tracks", TRACK_COLUMNS)).to_pylist():
        times = t.get("frame_times_s") or []
        keep = [i for i, x in enumerate(times) if clip["start_s"] - margin_s <= x <= clip["end_s"] + margin_s]
        if not keep:
            continue
        item = {"track_id": t["track_id"], "mine": t["track_id"] == clip.get("track_id"),
                "is_static": t.get("is_static"), "frame_times_s": [times[i] for i in keep]}
        for key in ("person_boxes", "face_boxes"):
            boxes = t.get(key) or []
            item[key] = [plain(boxes[i]) if i < len(boxes) else None for i in keep]
        out.append(item)
    out.sort(key=lambda t: (not t["mine"], t["track_id"]))
    return out


def timelines_of(store: Store, clip: dict) -> list[dict]:
    """The speak/listen/idle/discard states per frame of every person clip of the clip's span
    (the clip's own first)."""
    names = store.schema("clips").names
    if "frame_states" not in names:
        return []
    where = (f"video_id = {sql_quote(clip['video_id'])} AND shot_index = {int(clip['shot_index'])} "
             f"AND clip_index = {int(clip['clip_index'])} AND clip_kind = 'person'")
    rows = store.query("clips", where=where, columns=_cols(store, "clips", TIMELINE_COLUMNS)).to_pylist()
    rows = [r for r in rows if r.get("frame_states")]
    for r in rows:
        r["mine"] = r["clip_id"] == clip["clip_id"]
    rows.sort(key=lambda r: (not r["mine"], r["track_id"] or ""))
    return rows


def references_of(store: Store, clip: dict) -> list[dict]:
    """Reference images of the clip (or of its track), without their bytes (served by id)."""
    if not store.exists("references"):
        return []
    cols = _cols(store, "references", REF_COLUMNS)
    rows = store.query("references", where=f"clip_id = {sql_quote(clip['clip_id'])}", columns=cols).to_pylist()
    if not rows and clip.get("track_id"):
        rows = store.query("references", where=f"track_id = {sql_quote(clip['track_id'])}",
                           columns=cols).to_pylist()
    return [plain(r) for r in rows]


def windows_of(store: Store, clip_id: str) -> dict:
    """The validator's window verdicts of the clip (CONTRACTS.md ``windows``), read defensively:
    no table or no clip_id column = not shown; missing columns come back as null."""
    if not store.exists("windows"):
        return {"present": False, "rows": [], "missing": []}
    names = store.schema("windows").names
    if "clip_id" not in names:
        return {"present": False, "rows": [], "missing": ["clip_id"]}
    cols = [c for c in WINDOW_COLUMNS if c in names]
    rows = store.query("windows", where=f"clip_id = {sql_quote(clip_id)}", columns=cols).to_pylist()
    rows = [{c: plain(r.get(c)) for c in WINDOW_COLUMNS} for r in rows]
    rows.sort(key=lambda r: (str(r.get("profile")), r.get("start_s") or 0.0))
    return {"present": True, "rows": rows, "missing": [c for c in WINDOW_COLUMNS if c not in names]}


def detail(store: Store, store_uri: str, clip_id: str) -> dict:
    """Everything the clip page shows, as JSON-able data."""
    clip = one_clip(store, clip_id)
    video = video_of(store, clip["video_id"]) or {}
    start, end = clip["start_s"], clip["end_s"]
    info, stages = funnel.stages(store)
    verdicts = funnel.verdicts(store, stages, clip_id)
    fate = next((v["stage"] for v in verdicts if v["applied"] and v.get("passed") is not True), "kept")
    q = lambda key: quote(str(key), safe="")  # noqa: E731 - ids as one URL path segment
    media = {"src": f"/media/video/{q(video.get('video_id'))}", "offset": 0.0, "transcoded": False}
    if not video or not playable(video):
        media = {"src": f"/media/clip/{q(clip_id)}", "offset": start, "transcoded": True}
    return plain({
        "clip": {k: v for k, v in clip.items() if not isinstance(v, (bytes, bytearray))},
        "video": {k: video.get(k) for k in ("video_id", "uri", "width", "height", "fps", "duration_s",
                                            "has_audio", "video_codec", "audio_codec", "voice_source",
                                            "asr_backend", "vad_backend")}
        | {"name": os.path.basename(video.get("uri") or ""),
           "voice_segments": _spans_in(video.get("voice_segments") or video.get("speech_segments"), start, end),
           "asr_sentences": [{k: s.get(k) for k in ("start_s", "end_s", "text", "confidence", "complete")}
                             for s in _spans_in(video.get("asr_sentences"), start, end)]},
        "media": media,
        "audio": {"mix": bool(video.get("has_audio")),
                  "speaker": f"/media/audio/{q(clip_id)}/speaker" if clip.get("speaker_audio_uri") else None,
                  "listener": f"/media/audio/{q(clip_id)}/listener" if clip.get("listener_audio_uri") else None},
        "tracks": tracks_of(store, clip),
        "timelines": timelines_of(store, clip),
        "references": references_of(store, clip),
        "run": {"run_id": info.get("run_id"), "workflow": info.get("workflow")},
        "verdicts": verdicts, "fate": fate,
        "windows": windows_of(store, clip_id),
        "store": store_uri, "show_command": f"curation show --store {store_uri} {clip_id}",
    })


def waveform(path: str, start_s: float, end_s: float, bins: int = 800) -> dict:
    """Min and max of the mix (16 kHz mono) in ``bins`` equal slices of the clip span."""
    from curation.media import load_audio
    try:
        audio = load_audio(path, 16000, start_s, max(0.01, end_s - start_s))
    except Exception as e:  # noqa: BLE001 - no audio stream or undecodable: an empty waveform
        raise StoreError(f"no waveform: {e}") from None
    if len(audio) == 0:
        return {"start_s": start_s, "end_s": end_s, "min": [], "max": []}
    edges = np.linspace(0, len(audio), bins + 1).astype(int)
    lo = [float(audio[a:b].min()) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])]
    hi = [float(audio[a:b].max()) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])]
    return {"start_s": start_s, "end_s": end_s, "min": lo, "max": hi}
