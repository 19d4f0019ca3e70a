"""The commit path: what makes a worker's results visible in the store.

Results come back from workers per (video, stage): for each step, its rows (inline Arrow IPC bytes,
an Arrow file the worker staged, or Lance fragments the worker wrote), the error marks of its input
rows, seconds, and a whole-video error. :class:`Committer` buffers them and, on :meth:`commit`,
writes per step: emitted rows replacing the videos' earlier rows of that operator (one Lance commit
with the deletion), or annotations; then the error marks; then, once every stage's rows are in,
one ``status`` row per (video, step). A run killed at any point keeps what was committed, and the
next run redoes, idempotently, only what was not: nothing is lost or duplicated.

Before each commit the run's ``fence`` is called (the store lease: a run that lost it must not
write again). The rows of videos whose worker died are marked here (the worker never returned
them): :meth:`Committer.commit` reads their input rows' keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa

from curation import failures
from curation.operator import StepResult
from curation.plan import Stage
from curation.store import Store
from curation.worker import unstage
from schemas import KEYS, STATUS


@dataclass
class StepSummary:
    step: str
    op: str
    done: int = 0
    skipped: int = 0
    failed_videos: int = 0
    failed_rows: int = 0
    rows: int = 0
    seconds: float = 0.0


def now() -> datetime:
    return datetime.now(timezone.utc)


class Committer:
    def __init__(self, store: Store, stages: list[Stage], run_id: str,
                 fence: Callable[[], None] | None = None):
        self.store = store
        self.stages = stages
        self.run_id = run_id
        self.fence = fence
        self.sums = {s.name: StepSummary(s.name, s.op) for st in stages for s in st.steps}
        self.buffer: dict[int, list[tuple[str, list[StepResult]]]] = {st.index: [] for st in stages}

    def add(self, stage: int, video_id: str, results: list[StepResult]) -> None:
        self.buffer[stage].append((video_id, results))

    def pending(self) -> int:
        return sum(len(b) for b in self.buffer.values())

    def commit(self) -> list[tuple[int, str, bool]]:
        """Write everything buffered; returns (stage, video, whether the whole video failed) of
        each result committed."""
        if not self.pending():
            return []
        if self.fence is not None:   # this run must still hold the store (see StoreLease.check)
            self.fence()
        status = []
        for st in self.stages:
            if self.buffer[st.index]:
                status += self._stage(st, self.buffer[st.index])
        if status:
            self.store.upsert("status", pa.Table.from_pylist(status, schema=STATUS))
        done = [(st.index, vid, any(r.error for r in results))
                for st in self.stages for vid, results in self.buffer[st.index]]
        self.buffer = {st.index: [] for st in self.stages}
        return done

    def _stage(self, st: Stage, buffer: list[tuple[str, list[StepResult]]]) -> list[dict]:
        """Write one stage's results (rows, then error marks); return their status rows."""
        self._mark_lost(st, buffer)
        for _, results in buffer:   # rows as tables (fragments the worker wrote stay metadata)
            for r in results:
                if not (isinstance(r.rows, dict) and "fragments" in r.rows):
                    r.rows = unstage(r.rows)
        status = []
        for step in st.steps:
            results = [(vid, next(x for x in res if x.step == step.name)) for vid, res in buffer]
            self._write(step, results)
            status += self._status(step, results)
        return status

    def _mark_lost(self, st: Stage, buffer) -> None:
        """Videos whose worker died: the error goes on every input row of theirs."""
        lost = [vid for vid, results in buffer if any(r.error and r.marks is None for r in results)]
        if not lost:
            return
        key = list(KEYS[st.table])
        where = " AND ".join(f"({f})" for f in (st.steps[0].op_cls.input_filter, st.scope) if f)
        rows: dict[str, list[dict]] = {}
        for r in self.store.of_videos(st.table, lost, sorted(set(key) | {"video_id"}),
                                      where or None).to_pylist():
            rows.setdefault(r["video_id"], []).append(r)
        for vid, results in buffer:
            for r in results:
                if r.error and r.marks is None:
                    mine = rows.get(vid, [])
                    r.marks = failures.row_marks(r.step, [{k: x[k] for k in key} for x in mine],
                                                 [{}] * len(mine), [r.error] * len(mine))

    def _write(self, step, results: list[tuple[str, StepResult]]) -> None:
        cls = step.op_cls
        outputs, fragments, emitted_for, marks = [], [], [], []
        for vid, r in results:
            marks += [{**m, "run_id": self.run_id} for m in r.marks or []]
            if r.error:
                continue
            emitted_for.append(vid)
            if isinstance(r.rows, dict):
                fragments += r.rows["fragments"]
            elif r.rows is not None and r.rows.num_rows:
                outputs.append(r.rows)
        out = pa.concat_tables(outputs, promote_options="permissive") if outputs else None
        if cls.output_table != cls.input_table:
            if emitted_for:   # emitted rows replace the videos' earlier rows (in the op's scope)
                where = self.store.video_filter(emitted_for)
                if cls.emit_scope and self.store.exists(cls.output_table) \
                        and _columns_exist(self.store, cls.output_table, cls.emit_scope):
                    where = f"({where}) AND ({cls.emit_scope})"
                # one commit: the old rows out, the new rows (inline, and fragments) in
                self.store.append(cls.output_table, out, fragments, replace_where=where)
        elif out is not None:
            self.store.annotate(cls.output_table, out)
        if marks:   # marks of rows that no longer exist are ignored (keys with no row)
            self.store.annotate(cls.input_table, pa.Table.from_pylist(marks))

    def _status(self, step, results: list[tuple[str, StepResult]]) -> list[dict]:
        cls, s = step.op_cls, self.sums[step.name]
        params_hash = step.make().params_hash()
        out = []
        for vid, r in results:
            n_rows = r.rows["rows"] if isinstance(r.rows, dict) else (
                None if r.rows is None else r.rows.num_rows)
            if r.error:
                s.failed_videos += 1
            else:
                s.rows += n_rows or 0
                s.failed_rows += sum(1 for m in r.marks or [] if m["error"] is not None)
            s.done += 1
            s.seconds += r.seconds
            out.append({"step": r.step, "video_id": vid, "op": cls.name, "op_version": cls.version,
                        "params_hash": params_hash, "ok": r.error is None, "error": r.error,
                        "failure": r.kind, "rows": n_rows, "seconds": r.seconds,
                        "run_id": self.run_id, "updated_at": now()})
        return out


def _columns_exist(store: Store, table: str, predicate: str) -> bool:
    """Whether every identifier of ``predicate`` is a column of ``table`` (a scope over a column
    that no row has yet matches nothing, so the delete must not touch other rows)."""
    names = set(store.schema(table).names)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'[^']*'", "", predicate)))
    keywords = {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "TRUE", "FALSE", "BETWEEN"}
    return all(w in names or w.upper() in keywords for w in words)
