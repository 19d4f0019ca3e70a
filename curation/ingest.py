"""Ingest: resolve the inputs a user gave into file uris, and give each a ``videos`` row.

- ``resolve_inputs`` keeps the names the user gave: absolute, but symbolic links are not resolved
  (a link is recorded under the link's path). Directories are walked (symlinked directories too,
  each real directory once); every entry with a video extension is an input, including dangling
  links and non-regular files, which then fail at ingest with a row saying why.
- ``ingest`` upserts one ``videos`` row per input. The id is a content hash (``media.content_id``),
  so the same file under two names is one video. A file whose (uri, size_bytes, mtime_ns) match its
  row from an earlier run keeps that row's id without being read again: a re-run over 10,000
  unchanged files costs a ``stat`` each, no hashing and no write. Files that must be hashed are
  hashed by a thread pool (file reads and blake2b release the GIL) when there are more than a few.
- Inputs that cannot be read (missing target, FIFO, device, no permission) are stat-ed, never
  opened (opening a FIFO blocks, /dev/zero never ends), and become rows with ``error_stage =
  'ingest'``; they count as failed in the returned :class:`Ingested`.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from curation.media import VIDEO_EXTENSIONS, MediaError, content_id
from curation.store import Store, one_line, sql_quote
from schemas import SCHEMA_VERSION, VIDEOS

HASH_THREADS = 8          # I/O bound: more threads than the 2 cores of a laptop still help on NFS/S3
PARALLEL_FROM = 4         # fewer files than this are hashed on the calling thread
_INGEST = ("video_id", "uri", "size_bytes", "mtime_ns", "schema_version", "run_id")


class Ingested(list):
    """The video ids of the inputs in input order (a ``list[str]``, as ingest always returned),
    with what happened to them:

    - ``failed``: ``{video_id: error}`` of the inputs that failed at ingest (their rows carry the
      error, ``error_stage = 'ingest'``; they are part of the list and later steps skip them);
    - ``hashed``: files read and hashed; ``reused``: files whose id came from their earlier row;
    - ``seconds``: wall time of the ingest.
    """

    def __init__(self, ids: Iterable[str] = (), failed: dict[str, str] | None = None,
                 hashed: int = 0, reused: int = 0, seconds: float = 0.0):
        super().__init__(ids)
        self.failed = failed or {}
        self.hashed = hashed
        self.reused = reused
        self.seconds = seconds

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def ok(self) -> list[str]:
        return [v for v in self if v not in self.failed]


# ---- inputs ----------------------------------------------------------------------------------------
def resolve_inputs(paths: Iterable[str], problems: list[tuple[str, str]] | None = None) -> list[str]:
    """Files as given (absolute, links not resolved); directories expanded recursively to their
    entries with a video extension.

    An input that does not exist is kept as a file (ingest gives it a row saying "file not found",
    and it counts as failed); with ``problems`` given, (input, what is wrong) is added there for
    it and for every directory with no video file in it (e.g. a directory named ``x.mp4``).
    Without ``problems`` a missing input raises FileNotFoundError (library use)."""
    out: list[str] = []
    for p in paths:
        p = str(p)
        try:
            if "://" in p and not p.startswith("file://"):
                found = _resolve_remote(p)
            else:
                p = p.removeprefix("file://")
                if os.path.isdir(p):
                    found = _walk(os.path.abspath(p))
                elif os.path.lexists(p):
                    found = [os.path.abspath(p)]
                else:
                    raise FileNotFoundError(f"input not found: {p}")
        except FileNotFoundError:
            if problems is None:
                raise
            problems.append((p, "not found"))
            out.append(p if "://" in p else os.path.abspath(p))
            continue
        if not found and problems is not None:
            problems.append((p, "a directory with no video file in it"))
        out.extend(found)
    return list(dict.fromkeys(out))


def _walk(root: str) -> list[str]:
    found: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:          # a link cycle, or the same directory reached twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):  # files, links to files, dangling links, FIFOs, devices
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    return found


def _resolve_remote(uri: str) -> list[str]:
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {uri}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in VIDEO_EXTENSIONS)


# ---- stat --------------------------------------------------------------------------------------------
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _stat(uri: str) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a readable regular file; MediaError saying why not."""
    if "://" in uri and not uri.startswith("file://"):
        import pyarrow.fs as pafs
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise MediaError("not found" if info.type == pafs.FileType.NotFound else "not a file")
        return int(info.size), int(info.mtime_ns or 0)
    path = uri.removeprefix("file://")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MediaError(f"broken symbolic link (to {os.readlink(path)})") from None
        raise MediaError("file not found") from None
    except OSError as e:
        raise MediaError(e.strerror or str(e)) from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise MediaError(f"not a regular file ({kind})")
    if not os.access(path, os.R_OK):
        raise MediaError("permission denied")
    return st.st_size, st.st_mtime_ns


def _hash(uri: str) -> str:
    try:
        return content_id(uri)
    except (OSError, MediaError) as e:
        raise MediaError(one_line(e)) from None


def _error_id(uri: str) -> str:
    return "uri-" + hashlib.blake2b(uri.encode(), digest_size=10).hexdigest()


