"""Ingest: names as the user gave them, unreadable inputs as failed rows, no re-hashing of unchanged
files, parallel hashing."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from curation.ingest import Ingested, ingest, resolve_inputs
from curation.media import content_id
from curation.store import Store


def _rows(st: Store) -> dict[str, dict]:
    return {r["uri"]: r for r in st.query("videos").to_pylist()}


def test_links_keep_their_names_and_broken_inputs_become_failed_rows(media, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    real = tmp_path / "real_vr_face1.mp4"
    shutil.copy(media / "vr_face1.mp4", real)
    (d / "link_to_face.mp4").symlink_to(real)
    (d / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    os.mkfifo(d / "pipe.mp4")
    (d / "notes.txt").write_text("not an input: no video extension")
    dev_zero = tmp_path / "zero_device.mp4"
    dev_zero.symlink_to("/dev/zero")

    uris = resolve_inputs([str(d), str(dev_zero)])
    assert uris == [str(d / "dangling.mp4"), str(d / "link_to_face.mp4"), str(d / "pipe.mp4"),
                    str(dev_zero)]
    st = Store(str(tmp_path / "s"))
    t0 = time.perf_counter()
    got = ingest(st, uris, "run-1")
    assert time.perf_counter() - t0 < 10        # a FIFO or /dev/zero is never opened
    assert isinstance(got, Ingested) and isinstance(got, list) and len(got) == 4
    assert got.n_failed == 3 and len(got.ok) == 1
    rows = _rows(st)
    link = rows[str(d / "link_to_face.mp4")]    # recorded under the link, not its target
    assert link["error"] is None and link["video_id"] == content_id(str(media / "vr_face1.mp4"))
    assert rows[str(d / "dangling.mp4")]["error"].startswith("cannot read file: broken symbolic link")
    assert rows[str(d / "pipe.mp4")]["error"] == "cannot read file: not a regular file (a named pipe (FIFO))"
    assert rows[str(dev_zero)]["error"] == "cannot read file: not a regular file (a character device)"
    for uri in (d / "dangling.mp4", d / "pipe.mp4", dev_zero):
        assert rows[str(uri)]["error_stage"] == "ingest" and rows[str(uri)]["video_id"] in got.failed
    with pytest.raises(FileNotFoundError, match="input not found"):
        resolve_inputs([str(tmp_path / "nope.mp4")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_is_a_failed_row(media, tmp_path):
    f = tmp_path / "locked.mp4"
    shutil.copy(media / "lp_d0.mp4", f)
    f.chmod(0)
    got = ingest(Store(str(tmp_path / "s")), [str(f)], "r")
    assert got.n_failed == 1 and "permission denied" in next(iter(got.failed.values()))


def test_rerun_reuses_ids_of_unchanged_files_without_reading_them(media, tmp_path):
    files = []
    for name in ("vr_face1.mp4", "lp_d0.mp4", "pf_single_face.mp4"):
        shutil.copy(media / name, tmp_path / name)
        files.append(str(tmp_path / name))
    st = Store(str(tmp_path / "s"))
    first = ingest(st, files, "run-1")
    assert first.hashed == 3 and first.reused == 0 and first.n_failed == 0
    version = st.dataset("videos").version
    again = ingest(st, files, "run-2")
    assert list(again) == list(first) and again.hashed == 0 and again.reused == 3
    assert st.dataset("videos").version == version           # nothing written either
    # a touched file is hashed again (same content: same id); a changed one gets a new id
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    with open(files[1], "ab") as f:
        f.write(b"\0" * 16)
    third = ingest(st, files, "run-3")
    assert third.hashed == 2 and third.reused == 1
    assert third[0] == first[0] and third[1] != first[1] and third[2] == first[2]
    rows = _rows(st)
    assert rows[files[0]]["mtime_ns"] == os.stat(files[0]).st_mtime_ns


def test_a_failed_input_that_reads_fine_later_loses_its_error_row(media, tmp_path):
    link = tmp_path / "later.mp4"
    link.symlink_to(tmp_path / "target.mp4")
    st = Store(str(tmp_path / "s"))
    assert ingest(st, [str(link)], "r1").n_failed == 1
    shutil.copy(media / "lp_d0.mp4", tmp_path / "target.mp4")
    got = ingest(st, [str(link)], "r2")
    assert got.n_failed == 0
    rows = st.query("videos").to_pylist()
    assert len(rows) == 1 and rows[0]["error"] is None and rows[0]["uri"] == str(link)


@pytest.mark.slow
def test_ten_thousand_unchanged_inputs_rerun_in_seconds(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(10_000):
        (d / f"v{i:05d}.mp4").write_bytes(i.to_bytes(4, "little") * 256)   # distinct 1 KB files
    st = Store(str(tmp_path / "s"))
    uris = resolve_inputs([str(d)])
    assert len(uris) == 10_000
    t0 = time.perf_counter()
    first = ingest(st, uris, "r1")
    first_s = time.perf_counter() - t0
    assert first.hashed == 10_000 and len(set(first)) == 10_000
    t0 = time.perf_counter()
    again = ingest(st, resolve_inputs([str(d)]), "r2")
    rerun_s = time.perf_counter() - t0
    assert again.hashed == 0 and again.reused == 10_000 and list(again) == list(first)
    assert rerun_s < 5.0, (first_s, rerun_s)
