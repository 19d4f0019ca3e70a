"""Run a workflow: ingest the inputs, then stream every video through the workflow's stages.

A *stage* is one step, or a group of adjacent frame steps that share one decode. The driver plans,
per video, which stages must run (not yet done by the same operator version and parameters, forced
by ``--from``, or downstream of a stage that runs for it) and then streams: a video's stage is
dispatched as soon as the stages upstream of it are committed for that video, so every stage runs
at the same time as the others (CPU tasks next to GPU actors) and no stage waits for the slowest
video of the one before.

Work travels as video ids. Workers read their inputs from the store themselves (the video's row,
its rows of the stage's input table, the rows of other tables the operators read), run the
operators, and write large outputs themselves: emitted rows (per-frame lists of tracks, image
blobs) as uncommitted Lance fragments of their table, large annotations as Arrow files under
``<store>/_staging/<run>``; only small results travel back inline. The driver commits what the
workers return (for fragments, their metadata only), rows first and then ``status``, so a run
killed at any point keeps what was committed and the next run redoes, idempotently, only what was
not: nothing is lost or duplicated.

Executors: Ray (tasks for stateless stages, one actor pool per model stage sized by the step's
``workers``; placement by the declared resources) or in-process (``executor="local"``).
"""
from __future__ import annotations

import io
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa

from curation import failures
from curation.operator import StepResult, key_of, one_line, run_stage
from curation.ingest import ingest, resolve_inputs  # noqa: F401 - resolve_inputs is re-exported
from curation.store import LeaseLost, Store, sql_quote
from curation.workflow import Step, Workflow
from schemas import KEYS, SCHEMA_VERSION