# ---- ingest ------------------------------------------------------------------------------------------
def _known(store: Store, uris: list[str]) -> dict[str, list[dict]]:
    """Earlier rows of these uris: uri -> rows (video_id, size_bytes, mtime_ns, error_stage)."""
    if not store.exists("videos"):
        return {}
    names = store.schema("videos").names
    cols = [c for c in ("video_id", "uri", "size_bytes", "mtime_ns", "error_stage") if c in names]
    wanted = set(uris)
    out: dict[str, list[dict]] = {}
    if len(uris) <= 200:
        rows = []
        for i in range(0, len(uris), 100):
            where = "uri IN (" + ", ".join(sql_quote(u) for u in uris[i:i + 100]) + ")"
            rows.extend(store.query("videos", where=where, columns=cols).to_pylist())
    else:  # many inputs: one scan of a few columns beats thousands of IN terms
        rows = store.query("videos", columns=cols).to_pylist()
    for r in rows:
        if r["uri"] in wanted:
            out.setdefault(r["uri"], []).append(r)
    return out


def ingest(store: Store, uris: list[str], run_id: str) -> Ingested:
    """Give every input a ``videos`` row (id = content hash); return the ids as :class:`Ingested`."""
    t0 = time.perf_counter()
    stats: dict[str, tuple[int, int] | str] = {}
    for uri in uris:
        try:
            stats[uri] = _stat(uri)
        except MediaError as e:
            stats[uri] = f"cannot read file: {e}"
    known = _known(store, uris)
    ids, fresh, n_hashed = _ids(uris, stats, known)
    out_ids, failed, good_rows, bad_rows = _rows(uris, stats, ids, fresh, run_id)
    for group, cols in ((good_rows, _INGEST), (bad_rows, _INGEST + ("error", "error_stage"))):
        if group:
            store.upsert("videos", pa.Table.from_pylist(
                group, schema=pa.schema([VIDEOS.field(c) for c in cols])))
    # an input that failed at ingest before and reads fine now: its error row goes
    healed = [r["video_id"] for u in fresh for r in known.get(u, []) if r.get("error_stage") == "ingest"]
    if healed:
        store.delete("videos", store.video_filter(healed))
    return Ingested(out_ids, failed=failed, hashed=n_hashed, reused=len(ids) - len(fresh),
                    seconds=time.perf_counter() - t0)


def _ids(uris: list[str], stats: dict, known: dict) -> tuple[dict[str, str], set[str], int]:
    """uri -> video id: an unchanged file (same uri, size and mtime as its row) keeps its row's id
    unread; the others are hashed (in threads when there are a few). Returns the ids, the uris
    hashed successfully, and how many were read. A file that cannot be hashed gets its error in
    ``stats``."""
    ids: dict[str, str] = {}
    to_hash = []
    for uri in uris:
        st = stats[uri]
        if isinstance(st, str):
            continue
        match = next((r for r in known.get(uri, []) if r.get("size_bytes") == st[0]
                      and r.get("mtime_ns") == st[1] and r.get("error_stage") != "ingest"
                      and not str(r["video_id"]).startswith("uri-")), None)
        if match:
            ids[uri] = match["video_id"]
        else:
            to_hash.append(uri)
    if len(to_hash) >= PARALLEL_FROM:
        with ThreadPoolExecutor(min(HASH_THREADS, len(to_hash))) as pool:
            hashed = list(pool.map(_safe_hash, to_hash))
    else:
        hashed = [_safe_hash(u) for u in to_hash]
    fresh: set[str] = set()
    for uri, (vid, err) in zip(to_hash, hashed):
        if err:
            stats[uri] = f"cannot read file: {err}"
        else:
            ids[uri] = vid
            fresh.add(uri)
    return ids, fresh, len(to_hash)


def _rows(uris, stats, ids, fresh, run_id):
    """The ids in input order (one per content), the failed ones, and the rows to write: new or
    changed files, and an error row for each input that cannot be read."""
    out_ids: list[str] = []
    seen: set[str] = set()
    failed: dict[str, str] = {}
    good_rows, bad_rows = [], []
    for uri in uris:
        st = stats[uri]
        vid = _error_id(uri) if isinstance(st, str) else ids[uri]
        if vid in seen:   # the same content twice under two names: one video
            continue
        out_ids.append(vid)
        seen.add(vid)
        if isinstance(st, str):
            failed[vid] = st
            bad_rows.append({"video_id": vid, "uri": uri, "size_bytes": None, "mtime_ns": None,
                             "schema_version": SCHEMA_VERSION, "run_id": run_id, "error": st,
                             "error_stage": "ingest"})
        elif uri in fresh:    # errors of earlier runs stay until the step that made them succeeds
            good_rows.append({"video_id": vid, "uri": uri, "size_bytes": st[0], "mtime_ns": st[1],
                              "schema_version": SCHEMA_VERSION, "run_id": run_id})
    return out_ids, failed, good_rows, bad_rows


def _safe_hash(uri: str) -> tuple[str | None, str | None]:
    try:
        return _hash(uri), None
    except MediaError as e:
        return None, str(e)
