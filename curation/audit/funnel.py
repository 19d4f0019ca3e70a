"""The workflow's funnel as the audit page shows it: the stages (``annotation errors`` and the
``filters`` of the workflow of the latest run, in order, exactly as ``curation stats`` applies them),
the SQL of each funnel tab, why one clip was kept or dropped, and the histograms of the filtered
scores with their thresholds.

Every value shown is computed by the store's own engine (Lance projections of the filter's
expressions), never re-implemented here: ``abs(sync_offset_frames)`` on the page is what the filter
compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from curation.sql import parse_where, render
from curation.stats import latest_run
from curation.store import Store, StoreError, one_line, sql_quote

ERRORS_STAGE = "annotation errors"
_OPS = {exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<=", exp.EQ: "=", exp.NEQ: "!="}
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "=": "=", "!=": "!="}


@dataclass
class Stage:
    name: str
    where: str
    applied: bool = True
    note: str = ""


def stages(store: Store) -> tuple[dict, list[Stage]]:
    """The latest run (id, workflow name) and its funnel stages; a filter the clips table cannot
    answer (a column no step wrote) is kept with ``applied=False`` and the reason, as in stats."""
    run = latest_run(store) or {}
    info = {"run_id": run.get("run_id"), "workflow": run.get("workflow"),
            "workflow_yaml": run.get("workflow_yaml") or ""}
    filters = []
    if run.get("workflow_yaml"):
        import yaml
        filters = (yaml.safe_load(run["workflow_yaml"]) or {}).get("filters") or []
    out = [Stage(ERRORS_STAGE, "error IS NULL")]
    out += [Stage(f.get("name", f"filter_{i + 1}"), f["where"]) for i, f in enumerate(filters)]
    try:   # usually all of them apply: one projection checks them together
        store.evaluate("clips", {f"s{i}": f"({s.where})" for i, s in enumerate(out)}, limit=1)
        return info, out
    except StoreError:
        pass
    for s in out:
        try:
            store.evaluate("clips", {"ok": f"({s.where})"}, limit=1)
        except StoreError as e:
            s.applied, s.note = False, f"not applied: {str(e).split(': ', 1)[-1][:100]}"
    return info, out


def tab_where(all_stages: list[Stage], tab: str) -> str | None:
    """The predicate of a funnel tab: ``all`` (None), ``kept`` (every applied stage), or a stage's
    name: the clips that passed the stages before it and that it removed (false or null)."""
    live = [s for s in all_stages if s.applied]
    if tab in ("", "all"):
        return None
    if tab == "kept":
        return " AND ".join(f"({s.where})" for s in live) or None
    names = [s.name for s in live]
    if tab not in names:
        raise StoreError(f"unknown tab {tab!r}; tabs: all, kept, {', '.join(names)}")
    k = names.index(tab)
    return " AND ".join([f"({s.where})" for s in live[:k]] + [f"(({live[k].where}) IS NOT TRUE)"])


def fates(store: Store, all_stages: list[Stage], clip_ids: list[str]) -> dict[str, str]:
    """For each clip: ``kept`` or the name of the first stage that removed it."""
    live = [s for s in all_stages if s.applied]
    if not clip_ids:
        return {}
    exprs = {"clip_id": "clip_id"} | {f"s{i}": f"({s.where})" for i, s in enumerate(live)}
    where = f"clip_id IN ({', '.join(sql_quote(c) for c in clip_ids)})"
    out = {}
    for r in store.evaluate("clips", exprs, where=where).to_pylist():
        out[r["clip_id"]] = next((s.name for i, s in enumerate(live) if r[f"s{i}"] is not True), "kept")
    return out


@dataclass
class Atom:
    """One comparison inside a filter: ``value_sql OP threshold`` (or a whole predicate)."""
    sql: str
    value_sql: str | None = None
    op: str | None = None
    threshold: float | str | None = None
    threshold_sql: str | None = None


def atoms(where: str) -> list[Atom]:
    """The elementary predicates of a filter (its AND / OR / NOT parts), with the compared
    expression and the literal threshold where one side is a literal."""
    try:
        tree = parse_where(where)
    except ValueError:   # not a valid predicate: the whole text is one atom (not applied anyway)
        return [Atom(where)]
    out: list[Atom] = []

    def walk(node):
        if isinstance(node, (exp.And, exp.Or)):
            walk(node.left)
            walk(node.right)
        elif isinstance(node, (exp.Not, exp.Paren)):
            walk(node.this)
        else:
            out.append(_atom(node))
    walk(tree)
    return out


def _atom(node) -> Atom:
    sql = render(node)
    op = _OPS.get(type(node))
    if op is None:
        return Atom(sql)
    left, right = node.left, node.right
    if isinstance(left, exp.Literal) and not isinstance(right, exp.Literal):
        left, right, op = right, left, _FLIP[op]
    if not isinstance(right, (exp.Literal, exp.Neg)):
        return Atom(sql)
    lit = render(right)
    try:
        threshold: float | str = float(lit)
    except ValueError:
        threshold = lit
    return Atom(sql, render(left), op, threshold, lit)


def verdicts(store: Store, all_stages: list[Stage], clip_id: str) -> list[dict]:
    """Each stage with the clip's verdict: passed (True / False / None for a null value), and per
    comparison the clip's value, the operator and the threshold."""
    out = []
    where = f"clip_id = {sql_quote(clip_id)}"
    for s in all_stages:
        row = {"stage": s.name, "where": s.where, "applied": s.applied, "note": s.note, "parts": []}
        if s.applied:
            parts = atoms(s.where)
            exprs = {"passed": f"({s.where})"}
            for i, a in enumerate(parts):
                exprs[f"ok{i}"] = f"({a.sql})"
                if a.value_sql:
                    exprs[f"v{i}"] = a.value_sql
            try:
                got = store.evaluate("clips", exprs, where=where).to_pylist()[0]
            except (StoreError, IndexError) as e:   # a re-rendered part Lance does not take
                got = store.evaluate("clips", {"passed": f"({s.where})"}, where=where).to_pylist()[0]
                row["note"] = f"parts not evaluated: {one_line(e, 120)}"
                parts = []
            row["passed"] = got["passed"]
            row["parts"] = [{"sql": a.sql, "expr": a.value_sql, "op": a.op, "threshold": a.threshold,
                             "threshold_sql": a.threshold_sql, "value": got.get(f"v{i}"), "ok": got.get(f"ok{i}")} for i, a in enumerate(parts)]
        out.append(row)
    return out


