"""Run a workflow: check it, ingest the inputs, plan which (video, stage) pairs must run, run them
on an engine, then keep the store up to date.

The parts, one module each:

- :mod:`curation.plan`: the stages (a step, or adjacent frame steps sharing one decode) and, per
  stage, the videos that must run it (resume, ``--from``, retried failures);
- :mod:`curation.worker`: a stage over a batch of video ids, where the work happens (reads its
  inputs from the store, runs the operators, stages large outputs);
- :mod:`curation.commit`: what makes results visible (rows, error marks, ``status``), fenced by
  the store lease;
- engines that move videos through the stages: :mod:`curation.scheduler` (the driver streams calls
  to an executor: :mod:`curation.executors`, Ray tasks and actors or in-process, with the policy of
  :mod:`curation.policy`) and :mod:`curation.raydata` (one Ray Data pipeline: stages as Ray Data
  operators). ``engine="auto"``: see :data:`DEFAULT_ENGINE`.

Work travels as video ids; workers read their inputs from the store and write large outputs
themselves; a run killed at any point keeps what was committed and the next run redoes,
idempotently, only what was not.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from curation import failures
from curation.commit import Committer, StepSummary, now
from curation.executors import LocalExecutor, RayExecutor, init_ray
from curation.ingest import ingest, resolve_inputs
from curation.plan import Stage, needed, stages_of
from curation.store import LeaseLost, Store
from curation.worker import INLINE_BYTES, StageWorker, fs_of
from curation.workflow import Workflow
from schemas import SCHEMA_VERSION

__all__ = ["Runner", "RunSummary", "StepSummary", "StageWorker", "INLINE_BYTES", "init_ray",
           "new_run_id", "resolve_inputs", "ENGINES", "DEFAULT_ENGINE"]

ENGINES = ("scheduler", "raydata")
DEFAULT_ENGINE = "scheduler"   # with Ray; --local always runs in-process (docs/engine.md: why)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunSummary:
    run_id: str
    videos: int
    steps: list[StepSummary] = field(default_factory=list)
    seconds: float = 0.0
    failed_inputs: int = 0
    calls_in_flight: float = 0.0      # worker calls running at once, averaged over the stream time
    max_calls_in_flight: int = 0
    engine: str = ""
    engine_stats: str = ""            # the Ray Data engine: Ray Data's execution stats


class Runner:
    def __init__(self, workflow: Workflow, store: Store, model_dir: str | None = None,
                 workers: int = 2, executor: str = "ray", flush_every: int = 16,
                 flush_seconds: float = 15.0,
                 progress: Callable[[str, int, int], None] | None = None,
                 fence: Callable[[], None] | None = None, engine: str = "auto"):
        self.wf = workflow
        self.store = store
        self.model_dir = model_dir
        self.workers = workers
        self.executor = executor            # "ray" or "local" (in-process)
        self.engine = DEFAULT_ENGINE if engine == "auto" else engine
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.flush_every = flush_every      # commit at least every N results or T seconds
        self.flush_seconds = flush_seconds
        self.progress = progress or (lambda step, done, total: None)
        self.fence = fence   # raises (e.g. store.LeaseLost) when this run may no longer write
        self.concurrency = (0.0, 0)   # (mean, max) worker calls in flight during the last stream
        self.engine_stats = ""

    def stages(self) -> list[Stage]:
        return stages_of(self.wf, self.workers)

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
        summary = RunSummary(run_id=run_id, videos=len(got), failed_inputs=got.n_failed,
                             engine=self._engine_name())
        self._clean_staging()
        try:
            summary.steps = self.stream(list(got), forced, run_id)
            summary.calls_in_flight, summary.max_calls_in_flight = self.concurrency
            summary.engine_stats = self.engine_stats
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

    def stream(self, video_ids: list[str], forced: set[str], run_id: str) -> list[StepSummary]:
        """Plan, then run every (video, stage) that must run; the steps' summaries."""
        stages = self.stages()
        need = needed(self.store, self.wf, stages, video_ids, forced)
        committer = Committer(self.store, stages, run_id, self.fence)
        if not any(need):
            for st in stages:
                self.progress(st.label, 0, 0)
        else:
            engine = self._engine(committer, run_id)
            try:
                engine.run(stages, need, video_ids)
            finally:
                self.concurrency = engine.concurrency
                self.engine_stats = getattr(engine, "stats", "")
        sums = list(committer.sums.values())
        for s in sums:
            s.skipped = len(video_ids) - s.done
        return sums

    def _engine_name(self) -> str:
        return "local" if self.executor != "ray" else self.engine

    def _engine(self, committer: Committer, run_id: str):
        """The engine of this run: in-process (``executor="local"``), or on Ray the streaming
        scheduler or the Ray Data pipeline (both take ``run(stages, need, video_ids)``)."""
        from curation.scheduler import Scheduler
        args = lambda st: st.worker_args(self.model_dir, self.store, run_id)  # noqa: E731
        if self.executor != "ray":
            return Scheduler(LocalExecutor(args), LocalExecutor(args), committer, self.progress,
                             self.flush_every, local=True, max_commit_s=self.flush_seconds)
        init_ray(self.workers)
        if self.engine == "raydata":
            from curation.raydata import RayDataEngine
            return RayDataEngine(args, committer, self.progress, self.workers)
        return Scheduler(RayExecutor(args, self.workers), LocalExecutor(args), committer,
                         self.progress, self.flush_every, max_commit_s=self.flush_seconds)

    def _clean_staging(self) -> None:
        import pyarrow.fs as pafs
        fs, path = fs_of(f"{self.store.uri}/_staging")
        try:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_dir(path)
        except OSError:
            pass
