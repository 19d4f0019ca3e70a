"""Store statistics: rows per table, errors by stage, the clip funnel; finding one row by id."""
from __future__ import annotations

from curation.store import Store, StoreError, sql_quote
from schemas import TABLES


def compute(uri: str) -> dict:
    store = Store(uri)
    if not store.tables():
        raise StoreError(f"no store at {uri} (no tables found)")
    out: dict = {"tables": {}, "errors": []}
    for table in store.tables():
        ds = store.dataset(table)
        info = {"rows": ds.count_rows(), "version": ds.version}
        if table in TABLES and "error" in ds.schema.names:
            info["errors"] = store.count(table, "error IS NOT NULL")
            if info["errors"]:
                t = store.query(table, where="error IS NOT NULL", columns=["error_stage", "error"])
                groups: dict[str, list[str]] = {}
                for r in t.to_pylist():
                    groups.setdefault(r["error_stage"] or "?", []).append(r["error"])
                for stage, errs in sorted(groups.items()):
                    out["errors"].append({"table": table, "stage": stage, "rows": len(errs),
                                          "example": errs[0][:120]})
        out["tables"][table] = info
    run = latest_run(store)
    if run:
        out["run_id"], out["workflow"] = run["run_id"], run["workflow"]
        out["funnel"] = funnel(store, run["workflow_yaml"])
        out["warnings"] = funnel_warnings(store, out["funnel"])
    return out


def latest_run(store: Store) -> dict | None:
    if not store.exists("runs"):
        return None
    runs = store.query("runs", columns=["run_id", "workflow", "workflow_yaml", "started_at"]).to_pylist()
    runs = [r for r in runs if r["workflow_yaml"]]
    return max(runs, key=lambda r: r["started_at"]) if runs else None


def funnel(store: Store, workflow_yaml: str) -> list[dict]:
    """Apply the workflow's filters to ``clips`` in order; report how many each removed."""
    import yaml
    filters = (yaml.safe_load(workflow_yaml) or {}).get("filters") or []
    if not store.exists("clips"):
        return []
    rows = [{"stage": "candidate clips", "where": "", "removed": None,
             "remaining": store.count("clips")}]
    stages = [("annotation errors", "error IS NULL")] + [(f.get("name", f"filter_{i + 1}"), f["where"])
                                                          for i, f in enumerate(filters)]
    prev = rows[0]["remaining"]
    clauses = []
    for name, where in stages:
        clauses.append(f"({where})")
        try:
            n = store.count("clips", " AND ".join(clauses))
        except StoreError as e:
            rows.append({"stage": name, "where": where, "removed": None, "remaining": None,
                         "note": f"not applied: {str(e).split(': ', 1)[-1][:100]}"})
            clauses.pop()
            continue
        rows.append({"stage": name, "where": where, "removed": prev - n, "remaining": n})
        prev = n
    return rows


def filter_columns(where: str) -> list[str]:
    """The column names a filter reads, in order of appearance."""
    import sqlglot
    from sqlglot import exp
    try:
        tree = sqlglot.parse_one(where, into=exp.Condition)
    except Exception:  # noqa: BLE001 - the funnel already notes filters that do not parse
        return []
    return list(dict.fromkeys(c.name for c in tree.find_all(exp.Column)))


def funnel_warnings(store: Store, rows: list[dict]) -> list[str]:
    """One line per workflow filter that removes every clip it is given: the clips left before it
    all fail it (or, on its own, it passes none of the clips without an error). Says which columns
    it reads are NULL on the clips it judged (a step that did not run, or a backend that left a
    value out), since NULL fails any comparison."""
    out = []
    base = "error IS NULL"
    judged = store.count("clips", base) if rows else 0
    clauses = [base]
    for row in rows[1:]:
        where = row.get("where")
        if not where or row["remaining"] is None:
            continue
        before = store.count("clips", " AND ".join(clauses))
        alone = store.count("clips", f"({base}) AND ({where})") if judged else 0
        clauses.append(f"({where})")
        if row["stage"] == "annotation errors" or not judged:
            continue
        if before and row["remaining"] == 0 or alone == 0:
            nulls = []
            for col in filter_columns(where):
                try:
                    k = store.count("clips", f"({' AND '.join(clauses[:-1])}) AND {col} IS NULL")
                except StoreError:
                    continue
                if k:
                    nulls.append(f"{col} is NULL on {k} of {before}")
            why = f" ({'; '.join(nulls)})" if nulls else ""
            scope = f"all {before} clips left before it" if before and row["remaining"] == 0 else \
                f"every one of the {judged} clips without an error, on its own"
            out.append(f"filter {row['stage']!r} removes {scope}: {where}{why}")
    return out


