"""The clip grid's data: one page of clips for a filter, a funnel tab and a sort, cut in the store.

The filter is the same predicate ``curation query --where`` takes, checked by the same code
(curation/sql.py) and failing with the same one-line errors. Paging is Lance's (a top-k on the sort
column with an offset), so a page of a 100k-clip store costs about what it costs on 100 clips.
"""
from __future__ import annotations

import os
import time

import pyarrow as pa

from curation.audit import funnel
from curation.audit.clip import plain
from curation.sql import validate_where
from curation.store import Store, StoreError

# Columns on a grid card when the clips table has them (the sort column is added).
GRID_COLUMNS = ("clip_id", "video_id", "clip_kind", "track_id", "start_s", "end_s", "duration_s",
                "error", "error_stage", "speech_ratio", "sharpness", "still_score", "motion_intensity",
                "camera_motion", "jump_count", "text_coverage", "role", "speak_ratio", "listen_ratio",
                "discard_ratio", "sync_offset_frames", "sync_confidence", "emotion_label")
MAX_LIMIT = 500


def sortable(schema: pa.Schema) -> list[str]:
    """Columns a page can be sorted by: the scalar ones (not lists, structs or blobs)."""
    return [f.name for f in schema if not (pa.types.is_nested(f.type) or pa.types.is_binary(f.type)
                                           or pa.types.is_large_binary(f.type)
                                           or isinstance(f.type, pa.ExtensionType))]


def clip_page(store: Store, where: str | None = None, tab: str = "all", sort: str | None = None,
              descending: bool = False, limit: int = 50, offset: int = 0,
              columns: list[str] | None = None) -> dict:
    """Rows ``offset .. offset + limit`` of the clips matching WHERE in funnel tab TAB, sorted by
    SORT; with the total, each row's video file name and fate (kept / the stage that removed it)."""
    t0 = time.perf_counter()
    where = validate_where(where) if where is not None and where.strip() else None
    if not store.exists("clips"):
        raise StoreError(f"no clips table in {store.uri}")
    schema = store.schema("clips")
    can_sort = sortable(schema)
    if sort and sort not in can_sort:
        raise StoreError(f"cannot sort by {sort!r}: not a scalar column of clips")
    limit = max(0, min(int(limit), MAX_LIMIT))
    info, stages = funnel.stages(store)
    combined = " AND ".join(f"({w})" for w in (where, funnel.tab_where(stages, tab)) if w) or None
    cols = columns or [c for c in GRID_COLUMNS if c in schema.names]
    cols = list(dict.fromkeys(["clip_id", "video_id"] + cols + ([sort] if sort else [])))
    t1 = time.perf_counter()
    try:
        table = store.page("clips", where=combined, columns=cols, order_by=sort, descending=descending,
                           limit=limit, offset=offset)
    except StoreError:
        if where:   # the user's own predicate: the error `curation query` gives for it
            store.query("clips", where=where, columns=["clip_id"], limit=1)
        raise
    t2 = time.perf_counter()
    total = store.count("clips", combined)
    t3 = time.perf_counter()
    rows = [plain(r) for r in table.to_pylist()]
    names = _video_names(store, {r["video_id"] for r in rows})
    fate = funnel.fates(store, stages, [r["clip_id"] for r in rows])
    for r in rows:
        r["video_name"] = names.get(r["video_id"], "")
        r["fate"] = fate.get(r["clip_id"], "")
    t4 = time.perf_counter()
    return {"rows": rows, "total": total, "offset": offset, "limit": limit, "columns": cols,
            "where": where, "tab": tab or "all", "sort": sort, "descending": descending,
            "sortable": can_sort, "run": {k: info.get(k) for k in ("run_id", "workflow")},
            "ms": {"stages": _ms(t0, t1), "page": _ms(t1, t2), "count": _ms(t2, t3),
                   "names_and_fates": _ms(t3, t4), "total": _ms(t0, t4)}}


def _ms(a: float, b: float) -> float:
    return round(1000 * (b - a), 1)


def _video_names(store: Store, video_ids: set[str]) -> dict[str, str]:
    if not video_ids or not store.exists("videos"):
        return {}
    rows = store.of_videos("videos", sorted(video_ids), ["video_id", "uri"]).to_pylist()
    return {r["video_id"]: os.path.basename(r["uri"] or "") for r in rows}