INLINE_BYTES = 256 * 1024   # results larger than this are written to the store by the worker
CALL_SECONDS = 1.0          # target seconds of work per worker call (see Runner._batch)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---- the worker side -------------------------------------------------------------------------------
class StageWorker:
    """Runs one stage on a batch of video ids: reads the inputs from the store, runs the
    operators, stages large outputs under the store. Used as a Ray actor (operators set up once per
    actor), inside a Ray task, or in-process."""

    def __init__(self, specs: list[tuple[str, type, dict]], model_dir: str | None, table: str,
                 store_uri: str, storage_options: dict | None, run_id: str,
                 scope: str | None = None):
        self.store = Store(store_uri, storage_options)
        self.scope = scope   # the input rows made upstream of the stage (see Stage.scope)
        self.table = table
        self.keys = KEYS[table]
        self.run_id = run_id
        self.setup_error: failures.Failure | None = None
        self.steps = []
        for name, cls, params in specs:
            op = cls(model_dir=model_dir, **params)
            op.artifact_root = f"{self.store.uri}/artifacts"
            self.steps.append((name, op))
        for name, op in self.steps:
            try:
                op.setup()
            except Exception as e:  # noqa: BLE001 - every video of the stage gets this error
                self.setup_error = setup_failure(name, op, e)
                break
        self.names = [spec[0] for spec in specs]

    def __call__(self, video_ids: list[str]) -> list[tuple[str, list[StepResult]]]:
        if self.setup_error:
            return [(vid, [StepResult.failure(n, vid, self.setup_error) for n in self.names])
                    for vid in video_ids]
        try:
            work = self._load(video_ids)
        except Exception as e:  # noqa: BLE001 - the store could not be read: these videos fail
            f = failures.Failure("store", one_line(f"cannot read inputs: {failures.describe(e)}"))
            return [(vid, [StepResult.failure(n, vid, f) for n in self.names]) for vid in video_ids]
        results = run_stage(self.steps, [(video, rows) for _, video, rows in work], self.keys)
        out = []
        for (vid, _, rows), per_step in zip(work, results):
            out.append((vid, [self._finish(r, rows) for r in per_step]))
        return out

    # inputs
    def _readable(self, table: str) -> list[str]:
        return [f.name for f in self.store.schema(table)
                if not (f.metadata and f.metadata.get(b"lance-encoding:blob"))
                and not pa.types.is_large_binary(f.type)
                and not isinstance(f.type, pa.ExtensionType)]   # blobs (lance.blob.v2)

    def _rows_of(self, table: str, video_ids: list[str], columns: list[str] | None = None,
                 extra: str | None = None) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {v: [] for v in video_ids}
        if not self.store.exists(table):
            return out
        where = "video_id IN (" + ", ".join(sql_quote(v) for v in video_ids) + ")"
        if extra:
            where = f"({where}) AND ({extra})"
        for r in self.store.query(table, where=where, columns=columns).to_pylist():
            out[r["video_id"]].append(r)
        return out

    def _load(self, video_ids: list[str]) -> list[tuple[str, dict, list[dict]]]:
        videos = self._rows_of("videos", video_ids, self._readable("videos"))
        ops = [op for _, op in self.steps]
        flt = " AND ".join(f"({f})" for f in (ops[0].input_filter, self.scope) if f) or None
        if self.table == "videos":
            inputs = videos
        elif self.store.exists(self.table):
            inputs = self._rows_of(self.table, video_ids, self._readable(self.table), flt)
        else:
            inputs = {v: [] for v in video_ids}
        others: dict[str, list[str]] = {}
        for op in ops:
            for t, cols in op.other_tables().items():
                others.setdefault(t, list(dict.fromkeys([*KEYS.get(t, ()), "video_id"])))
                others[t] += [c for c in cols if c not in others[t]]
        related = {}
        for t, cols in others.items():
            have = set(self.store.schema(t).names) if self.store.exists(t) else set()
            related[t] = self._rows_of(t, video_ids, [c for c in cols if c in have] or None) \
                if have else {v: [] for v in video_ids}
        work = []
        for vid in video_ids:
            if not videos[vid]:
                continue
            video = dict(videos[vid][0])
            if related:
                video["tables"] = {t: related[t][vid] for t in related}
            rows = [video] if self.table == "videos" else inputs[vid]
            if self.table != "videos" and "clip_index" in (rows[0] if rows else {}):
                rows.sort(key=lambda r: (r.get("shot_index") or 0, r.get("clip_index") or 0))
            work.append((vid, video, rows))
        return work

    # outputs
    def _finish(self, r: StepResult, rows: list[dict]) -> StepResult:
        op = dict(self.steps)[r.step]
        keys = [key_of(row, self.keys) for row in rows]
        if r.error:   # the whole video failed this step: its input rows say so
            r.marks = [{**k, "error": r.error, "error_stage": r.step} for k in keys]
        elif op.emits:  # success of an emitting step clears its own earlier error on its inputs
            mine = {tuple(m[k] for k in self.keys) for m in (r.marks or [])}
            r.marks = (r.marks or []) + [
                {**k, "error": None, "error_stage": None} for k, row in zip(keys, rows)
                if row.get("error_stage") == r.step and tuple(k.values()) not in mine]
        if r.rows is not None:
            if r.rows.num_rows:
                r.rows = r.rows.append_column("run_id", pa.array([self.run_id] * r.rows.num_rows,
                                                                  pa.string()))
            r.rows = self._stage(r, op)
        return r

    def _stage(self, r: StepResult, op):
        """Small results travel inline (Arrow IPC bytes). Large ones are written by the worker:
        rows an operator emits as uncommitted Lance fragments of their table (the driver commits
        the fragments' metadata), annotations (and emitted rows the table cannot take yet: a new
        column, no table) as an Arrow file under the store's staging prefix."""
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, r.rows.schema) as w:
            w.write_table(r.rows)
        data = sink.getvalue()
        if len(data) <= INLINE_BYTES:
            return data
        if op.emits:
            fragments = self.store.write_fragments(op.output_table, r.rows)
            if fragments is not None:
                return {"fragments": fragments, "rows": r.rows.num_rows}
        uri = f"{self.store.uri}/_staging/{self.run_id}/{r.step}/{r.video_id}-{uuid.uuid4().hex[:8]}.arrow"
        fs, path = _fs(uri)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return {"staged": uri, "rows": r.rows.num_rows}


def setup_failure(step: str, op, e: BaseException) -> failures.Failure:
    """A step's setup() failed: one line naming the model file when one can be named (a deeper
    check of each file than the run's pre-check, e.g. every zip member's CRC; else the files the
    message names; else all of the step's files)."""
    from pathlib import Path

    from curation import weights
    files = op.weight_files() if op.model_dir else []
    bad = [f"{rel}: {what}" for rel in files
           if (what := weights.problem(Path(op.model_dir) / rel, deep=True))]
    named = [rel for rel in files if Path(rel).name in str(e)]
    where = "; ".join(bad) or ", ".join(named) or ", ".join(files)
    text = f"setup of step {step!r} failed" + (f" (model files {where})" if where else "")
    return failures.Failure("setup", failures.one_line(f"{text}: {failures.describe(e)}"))


def _fs(uri: str):
    import pyarrow.fs as pafs
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri.removeprefix("file://")


def _unstage(rows) -> pa.Table | None:
    """A worker's result rows as a table (None for fragments the worker wrote: see _commit)."""
    if rows is None or isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, dict):
        if "fragments" in rows:
            return None
        fs, path = _fs(rows["staged"])
        with fs.open_input_stream(path) as f:
            return pa.ipc.open_stream(f.read()).read_all()
    return pa.ipc.open_stream(rows).read_all()


