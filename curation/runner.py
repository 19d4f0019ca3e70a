"""Run a workflow: ingest inputs, then each stage as a Ray Data ``map_batches`` over videos.

The unit of work is one video: a work item carries the video's row and its rows of the stage's input
table. Workers run the operators (tasks for stateless operators, an actor pool when an operator loads
a model, resources as declared) and return Arrow tables; the driver upserts them into the store as
they stream in, then records the step as done for that video in ``status``. So a killed run keeps
everything flushed, and the next run skips (video, step) pairs already done by the same operator
version and parameters: nothing is lost or duplicated.
"""
from __future__ import annotations

import io
import os
import pickle
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa

from curation.media import VIDEO_EXTENSIONS, MediaError, content_id, file_size
from curation.operator import StepResult, run_steps_on_video
from curation.store import Store, sql_quote
from curation.workflow import Step, Workflow
from schemas import KEYS, SCHEMA_VERSION


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---- inputs ----------------------------------------------------------------------------------------
def resolve_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given; directories expanded (recursively) to files with a video extension."""
    out: list[str] = []
    for p in paths:
        if "://" in p:
            out.extend(_resolve_remote(p))
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(str(f.resolve()) for f in sorted(path.rglob("*"))
                       if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.exists():
            out.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"input not found: {p}")
    seen, uniq = set(), []
    for u in out:
        if u not in seen:
            seen.add(u)
            uniq.append(u)
    return uniq


def _resolve_remote(uri: str) -> list[str]:
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        return [uri]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in VIDEO_EXTENSIONS)


def ingest(store: Store, uris: list[str], run_id: str) -> list[str]:
    """Upsert one ``videos`` row per input (id = content hash); return the video ids."""
    rows, bad, ids = [], [], []
    for uri in uris:
        try:
            vid, size, err = content_id(uri), file_size(uri), None
        except (OSError, MediaError) as e:
            import hashlib
            vid = "uri-" + hashlib.blake2b(uri.encode(), digest_size=10).hexdigest()
            size, err = None, f"cannot read file: {e}"
        if vid in ids:  # the same content twice under two names: one video
            continue
        ids.append(vid)
        row = {"video_id": vid, "uri": uri, "size_bytes": size, "schema_version": SCHEMA_VERSION,
               "run_id": run_id}
        if err:
            bad.append({**row, "error": err, "error_stage": "ingest"})
        else:  # errors of earlier runs stay until the step that made them succeeds
            rows.append(row)
    for group, cols in ((rows, _INGEST), (bad, _INGEST + ("error", "error_stage"))):
        if group:
            from schemas import VIDEOS
            store.upsert("videos", pa.Table.from_pylist(
                group, schema=pa.schema([VIDEOS.field(c) for c in cols])))
    return ids


_INGEST = ("video_id", "uri", "size_bytes", "schema_version", "run_id")


# ---- the Ray adapter ---------------------------------------------------------------------------------
class StageWorker:
    """Runs one stage (one step, or a group of frame steps) on work items; used as a Ray Data
    callable class (actor pool, operators set up once per actor) or called in a task."""

    def __init__(self, specs: list[tuple[str, type, dict]], model_dir: str | None, table: str):
        self.steps = [(name, cls(model_dir=model_dir, **params)) for name, cls, params in specs]
        for _, op in self.steps:
            op.setup()
        self.keys = KEYS[table]

    def __call__(self, batch: dict) -> dict:
        out_ids, out_payload = [], []
        for vid, payload in zip(batch["video_id"], batch["payload"]):
            video, rows = pickle.loads(payload)
            results = run_steps_on_video(self.steps, video, rows, self.keys)
            out_ids.append(vid)
            out_payload.append(pickle.dumps([_pack(r) for r in results]))
        return {"video_id": out_ids, "result": out_payload}


def _stage_task(batch: dict, specs, model_dir, table) -> dict:
    return StageWorker(specs, model_dir, table)(batch)


def _pack(r: StepResult) -> StepResult:
    """Arrow tables travel as IPC bytes (robust across pickling of nested types)."""
    if r.rows is not None:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, r.rows.schema) as w:
            w.write_table(r.rows)
        r = StepResult(r.step, r.video_id, sink.getvalue(), r.error, r.seconds, r.marks)
    return r


def _unpack(r: StepResult) -> StepResult:
    if isinstance(r.rows, (bytes, bytearray)):
        r.rows = pa.ipc.open_stream(r.rows).read_all()
    return r


def init_ray(workers: int | None = None) -> None:
    import logging
    import warnings

    import ray
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                  ignore_reinit_error=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(2, workers or 0, os.cpu_count() or 1), **kwargs)


def _ray_map(items: list[dict], stage: list[Step], model_dir: str | None, workers: int,
             table: str) -> Iterable[tuple[str, list[StepResult]]]:
    import logging

    import ray.data
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = len(items)  # a crashed worker loses its video, never the run
    specs = [(s.name, s.op_cls, s.params) for s in stage]
    req = [s.resource_request() for s in stage]
    num_cpus = max(r.num_cpus for r in req)
    num_gpus = max(r.num_gpus for r in req)
    memory = max((r.memory_mb or 0) for r in req) * 2**20 or None
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    workers = max(1, min(workers, len(items)))  # no idle actors for a handful of videos
    stateful = any(s.op_cls.needs_model for s in stage)
    common = dict(batch_size=1, num_cpus=num_cpus, num_gpus=num_gpus or None, memory=memory,
                  batch_format="numpy")
    # A worker that dies on a video (a native decoder crash, out of memory) must cost that video,
    # not the run: Ray Data retries map tasks forever and restarts actors by default. Bound both
    # (one retry for tasks, in case the death came from elsewhere; no restart for actors, each
    # holding one video at a time so that a death loses no queued one); the lost block then becomes
    # an error row ("worker crashed ..."). Ray 2.60 has no named parameter for these yet
    # (ray_remote_args_fn is marked deprecated for 2.64).
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if stateful:
            ds = ds.map_batches(StageWorker, fn_constructor_args=(specs, model_dir, table),
                                compute=ray.data.ActorPoolStrategy(size=workers,
                                                                   max_tasks_in_flight_per_actor=1),
                                ray_remote_args_fn=lambda: {"max_restarts": 0, "max_task_retries": 0},
                                **common)
        else:
            ds = ds.map_batches(_stage_task, fn_kwargs=dict(specs=specs, model_dir=model_dir,
                                                            table=table),
                                compute=ray.data.TaskPoolStrategy(size=workers),
                                ray_remote_args_fn=lambda: {"max_retries": 1}, **common)
    for row in ds.iter_rows():
        yield row["video_id"], [_unpack(r) for r in pickle.loads(row["result"])]


def _local_map(items, stage, model_dir, workers, table):
    worker = StageWorker([(s.name, s.op_cls, s.params) for s in stage], model_dir, table)
    for item in items:
        out = worker({"video_id": [item["video_id"]], "payload": [item["payload"]]})
        yield out["video_id"][0], [_unpack(r) for r in pickle.loads(out["result"][0])]


# ---- the driver --------------------------------------------------------------------------------------
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


class Runner:
    def __init__(self, workflow: Workflow, store: Store, model_dir: str | None = None,
                 workers: int = 2, executor: str = "ray", flush_every: int = 16,
                 flush_seconds: float = 15.0,
                 progress: Callable[[str, int, int], None] | None = None):
        self.wf = workflow
        self.store = store
        self.model_dir = model_dir
        self.workers = workers
        self.executor = executor
        self.flush_every = flush_every      # write results every N videos or T seconds
        self.flush_seconds = flush_seconds
        self.progress = progress or (lambda step, done, total: None)

    def run(self, inputs: list[str], from_step: str | None = None, run_id: str | None = None) -> RunSummary:
        t0 = time.perf_counter()
        run_id = run_id or new_run_id()
        uris = resolve_inputs(inputs)
        if from_step and from_step not in self.wf.by_name:
            raise ValueError(f"--from: no step {from_step!r} in workflow {self.wf.name!r}; steps: "
                             f"{', '.join(self.wf.by_name)}")
        forced = ({from_step} | self.wf.descendants(from_step)) if from_step else set()
        self.store.upsert("runs", [{"run_id": run_id, "workflow": self.wf.name,
                                    "workflow_yaml": self.wf.text, "inputs": list(inputs),
                                    "started_at": now(), "status": "running",
                                    "schema_version": SCHEMA_VERSION}])
        video_ids = ingest(self.store, uris, run_id)
        summary = RunSummary(run_id=run_id, videos=len(video_ids))
        if self.executor == "ray" and video_ids:
            init_ray(self.workers)
        touched: dict[str, set[str]] = {}  # step -> videos it (re)processed in this run
        try:
            for stage in self.wf.stages():
                summary.steps.extend(self._run_stage(stage, video_ids, forced, touched, run_id))
        except BaseException:  # an interrupted or broken run says so (a killed one stays "running")
            self.store.upsert("runs", [{"run_id": run_id, "finished_at": now(), "status": "failed"}])
            raise
        for table in self.store.tables():
            self.store.optimize_indices(table)
        self.store.tag(run_id)
        summary.seconds = time.perf_counter() - t0
        self.store.upsert("runs", [{"run_id": run_id, "finished_at": now(), "status": "completed"}])
        return summary

    # which videos a stage must process
    def _pending(self, step: Step, video_ids: list[str], forced: set[str],
                 touched: dict[str, set[str]]) -> list[str]:
        """Videos this step must (re)process: not done yet, done by another operator version or
        parameters, forced by --from, or whose input changed (an upstream step ran again for it,
        in this run or after this step last ran, e.g. in a run killed in between)."""
        op = step.make()
        ancestors = self.wf.ancestors(step.name)
        videos = {r["video_id"]: r for r in self._rows("videos", video_ids,
                                                       ["video_id", "error_stage"])}
        mine: dict[str, dict] = {}
        upstream_at: dict[str, object] = {}
        if self.store.exists("status"):
            steps = ", ".join(sql_quote(n) for n in {step.name, *ancestors})
            t = self.store.query("status", where=f"step IN ({steps})", columns=[
                "step", "video_id", "op_version", "params_hash", "updated_at"])
            for r in t.to_pylist():
                if r["step"] == step.name:
                    mine[r["video_id"]] = r
                elif r["updated_at"] and (r["video_id"] not in upstream_at
                                          or r["updated_at"] > upstream_at[r["video_id"]]):
                    upstream_at[r["video_id"]] = r["updated_at"]
        dirty = set().union(*(touched.get(a, set()) for a in ancestors)) if ancestors else set()
        pending = []
        for vid in video_ids:
            v = videos.get(vid)
            if v is None or v["error_stage"] == "ingest":
                continue
            if v["error_stage"] in ancestors:  # an upstream step failed on this video
                continue
            s = mine.get(vid)
            done = (s is not None and s["op_version"] == op.version
                    and s["params_hash"] == op.params_hash()
                    and (vid not in upstream_at or s["updated_at"] >= upstream_at[vid]))
            if step.name in forced or vid in dirty or not done:
                pending.append(vid)
        return pending

    def _rows(self, table: str, video_ids: list[str], columns: list[str] | None = None) -> list[dict]:
        if not self.store.exists(table) or not video_ids:
            return []
        out = []
        for i in range(0, len(video_ids), 500):
            chunk = video_ids[i:i + 500]
            where = "video_id IN (" + ", ".join(sql_quote(v) for v in chunk) + ")"
            out.extend(self.store.query(table, where=where, columns=columns).to_pylist())
        return out

    def _readable_columns(self, table: str) -> list[str]:
        """The columns shipped to workers: all but blobs (images, audio), which operators that
        need them read from the store themselves."""
        return [f.name for f in self.store.schema(table)
                if not (f.metadata and f.metadata.get(b"lance-encoding:blob"))
                and not pa.types.is_large_binary(f.type)]

    def _run_stage(self, stage: list[Step], video_ids, forced, touched, run_id) -> list[StepSummary]:
        sums = {s.name: StepSummary(s.name, s.op) for s in stage}
        pending_by_step = {s.name: set(self._pending(s, video_ids, forced, touched)) for s in stage}
        pending = [v for v in video_ids if any(v in p for p in pending_by_step.values())]
        for s in stage:
            sums[s.name].skipped = len(video_ids) - len(pending_by_step[s.name])
        label = "+".join(s.name for s in stage)
        if not pending:
            self.progress(label, 0, 0)
            return list(sums.values())
        table = stage[0].op_cls.input_table
        videos = {r["video_id"]: r for r in self._rows("videos", pending,
                                                       self._readable_columns("videos"))}
        if table == "videos":
            children = {vid: [videos[vid]] for vid in pending}
        else:
            children = {vid: [] for vid in pending}
            if self.store.exists(table):
                for r in self._rows(table, pending, self._readable_columns(table)):
                    children[r["video_id"]].append(r)
        items = [{"video_id": vid, "payload": pickle.dumps((videos[vid], children[vid]))}
                 for vid in pending if children[vid] or table == "videos"]
        no_rows = [vid for vid in pending if not children[vid] and table != "videos"]
        t0 = time.perf_counter()
        inline = all(s.op_cls.inline for s in stage)
        mapper = _ray_map if self.executor == "ray" and not inline else _local_map
        buffer: list[tuple[str, list[StepResult]]] = []
        got: set[str] = set()
        done = 0
        self.progress(label, 0, len(pending))
        last_flush = time.perf_counter()
        # nothing to do for these videos (e.g. every shot too short for a clip): done, no rows
        self._flush(stage, [(vid, [StepResult(s.name, vid, rows=None) for s in stage]) for vid in no_rows],
                    videos, children, run_id, sums)
        done += len(no_rows)
        got.update(no_rows)
        for vid, results in mapper(items, stage, self.model_dir, self.workers, table):
            buffer.append((vid, results))
            got.add(vid)
            done += 1
            if len(buffer) >= self.flush_every or time.perf_counter() - last_flush > self.flush_seconds:
                self._flush(stage, buffer, videos, children, run_id, sums)
                buffer, last_flush = [], time.perf_counter()
            self.progress(label, done, len(pending))
        self._flush(stage, buffer, videos, children, run_id, sums)
        # Videos whose worker died (a decoder segfault, the OOM killer) have no result. A death can
        # also take a video that merely shared the worker, so each lost video gets one more try on
        # its own; one that is lost again is the culprit and gets the error.
        by_vid = {item["video_id"]: item for item in items}
        for vid in [v for v in pending if v not in got and v in by_vid]:
            retry = list(mapper([by_vid[vid]], stage, self.model_dir, 1, table))
            results = retry[0][1] if retry else [
                StepResult(s.name, vid, error="worker crashed while processing this video")
                for s in stage]
            self._flush(stage, [(vid, results)], videos, children, run_id, sums)
        for s in stage:
            touched.setdefault(s.name, set()).update(pending_by_step[s.name])
            sums[s.name].seconds = time.perf_counter() - t0
        return list(sums.values())

    def _flush(self, stage: list[Step], buffer: list[tuple[str, list[StepResult]]], videos: dict,
               children: dict, run_id: str, sums: dict[str, StepSummary]) -> None:
        """Write the results of some videos for a stage: rows first, then their status, so a kill
        between the two only makes the next run redo (idempotently) those videos."""
        if not buffer:
            return
        from schemas import STATUS
        status = []
        for step in stage:
            cls = step.op_cls
            key = KEYS[cls.input_table]
            op = step.make()
            marks, outputs, emitted_for = [], [], []
            for vid, results in buffer:
                r = next(x for x in results if x.step == step.name)
                inputs = children.get(vid) or []
                s = sums[step.name]
                if r.error:
                    s.failed_videos += 1
                    marks += [{**{k: row[k] for k in key}, "error": r.error, "error_stage": r.step,
                               "run_id": run_id} for row in inputs]
                else:
                    if cls.output_table != cls.input_table:
                        emitted_for.append(vid)
                        # success of an emitting step clears its own earlier error on the input rows
                        marks += [{**{k: row[k] for k in key}, "error": None, "error_stage": None,
                                   "run_id": run_id} for row in inputs if row.get("error_stage") == r.step]
                    if r.rows is not None and r.rows.num_rows:
                        t = r.rows.append_column("run_id", pa.array([run_id] * r.rows.num_rows, pa.string()))
                        outputs.append(t)
                        s.rows += t.num_rows
                    for m in r.marks or []:   # rows this step failed on, or no longer fails on
                        marks.append({**m, "run_id": run_id})
                        s.failed_rows += m["error"] is not None
                s.done += 1
                status.append({"step": r.step, "video_id": vid, "op": cls.name,
                               "op_version": cls.version, "params_hash": op.params_hash(),
                               "ok": r.error is None, "error": r.error,
                               "rows": None if r.rows is None else r.rows.num_rows,
                               "seconds": r.seconds, "run_id": run_id, "updated_at": now()})
            out = pa.concat_tables(outputs, promote_options="permissive") if outputs else None
            if cls.output_table != cls.input_table:
                if emitted_for:  # emitted rows replace the videos' earlier rows of that table
                    where = "video_id IN (" + ", ".join(sql_quote(v) for v in emitted_for) + ")"
                    if out is not None:
                        self.store.replace(cls.output_table, where, out)
                    else:
                        self.store.delete(cls.output_table, where)
            elif out is not None:
                self.store.annotate(cls.output_table, out)
            if marks:
                self.store.annotate(cls.input_table, marks)
        self.store.upsert("status", pa.Table.from_pylist(status, schema=STATUS))
