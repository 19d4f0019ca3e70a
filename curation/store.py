"""The metadata store: one Lance dataset per table under a directory or object-store prefix.

This is the only module that imports ``lance``. A store at ``URI`` holds ``URI/videos.lance``,
``URI/shots.lance``, ``URI/clips.lance``, ``URI/tracks.lance`` and two bookkeeping tables,
``status.lance`` (which step has processed which video, with which operator version) and
``runs.lance`` (one row per run, with its workflow).

Writes are upserts keyed by the table's key (``merge_insert``); columns an operator adds appear as new
all-null columns first (Lance data evolution, no rewrite of other columns) and are then filled by a
partial-schema upsert. Writers are single (the driver of a run), so a killed run leaves committed
versions only, and re-running the same upserts cannot duplicate rows.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import lance
import pyarrow as pa
import pyarrow.compute as pc

from schemas import BOOKKEEPING, INDICES, KEYS, TABLES


class StoreError(RuntimeError):
    pass


def sql_quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class Store:
    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or _storage_options_from_env(self.uri)
        # nothing is created until the first write (reading a wrong path must not make a store)

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
        try:
            self.dataset(table)
            return True
        except (FileNotFoundError, ValueError, OSError, StoreError):
            return False

    def dataset(self, table: str, version: int | str | None = None):
        try:
            return lance.dataset(self.table_uri(table), version=version,
                                 storage_options=self.storage_options)
        except Exception as e:  # lance raises ValueError/OSError for a missing dataset
            raise StoreError(f"table {table!r} not found in store {self.uri}") from e

    def schema(self, table: str) -> pa.Schema:
        return self.dataset(table).schema

    # ---- writes -------------------------------------------------------------------------------------
    def _create(self, table: str, data: pa.Table):
        schema = self._base_schema(table)
        # Start from the base schema so that later operators always find the base columns.
        fields = list(schema) + [f for f in data.schema if f.name not in schema.names]
        full = pa.schema(fields)
        data = _conform(data, full)
        lance.write_dataset(data, self.table_uri(table), schema=full, mode="create",
                            storage_options=self.storage_options)

    def _add_missing_columns(self, table: str, ds, data: pa.Table):
        missing = [f for f in data.schema if f.name not in ds.schema.names]
        if missing:
            ds.add_columns(missing)  # all-null columns: metadata only, no data rewrite
            return self.dataset(table)
        return ds

    def upsert(self, table: str, data: pa.Table | Sequence[dict]) -> dict:
        """Insert new rows and update existing ones (by key) with the columns present in ``data``."""
        data = _as_table(data)
        if data.num_rows == 0:
            return {"num_inserted_rows": 0, "num_updated_rows": 0}
        key = list(self._key(table))
        _check_unique(data, key, table)
        if not self.exists(table):
            self._create(table, data)
            return {"num_inserted_rows": data.num_rows, "num_updated_rows": 0}
        ds = self._add_missing_columns(table, self.dataset(table), data)
        data = _conform(data, pa.schema([ds.schema.field(n) for n in data.column_names]))
        return ds.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(data)

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
        ds = self._add_missing_columns(table, self.dataset(table), data)
        data = _conform(data, pa.schema([ds.schema.field(n) for n in data.column_names]))
        has_blob = any(f.metadata and f.metadata.get(b"lance-encoding:blob") for f in data.schema)
        if has_blob or set(data.column_names) >= set(ds.schema.names):
            return ds.merge_insert(key).when_matched_update_all().execute(data)
        return (ds.merge_insert(key).when_matched_update_all().write_mode("rewrite_columns")
                .execute(data))

    def replace(self, table: str, where: str, data: pa.Table | Sequence[dict]) -> None:
        """Delete the rows matching ``where`` then upsert ``data`` (used for rows an operator emits)."""
        if self.exists(table):
            self.dataset(table).delete(where)
        self.upsert(table, data)

    def delete(self, table: str, where: str) -> None:
        if self.exists(table):
            self.dataset(table).delete(where)

    def ensure_indices(self, table: str) -> None:
        ds = self.dataset(table)
        have = {tuple(ix.field_names) for ix in ds.describe_indices()}
        for column, kind in INDICES.get(table, {}).items():
            if column in ds.schema.names and (column,) not in have:
                ds.create_scalar_index(column, kind)
                ds = self.dataset(table)

    def optimize_indices(self, table: str) -> None:
        """Fold newly written rows into the scalar indices (cheap; called at the end of a run)."""
        if not self.exists(table):
            return
        self.ensure_indices(table)
        ds = self.dataset(table)
        try:
            ds.optimize.optimize_indices()
        except Exception:  # an index over an all-null column cannot be updated yet: harmless
            pass

    def tag(self, name: str, tables: Iterable[str] | None = None) -> None:
        """Tag the current version of each table with ``name`` (one tag per run)."""
        for table in tables or self.tables():
            ds = self.dataset(table)
            if name not in ds.tags.list():
                ds.tags.create(name, ds.version)

    # ---- reads ------------------------------------------------------------------------------------
    def query(self, table: str, where: str | None = None, columns: Sequence[str] | None = None,
              limit: int | None = None, version: int | str | None = None) -> pa.Table:
        ds = self.dataset(table, version=version)
        if columns:
            unknown = [c for c in columns if c not in ds.schema.names]
            if unknown:
                raise StoreError(f"unknown column(s) in {table}: {', '.join(unknown)}; "
                                 f"columns are: {', '.join(ds.schema.names)}")
        try:
            return ds.to_table(columns=list(columns) if columns else None, filter=where or None,
                               limit=limit)
        except Exception as e:
            raise StoreError(f"bad query on {table} ({where!r}): {_clean(e)}") from e

    def count(self, table: str, where: str | None = None) -> int:
        if not self.exists(table):
            return 0
        try:
            return self.dataset(table).count_rows(filter=where or None)
        except Exception as e:
            raise StoreError(f"bad filter on {table} ({where!r}): {_clean(e)}") from e

    def versions(self, table: str) -> list[dict]:
        return self.dataset(table).versions()

    def tags(self, table: str) -> dict:
        return self.dataset(table).tags.list()


def _clean(e: Exception) -> str:
    """Lance's error text without the Rust source location and internal row-id columns."""
    import re
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+\s*$", "", text)
    return re.sub(r", _row\w+", "", text)


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
    cols = []
    for f in schema:
        if f.name in data.column_names:
            col = data[f.name]
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(data.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)
