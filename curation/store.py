"""The metadata store: one Lance dataset per table under a directory or object-store prefix.

This is the only module that imports ``lance``. A store at ``URI`` holds ``URI/videos.lance``,
``URI/shots.lance``, ``URI/clips.lance``, ``URI/tracks.lance`` and two bookkeeping tables,
``status.lance`` (which step has processed which video, with which operator version) and
``runs.lance`` (one row per run, with its workflow).

Writes are upserts keyed by the table's key (``merge_insert``); columns an operator adds appear as new
all-null columns first (Lance data evolution, no rewrite of other columns) and are then filled by a
partial-schema upsert. Re-running the same upserts cannot duplicate rows, so a killed run leaves
committed versions only.

Rows an operator emits replace the video's earlier rows: :meth:`Store.append` with
``replace_where`` deletes those and adds the new rows in one commit (``LanceOperation.Update``).
The new rows may be fragments a worker wrote itself (:meth:`Store.write_fragments`: data files
written, not committed; the committer passes their small metadata), so large outputs never travel
through the committing process.

Concurrent writers (two runs on one store, or several processes) are safe:

- every write is retried on a Lance commit conflict, against the newest version, with exponential
  back-off (``RETRY_DELAYS``: 0.05 s doubling to at most 2 s, 12 tries, about 15 s in all); upserts
  and annotations are idempotent, so a retry never duplicates or loses rows;
- a table is created under a lock (Lance's ``mode="create"`` is not exclusive: two concurrent
  creators can both succeed, the second as an overwrite of the first; measured here, 6 of 8 races);
- ``StoreLease`` (``URI/_lease.json``) lets ``curation run`` hold the store: holder host, pid, run id,
  since, heartbeat; stale after ``LEASE_STALE_S`` without a heartbeat, or at once when its holder's
  pid is gone on this host.

Upkeep: every write adds a fragment (and merge-updates leave deletion files), and a table of thousands
of small fragments answers queries slowly (issue 5: 472 ms for a selective query on 1M rows in 6,250
fragments; 13 ms after compaction). A write that leaves a table with more than ``COMPACT_FRAGMENTS``
small fragments compacts it (``compact_files``) and folds new rows into its scalar indices;
``maintain(table)`` does the same unconditionally (called at the end of a run, through
``optimize_indices``). Compaction commits a new version: readers keep the version they opened
(Lance is MVCC), so it never blocks them.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import lance
import pyarrow as pa
import pyarrow.compute as pc

from schemas import BOOKKEEPING, INDICES, KEYS, TABLES

log = logging.getLogger(__name__)

# Back-off between tries of a conflicting commit, seconds (jittered by +-50 %).
RETRY_DELAYS = tuple(min(2.0, 0.05 * 2 ** i) for i in range(12))
# Small fragments a table may collect before a write compacts it (env CURATION_COMPACT_FRAGMENTS).
COMPACT_FRAGMENTS = int(os.environ.get("CURATION_COMPACT_FRAGMENTS", "64"))
# Rows per fragment after compaction: fragments this full are left alone by later compactions, so
# one compaction rewrites at most about this many rows (a 1M-row table ends as 4 fragments).
TARGET_ROWS_PER_FRAGMENT = 1 << 18
# A lease without a heartbeat for this long is stale (env CURATION_LEASE_STALE_S).
LEASE_STALE_S = float(os.environ.get("CURATION_LEASE_STALE_S", "60"))
MAX_ERROR_CHARS = 300
BLOB_FILES_OPEN = 64     # blobs of numbered versions kept open by blob_range (per Store object)


class StoreError(RuntimeError):
    pass


class InvalidQuery(StoreError):
    """A query the store cannot answer as asked: an unknown column, a value of the wrong type, an
    unknown function (exit 2, like a predicate that does not parse)."""
    exit_code = 2


class LeaseHeld(StoreError):
    """Another run holds the store's lease."""
    exit_code = 3


class LeaseLost(StoreError):
    """This run's lease was taken over by another run (this one was paused or cut off for longer
    than the lease's staleness): it must not write again."""
    exit_code = 3


