"""The Ray Data engine: a run as one Ray Data pipeline, one operator per stage.

The dataset's rows are the videos that must run some stage (``video_id``, the stages it needs, the
stages that failed it). Each stage, in dependency order, is a ``map_batches`` over batches of those
rows: a stateless stage a pool of tasks (``TaskPoolStrategy(size=workers)``), a stage that loads a
model a pool of actors that autoscales between 1 and ``workers`` (operators set up once per actor,
``teardown()`` when the pool ends), asking Ray for the stage's CPUs, GPUs, memory and custom
resources; fused frame steps stay one stage (one decode). Ray Data streams the rows through the
operators with its back-pressure, so a video reaches a stage as soon as the stages before it are
done for it. A row skips a stage it does not need, or whose upstream stages failed it.

A downstream stage reads what its upstream stage committed, so a stage's call returns its rows
only once its results are committed. Two ways (``commit=``): ``"group"`` (the default), a commit
operator: one actor that every stage's calls hand their results to, committing whatever is pending
in one go while new results queue (group commit: one writer, no Lance commit conflicts), or
``"worker"``, where each stage's task or actor commits its own batch (commits of concurrent
workers conflict and are retried). Both are fenced by the store lease; measured in docs/engine.md.

Crash isolation: Ray Data drops the batch of a worker that died (``max_errored_blocks = -1``, no
task retries); the videos missing from the output go through a second pipeline one per batch, and
a video lost again is marked "worker crashed while processing this video" at the stage where it
died. Progress goes to the driver through a small actor as results are committed.
"""
from __future__ import annotations

import json
import pickle
import threading
import time
from typing import Callable

import pyarrow as pa

from curation import failures
from curation.commit import Committer
from curation.operator import StepResult
from curation.plan import Stage
from curation.store import LeaseLost, sql_quote

CALL_BYTES = 4 << 20     # input bytes per call of a stage without a batch size (see _batch)
MAX_BATCH = 64


class _Tally:
    """Counts of committed and skipped videos per stage, read by the driver for its progress bars."""

    def __init__(self):
        self.counts: dict[int, list[int]] = {}
        self.calls: list[tuple[float, float]] = []   # (start, end) of every stage call

    def call(self, start: float, end: float) -> None:
        self.calls.append((start, end))

    def in_flight(self, start: float, end: float) -> tuple[float, int]:
        """Calls in flight between ``start`` and ``end``: time-averaged, and at most."""
        events = sorted([(a, 1) for a, _ in self.calls] + [(b, -1) for _, b in self.calls])
        busy = sum(min(b, end) - max(a, start) for a, b in self.calls if b > start and a < end)
        now = peak = 0
        for _, d in events:
            now += d
            peak = max(peak, now)
        return busy / max(1e-9, end - start), peak

    def add(self, stage: int, committed: int, skipped: int) -> None:
        c = self.counts.setdefault(stage, [0, 0])
        c[0] += committed
        c[1] += skipped

    def get(self) -> dict[int, list[int]]:
        return self.counts