def init_ray(workers: int | None = None) -> None:
    import logging
    import warnings

    import ray
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                  ignore_reinit_error=True)
    ours = failures.sigterm_caught()
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(2, workers or 0, os.cpu_count() or 1), **kwargs)
    if ours:   # ray.init sets its own SIGTERM handler (sys.exit): a run stops cleanly instead
        failures.catch_sigterm()


# ---- executors ---------------------------------------------------------------------------------------
class _LocalPool:
    """In-process: one worker per stage, calls run synchronously."""

    def __init__(self, stage: "Stage", args: tuple):
        self.worker = StageWorker(*args)

    def submit(self, vids: list[str]):
        try:
            return ("done", self.worker(vids))
        except Exception as e:  # noqa: BLE001
            return ("failed", failures.of(e))

    def shutdown(self):
        pass


class _RayPool:
    """Tasks (stateless stages) or actors (stages that load a model), each call one batch of
    videos. One call in flight per actor, so a worker that dies loses only that batch."""

    def __init__(self, stage: "Stage", args: tuple):
        import ray
        self.ray = ray
        self.stage = stage
        self.args = args
        res = stage.resources
        opts = dict(num_gpus=res.num_gpus or 0, memory=(res.memory_mb or 0) * 2**20 or None,
                    resources=dict(res.custom) or None)
        if stage.stateful:
            # the driver budgets CPUs for actor calls; Ray places actors by GPU/custom resources
            # and a token CPU share (never on a CPU-less head), so idle actors never starve the
            # CPU tasks upstream of them
            self.cls = ray.remote(StageWorker).options(num_cpus=0.01, max_restarts=0,
                                                       max_task_retries=0, **opts)
            self.idle: list = []
            self.busy: dict = {}
        else:
            self.task = ray.remote(_task).options(num_cpus=res.num_cpus, max_retries=1, **opts)

    def submit(self, vids: list[str]):
        if self.stage.stateful:
            actor = self.idle.pop() if self.idle else self.cls.remote(*self.args)
            ref = actor.__call__.remote(vids)
            self.busy[ref] = actor
            return ref
        return self.task.remote(self.args, vids)

    def release(self, ref, dead: bool):
        if self.stage.stateful:
            actor = self.busy.pop(ref, None)
            if actor is not None and not dead:
                self.idle.append(actor)
            elif actor is not None:
                self.ray.kill(actor, no_restart=True)

    def shutdown(self):
        if self.stage.stateful:
            for a in self.idle + list(self.busy.values()):
                try:
                    self.ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
            self.idle, self.busy = [], {}


_TASK_WORKERS: "dict[bytes, StageWorker]" = {}


def _task(args: tuple, vids: list[str]):
    """A stateless stage's call. Ray reuses worker processes, so the StageWorker (its operators,
    set up once) is kept per process for the same stage of the same run."""
    import pickle
    specs, *rest = args
    key = pickle.dumps(([(n, c.__module__, c.__qualname__, p) for n, c, p in specs], rest))
    worker = _TASK_WORKERS.get(key)
    if worker is None:
        while len(_TASK_WORKERS) >= 8:
            _TASK_WORKERS.pop(next(iter(_TASK_WORKERS)))
        worker = _TASK_WORKERS[key] = StageWorker(*args)
    return worker(vids)


# ---- the plan ----------------------------------------------------------------------------------------
@dataclass
class Stage:
    index: int
    steps: list[Step]
    deps: set[int]
    workers: int
    batch: int | None      # videos per call (None: adaptive for stateless stages)
    scope: str | None = None   # input rows made by the steps upstream (None: every row)

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
    def resources(self):
        from curation.operator import Resources
        req = [s.resource_request() for s in self.steps]
        custom: dict = {}
        for r in req:
            for k, v in r.custom:
                custom[k] = max(custom.get(k, 0), v)
        return Resources(num_cpus=max(r.num_cpus for r in req), num_gpus=max(r.num_gpus for r in req),
                         memory_mb=max((r.memory_mb or 0) for r in req) or None,
                         custom=tuple(sorted(custom.items())))


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


@dataclass
class RunSummary:
    run_id: str
    videos: int
    steps: list[StepSummary] = field(default_factory=list)
    seconds: float = 0.0
    failed_inputs: int = 0
    calls_in_flight: float = 0.0      # worker calls running at once, averaged over the stream time
    max_calls_in_flight: int = 0


