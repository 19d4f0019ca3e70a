"""The plan of a run: the workflow's stages, and which (video, stage) pairs must run.

A *stage* is one step, or a group of adjacent frame steps that share one decode
(:meth:`curation.workflow.Workflow.stages`). A video must run a stage when one of its steps is not
done for it by the same operator version and parameters, failed for a reason that is not the
video's own (:mod:`curation.failures`: the next run repeats it), is forced by ``--from``, ran
before a step upstream of it last ran, or when a stage upstream of it runs for the video. A video
never runs a stage downstream of a (video, step) that failed for good, nor after it failed ingest.
"""
from __future__ import annotations

from dataclasses import dataclass

from curation import failures
from curation.operator import Resources
from curation.store import Store, sql_quote
from curation.workflow import Step, Workflow


@dataclass
class Stage:
    index: int
    steps: list[Step]
    deps: set[int]          # stages upstream of this one
    workers: int            # calls in flight at most (tasks, or actors of a model stage)
    batch: int | None       # videos per call (None: sized from measured seconds per video)
    scope: str | None = None   # the input rows made by steps upstream (None: every row)

    @property
    def label(self) -> str:
        return "+".join(s.name for s in self.steps)

    @property
    def table(self) -> str:
        return self.steps[0].op_cls.input_table

    @property
    def stateful(self) -> bool:
        return any(s.op_cls.needs_model for s in self.steps)

    @property
    def inline(self) -> bool:
        return all(s.op_cls.inline for s in self.steps)

    @property
    def resources(self) -> Resources:
        req = [s.resource_request() for s in self.steps]
        custom: dict = {}
        for r in req:
            for k, v in r.custom:
                custom[k] = max(custom.get(k, 0), v)
        return Resources(num_cpus=max(r.num_cpus for r in req), num_gpus=max(r.num_gpus for r in req),
                         memory_mb=max((r.memory_mb or 0) for r in req) or None,
                         custom=tuple(sorted(custom.items())))

    def worker_args(self, model_dir: str | None, store: Store, run_id: str) -> tuple:
        """The arguments of :class:`curation.worker.StageWorker` for this stage."""
        return ([(s.name, s.op_cls, s.params) for s in self.steps], model_dir, self.table,
                store.uri, store.storage_options, run_id, self.scope)


def stages_of(wf: Workflow, workers: int) -> list[Stage]:
    """The workflow's stages in dependency order; ``workers``: the default pool size."""
    groups = wf.stages()
    where = {s.name: i for i, g in enumerate(groups) for s in g}
    out = []
    for i, g in enumerate(groups):
        deps = {where[a] for s in g for a in wf.ancestors(s.name)} - {i}
        size = max(1, min(s.workers or workers for s in g))
        explicit = [s.batch_size or (s.op_cls.batch_size if s.op_cls.needs_model else None)
                    for s in g]
        batch = max(b for b in explicit if b) if any(explicit) else None
        out.append(Stage(i, g, deps, size, batch, _scope(wf, g)))
    return out


def _scope(wf: Workflow, group: list[Step]) -> str | None:
    """A stage sees only the input rows made by steps upstream of it: when the steps emitting its
    input table are scoped (two emitters share ``clips``), the union of the upstream ones' scopes.
    So whether a row exists when a step runs never depends on timing."""
    table = group[0].op_cls.input_table
    anc = set().union(*(wf.ancestors(s.name) for s in group))
    emitters = [s.op_cls for s in wf.steps
                if s.op_cls.output_table == table and s.op_cls.input_table != table]
    if not emitters or any(c.emit_scope is None for c in emitters):
        return None
    mine = [wf.by_name[a].op_cls.emit_scope for a in anc if wf.by_name[a].op_cls in emitters]
    if len(mine) == len(emitters):
        return None
    return " OR ".join(f"({m})" for m in dict.fromkeys(mine)) or "false"


def needed(store: Store, wf: Workflow, stages: list[Stage], video_ids: list[str],
           forced: set[str]) -> list[set[str]]:
    """Per stage, the videos that must run it (see the module docstring)."""
    status = _status(store, wf, video_ids)
    videos = {r["video_id"]: r for r in
              store.of_videos("videos", video_ids, ["video_id", "error_stage"]).to_pylist()}
    ops = {s.name: s.make() for s in wf.steps}
    need: list[set[str]] = []
    for st in stages:
        anc = set().union(*(wf.ancestors(s.name) for s in st.steps))
        n = set()
        for vid in video_ids:
            v = videos.get(vid)
            if v is None or v.get("error_stage") == "ingest":
                continue
            upstream_runs = any(vid in need[d] for d in st.deps)
            failed_upstream = v.get("error_stage") in anc or any(
                final_failure(status.get((a, vid))) for a in anc)
            if failed_upstream and not upstream_runs:   # never on a failed step's output
                continue
            if upstream_runs or any(_stale(wf, status, ops[s.name], s.name, vid, forced)
                                    for s in st.steps):
                n.add(vid)
        need.append(n)
    return need


def _status(store: Store, wf: Workflow, video_ids: list[str]) -> dict[tuple[str, str], dict]:
    """(step, video) -> its status row, for this workflow's steps and these videos."""
    if not store.exists("status") or not video_ids:
        return {}
    have = set(store.schema("status").names)
    steps = ", ".join(sql_quote(s.name) for s in wf.steps)
    t = store.query("status", where=f"step IN ({steps})", columns=[
        c for c in ("step", "video_id", "op_version", "params_hash", "updated_at", "ok", "error",
                    "failure") if c in have])
    wanted = set(video_ids)
    return {(r["step"], r["video_id"]): r for r in t.to_pylist() if r["video_id"] in wanted}


def _stale(wf: Workflow, status: dict, op, step: str, vid: str, forced: set[str]) -> bool:
    if step in forced:
        return True
    s = status.get((step, vid))
    if s is None or s["op_version"] != op.version or s["params_hash"] != op.params_hash():
        return True
    if retried(s):   # failed for a reason not the video's own (curation.failures)
        return True
    ups = [status.get((a, vid)) for a in wf.ancestors(step)]
    return any(u and u["updated_at"] and u["updated_at"] > s["updated_at"] for u in ups)


def retried(status: dict) -> bool:
    """Whether a (video, step) status row says the next run must repeat it. Rows written before
    the ``failure`` column existed: setup failures and lost workers, by their message."""
    kind = status.get("failure")
    if kind:
        return kind in failures.POLICY and failures.retried(kind)
    error = status.get("error") or ""
    return status.get("ok") is False and (error.startswith("setup failed") or
                                          error == failures.CRASHED)


def final_failure(status: dict | None) -> bool:
    """A (video, step) that failed for good: nothing downstream of it runs on its output."""
    return bool(status) and status.get("ok") is False and not retried(status)