class _Commits:
    """The commit operator (``commit="group"``): one actor that every stage's calls hand their
    results to. It commits whatever is pending in one go (all stages' rows, one ``status`` write)
    while new results queue for the next commit: group commit, one writer, so Lance commits never
    conflict with each other. A call does not wait for its commit: it gets a ticket, its rows carry
    it, and the stage downstream waits for the tickets of its rows before it reads the store (by
    then they are usually committed), so commits overlap the work."""

    def __init__(self, stages: list[Stage], store_uri: str, storage_options, run_id: str, fence,
                 tally):
        import asyncio
        from curation.store import Store
        self.committer = Committer(Store(store_uri, storage_options), stages, run_id, fence)
        self.tally = tally
        self.pending: list[tuple[int, int, list, int]] = []   # (ticket, stage, results, skipped)
        self.issued = self.done = 0      # tickets given out; committed up to
        self.stop: tuple[str, str] | None = None   # why the run must stop (a lost lease, a write)
        self.changed = asyncio.Condition()
        self.busy = False
        self.closed = False

    async def submit(self, stage: int, blob: bytes, skipped: int) -> int:
        """Queue one call's results (pickled [(video, [StepResult])]); returns their ticket (0 and
        nothing committed once the run is stopping: see :meth:`close`)."""
        import asyncio
        if self.closed:
            return 0
        self.issued += 1
        self.pending.append((self.issued, stage, pickle.loads(blob), skipped))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return self.issued

    async def wait(self, ticket: int) -> tuple[str, str] | None:
        """Return once everything up to ``ticket`` is committed: None, or why the run must stop."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.done >= ticket or self.stop is not None)
        return self.stop

    async def close(self) -> None:
        """The run stops (Ctrl-C, SIGTERM): what was handed in is committed, nothing more."""
        self.closed = True
        await self.wait(self.issued)

    async def flush(self) -> tuple[str, str] | None:
        """Return once every result handed in so far is committed."""
        return await self.wait(self.issued)

    async def _drain(self) -> None:
        import asyncio
        while self.pending:
            batch, self.pending = self.pending, []
            for _, stage, results, _ in batch:   # (results that come in meanwhile wait their turn)
                for vid, res in results:
                    self.committer.add(stage, vid, res)
            outcome = await asyncio.to_thread(_commit, self.committer)
            self.stop = self.stop or outcome
            for _, stage, results, skipped in batch:
                if outcome is None and (results or skipped):
                    self.tally.add.remote(stage, len(results), skipped)
            async with self.changed:
                self.done = batch[-1][0]
                self.changed.notify_all()
        self.busy = False


class _StageCall:
    """One stage over a batch of rows: run the StageWorker on the rows that need the stage and
    commit its results before returning the rows (downstream stages read them from the store):
    in this worker (``commit="worker"``) or through the commit actor (``"group"``). Returns the
    rows with the stages that failed them; a reason to stop the run rides on the first row."""

    def __init__(self, stage: Stage, args: tuple, store_uri: str, storage_options, run_id: str,
                 fence, tally, commits, stateful: bool):
        from curation.store import Store
        from curation.worker import StageWorker
        self.stage, self.tally, self.commits = stage, tally, commits
        self.worker = StageWorker(*args) if stateful else None
        self.args = args
        self.committer = Committer(Store(store_uri, storage_options), [stage], run_id, fence)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        run, skip = [], []
        for r in rows:
            if self.stage.index in _ints(r["need"]):
                (skip if _ints(r["failed"]) & self.stage.deps else run).append(r)
        stop = self._upstream_committed(run)
        t0 = time.time()
        results = self._work([r["video_id"] for r in run]) if run and not stop else []
        if results:
            self.tally.call.remote(t0, time.time())
        by_vid = dict(results)
        for r in run + skip:    # failed here, or upstream (skipped here): and so below
            res = by_vid.get(r["video_id"])
            if res is None or any(x.error for x in res):
                r["failed"] = _join(_ints(r["failed"]) | {self.stage.index})
        stop = stop or self._commit(rows, results, len(skip))
        setup = next((x.error for _, res in results for x in res if x.kind == "setup"), None)
        if rows and (stop or setup):
            rows[0]["abort"] = json.dumps(list(stop or ("setup", setup)))
        return pa.Table.from_pylist(rows, schema=batch.schema)

    def _upstream_committed(self, rows: list[dict]) -> tuple[str, str] | None:
        """Wait until what the stages upstream made for these rows is committed (group commit)."""
        import ray
        ticket = max((r["ticket"] or 0 for r in rows), default=0)
        if self.commits is None or not ticket:
            return None
        return ray.get(self.commits.wait.remote(ticket))

    def _commit(self, rows, results, skipped: int) -> tuple[str, str] | None:
        """Commit the results (or queue them for the commit actor, the rows carrying the ticket)."""
        import ray
        if self.commits is not None:
            if results or skipped:
                ticket = ray.get(self.commits.submit.remote(
                    self.stage.index, pickle.dumps(results), skipped))
                for r in rows:
                    r["ticket"] = ticket
            return None
        for vid, res in results:
            self.committer.add(self.stage.index, vid, res)
        stop = _commit(self.committer)
        if stop is None and (results or skipped):
            self.tally.add.remote(self.stage.index, len(results), skipped)
        return stop

    def _work(self, video_ids: list[str]) -> list[tuple[str, list[StepResult]]]:
        from curation.worker import task
        got = self.worker(video_ids) if self.worker is not None else task(self.args, video_ids)
        have = {v for v, _ in got}
        return got + [(v, [StepResult(s.name, v, error="video row not found")
                           for s in self.stage.steps]) for v in video_ids if v not in have]

    def __del__(self):   # Ray Data deletes the UDF when the actor pool ends
        if self.worker is not None:
            self.worker.close()


def _commit(committer: Committer) -> tuple[str, str] | None:
    """Commit what is pending; a reason to stop the run instead of raising (an exception in a
    Ray Data task would only drop its batch): a lost lease, or a failed write."""
    try:
        committer.commit()
    except LeaseLost as e:
        return ("lease", str(e))
    except Exception as e:  # noqa: BLE001 - the driver raises it
        return ("error", failures.one_line(failures.describe(e)))
    return None


def _ints(text: str | None) -> set[int]:
    return {int(x) for x in (text or "").split(",") if x}


def _join(ints: set[int]) -> str:
    return ",".join(str(i) for i in sorted(ints))


def _task_args() -> dict:
    return {"max_retries": 0}       # a dead worker's batch is found missing and retried alone


def _actor_args() -> dict:
    return {"max_restarts": -1, "max_task_retries": 0}


SCHEMA = pa.schema([("video_id", pa.string()), ("need", pa.string()), ("failed", pa.string()),
                    ("abort", pa.string()), ("ticket", pa.int64())])


class RayDataEngine:
    def __init__(self, worker_args: Callable[[Stage], tuple], committer: Committer,
                 progress: Callable[[str, int, int], None], workers: int,
                 commit: str = "group", batch: int | None = None, tasks_per_actor: int = 1,
                 settings: dict | None = None, actor_cpus: float = 0.01):
        self.worker_args, self.committer, self.progress = worker_args, committer, progress
        self.workers = workers
        self.commit = commit              # "group" or "worker" (see the module docstring)
        self.batch = batch                # videos per call of every stage (None: _batch)
        self.tasks_per_actor = tasks_per_actor
        self.settings = dict(settings or {})   # DataContext attributes to set
        self.actor_cpus = actor_cpus
        self.concurrency = (0.0, 0)
        self.stats = ""            # Ray Data's execution stats of the run's pipelines

    def run(self, stages: list[Stage], need: list[set[str]], video_ids: list[str]) -> None:
        self._start(stages, need, video_ids)
        t0 = time.time()
        try:
            out = self._pipeline(stages, need, video_ids, self.batch)
            lost = [v for v in video_ids if any(v in n for n in need) and v not in out]
            if lost:   # each again, alone; then what is still lost is marked where it died
                again = self._still_needed(stages, need, lost)
                out.update(self._pipeline(stages, again, lost, 1))
                self._mark_crashed(stages, again, [v for v in lost if v not in out])
        except KeyboardInterrupt as e:
            raise self._stopped(failures.Interrupted.of(e)) from None
        finally:
            self._finish(t0)
        self._raise_aborts(out)
        self._summarize(video_ids)

    def _start(self, stages, need, video_ids) -> None:
        import ray
        self.stages, self.video_ids, self.stats = stages, video_ids, ""
        self.total = [len(n) for n in need]
        sizes = sorted(r["size_bytes"] or 0 for r in self.committer.store.of_videos(
            "videos", video_ids, ["size_bytes"]).to_pylist())
        self.median_bytes = float(sizes[len(sizes) // 2]) if sizes else 1.0
        self.tally = ray.remote(num_cpus=0)(_Tally).remote()
        self.commits = None
        if self.commit == "group":   # one writer for every stage's results (see _Commits)
            args = self.worker_args(stages[0])
            self.commits = ray.remote(num_cpus=0, max_concurrency=1000)(_Commits).remote(
                stages, args[3], args[4], args[5], self.committer.fence, self.tally)
        for st in stages:
            self.progress(st.label, 0, self.total[st.index])
        self.stop = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def _finish(self, t0: float) -> None:
        import ray
        self.stop.set()
        self.poller.join(timeout=5)
        self._poll_once()
        try:
            self.concurrency = ray.get(self.tally.in_flight.remote(t0, time.time()), timeout=10)
        except Exception:  # noqa: BLE001 - a measurement only
            pass
        for actor in (self.tally, self.commits):   # (what they did is in the store)
            if actor is not None:
                ray.kill(actor)
        self.tally = self.commits = None

    def _committed(self, video_ids: list[str]) -> list[dict]:
        """The status rows this run committed for these videos."""
        run = sql_quote(self.committer.run_id)
        return self.committer.store.of_videos("status", video_ids, ["step", "video_id", "ok", "rows",
                                              "seconds"], f"run_id = {run}").to_pylist()

    def _still_needed(self, stages, need, video_ids) -> list[set[str]]:
        done = {(r["step"], r["video_id"]) for r in self._committed(video_ids)}
        return [{v for v in video_ids if v in need[st.index] and (st.steps[0].name, v) not in done}
                for st in stages]

    def _summarize(self, video_ids: list[str]) -> None:
        """The steps' summaries, from what this run committed (the workers committed it)."""
        status = self._committed(video_ids)
        ok: dict[str, set[str]] = {}
        for r in status:
            s = self.committer.sums[r["step"]]
            s.done, s.rows, s.seconds = s.done + 1, s.rows + (r["rows"] or 0), s.seconds + (r["seconds"] or 0.0)
            if r["ok"]:
                ok.setdefault(r["step"], set()).add(r["video_id"])
            else:
                s.failed_videos += 1
        store, run = self.committer.store, sql_quote(self.committer.run_id)
        for st in self.stages:
            for step in st.steps:
                table = step.op_cls.input_table
                if not store.exists(table) or "error_stage" not in store.schema(table).names:
                    continue
                rows = store.query(table, where=f"run_id = {run} AND error IS NOT NULL AND "
                                   f"error_stage = {sql_quote(step.name)}", columns=["video_id"])
                self.committer.sums[step.name].failed_rows += sum(
                    1 for v in rows["video_id"].to_pylist() if v in ok.get(step.name, ()))

    def _pipeline(self, stages, need, video_ids, batch: int | None) -> dict[str, dict]:
        """One Ray Data pipeline over these videos; returns its output rows by video."""
        import warnings

        import ray
        self._configure(ray.data.DataContext.get_current())
        rows = [{"video_id": v, "need": _join({st.index for st in stages if v in need[st.index]}),
                 "failed": "", "abort": None, "ticket": None} for v in video_ids]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        step = max(1, -(-len(rows) // 256))    # input blocks of a few videos: streaming starts at once
        ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(rows), step)])
        with warnings.catch_warnings():   # Ray Data's notes on small inputs, deprecations
            warnings.simplefilter("ignore")
            for st in stages:
                if any(need[st.index]):
                    ds = self._stage(ds, st, batch or self._batch(st, len(need[st.index])))
            out = {r["video_id"]: r for r in ds.take_all()}
        self.stats += ds.stats() + "\n"
        stop = ray.get(self.commits.flush.remote()) if self.commits is not None else None
        if stop and out:   # the last commits' outcome
            next(iter(out.values()))["abort"] = json.dumps(list(stop))
        return out

    def _configure(self, ctx) -> None:
        import logging
        ctx.max_errored_blocks = -1            # a dead worker's batch is dropped, found, retried
        ctx.enable_progress_bars = False       # ours are the committed videos per stage
        # one call in flight per actor (a dead actor loses one batch): the pool grows when all
        # its actors are busy
        auto = ctx.autoscaling_config
        auto.actor_pool_util_upscaling_threshold = min(auto.actor_pool_util_upscaling_threshold,
                                                       float(self.tasks_per_actor))
        for key, value in self.settings.items():   # measured settings (bench/engines.py)
            setattr(ctx, key, value)
        logging.getLogger("ray.data").setLevel(logging.ERROR)   # its own log file has the rest

    def _stage(self, ds, st: Stage, batch: int):
        """The stage's Ray Data operator."""
        import ray
        res, args = st.resources, self.worker_args(st)
        common = dict(batch_size=batch, batch_format="pyarrow", zero_copy_batch=True,
                      num_cpus=res.num_cpus, num_gpus=res.num_gpus or None,
                      memory=(res.memory_mb or 0) * 2**20 or None,
                      resources=dict(res.custom) or None)
        ctor = (st, args, args[3], args[4], args[5], self.committer.fence, self.tally, self.commits)
        name = "".join(c if c.isalnum() else "_" for c in st.label)
        if st.stateful:   # an autoscaling pool of actors; a dead one is replaced, its call not retried
            # an actor asks for a token CPU share (as the scheduler's do): a CPU reserved for an
            # idle actor would starve the stages upstream of it (on 2 CPUs, every task stage)
            common["num_cpus"] = min(res.num_cpus, self.actor_cpus)
            return ds.map_batches(type(f"Stage_{name}", (_StageCall,), {}),
                                  fn_constructor_args=(*ctor, True),
                                  compute=ray.data.ActorPoolStrategy(
                                      min_size=1, max_size=st.workers,
                                      max_tasks_in_flight_per_actor=self.tasks_per_actor),
                                  ray_remote_args_fn=_actor_args, **common)

        def fn(batch_, _ctor=ctor):
            return _StageCall(*_ctor, False)(batch_)
        fn.__name__ = fn.__qualname__ = f"Stage_{name}"
        return ds.map_batches(fn, compute=ray.data.TaskPoolStrategy(size=st.workers),
                              ray_remote_args_fn=_task_args, **common)

    def _batch(self, st: Stage, videos: int) -> int:
        """Videos per call of a stage without a batch size (model stages too: an operator's
        default of 1 is no batch size). Ray Data's batch size is fixed when the pipeline is built,
        before any video was measured, so it comes from the files' sizes: about CALL_BYTES of input
        per call (1 s tiny videos: 64 per call; the shared clips: 1), and no more than leaves every
        worker of the stage a few calls (streaming)."""
        fixed = max((s.batch_size or (s.op_cls.batch_size if s.op_cls.batch_size > 1 else 0)
                     for s in st.steps), default=0)   # set in the workflow, or by the operator
        if self.batch or fixed:
            return self.batch or fixed
        by_size = int(CALL_BYTES / max(1.0, self.median_bytes))
        return max(1, min(MAX_BATCH, by_size, videos // (4 * st.workers)))

    def _mark_crashed(self, stages, need, video_ids) -> None:
        """Videos lost twice: marked at the first stage they still need (where they died)."""
        done = {(r["step"], r["video_id"]) for r in self._committed(video_ids)}
        lost = failures.Failure("crash", failures.CRASHED)
        for vid in video_ids:
            st = next((s for s in stages if vid in need[s.index]
                       and (s.steps[0].name, vid) not in done), None)
            if st is not None:
                self.committer.add(st.index, vid, [StepResult.failure(s.name, vid, lost)
                                                   for s in st.steps])
        self.committer.commit()
        self.committer.sums = {k: type(v)(v.step, v.op) for k, v in self.committer.sums.items()}

    def _raise_aborts(self, out: dict) -> None:
        aborts = [json.loads(r["abort"]) for r in out.values() if r.get("abort")]
        for kind, message in aborts:
            if kind == "lease":
                raise LeaseLost(message)
        for kind, message in aborts:
            if kind == "error":
                raise RuntimeError(message)
        setup = list(dict.fromkeys(m for k, m in aborts if k == "setup"))
        if setup:
            raise self._stopped(failures.SetupFailed("; ".join(setup)))

    def _stopped(self, stop: failures.RunStopped) -> failures.RunStopped:
        """``stop``, saying what was committed (the commit actor first stops taking results)."""
        import ray
        if getattr(self, "commits", None) is not None:
            try:
                ray.get(self.commits.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - the count below says what is in the store
                pass
        done: dict[str, int] = {}
        for r in self._committed(self.video_ids):
            done[r["step"]] = done.get(r["step"], 0) + 1
        stop.committed = [(st.label, done.get(st.steps[0].name, 0), self.total[st.index])
                          for st in self.stages]
        return stop

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self._poll_once()

    def _poll_once(self) -> dict[int, list[int]]:
        import ray
        if self.tally is None:
            return {}
        try:
            counts = ray.get(self.tally.get.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress only
            return {}
        for st in self.stages:
            done, skipped = counts.get(st.index, [0, 0])
            self.progress(st.label, done, self.total[st.index] - skipped)
        return counts