def find_row(uri: str, ident: str) -> tuple[str, dict, dict]:
    store = Store(uri)
    for table, key in (("clips", "clip_id"), ("videos", "video_id"), ("tracks", "track_id")):
        if not store.exists(table):
            continue
        t = store.query(table, where=f"{key} = {sql_quote(ident)}")
        if t.num_rows == 0 and table == "videos":
            t = store.query(table, where=f"starts_with({key}, {sql_quote(ident)})")
            if t.num_rows > 1:
                raise StoreError(f"{ident!r} matches {t.num_rows} videos; give more characters")
        if t.num_rows:
            row = t.to_pylist()[0]
            extra = {}
            if table == "videos":
                vid = sql_quote(row["video_id"])
                for sub, cols in (("shots", ["shot_index", "start_s", "end_s", "duration_s"]),
                                  ("clips", ["clip_id", "start_s", "end_s", "duration_s", "error"])):
                    if store.exists(sub):
                        extra[sub] = store.query(sub, where=f"video_id = {vid}", columns=cols).to_pylist()
                if store.exists("status"):
                    extra["steps"] = store.query("status", where=f"video_id = {vid}", columns=[
                        "step", "op_version", "ok", "error", "rows", "seconds", "run_id"]).to_pylist()
            if table == "clips" and store.exists("windows"):
                extra["windows"] = store.query(
                    "windows", where=f"clip_id = {sql_quote(row['clip_id'])}",
                    columns=["profile", "start_s", "end_s", "kept", "failed_check", "reason"]).to_pylist()
                extra["windows"].sort(key=lambda r: (r["profile"], r["start_s"]))
            return table, row, extra
    raise StoreError(f"no clip, video or track with id {ident!r} in {uri}")


def operators_in_order() -> list:
    """The registered operators in the order data flows through them: each after the operators
    whose columns it reads and that make its input rows (ties by name)."""
    from operators import REGISTRY
    ops = list(REGISTRY.values())
    writers: dict[tuple[str, str], set[str]] = {}
    for op in ops:
        for f in op.writes:
            writers.setdefault((op.output_table, f.name), set()).add(op.name)
    deps = {op.name: set() for op in ops}
    for op in ops:
        for ref in op.reads:
            table, _, column = ref.partition(".")
            deps[op.name] |= writers.get((table, column), set())
        deps[op.name] |= {e.name for e in ops if e.input_table != e.output_table == op.input_table}
        deps[op.name].discard(op.name)
    order: list[str] = []
    while len(order) < len(ops):
        ready = sorted(n for n, d in deps.items() if n not in order and d <= set(order))
        order.append(ready[0] if ready else sorted(set(deps) - set(order))[0])   # (a cycle)
    return [REGISTRY[n] for n in order]


def operator_rows() -> list[dict]:
    """The operator table: op, rows in -> out, what it computes (each operator's ``summary``)."""
    return [{"op": op.name, "rows": f"{op.input_table} -> {op.output_table}", "summary": op.summary}
            for op in operators_in_order()]


def schema_rows(only: str | None = None) -> list[dict]:
    """Every column of every table with its type and writer (base schema or operator)."""
    from schemas import KEYS, TABLES
    ops = operators_in_order()
    rows = []
    backbone = {"videos": "ingest / probe", "shots": "shots", "clips": "clips", "tracks": "people",
                "references": "references", "subsets": "curation balance",
                "windows": "curation validate"}
    for table, schema in TABLES.items():
        if only and table != only:
            continue
        writers: dict[str, str] = {}
        for op in ops:
            if op.output_table == table:
                for f in op.writes:
                    writers.setdefault(f.name, op.name)
        seen = set()
        for f in schema:
            who = writers.get(f.name) or ("key" if f.name in KEYS[table] else
                                          "run" if f.name in ("run_id", "error", "error_stage") else
                                          "ingest" if f.name in ("uri", "size_bytes", "mtime_ns", "schema_version")
                                          else backbone.get(table, "base schema"))
            rows.append({"table": table, "column": f.name, "type": str(f.type), "writer": who})
            seen.add(f.name)
        for op in ops:
            if op.output_table != table:
                continue
            for f in op.writes:
                if f.name not in seen:
                    rows.append({"table": table, "column": f.name, "type": str(f.type), "writer": op.name})
                    seen.add(f.name)
    if only and not rows:
        raise StoreError(f"unknown table {only!r}; tables: {', '.join(TABLES)}")
    return rows
