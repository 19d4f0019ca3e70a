"""The Lance store: upserts, data evolution, queries, tags and indices."""
from __future__ import annotations

import pytest

from curation.store import Store, StoreError


def _videos(n, start=0):
    return [{"video_id": f"v{i}", "uri": f"/x/{i}.mp4", "duration_s": float(i), "has_audio": i % 2 == 0}
            for i in range(start, start + n)]


def test_upsert_is_idempotent_and_updates(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.upsert("videos", _videos(5))
    st.upsert("videos", _videos(5))             # the same rows again: no duplicates
    assert st.count("videos") == 5
    st.upsert("videos", [{"video_id": "v1", "duration_s": 99.0}, {"video_id": "v9", "duration_s": 9.0}])
    t = {r["video_id"]: r for r in st.query("videos").to_pylist()}
    assert len(t) == 6
    assert t["v1"]["duration_s"] == 99.0 and t["v1"]["uri"] == "/x/1.mp4"  # other columns kept
    assert (tmp_path / "s" / "videos.lance").is_dir()


def test_duplicate_keys_in_one_write_are_refused(tmp_path):
    st = Store(str(tmp_path / "s"))
    with pytest.raises(StoreError, match="duplicate keys"):
        st.upsert("videos", [{"video_id": "a"}, {"video_id": "a"}])


def _files(st, table):
    return [(frag.fragment_id, f.path, tuple(f.fields)) for frag in st.dataset(table).get_fragments()
            for f in frag.data_files()]


def test_annotate_adds_columns_without_rewriting_rows(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.upsert("videos", _videos(4))
    before = _files(st, "videos")
    st.annotate("videos", [{"video_id": f"v{i}", "blur": float(i) * 10} for i in range(4)])
    st.annotate("videos", [{"video_id": "v1", "blur": 11.0}, {"video_id": "nope", "blur": 1.0}])
    after = _files(st, "videos")
    assert after[0] == before[0]                 # the original data file, untouched, same fragment
    assert len(st.dataset("videos").get_fragments()) == 1 and st.count("videos") == 4
    assert len(after) == 2 and len(after[1][2]) == 1   # one extra file holding only the new column
    rows = st.query("videos", columns=["video_id", "uri", "blur"]).to_pylist()
    assert [(r["uri"], r["blur"]) for r in rows] == [("/x/0.mp4", 0), ("/x/1.mp4", 11), ("/x/2.mp4", 20),
                                                     ("/x/3.mp4", 30)]


def test_query_filter_returns_exactly_the_matching_rows(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.upsert("videos", _videos(50))
    st.optimize_indices("videos")
    got = st.query("videos", where="has_audio = true AND duration_s >= 10", columns=["video_id"])
    expected = {f"v{i}" for i in range(50) if i % 2 == 0 and i >= 10}
    assert set(got["video_id"].to_pylist()) == expected and got.num_rows == len(expected)
    assert st.count("videos", "duration_s < 5") == 5
    with pytest.raises(StoreError, match="No field named nope"):
        st.query("videos", where="nope = 1")
    with pytest.raises(StoreError, match="unknown column"):
        st.query("videos", columns=["nope"])


def test_scalar_indices_and_tags(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.upsert("videos", _videos(10))
    st.optimize_indices("videos")
    names = {tuple(ix.field_names) for ix in st.dataset("videos").describe_indices()}
    assert ("video_id",) in names and ("has_audio",) in names
    st.tag("run-1")
    v1 = st.dataset("videos").version
    st.upsert("videos", _videos(3, start=10))
    assert st.tags("videos")["run-1"]["version"] == v1
    assert st.query("videos", version="run-1").num_rows == 10
    assert st.count("videos") == 13


def test_replace_removes_stale_child_rows(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.upsert("shots", [{"video_id": "a", "shot_index": i} for i in range(4)]
              + [{"video_id": "b", "shot_index": 0}])
    st.replace("shots", "video_id = 'a'", [{"video_id": "a", "shot_index": i} for i in range(2)])
    rows = st.query("shots", columns=["video_id", "shot_index"]).to_pylist()
    assert sorted((r["video_id"], r["shot_index"]) for r in rows) == [("a", 0), ("a", 1), ("b", 0)]


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="table 'clips' not found"):
        Store(str(tmp_path / "s")).query("clips")


def test_writes_compact_a_table_that_collects_many_small_fragments(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.compact_fragments = 8
    for i in range(30):                       # one fragment per flush, as a run writes
        st.upsert("videos", _videos(1, start=i))
        st.annotate("videos", [{"video_id": f"v{i}", "blur": float(i)}])
    ds = st.dataset("videos")
    assert len(ds.get_fragments()) <= 9 and st.count("videos") == 30
    rows = st.query("videos", columns=["video_id", "uri", "blur"]).to_pylist()
    assert sorted((r["video_id"], r["uri"], r["blur"]) for r in rows) == sorted(
        (f"v{i}", f"/x/{i}.mp4", float(i)) for i in range(30))


def test_maintain_compacts_and_indexes_without_disturbing_readers(tmp_path):
    st = Store(str(tmp_path / "s"))
    st.compact_fragments = 0                  # no automatic upkeep: 20 fragments
    for i in range(20):
        st.upsert("videos", _videos(5, start=5 * i))
    st.ensure_indices("videos")
    st.upsert("videos", _videos(5, start=100))   # rows the indices do not cover yet
    reader = st.dataset("videos")                 # a reader that opened the table before upkeep
    where = "has_audio = true AND duration_s >= 50"
    before = sorted(reader.to_table(filter=where)["video_id"].to_pylist())
    m = st.maintain("videos")
    assert m["fragments_before"] == 21 and m["fragments_after"] == 1
    assert sorted(reader.to_table(filter=where)["video_id"].to_pylist()) == before  # its version
    after = st.dataset("videos")
    assert sorted(after.to_table(filter=where)["video_id"].to_pylist()) == before
    assert len(before) == 28 and after.count_rows() == 105   # even i in 50..104
    assert after.stats.index_stats("video_id_idx")["num_unindexed_rows"] == 0
    assert reader.version < after.version


def test_table_creation_is_exclusive(tmp_path):
    """Lance's mode="create" lets a racing second creator overwrite the first; the store creates
    under a lock, so a second creator's rows are merged in, not written over the first's."""
    st1, st2 = Store(str(tmp_path / "s")), Store(str(tmp_path / "s"))
    assert st1._create("videos", pa_rows([{"video_id": "a"}])) is True
    assert st2._create("videos", pa_rows([{"video_id": "b"}])) is False
    st2.upsert("videos", [{"video_id": "b"}])
    assert sorted(st1.query("videos")["video_id"].to_pylist()) == ["a", "b"]


def pa_rows(rows):
    import pyarrow as pa
    return pa.Table.from_pylist(rows)


def test_blob_ranges_of_a_pinned_version_read_the_right_bytes_from_kept_open_blobs(tmp_path, monkeypatch):
    """blob_range by row id on a numbered version keeps the blob open for the next range (the
    loader's per-window slices): ranges of many rows, read again after others were evicted, and
    after a newer version rewrote the blobs, are each row's own bytes at that version."""
    import pickle

    import pyarrow as pa

    import curation.store as store_mod
    from schemas import blob_field
    monkeypatch.setattr(store_mod, "BLOB_FILES_OPEN", 3)
    st = Store(str(tmp_path / "s"))
    st.upsert("videos", _videos(6))
    blobs = {f"v{i}": bytes((i * 7 + k) % 256 for k in range(5000)) for i in range(6)}
    schema = pa.schema([pa.field("video_id", pa.string()), blob_field("audio_pcm")])
    st.annotate("videos", pa.Table.from_pylist([{"video_id": k, "audio_pcm": v} for k, v in blobs.items()],
                                               schema=schema))
    version = st.dataset("videos").version
    ids = {k: st.row_id("videos", f"video_id = '{k}'", version) for k in blobs}
    for offset, size in ((0, 10), (4990, 100), (1234, 777), (0, 10)):
        for k in ("v0", "v1", "v2", "v3", "v4", "v5", "v0"):     # more rows than kept open
            got = st.blob_range("videos", "audio_pcm", None, offset, size, version=version, row_id=ids[k])
            assert got == blobs[k][offset:offset + size]
    assert len(st._blob_files) == 3
    st.annotate("videos", pa.Table.from_pylist([{"video_id": "v0", "audio_pcm": b"new" * 10}], schema=schema))
    assert st.blob_range("videos", "audio_pcm", None, 0, 10, version=version, row_id=ids["v0"]) == blobs["v0"][:10]
    latest = st.dataset("videos").version
    assert st.blob_range("videos", "audio_pcm", "video_id = 'v0'", 0, 6, version=latest) == b"newnew"
    assert "_blob_files" not in pickle.loads(pickle.dumps(st)).__dict__
