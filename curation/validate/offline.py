"""``curation validate``: the profile's checks over every window of a selection, each verdict written to
the ``windows`` table (key: profile, clip, window start), and the funnel (per check: removed, remaining).

The windows are the loader's (``curation.data.plan.cut_windows`` with the profile's ``window_s`` and
``fps``), and so are the checks (``curation.validate.checks.run_checks``): a loader with the same profile
leaves the windows rejected here out of its plan. Frames are decoded at most ``CHECK_DECODE_SIDE``
pixels on the long side (the resolution check reads the source size), and only for windows that pass
the metadata checks. Videos are spread over ``workers`` spawned processes.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

from curation.data.conditions import SR, fit
from curation.data.decode import read_window
from curation.data.plan import cut_windows
from curation.store import Store, StoreError, sql_quote
from curation.validate.checks import WindowView, run_checks
from curation.validate.profile import load_profile

CHECK_DECODE_SIDE = 192
WRITE_EVERY = 500


def validate_store(uri: str, profile_path: str, where: str | None = None, workers: int = 1,
                   limit: int | None = None, progress=None) -> dict:
    """Validate every window of the profile's selection (and ``where``); write the verdicts; return
    ``{"profile", "candidates", "kept", "funnel": [{"check", "removed", "remaining"}], ...}``."""
    profile = load_profile(profile_path)
    store = Store(uri)
    if not store.exists("clips"):
        raise StoreError(f"no clips table in {uri}")
    sel = " AND ".join(f"({c})" for c in (profile.where, where, "error IS NULL") if c)
    clips = store.query("clips", sel, ["clip_id", "video_id", "start_s", "end_s", "width", "height"])
    windows = cut_windows(clips.to_pylist(), profile.window_s, profile.fps)[:limit]
    by_video: dict[str, list] = {}
    for w in windows:
        by_video.setdefault(w.video_id, []).append(w)
    run_id = "validate-" + uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    rows, pending = [], []
    jobs = [(uri, profile_path, vid, ws, run_id) for vid, ws in sorted(by_video.items())]
    for part in _map(_validate_video, jobs, workers):
        rows += part
        pending += part
        if progress:
            progress(len(rows), len(windows))
        if len(pending) >= WRITE_EVERY:
            store.upsert("windows", pending)
            pending = []
    if pending:
        store.upsert("windows", pending)
    out = funnel(profile, rows)
    out.update(run_id=run_id, seconds=round(time.perf_counter() - t0, 2),
               missing_columns=missing_columns(store, profile))
    return out


def _map(fn, jobs, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing as mp
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs)


def _validate_video(job) -> list[dict]:
    """The verdicts of one video's windows (runs in a worker process)."""
    from curation.media import MediaError, local_path
    uri, profile_path, video_id, windows, run_id = job
    profile = load_profile(profile_path)
    store = Store(uri)
    video = store.query("videos", f"video_id = {sql_quote(video_id)}").to_pylist()[0]
    ids = sorted({w.clip_id for w in windows})
    clips = {c["clip_id"]: c for c in store.query(
        "clips", "clip_id IN (" + ", ".join(map(sql_quote, ids)) + ")").to_pylist()}
    tracks = _tracks(store, video_id)
    now = datetime.now(timezone.utc)
    out = []
    try:
        with local_path(video["uri"]) as path:
            for w in windows:
                clip = clips[w.clip_id]
                view = WindowView(clip, video, w, profile.fps, track=tracks.get(clip.get("track_id")),
                                  get_frames=lambda w=w: read_window(path, w.start_s, w.frames, profile.fps,
                                                                     _check_size(clip), rotation=int(video.get("rotation") or 0)),
                                  get_audio=None)
                view._get_audio = lambda view=view, w=w: _audio(path, video, view, w)
                out.append(_row(profile, w, view, run_checks(profile, view), run_id, now))
    except (MediaError, OSError) as e:
        from curation.store import one_line
        out = [_row(profile, w, None, None, run_id, now, error=one_line(e)) for w in windows]
    return out


def _audio(path, video, view, w):
    from curation.media import load_audio
    n = int(round(w.frames / view.fps * SR))
    if not video.get("has_audio"):
        return fit([], n)
    start = float(view.frames.pts[0]) if len(view.frames.pts) else w.start_s
    return fit(load_audio(path, SR, start_s=start, duration_s=n / SR), n)


def _check_size(clip: dict) -> tuple[int, int] | None:
    h, w = int(clip.get("height") or 0), int(clip.get("width") or 0)
    if not h or not w or max(h, w) <= CHECK_DECODE_SIDE:
        return None
    s = CHECK_DECODE_SIDE / max(h, w)
    return max(2, round(h * s / 2) * 2), max(2, round(w * s / 2) * 2)


def _tracks(store: Store, video_id: str) -> dict:
    if not store.exists("tracks"):
        return {}
    from curation.data.stream import TRACK_COLUMNS
    cols = [c for c in TRACK_COLUMNS if c in store.schema("tracks").names]
    rows = store.query("tracks", f"video_id = {sql_quote(video_id)}", cols).to_pylist()
    return {r["track_id"]: r for r in rows}


def _row(profile, w, view, verdict, run_id, now, error=None) -> dict:
    decoded = view is not None and view.decoded and len(view.frames.pts)
    return {"profile": profile.name, "clip_id": w.clip_id, "start_s": w.start_s,
            "end_s": round(w.start_s + w.frames / profile.fps, 6), "video_id": w.video_id,
            "window_index": w.index, "frames": w.frames, "fps": profile.fps,
            "first_frame_s": float(view.frames.pts[0]) if decoded else None,
            "kept": bool(verdict and verdict.kept),
            "failed_check": verdict.failed_check if verdict else "error",
            "reason": verdict.reason if verdict else f"error: {error}",
            "checks": verdict.checks if verdict else [], "validated_at": now, "run_id": run_id,
            "error": error, "error_stage": "validate" if error else None}


def funnel(profile, rows: list[dict]) -> dict:
    """Per check in the profile's order: windows it removed (its first failure), windows left."""
    n = len(rows)
    removed = {}
    for r in rows:
        if not r["kept"]:
            removed[r["failed_check"]] = removed.get(r["failed_check"], 0) + 1
    steps, left = [], n
    names = [c for c, _ in profile.checks] + (["error"] if "error" in removed else [])
    for name in names:
        left -= removed.get(name, 0)
        steps.append({"check": name, "removed": removed.get(name, 0), "remaining": left})
    return {"profile": profile.name, "candidates": n, "kept": left, "funnel": steps,
            "examples": _examples(rows)}


def _examples(rows: list[dict]) -> dict:
    """One reason per failing check (the first window it dropped), for the table view."""
    out = {}
    for r in rows:
        if not r["kept"] and r["failed_check"] not in out:
            out[r["failed_check"]] = f"{r['clip_id']} @ {r['start_s']:.2f} s: {r['reason']}"
    return out


def missing_columns(store: Store, profile) -> list[str]:
    """The profile's ``columns`` that the store does not have (their checks see nulls)."""
    have = {"clips": set(store.schema("clips").names),
            "tracks": set(store.schema("tracks").names) if store.exists("tracks") else set()}
    out = []
    for c in profile.columns:
        table, _, col = c.rpartition(".")
        if col not in have.get(table or "clips", set()):
            out.append(c)
    return out