class Runner:
    def __init__(self, workflow: Workflow, store: Store, model_dir: str | None = None,
                 workers: int = 2, executor: str = "ray", flush_every: int = 16,
                 flush_seconds: float = 15.0,
                 progress: Callable[[str, int, int], None] | None = None,
                 fence: Callable[[], None] | None = None):
        self.wf = workflow
        self.store = store
        self.model_dir = model_dir
        self.workers = workers
        self.executor = executor
        self.flush_every = flush_every      # commit at least every N results or T seconds
        self.flush_seconds = flush_seconds
        self.min_flush_s = 1.0              # commit at most once a second (unless all is idle)
        self.progress = progress or (lambda step, done, total: None)
        self.fence = fence   # raises (e.g. store.LeaseLost) when this run may no longer write
        self.concurrency = (0.0, 0)   # (mean, max) worker calls in flight during the last stream

    def stages(self) -> list[Stage]:
        groups = self.wf.stages()
        where = {s.name: i for i, g in enumerate(groups) for s in g}
        out = []
        for i, g in enumerate(groups):
            deps = {where[a] for s in g for a in self.wf.ancestors(s.name)} - {i}
            workers = max(1, min(s.workers or self.workers for s in g))
            explicit = [s.batch_size or (s.op_cls.batch_size if s.op_cls.needs_model else None)
                        for s in g]
            batch = max(b for b in explicit if b) if any(explicit) else None
            out.append(Stage(i, g, deps, workers, batch, self._scope(g)))
        return out

    def _scope(self, group: list[Step]) -> str | None:
        """A stage sees only the input rows made by steps upstream of it: when the steps emitting
        its input table are scoped (two emitters share ``clips``), the union of the upstream ones'
        scopes. So whether a row exists when a step runs never depends on timing."""
        table = group[0].op_cls.input_table
        anc = set().union(*(self.wf.ancestors(s.name) for s in group))
        emitters = [s.op_cls for s in self.wf.steps
                    if s.op_cls.output_table == table and s.op_cls.input_table != table]
        if not emitters or any(c.emit_scope is None for c in emitters):
            return None
        mine = [self.wf.by_name[a].op_cls.emit_scope for a in anc
                if self.wf.by_name[a].op_cls in emitters]
        if len(mine) == len(emitters):
            return None
        return " OR ".join(f"({m})" for m in dict.fromkeys(mine)) or "false"

    def run(self, inputs: list[str], from_step: str | None = None, run_id: str | None = None,
            uris: list[str] | None = None) -> RunSummary:
        """Run the workflow over ``inputs`` (files, directories; ``uris``: the video files they
        resolve to, when the caller resolved them already)."""
        t0 = time.perf_counter()
        run_id = run_id or new_run_id()
        if from_step and from_step not in self.wf.by_name:
            raise ValueError(f"--from: no step {from_step!r} in workflow {self.wf.name!r}; steps: "
                             f"{', '.join(self.wf.by_name)}")
        from curation.workflow import check_weights
        check_weights(self.wf, self.model_dir)   # every declared model file, before any work
        uris = resolve_inputs(inputs) if uris is None else uris
        forced = ({from_step} | self.wf.descendants(from_step)) if from_step else set()
        self.store.upsert("runs", [{"run_id": run_id, "workflow": self.wf.name,
                                    "workflow_yaml": self.wf.text, "inputs": list(inputs),
                                    "started_at": now(), "status": "running",
                                    "schema_version": SCHEMA_VERSION}])
        got = ingest(self.store, uris, run_id)
        video_ids = list(got)
        summary = RunSummary(run_id=run_id, videos=len(video_ids), failed_inputs=got.n_failed)
        self._clean_staging()
        try:
            summary.steps = self._stream(video_ids, forced, run_id)
            summary.calls_in_flight, summary.max_calls_in_flight = self.concurrency
        except LeaseLost:   # another run holds the store now: not a single write more
            raise
        except BaseException as e:  # an interrupted or broken run says so (a killed one stays "running")
            state = "interrupted" if isinstance(e, (failures.Interrupted, KeyboardInterrupt)) else "failed"
            self.store.upsert("runs", [{"run_id": run_id, "finished_at": now(), "status": state}])
            raise
        if self.fence is not None:
            self.fence()
        for table in self.store.tables():
            self.store.optimize_indices(table)
        self.store.tag(run_id)
        self._clean_staging()
        summary.seconds = time.perf_counter() - t0
        self.store.upsert("runs", [{"run_id": run_id, "finished_at": now(), "status": "completed"}])
        return summary

    def _clean_staging(self) -> None:
        import pyarrow.fs as pafs
        fs, path = _fs(f"{self.store.uri}/_staging")
        try:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_dir(path)
        except OSError:
            pass

    # which (video, stage) pairs must run
    def _plan(self, stages: list[Stage], video_ids: list[str], forced: set[str]):
        """need[i]: videos stage i must process; blocked[i]: videos an earlier failure (an error
        recorded on the video by a step upstream of stage i that does not run again) keeps out."""
        names = [s.name for s in self.wf.steps]
        status: dict[tuple[str, str], dict] = {}
        if self.store.exists("status") and video_ids:
            steps = ", ".join(sql_quote(n) for n in names)
            have = set(self.store.schema("status").names)
            t = self.store.query("status", where=f"step IN ({steps})", columns=[
                c for c in ("step", "video_id", "op_version", "params_hash", "updated_at", "ok",
                            "error", "failure") if c in have])
            wanted = set(video_ids)
            for r in t.to_pylist():
                if r["video_id"] in wanted:
                    status[(r["step"], r["video_id"])] = r
        videos = {r["video_id"]: r for r in self._video_rows(video_ids)}
        ops = {s.name: s.make() for s in self.wf.steps}
        need: list[set[str]] = []
        blocked: list[set[str]] = []
        for st in stages:
            anc = set().union(*(self.wf.ancestors(s.name) for s in st.steps))
            n, b = set(), set()
            for vid in video_ids:
                v = videos.get(vid)
                if v is None or v.get("error_stage") == "ingest":
                    b.add(vid)
                    continue
                upstream_runs = any(vid in need[d] for d in st.deps)
                failed_upstream = v.get("error_stage") in anc or any(
                    _final_failure(status.get((a, vid))) for a in anc)
                if failed_upstream and not upstream_runs:   # never on a failed step's output
                    b.add(vid)
                    continue
                if upstream_runs or any(self._stale(status, ops[s.name], s.name, vid, forced) for s in st.steps):
                    n.add(vid)
            need.append(n)
            blocked.append(b)
        return need, blocked

    def _stale(self, status, op, step: str, vid: str, forced: set[str]) -> bool:
        if step in forced:
            return True
        s = status.get((step, vid))
        if s is None or s["op_version"] != op.version or s["params_hash"] != op.params_hash():
            return True
        if _retried(s):   # failed for a reason not the video's own (curation.failures)
            return True
        ups = [status.get((a, vid)) for a in self.wf.ancestors(step)]
        return any(u and u["updated_at"] and u["updated_at"] > s["updated_at"] for u in ups)

    def _video_rows(self, video_ids: list[str]) -> list[dict]:
        if not self.store.exists("videos") or not video_ids:
            return []
        out = []
        for i in range(0, len(video_ids), 1000):
            where = "video_id IN (" + ", ".join(sql_quote(v) for v in video_ids[i:i + 1000]) + ")"
            out.extend(self.store.query("videos", where=where,
                                        columns=["video_id", "error_stage"]).to_pylist())
        return out

    # the streaming loop
    def _stream(self, video_ids: list[str], forced: set[str], run_id: str) -> list[StepSummary]:
        stages = self.stages()
        need, blocked = self._plan(stages, video_ids, forced)
        sums = {s.name: StepSummary(s.name, s.op) for st in stages for s in st.steps}
        total = [len(n) for n in need]
        committed = [0] * len(stages)
        for st in stages:
            self.progress(st.label, 0, total[st.index])
        if not any(need):
            for st in stages:
                for s in st.steps:
                    sums[s.name].skipped = len(video_ids)
            return list(sums.values())
        if self.executor == "ray":
            init_ray(self.workers)
        args = lambda st: ([(s.name, s.op_cls, s.params) for s in st.steps], self.model_dir,  # noqa: E731
                           st.table, self.store.uri, self.store.storage_options, run_id, st.scope)
        pools: dict[int, object] = {}
        settled: list[set[str]] = [set() for _ in stages]     # committed, skipped or failed
        failed: list[set[str]] = [set() for _ in stages]      # whole-video failure at this stage
        waiting: list[set[str]] = [set(n) for n in need]
        ready: list[deque] = [deque() for _ in stages]
        inflight: dict = {}            # ref -> (stage index, vids, alone)
        local_results: deque = deque()
        buffer: list[list] = [[] for _ in stages]
        retry_alone: list[set[str]] = [set() for _ in stages]
        last_flush = time.perf_counter()
        cpu_budget = self._cpu_budget()
        cpu_used = 0.0
        per_video_s: dict[int, float] = {}

        dependents = {st.index: [d.index for d in stages if st.index in d.deps] for st in stages}

        def settle_skips(changes=None):
            """Move waiting videos on: ready once every stage upstream of them is settled, skipped
            (settled at once) when one of those failed them. ``changes``: the (stage, video) pairs
            that settled since the last call; only their dependents are looked at."""
            if changes is None:
                work = [(i, vid) for i in range(len(stages)) for vid in list(waiting[i])]
            else:
                work = [(j, vid) for i, vid in changes for j in dependents[i]]
            while work:
                i, vid = work.pop()
                if vid not in waiting[i]:
                    continue
                st = stages[i]
                if any(vid in failed[d] for d in st.deps):   # failed upstream: skip
                    waiting[i].discard(vid)
                    settled[i].add(vid)
                    failed[i].add(vid)   # and so are the stages below it
                    total[i] -= 1
                    self.progress(st.label, committed[i], total[i])
                    work += [(j, vid) for j in dependents[i]]
                elif all(vid in settled[d] or vid not in need[d] for d in st.deps):
                    waiting[i].discard(vid)
                    ready[i].append(vid)

        for st in stages:
            settled[st.index] = {v for v in video_ids if v not in need[st.index]}
        settle_skips()

        def pool(st: Stage):
            if st.index not in pools:
                cls = _RayPool if self.executor == "ray" and not st.inline else _LocalPool
                pools[st.index] = cls(st, args(st))
            return pools[st.index]

        def running(i: int) -> int:
            return sum(1 for x in inflight.values() if x[0] == i)

        budget_at = [time.perf_counter()]

        def dispatch():
            nonlocal cpu_used, cpu_budget
            if time.perf_counter() - budget_at[0] > 10:
                cpu_budget, budget_at[0] = self._cpu_budget(), time.perf_counter()
            for st in reversed(stages):        # downstream first: videos finish, memory stays flat
                i = st.index
                if i in broken:
                    ready[i].clear()
                while ready[i]:
                    if st.inline or self.executor != "ray":   # in-process, synchronously
                        n = len(ready[i]) if st.inline else max(1, st.batch or 8)
                        vids = [ready[i].popleft() for _ in range(min(n, len(ready[i])))]
                        local_results.append((i, vids, pool(st).submit(vids), False))
                        if st.inline:
                            continue
                        return   # one call at a time: its results are committed before the next
                    if running(i) >= st.workers:
                        break
                    need_cpu = st.resources.num_cpus
                    if inflight and cpu_used + need_cpu > cpu_budget + 1e-9:
                        return
                    if ready[i][0] in retry_alone[i]:
                        vids, alone = [ready[i].popleft()], True
                    else:
                        n = st.batch or self._batch(per_video_s.get(i), len(ready[i]), st.workers)
                        vids = []
                        while ready[i] and len(vids) < n and ready[i][0] not in retry_alone[i]:
                            vids.append(ready[i].popleft())
                        alone = False
                    ref = pool(st).submit(vids)
                    inflight[ref] = (i, vids, alone, need_cpu)
                    cpu_used += need_cpu

        def take(i: int, vids: list[str], outcome, alone: bool):
            """A finished call: results into the buffer; lost videos retried alone once."""
            st = stages[i]
            kind, payload = outcome
            if kind == "done":
                if payload:   # seconds of work per video of this stage, smoothed
                    sec = sum(r.seconds for _, res in payload for r in res) / len(payload)
                    old = per_video_s.get(i)
                    per_video_s[i] = sec if old is None else 0.7 * old + 0.3 * sec
                got = {vid for vid, _ in payload}
                for vid, results in payload:
                    buffer[i].append((vid, results))
                    setup = next((r for r in results if r.kind == "setup"), None)
                    if setup is not None:   # no video can succeed in this stage: it stops here
                        broken.setdefault(i, setup.error)
                        ready[i].clear()
                lost = [v for v in vids if v not in got]
                for v in lost:   # a video row vanished between plan and work (deleted): skip
                    buffer[i].append((v, [StepResult(s.name, v, error="video row not found")
                                          for s in st.steps]))
                return
            for v in vids:
                if alone or v in retry_alone[i]:
                    buffer[i].append((v, [StepResult.failure(s.name, v, payload) for s in st.steps]))
                else:
                    retry_alone[i].add(v)
                    ready[i].appendleft(v)

        def collect(timeout: float):
            nonlocal cpu_used
            while local_results:
                i, vids, outcome, alone = local_results.popleft()
                take(i, vids, outcome, alone)
            if not inflight:
                return
            import ray
            refs = list(inflight)
            done, rest = ray.wait(refs, num_returns=1, timeout=timeout)
            if done and rest:   # and whatever else is finished already
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            for ref in done:
                i, vids, alone, cpu = inflight.pop(ref)
                cpu_used -= cpu
                try:
                    outcome = ("done", ray.get(ref))
                    dead = False
                except Exception as e:  # noqa: BLE001 - the worker died (crash, OOM kill)
                    outcome, dead = ("failed", failures.of_lost_worker(e)), True
                pools[i].release(ref, dead) if hasattr(pools[i], "release") else None
                take(i, vids, outcome, alone)

        def flush(force: bool = False):
            nonlocal last_flush
            n = sum(len(b) for b in buffer)
            if not n:
                return
            idle = not inflight and not any(ready)
            since = time.perf_counter() - last_flush
            # at most one commit a second while workers are busy (a commit costs the driver tens of
            # milliseconds whatever its size), sooner when nothing else is left to wait for
            if not (force or idle or since >= self.flush_seconds
                    or (since >= self.min_flush_s and (n >= self.flush_every or self._starving(
                        stages, ready, inflight, buffer)))):
                return
            if self.fence is not None:   # this run must still hold the store (see StoreLease)
                self.fence()
            status = []
            for st in stages:
                i = st.index
                if buffer[i]:
                    status += self._commit(st, buffer[i], run_id, sums)
            if status:
                from schemas import STATUS
                self.store.upsert("status", pa.Table.from_pylist(status, schema=STATUS))
            changes = []
            for st in stages:
                i = st.index
                for vid, results in buffer[i]:
                    changes.append((i, vid))
                    settled[i].add(vid)
                    committed[i] += 1
                    if any(r.error for r in results):
                        failed[i].add(vid)
                if buffer[i]:
                    self.progress(st.label, committed[i], total[i])
                buffer[i] = []
            last_flush = time.perf_counter()
            settle_skips(changes)

        busy_s, peak, t_start = 0.0, 0, time.perf_counter()
        stop: list = [None]     # why the run stops early (a signal)
        broken: dict[int, str] = {}   # stages whose setup failed -> the error (they stop)
        try:
            while stop[0] is None:
                dispatch()
                if not inflight and not local_results and not any(ready) and not any(buffer):
                    break
                n_busy, t = len(inflight), time.perf_counter()
                peak = max(peak, n_busy)
                collect(timeout=0.2 if any(buffer) else 2.0)
                busy_s += n_busy * (time.perf_counter() - t)
                flush(force=False)
                if not inflight and not local_results and not any(ready):
                    flush(force=True)
        except KeyboardInterrupt as e:    # Ctrl-C, or SIGTERM (failures.Terminated)
            stop[0] = failures.Interrupted.of(e)
        finally:
            for p in pools.values():
                p.shutdown()
            self.concurrency = (busy_s / max(1e-9, time.perf_counter() - t_start), peak)
        if stop[0] is None and broken:   # the other stages went on; the run still fails
            stop[0] = failures.SetupFailed("; ".join(dict.fromkeys(broken.values())))
        if stop[0] is not None:   # what finished is committed; what was in flight runs next time
            inflight.clear()
            local_results.clear()
            flush(force=True)
            stop[0].committed = [(st.label, committed[st.index], total[st.index]) for st in stages]
            raise stop[0]
        for st in stages:
            for s in st.steps:
                sums[s.name].skipped = len(video_ids) - sums[s.name].done
        return list(sums.values())

    @staticmethod
    def _batch(per_video_s: float | None, ready: int, workers: int) -> int:
        """Videos per call of a stage without a set batch size: enough for about CALL_SECONDS of
        work (a call costs some milliseconds whatever its size: tiny videos need big batches),
        never more than an even share of the ready videos among the stage's workers."""
        want = 1 if per_video_s is None else int(min(64, max(1, CALL_SECONDS / max(per_video_s, 1e-3))))
        return max(1, min(want, -(-ready // max(1, workers))))

    def _starving(self, stages, ready, inflight, buffer) -> bool:
        """Commit now when some buffered result would let a stage downstream start while workers
        are idle (streaming: a video moves on as soon as its step is committed)."""
        busy = len(inflight)
        return busy < max(1, self.workers) and not any(ready)

    def _cpu_budget(self) -> float:
        """CPUs the in-flight calls may use: the cluster's, at least --workers (an autoscaling
        cluster that starts empty must still see demand); re-read as nodes come and go."""
        if self.executor != "ray":
            return 1.0
        import ray
        return max(float(ray.cluster_resources().get("CPU", 0.0)), float(self.workers))

    def _input_keys(self, st: Stage, video_ids: list[str]) -> dict[str, list[dict]]:
        """Keys of the input rows of videos whose worker died (the driver never saw their rows)."""
        table = st.table
        key = list(KEYS[table])
        if not self.store.exists(table):
            return {}
        where = "video_id IN (" + ", ".join(sql_quote(v) for v in video_ids) + ")"
        for f in (st.steps[0].op_cls.input_filter, st.scope):
            if f:
                where = f"({where}) AND ({f})"
        out: dict[str, list[dict]] = {}
        for r in self.store.query(table, where=where, columns=sorted(set(key) | {"video_id"})).to_pylist():
            out.setdefault(r["video_id"], []).append({k: r[k] for k in key})
        return out

    def _commit(self, st: Stage, buffer: list[tuple[str, list[StepResult]]], run_id: str,
                sums: dict[str, StepSummary]) -> list[dict]:
        """Write the results of some videos for one stage (rows, then error marks); returns their
        status rows (written by the caller after every stage's rows)."""
        status = []
        lost = [vid for vid, results in buffer if any(r.error and r.marks is None for r in results)]
        lost_keys = self._input_keys(st, lost) if lost else {}
        for step in st.steps:
            cls = step.op_cls
            op = step.make()
            marks, outputs, fragments, emitted_for = [], [], [], []
            s = sums[step.name]
            for vid, results in buffer:
                r = next(x for x in results if x.step == step.name)
                rows = _unstage(r.rows)
                n_rows = r.rows["rows"] if isinstance(r.rows, dict) else (
                    None if rows is None else rows.num_rows)
                if r.error and r.marks is None:   # lost with its worker: mark its input rows here
                    r.marks = [{**k, "error": r.error, "error_stage": r.step}
                               for k in lost_keys.get(vid, [])]
                if r.error:
                    s.failed_videos += 1
                else:
                    if cls.output_table != cls.input_table:
                        emitted_for.append(vid)
                    if isinstance(r.rows, dict) and "fragments" in r.rows:
                        fragments += r.rows["fragments"]
                    elif rows is not None and rows.num_rows:
                        outputs.append(rows)
                    s.rows += n_rows or 0
                    s.failed_rows += sum(1 for m in r.marks or [] if m["error"] is not None)
                marks += [{**m, "run_id": run_id} for m in r.marks or []]
                s.done += 1
                s.seconds += r.seconds
                status.append({"step": r.step, "video_id": vid, "op": cls.name,
                               "op_version": cls.version, "params_hash": op.params_hash(),
                               "ok": r.error is None, "error": r.error, "failure": r.kind,
                               "rows": n_rows, "seconds": r.seconds, "run_id": run_id,
                               "updated_at": now()})
            out = pa.concat_tables(outputs, promote_options="permissive") if outputs else None
            if cls.output_table != cls.input_table:
                if emitted_for:  # emitted rows replace the videos' earlier rows (in the op's scope)
                    where = "video_id IN (" + ", ".join(sql_quote(v) for v in emitted_for) + ")"
                    if cls.emit_scope and self.store.exists(cls.output_table):
                        if _columns_exist(self.store, cls.output_table, cls.emit_scope):
                            where = f"({where}) AND ({cls.emit_scope})"
                    # one commit: the old rows out, the new rows (inline, and fragments the
                    # workers wrote) in
                    self.store.append(cls.output_table, out, fragments, replace_where=where)
            elif out is not None:
                self.store.annotate(cls.output_table, out)
            if marks:
                # marks of rows that no longer exist are ignored by annotate (keys with no row)
                self.store.annotate(cls.input_table, pa.Table.from_pylist(marks))
        return status


def _columns_exist(store: Store, table: str, predicate: str) -> bool:
    """Whether every identifier of ``predicate`` is a column of ``table`` (a scope over a column
    that no row has yet matches nothing, so the delete must not touch other rows)."""
    import re
    names = set(store.schema(table).names)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'[^']*'", "", predicate)))
    keywords = {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "TRUE", "FALSE", "BETWEEN"}
    return all(w in names or w.upper() in keywords for w in words)


def _retried(status: dict) -> bool:
    """Whether a (video, step) status row says the next run must repeat it. Rows written before
    the ``failure`` column existed: setup failures and lost workers, by their message."""
    kind = status.get("failure")
    if kind:
        return kind in failures.POLICY and failures.retried(kind)
    error = status.get("error") or ""
    return status.get("ok") is False and (error.startswith("setup failed") or
                                          error == failures.CRASHED)


def _final_failure(status: dict | None) -> bool:
    """A (video, step) that failed for good: nothing downstream of it runs on its output."""
    return bool(status) and status.get("ok") is False and not _retried(status)