def sql_quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def one_line(error: BaseException | str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error as one readable line (see :func:`curation.failures.one_line`)."""
    from curation.failures import one_line as line
    return line(error, limit)


def _clean(e: Exception) -> str:
    return one_line(e, 200)


def _is_conflict(e: BaseException) -> bool:
    from lance.commit import CommitConflictError
    if isinstance(e, CommitConflictError):
        return True
    text = str(e).lower()
    return any(s in text for s in ("commit conflict", "incompatible transaction", "concurrent",
                                   "conflicting", "was modified", "too many concurrent"))


def _retrying(what: str, fn: Callable[[], object], uri: str = ""):
    """Run ``fn`` (which opens the newest version itself), again after a commit conflict. Other
    I/O errors name what was being written where (Lance's "No space left on device (os error 28)"
    names no path)."""
    for i, delay in enumerate(RETRY_DELAYS + (None,)):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only conflicts are retried
            if delay is None or not _is_conflict(e):
                if _is_conflict(e):
                    raise StoreError(f"{what}: gave up after {i + 1} commit conflicts: {one_line(e)}") \
                        from e
                if uri and _is_io(e):
                    raise StoreError(f"{what} ({uri}): {one_line(e)}") from e
                raise
            log.debug("%s: commit conflict (%s), retry %d", what, one_line(e), i + 1)
            time.sleep(delay * random.uniform(0.5, 1.5))


def _is_io(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, OSError) or "(os error" in text or "LanceError(IO)" in text


class Store:
    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or _storage_options_from_env(self.uri)
        self.compact_fragments = COMPACT_FRAGMENTS
        # nothing is created until the first write (reading a wrong path must not make a store)

    def __getstate__(self):   # opened datasets and blobs stay in their process
        return {k: v for k, v in self.__dict__.items() if k not in ("_versions", "_blob_files")}

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    # ---- paths and opening ------------------------------------------------------------------------
    def table_uri(self, table: str) -> str:
        return f"{self.uri}/{table}.lance"

    def _key(self, table: str) -> tuple[str, ...]:
        if table in KEYS:
            return KEYS[table]
        if table in BOOKKEEPING:
            return BOOKKEEPING[table][1]
        raise StoreError(f"unknown table {table!r}")

    def _base_schema(self, table: str) -> pa.Schema:
        if table in TABLES:
            return TABLES[table]
        return BOOKKEEPING[table][0]

    def tables(self) -> list[str]:
        known = list(TABLES) + list(BOOKKEEPING)
        return [t for t in known if self.exists(t)]

    def exists(self, table: str) -> bool:
        return self._open(table) is not None

    def _open(self, table: str, version: int | str | None = None):
        """The newest (or the given) version of ``table``, None when there is no such table."""
        if self.is_local and not os.path.isdir(self.table_uri(table).removeprefix("file://")):
            return None
        try:
            return lance.dataset(self.table_uri(table), version=version,
                                 storage_options=self.storage_options)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def dataset(self, table: str, version: int | str | None = None):
        if isinstance(version, int):   # a numbered version never changes: open it once
            cache = self.__dict__.setdefault("_versions", {})
            if (table, version) not in cache:
                cache[(table, version)] = self._open(table, version)
            ds = cache[(table, version)]
            if ds is None:
                del cache[(table, version)]
        else:
            ds = self._open(table, version)
        if ds is None:
            raise StoreError(f"table {table!r} not found in store {self.uri}"
                             + (f" (version {version!r})" if version is not None else ""))
        return ds

    def schema(self, table: str) -> pa.Schema:
        return self.dataset(table).schema

    # ---- writes -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _create_lock(self, table: str):
        """Serialise table creation on a local store (an flock on ``URI/.create.lock``). On an
        object store there is no lock: creators there rely on the run lease."""
        with _flocked(self, ".create.lock"):
            yield
    def _create(self, table: str, data: pa.Table) -> bool:
        """Create ``table`` holding ``data``; False (nothing written) when it exists already."""
        schema = self._base_schema(table)
        # Start from the base schema so that later operators always find the base columns.
        fields = list(schema) + [f for f in data.schema if f.name not in schema.names]
        full = pa.schema(fields)
        data = _conform(data, full)
        with self._create_lock(table):
            if self._open(table) is not None:
                return False
            try:
                lance.write_dataset(data, self.table_uri(table), schema=full, mode="create",
                                    storage_options=self.storage_options)
            except OSError as e:
                if "already exists" in str(e).lower():
                    return False
                raise
        return True

    def _add_missing_columns(self, table: str, ds, data: pa.Table):
        missing = [f for f in data.schema if f.name not in ds.schema.names]
        if not missing:
            return ds
        try:
            ds.add_columns(missing)  # all-null columns: metadata only, no data rewrite
        except Exception:  # noqa: BLE001 - a concurrent writer may have added them first
            ds = self.dataset(table)
            if any(f.name not in ds.schema.names for f in missing):
                raise
        return self.dataset(table)

    def upsert(self, table: str, data: pa.Table | Sequence[dict]) -> dict:
        """Insert new rows and update existing ones (by key) with the columns present in ``data``."""
        data = _as_table(data)
        if data.num_rows == 0:
            return {"num_inserted_rows": 0, "num_updated_rows": 0}
        key = list(self._key(table))
        _check_unique(data, key, table)

        def attempt():
            ds = self._open(table)
            if ds is None:
                if self._create(table, data):
                    return {"num_inserted_rows": data.num_rows, "num_updated_rows": 0}, None
                ds = self.dataset(table)
            ds = self._add_missing_columns(table, ds, data)
            rows = _conform(data, pa.schema([ds.schema.field(n) for n in data.column_names]))
            return (ds.merge_insert(key).when_matched_update_all().when_not_matched_insert_all()
                    .execute(rows)), ds

        out, ds = _retrying(f"upsert into {table}", attempt, self.table_uri(table))
        self._after_write(table, ds)
        return out

    def annotate(self, table: str, data: pa.Table | Sequence[dict]) -> dict:
        """Set columns of existing rows (matched by key) without rewriting their other columns.

        New columns are added empty first (metadata only); the values are then attached to the
        fragments that hold the rows as new column files (Lance data evolution). Keys with no row
        are ignored. Blob columns fall back to a row upsert (Lance cannot patch them as columns).
        """
        data = _as_table(data)
        if data.num_rows == 0:
            return {"num_updated_rows": 0}
        key = list(self._key(table))
        _check_unique(data, key, table)
        if not self.exists(table):
            raise StoreError(f"cannot annotate rows of {table!r}: the table does not exist yet")

        def attempt():
            ds = self._add_missing_columns(table, self.dataset(table), data)
            rows = _conform(data, pa.schema([ds.schema.field(n) for n in data.column_names]))
            has_blob = any(f.metadata and f.metadata.get(b"lance-encoding:blob") for f in rows.schema)
            if has_blob or set(rows.column_names) >= set(ds.schema.names):
                return ds.merge_insert(key).when_matched_update_all().execute(rows), ds
            return (ds.merge_insert(key).when_matched_update_all().write_mode("rewrite_columns")
                    .execute(rows)), ds

        out, ds = _retrying(f"annotate {table}", attempt, self.table_uri(table))
        self._after_write(table, ds)
        return out

    def replace(self, table: str, where: str, data: pa.Table | Sequence[dict]) -> None:
        """Delete the rows matching ``where`` then upsert ``data`` (used for rows an operator emits)."""
        self.delete(table, where)
        self.upsert(table, data)

    # ---- writes split between workers and a committer ------------------------------------------
    def write_fragments(self, table: str, data: pa.Table) -> list | None:
        """Write ``data`` as new, not yet committed fragments of ``table`` (a worker writes its large
        outputs itself; the committer makes them visible with :meth:`append`). Returns the fragments'
        metadata (small, picklable), or None when they cannot be written ahead of the commit: no
        table yet, or a column the table does not have (the committer must add it first)."""
        ds = self._open(table)
        if ds is None or any(n not in ds.schema.names for n in data.column_names):
            return None
        _check_unique(data, list(self._key(table)), table)
        rows = _conform(data, pa.schema([ds.schema.field(n) for n in data.column_names]))
        from lance.fragment import write_fragments
        return _retrying(f"write fragments of {table}", lambda: write_fragments(
            rows, ds, mode="append", storage_options=self.storage_options,
            data_storage_version=ds.data_storage_version), self.table_uri(table))

    def append(self, table: str, data: pa.Table | None = None, fragments: Sequence = (),
               replace_where: str | None = None) -> int:
        """Add rows: the already written ``fragments`` (:meth:`write_fragments`) and the rows of
        ``data``, in one commit that also deletes the rows matching ``replace_where`` (the rows the
        new ones replace; their keys must not collide with rows left in place). Readers see the old
        rows or the new ones, never neither; two writers replacing the same rows conflict and the
        second retries against the first's result, so rows are never duplicated. Cheaper than
        :meth:`replace` (no join against the table). Returns the number of rows added."""
        data = None if data is None or data.num_rows == 0 else _as_table(data)
        fragments = list(fragments)
        created = 0
        if data is not None:
            _check_unique(data, list(self._key(table)), table)
            if self._open(table) is None and self._create(table, data):
                created = data.num_rows
            else:
                self._add_missing_columns(table, self.dataset(table), data)
                fragments += self.write_fragments(table, data)
        if not fragments and not replace_where:
            return created
        if not fragments and created:
            return created   # a new table: nothing to replace

        def attempt():
            ds = self._open(table)
            if ds is None:
                return None
            removed, updated = self._deletions(ds, replace_where) if replace_where else ([], [])
            if not (fragments or removed or updated):
                return ds
            op = (lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated,
                                              new_fragments=fragments)
                  if removed or updated else lance.LanceOperation.Append(fragments))
            lance.LanceDataset.commit(self.table_uri(table), op, read_version=ds.version,
                                      storage_options=self.storage_options)
            return ds

        ds = _retrying(f"write to {table}", attempt, self.table_uri(table))
        self._after_write(table, ds)
        return created + sum(f.physical_rows for f in fragments)

    @staticmethod
    def _deletions(ds, where: str) -> tuple[list[int], list]:
        """Fragments ``where`` empties (ids) and the others it touches (with new deletion files)."""
        hits = ds.to_table(columns=[], filter=_checked(where), with_row_id=True)["_rowid"]
        ids = sorted({int(r) >> 32 for r in hits.to_pylist()})   # row id = fragment id << 32 | offset
        # (address-style row ids: the store's tables do not enable Lance's stable row ids)
        removed, updated = [], []
        for fid in ids:
            new = ds.get_fragment(fid).delete(where)
            if new is None:
                removed.append(fid)
            else:
                updated.append(new)
        return removed, updated

    def delete(self, table: str, where: str) -> None:
        if not self.exists(table):
            return
        _retrying(f"delete from {table}", lambda: self.dataset(table).delete(where),
                  self.table_uri(table))

    def ensure_indices(self, table: str) -> None:
        ds = self.dataset(table)
        have = {tuple(ix.field_names) for ix in ds.describe_indices()}
        for column, kind in INDICES.get(table, {}).items():
            if column in ds.schema.names and (column,) not in have:
                try:
                    _retrying(f"index {table}.{column}",
                              lambda: self.dataset(table).create_scalar_index(column, kind))
                except Exception:  # noqa: BLE001 - a concurrent writer may have made it first
                    now = {tuple(ix.field_names) for ix in self.dataset(table).describe_indices()}
                    if (column,) not in now:
                        raise
                ds = self.dataset(table)

    def optimize_indices(self, table: str) -> None:
        """End-of-run upkeep of ``table``: compact its small fragments, then fold new rows into the
        scalar indices (same as :meth:`maintain`; kept under this name for the runner)."""
        self.maintain(table)

    def maintain(self, table: str) -> dict:
        """Compact the fragments of ``table`` and bring its scalar indices up to date.

        Returns ``{"fragments_before", "fragments_after", "seconds"}`` (empty when no table).
        Readers are never blocked (they keep the version they opened); a concurrent writer's commit
        conflict is retried.
        """
        ds = self._open(table)
        if ds is None:
            return {}
        t0 = time.perf_counter()
        before = len(ds.get_fragments())
        # Indices first: Lance does not compact indexed and unindexed fragments together, so new
        # rows are folded into the indices, then everything is compacted (indices are remapped).
        self.ensure_indices(table)
        self._optimize_indices(table)
        self._compact(table)
        self._optimize_indices(table)
        return {"fragments_before": before, "fragments_after": len(self.dataset(table).get_fragments()),
                "seconds": time.perf_counter() - t0}

    def _optimize_indices(self, table: str) -> None:
        try:
            _retrying(f"optimize indices of {table}",
                      lambda: self.dataset(table).optimize.optimize_indices())
        except Exception as e:  # noqa: BLE001 - an index over an all-null column cannot be updated
            log.debug("optimize_indices(%s): %s", table, one_line(e))

    def _compact(self, table: str) -> None:
        _retrying(f"compact {table}", lambda: self.dataset(table).optimize.compact_files(
            target_rows_per_fragment=TARGET_ROWS_PER_FRAGMENT))

    def _small_fragments(self, ds) -> int:
        """Fragments beyond the ones a compacted table of this many rows would have."""
        n = len(ds.get_fragments())
        return n - ds.count_rows() // TARGET_ROWS_PER_FRAGMENT

    def _after_write(self, table: str, ds) -> None:
        """Compact ``table`` when the write left it with many small fragments. ``ds`` is the version
        the write started from (one fragment fewer at most: close enough for a threshold)."""
        if ds is None or self.compact_fragments <= 0:
            return
        try:
            if self._small_fragments(ds) < self.compact_fragments:
                return
            if ds.describe_indices():
                self._optimize_indices(table)
            self._compact(table)
            if ds.describe_indices():
                self._optimize_indices(table)
        except Exception as e:  # noqa: BLE001 - upkeep never fails a write; the next one tries again
            log.warning("compaction of %s skipped: %s", table, one_line(e))

    def tag(self, name: str, tables: Iterable[str] | None = None) -> None:
        """Tag the current version of each table with ``name`` (one tag per run)."""
        for table in tables or self.tables():
            def attempt(table=table):
                ds = self.dataset(table)
                if name not in ds.tags.list():
                    ds.tags.create(name, ds.version)
            try:
                _retrying(f"tag {table}", attempt)
            except Exception:  # noqa: BLE001 - a concurrent run with the same tag name is harmless
                if name not in self.dataset(table).tags.list():
                    raise

    # ---- the run lease ------------------------------------------------------------------------------
    def lease(self, run_id: str, stale_s: float = LEASE_STALE_S) -> "StoreLease":
        return StoreLease(self, run_id, stale_s=stale_s)

    # ---- reads ------------------------------------------------------------------------------------
    def query(self, table: str, where: str | None = None, columns: Sequence[str] | None = None,
              limit: int | None = None, version: int | str | None = None) -> pa.Table:
        where = _checked(where)
        ds = self.dataset(table, version=version)
        if columns:
            unknown = [c for c in columns if c not in ds.schema.names]
            if unknown:
                raise InvalidQuery(f"unknown column(s) in {table}: {', '.join(unknown)}; "
                                   f"columns are: {', '.join(ds.schema.names)}")
        try:
            return ds.to_table(columns=list(columns) if columns else None, filter=where,
                               limit=limit)
        except Exception as e:
            raise _query_error(e)(f"bad query on {table} ({_short(where)!r}): {_clean(e)}") from e

    @staticmethod
    def video_filter(video_ids: Sequence[str], extra: str | None = None) -> str:
        """``video_id IN (...)`` for these videos, and ``extra`` (a predicate) when given."""
        where = "video_id IN (" + ", ".join(sql_quote(v) for v in video_ids) + ")"
        return f"({where}) AND ({extra})" if extra else where

    def of_videos(self, table: str, video_ids: Sequence[str], columns: Sequence[str] | None = None,
                  where: str | None = None, chunk: int = 1000) -> pa.Table:
        """The rows of ``table`` of these videos (matching ``where``), ``chunk`` ids per query; an
        empty table when there is no such table."""
        if not self.exists(table) or not video_ids:
            return pa.table({})
        ids = list(video_ids)
        parts = [self.query(table, where=self.video_filter(ids[i:i + chunk], where), columns=columns)
                 for i in range(0, len(ids), chunk)]
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def query_blobs(self, table: str, blob: str, where: str | None = None,
                    columns: Sequence[str] = (), version: int | str | None = None) -> list[dict]:
        """Rows matching ``where`` with ``columns`` and the bytes of the blob column ``blob`` (a
        query returns a blob column's descriptors, not its bytes; null blobs give None)."""
        ds = self.dataset(table, version=version)
        return ds.to_table(columns=list(columns) + [blob], filter=_checked(where),
                           blob_handling="all_binary").to_pylist()

    def row_id(self, table: str, where: str, version: int | str | None = None) -> int | None:
        """Lance's row id of the first row matching ``where`` at ``version`` (for :meth:`blob_range`:
        finding the row is most of a small ranged read), None when no row matches."""
        t = self.dataset(table, version=version).to_table(columns=[], filter=_checked(where),
                                                          with_row_id=True, limit=1)
        return t["_rowid"][0].as_py() if t.num_rows else None

    def blob_range(self, table: str, column: str, where: str | None, offset: int, size: int,
                   version: int | str | None = None, row_id: int | None = None) -> bytes | None:
        """``size`` bytes from ``offset`` of the blob column ``column`` of the first row matching
        ``where`` (or of the row ``row_id`` of that version, from :meth:`row_id`: 1 ms a read here
        against 9 ms with the search); a ranged read: a window's slice of a long video's features,
        not the whole blob. None when no row matches or the blob is null."""
        if row_id is not None and isinstance(version, int):
            # a numbered version never changes: its blob stays open for the next range (a loader
            # reads a window's slice of the same video's blob again and again; take_blobs cost
            # about 2 ms a call here)
            files = self.__dict__.setdefault("_blob_files", collections.OrderedDict())
            key = (table, column, version, row_id)
            f = files.get(key)
            if f is None:
                (f,) = self.dataset(table, version=version).take_blobs(column, ids=[row_id])
                if f is None:
                    return None
                files[key] = f
                while len(files) > BLOB_FILES_OPEN:
                    files.popitem(last=False)[1].close()
            files.move_to_end(key)
            f.seek(offset)
            return f.read(size)
        ds = self.dataset(table, version=version)
        if row_id is None:
            row_id = self.row_id(table, where, version)
            if row_id is None:
                return None
        (f,) = ds.take_blobs(column, ids=[row_id])
        if f is None:
            return None
        with f:
            f.seek(offset)
            return f.read(size)

    def page(self, table: str, where: str | None = None, columns: Sequence[str] | None = None,
             order_by: str | None = None, descending: bool = False, limit: int = 50,
             offset: int = 0) -> pa.Table:
        """One page of the rows matching WHERE, sorted and cut by Lance's scanner (a top-k over the
        sort column; nulls last), for paging readers: the whole table never leaves the store."""
        from lance.dataset import ColumnOrdering
        where = _checked(where)
        ds = self.dataset(table)
        names = ds.schema.names
        unknown = [c for c in list(columns or []) + ([order_by] if order_by else []) if c not in names]
        if unknown:
            raise StoreError(f"unknown column(s) in {table}: {', '.join(unknown)}")
        order = [ColumnOrdering(order_by, ascending=not descending, nulls_first=False)] if order_by else None
        try:
            return ds.to_table(columns=list(columns) if columns else None, filter=where,
                               limit=limit, offset=offset or None, order_by=order)
        except Exception as e:
            raise StoreError(f"bad query on {table} ({_short(where)!r}): {_clean(e)}") from e

    def evaluate(self, table: str, expressions: dict[str, str], where: str | None = None,
                 limit: int | None = None) -> pa.Table:
        """SQL expressions (``{"name": "abs(sync_offset_frames) <= 3"}``) computed by Lance on the
        rows matching WHERE: the values a filter sees, by the engine that applies it."""
        where = _checked(where)
        ds = self.dataset(table)
        try:
            return ds.to_table(columns=dict(expressions), filter=where, limit=limit)
        except Exception as e:
            raise StoreError(f"bad expression on {table} ({_short(', '.join(expressions.values()))!r}): "
                             f"{_clean(e)}") from e

    def blob(self, table: str, where: str, column: str) -> bytes | None:
        """The bytes of a blob column (e.g. ``references.image``) of the first row matching WHERE."""
        ds = self.dataset(table)
        t = ds.to_table(columns=[column], filter=_checked(where), limit=1, blob_handling="all_binary")
        return t[column][0].as_py() if t.num_rows else None

    def count(self, table: str, where: str | None = None) -> int:
        where = _checked(where)
        ds = self._open(table)
        if ds is None:
            return 0
        try:
            return ds.count_rows(filter=where)
        except Exception as e:
            raise _query_error(e)(f"bad filter on {table} ({_short(where)!r}): {_clean(e)}") from e

    def versions(self, table: str) -> list[dict]:
        return self.dataset(table).versions()

    def tags(self, table: str) -> dict:
        return self.dataset(table).tags.list()


def _query_error(e: BaseException) -> type[StoreError]:
    """Lance answers a predicate over an unknown column, a literal of the wrong type or an unknown
    function with a ValueError ("Invalid user input: ..."): the query's fault (exit 2)."""
    return InvalidQuery if isinstance(e, ValueError) else StoreError


def _checked(where: str | None) -> str | None:
    """The predicate, completely parsed (Lance ignores trailing text); None for no filter."""
    if where is None or not str(where).strip():
        return None
    from curation.sql import InvalidFilter, validate_where
    try:
        return validate_where(where)
    except InvalidFilter as e:
        raise InvalidQuery(str(e)) from None


def _short(text: str | None, n: int = 80) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- the lease ------------------------------------------------------------------------------------------
class StoreLease:
    """One writer at a time: ``URI/_lease.json`` says who holds the store.

    Content: ``{"run_id", "host", "pid", "since", "heartbeat", "token"}`` (times in seconds since the
    epoch). The holder refreshes ``heartbeat`` every ``stale_s / 4`` from a daemon thread. Another
    taker may replace a lease whose heartbeat is older than ``stale_s``, or at once one held by a
    process that no longer exists on the same host (a run killed with SIGKILL). On a local store
    every read-modify-write of the lease happens under an flock of ``URI/_lease.lock``; on an object
    store the taker writes, waits a moment and reads back its token (best effort; commits are
    retried on conflict in any case).
    """

    def __init__(self, store: Store, run_id: str, stale_s: float = LEASE_STALE_S):
        self.store = store
        self.run_id = run_id
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self.path = f"{store.uri}/_lease.json"
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- file access
    def _fs(self):
        import pyarrow.fs as pafs
        if self.store.is_local:
            return pafs.LocalFileSystem(), self.path.removeprefix("file://")
        return pafs.FileSystem.from_uri(self.path)  # credentials: the usual AWS_* variables

    def read(self) -> dict | None:
        """The current lease, or None."""
        fs, path = self._fs()
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read().decode() or "null")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        except OSError as e:
            text = str(e).lower()
            if any(m in text for m in ("not found", "no such file", "does not exist", "nosuchkey")):
                return None
            raise

    def _write(self, content: dict) -> None:
        fs, path = self._fs()
        data = json.dumps(content).encode()
        if self.store.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: readers never see half a lease
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)

    def _remove(self) -> None:
        fs, path = self._fs()
        try:
            fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def _locked(self):
        return _flocked(self.store, "_lease.lock")

    # -- state
    def is_stale(self, lease: dict, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - float(lease.get("heartbeat") or 0) > self.stale_s:
            return True
        if lease.get("host") == socket.gethostname() and lease.get("pid"):
            try:
                os.kill(int(lease["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, another user's
                return False
        return False

    def describe(self, lease: dict) -> str:
        since = datetime.fromtimestamp(float(lease.get("since") or 0), timezone.utc)
        return (f"store {self.store.uri} is in use by run {lease.get('run_id')} (host "
                f"{lease.get('host')}, pid {lease.get('pid')}) since {since:%Y-%m-%d %H:%M:%S} UTC")

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free or stale; return None on success, else the holder's lease."""
        with self._locked():
            cur = self.read()
            if cur and cur.get("token") != self.token and not self.is_stale(cur):
                return cur
            now = time.time()
            mine = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                    "since": now, "heartbeat": now, "token": self.token}
            if cur and cur.get("token") != self.token:
                log.warning("taking over a stale lease: %s", self.describe(cur))
            self._write(mine)
        if not self.store.is_local:  # no lock: let a racing writer land, then check who won
            time.sleep(0.5)
            cur = self.read()
            if not cur or cur.get("token") != self.token:
                return cur or {"run_id": "?", "host": "?", "pid": "?", "since": time.time()}
        self.held = True
        self._start_heartbeat()
        return None

    def acquire(self, wait: bool = False, poll_s: float = 1.0, timeout_s: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> "StoreLease":
        """Take the lease; raise :class:`LeaseHeld` (one line: who holds it since when) when it is
        held and ``wait`` is False, else poll every ``poll_s`` until it is free."""
        t0 = time.time()
        told = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                return self
            if not wait:
                raise LeaseHeld(self.describe(holder) + "; use --wait to wait for it")
            if timeout_s is not None and time.time() - t0 > timeout_s:
                raise LeaseHeld(self.describe(holder) + f"; gave up waiting after {timeout_s:.0f} s")
            if on_wait and not told:
                on_wait(self.describe(holder) + "; waiting")
                told = True
            time.sleep(poll_s * random.uniform(0.8, 1.2))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="store-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.stale_s / 4)):
            try:
                with self._locked():
                    cur = self.read()
                    if not cur or cur.get("token") != self.token:
                        self.lost = True
                        log.warning("the store lease was taken over by another run")
                        return
                    cur["heartbeat"] = time.time()
                    self._write(cur)
            except Exception as e:  # noqa: BLE001 - a missed beat is retried at the next one
                log.debug("lease heartbeat failed: %s", one_line(e))

    def check(self) -> None:
        """Raise :class:`LeaseLost` when this lease is no longer ours (see :class:`LeaseFence`)."""
        if self.held:
            try:
                self.fence()
            except LeaseLost:
                self.lost = True
                raise

    @property
    def fence(self) -> "LeaseFence":
        """A picklable check of this lease, for whichever process commits (a worker, an actor)."""
        return LeaseFence(self.store.uri, self.store.storage_options, self.token, self.stale_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        with self._locked():
            cur = self.read()
            if cur and cur.get("token") == self.token:
                self._remove()
        self.held = False

    def __enter__(self) -> "StoreLease":
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class LeaseFence:
    """Called before every commit of a run: raises :class:`LeaseLost` when the lease is no longer
    the run's (another run took it over while this one was paused or cut off past ``stale_s``, or
    it was removed), so a holder that lost its lease stops before it writes again. Picklable: the
    process that commits (the driver, a Ray worker or actor) checks it itself. Best effort: a pause
    between this check and the commit that follows it is not fenced (commits are retried on
    conflict in any case)."""

    def __init__(self, store_uri: str, storage_options: dict | None, token: str, stale_s: float):
        self.store_uri, self.storage_options = store_uri, storage_options
        self.token, self.stale_s = token, stale_s

    def __call__(self) -> None:
        lease = StoreLease(Store(self.store_uri, self.storage_options), "?", self.stale_s)
        cur = lease.read()
        if cur and cur.get("token") == self.token:
            return
        who = f"run {cur.get('run_id')} (host {cur.get('host')}, pid {cur.get('pid')})" \
            if cur else "another run (the lease file is gone)"
        raise LeaseLost(f"the lease on store {self.store_uri} was taken over by {who} while this "
                        f"run was paused or cut off for more than {self.stale_s:.0f} s; this run "
                        f"stopped without writing again")


@contextlib.contextmanager
def _flocked(store: Store, name: str):
    """An exclusive flock of ``<store>/NAME`` while the block runs (local stores only)."""
    if not store.is_local:
        yield
        return
    import fcntl
    root = store.uri.removeprefix("file://")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, name), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _storage_options_from_env(uri: str) -> dict | None:
    """Object-store credentials come from the usual AWS_* environment variables (or instance roles)."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    opts = {}
    for env, key in (("AWS_ENDPOINT_URL", "aws_endpoint"), ("AWS_REGION", "region"),
                     ("AWS_ALLOW_HTTP", "allow_http")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts or None


def _as_table(data) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    return pa.Table.from_pylist(list(data))


def _check_unique(data: pa.Table, key: list[str], table: str) -> None:
    if len(key) == 1:
        n = len(pc.unique(data[key[0]]))
    else:
        n = len(set(zip(*(data[k].to_pylist() for k in key))))
    if n != data.num_rows:
        raise StoreError(f"duplicate keys {key} in rows written to {table}")


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``data`` to ``schema`` (adding null columns the schema has and the data lacks)."""
    cols, fields = [], []
    for f in schema:
        if f.name in data.column_names:
            col = data[f.name]
            storage = f.type.storage_type if isinstance(f.type, pa.ExtensionType) else f.type
            if pa.types.is_struct(storage) and (pa.types.is_large_binary(col.type)
                                                or pa.types.is_binary(col.type)):
                # a blob column: Lance's schema shows its descriptor type (lance.blob.v2); the
                # bytes are written as a blob-encoded large_binary
                f = pa.field(f.name, pa.large_binary(), metadata={b"lance-encoding:blob": b"true"})
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(data.num_rows, f.type))
        fields.append(f)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