def histograms(store: Store, all_stages: list[Stage], bins: int = 30) -> list[dict]:
    """For every numeric comparison of every applied filter: the histogram of the compared value
    over the clips that reach the filter (those it judges), with the threshold and how many of
    them the comparison rejects."""
    live = [s for s in all_stages if s.applied]
    out = []
    for k, s in enumerate(live):
        if s.name == ERRORS_STAGE:
            continue
        before = " AND ".join(f"({p.where})" for p in live[:k]) or None
        for a in atoms(s.where):
            if a.value_sql is None or not isinstance(a.threshold, float):
                continue
            try:
                t = store.evaluate("clips", {"v": a.value_sql, "ok": f"({a.sql})"}, where=before)
            except StoreError:
                continue
            v = np.asarray([x for x in t["v"].to_pylist() if isinstance(x, (int, float))], float)
            v = v[np.isfinite(v)]
            lo = float(min(v.min(), a.threshold)) if len(v) else a.threshold
            hi = float(max(v.max(), a.threshold)) if len(v) else a.threshold
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
            ok = t["ok"].to_pylist()
            out.append({"stage": s.name, "expr": a.value_sql, "op": a.op, "threshold": a.threshold,
                        "threshold_sql": a.threshold_sql,
                        "counts": counts.tolist(), "edges": edges.tolist(), "judged": t.num_rows,
                        "nulls": t.num_rows - len(v), "rejected": sum(1 for x in ok if x is not True)})
    return out
