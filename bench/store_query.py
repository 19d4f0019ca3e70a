"""Store upkeep at scale: a selective query on a 1M-row clips table, fragmented as runs leave it, then
compacted by ``Store.maintain``, against the same rows as one Parquet file (pyarrow; DuckDB if
installed).

The table is written the way runs write it, only in bulk: a run's flush inserts the clips of a batch
of videos as one fragment (160 rows here: 16 videos x 10 clips, the runner's default flush), and
each annotating step adds one data file per fragment (``annotate`` = Lance data evolution). So:
``write_dataset(max_rows_per_file=160)`` with the clips step's columns gives 6,250 fragments, then
``add_columns`` adds the quality and speech columns as a second data file in every fragment, then
the scalar indices a run's end creates (``schemas.INDICES``). Values are seeded and uniform:
duration_s in [1, 10] s, speech_ratio in [0, 1], so ``duration_s > 9.9 AND speech_ratio > 0.95``
keeps about 1M x 0.1/9 x 0.05 = 556 rows (the issue's 505 came from its own draw).

Run: ``.venv/bin/python bench/store_query.py [--rows 1000000] [--frag-rows 160] [--dir /tmp/x]``.
Times are the median of ``--repeat`` runs after one warm-up, on a warm page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUERY = "duration_s > 9.9 AND speech_ratio > 0.95"


def clips_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    per_video = 10
    vids = np.arange(n) // per_video
    video_id = pa.array([f"{v:024x}" for v in vids])
    clip_index = (np.arange(n) % per_video).astype(np.int32)
    clip_id = pa.array([f"{v:024x}:0:{c}" for v, c in zip(vids, clip_index)])
    start = rng.uniform(0, 600, n)
    dur = rng.uniform(1.0, 10.0, n)
    return pa.table({
        "clip_id": clip_id, "video_id": video_id,
        "shot_index": pa.array(np.zeros(n, np.int32)), "clip_index": pa.array(clip_index),
        "clip_kind": pa.array(["shot"] * n), "track_id": pa.nulls(n, pa.string()),
        "start_s": start, "end_s": start + dur, "duration_s": dur,
        "width": pa.array(np.full(n, 1280, np.int32)), "height": pa.array(np.full(n, 720, np.int32)),
        "fps": np.full(n, 30.0), "run_id": pa.array(["run-1"] * n),
        "error": pa.nulls(n, pa.string()), "error_stage": pa.nulls(n, pa.string()),
        # annotations (added below as a second data file per fragment)
        "speech_ratio": rng.uniform(0, 1, n), "sharpness": rng.uniform(0, 500, n),
        "brightness_mean": rng.uniform(0, 255, n), "text_coverage": rng.uniform(0, 0.1, n),
        "still_score": rng.uniform(0, 1, n),
    })


ANNOTATIONS = ("speech_ratio", "sharpness", "brightness_mean", "text_coverage", "still_score")


def timed(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def build(store, data: pa.Table, frag_rows: int) -> float:
    """The fragmented clips table: base columns in fragments of ``frag_rows``, annotations as a
    second data file in each fragment, indices as a run's end makes them."""
    import lance

    from schemas import CLIPS
    t0 = time.perf_counter()
    base_cols = [c for c in data.column_names if c not in ANNOTATIONS]
    base = data.select(base_cols)
    schema = pa.schema([CLIPS.field(c) if c in CLIPS.names else base.schema.field(c) for c in base_cols])
    lance.write_dataset(base.cast(schema), store.table_uri("clips"), schema=schema, mode="create",
                        max_rows_per_file=frag_rows, max_rows_per_group=frag_rows)
    ds = store.dataset("clips")
    ann = data.select(["clip_id", *ANNOTATIONS])
    by_id = {cid: i for i, cid in enumerate(ann["clip_id"].to_pylist())}
    ann_cols = {c: ann[c].to_numpy() for c in ANNOTATIONS}

    def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
        idx = np.array([by_id[c] for c in batch.column("clip_id").to_pylist()])
        return pa.RecordBatch.from_pydict({c: ann_cols[c][idx] for c in ANNOTATIONS})

    ds.add_columns(udf, read_columns=["clip_id"])
    store.ensure_indices("clips")
    return time.perf_counter() - t0


def lance_query(store, use_index: bool = True):
    ds = store.dataset("clips")
    return lambda: ds.to_table(filter=QUERY, use_scalar_index=use_index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--frag-rows", type=int, default=160)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    from curation.store import Store
    work = Path(args.dir or tempfile.mkdtemp(prefix="store_query_"))
    if (work / "store").exists():
        shutil.rmtree(work / "store")
    work.mkdir(parents=True, exist_ok=True)
    store = Store(str(work / "store"))
    store.compact_fragments = 0  # build the fragmented table as it is; maintain() is measured below
    res: dict = {"rows": args.rows, "fragment_rows": args.frag_rows, "query": QUERY}

    t0 = time.perf_counter()
    data = clips_table(args.rows)
    res["generate_s"] = time.perf_counter() - t0
    res["build_s"] = build(store, data, args.frag_rows)
    ds = store.dataset("clips")
    res["fragments_before"] = len(ds.get_fragments())
    res["data_files_before"] = sum(len(f.data_files()) for f in ds.get_fragments())

    res["fragmented_indexed_ms"], t = timed(lance_query(store, True), args.repeat)
    res["matching_rows"] = t.num_rows
    res["fragmented_no_index_ms"], _ = timed(lance_query(store, False), max(3, args.repeat // 2))

    rng = np.random.default_rng(1)
    ids = data["clip_id"].to_numpy(zero_copy_only=False)

    def annotate_1000():
        pick = rng.choice(len(ids), 1000, replace=False)
        store.annotate("clips", pa.table({"clip_id": ids[pick], "sharpness": rng.uniform(0, 500, 1000)}))
    res["fragmented_annotate_1000_ms"], _ = timed(annotate_1000, 3)

    t0 = time.perf_counter()
    m = store.maintain("clips")
    res["maintain_s"] = time.perf_counter() - t0
    res["fragments_after"] = m["fragments_after"]
    res["compacted_indexed_ms"], t2 = timed(lance_query(store, True), args.repeat)
    res["compacted_no_index_ms"], _ = timed(lance_query(store, False), args.repeat)
    assert t2.num_rows == res["matching_rows"], (t2.num_rows, res["matching_rows"])
    res["compacted_annotate_1000_ms"], _ = timed(annotate_1000, 3)

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    pq_path = work / "clips.parquet"
    current = store.query("clips")   # the same rows (with the annotations just written)
    pq.write_table(current, pq_path)
    filt = (pads.field("duration_s") > 9.9) & (pads.field("speech_ratio") > 0.95)
    res["parquet_pyarrow_ms"], t3 = timed(lambda: pq.read_table(pq_path, filters=filt), args.repeat)
    assert t3.num_rows == res["matching_rows"]
    try:
        import duckdb
        con = duckdb.connect()
        sql = f"SELECT * FROM read_parquet('{pq_path}') WHERE {QUERY}"
        res["parquet_duckdb_ms"], _ = timed(lambda: con.execute(sql).arrow(), args.repeat)
    except ImportError:
        res["parquet_duckdb_ms"] = None
    for k in list(res):
        if k.endswith("_ms") and res[k] is not None:
            res[k] = round(res[k] * 1000, 1)
        elif k.endswith("_s"):
            res[k] = round(res[k], 1)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
