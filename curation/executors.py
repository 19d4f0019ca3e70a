"""Where the streaming engine's calls run: a small interface, two implementations.

An executor takes calls (a stage and a batch of video ids) and hands back their outcomes:

- ``submit(stage, videos) -> handle``; ``wait(timeout) -> [(handle, outcome)]`` of the calls that
  finished (``("done", [(video, [StepResult])])`` or ``("failed", Failure)`` when the worker died
  or raised); ``release(handle, dead)`` gives the worker back (a dead actor is replaced);
  ``shutdown()`` ends the workers (their operators' ``teardown()``); ``cpu_budget()``: CPUs the
  calls in flight may use.
- :class:`LocalExecutor` runs each call in this process when it is submitted (``--local``, and the
  driver's inline stages).
- :class:`RayExecutor`: Ray tasks for stateless stages, one pool of actors per model stage (sized by
  the stage's ``workers``, its operators set up once per actor), placed by the declared resources.
  One call in flight per actor, so a worker that dies loses only that batch.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from curation import failures
from curation.plan import Stage
from curation.worker import StageWorker, task


class Executor(Protocol):
    def submit(self, stage: Stage, videos: list[str]): ...

    def wait(self, timeout: float) -> list[tuple[object, tuple]]: ...

    def release(self, handle, dead: bool) -> None: ...

    def shutdown(self) -> None: ...

    def cpu_budget(self) -> float: ...


class LocalExecutor:
    """In-process: one StageWorker per stage; a call runs when it is submitted."""

    def __init__(self, worker_args):
        self.worker_args = worker_args    # stage -> the StageWorker's arguments
        self.workers: dict[int, StageWorker] = {}
        self.finished: list[tuple[object, tuple]] = []
        self.calls = 0

    def submit(self, stage: Stage, videos: list[str]):
        if stage.index not in self.workers:
            self.workers[stage.index] = StageWorker(*self.worker_args(stage))
        self.calls += 1
        try:
            outcome = ("done", self.workers[stage.index](videos))
        except Exception as e:  # noqa: BLE001 - the call failed outside an operator
            outcome = ("failed", failures.of(e))
        self.finished.append((self.calls, outcome))
        return self.calls

    def wait(self, timeout: float) -> list[tuple[object, tuple]]:
        out, self.finished = self.finished, []
        return out

    def release(self, handle, dead: bool) -> None:
        pass

    def shutdown(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers = {}

    def cpu_budget(self) -> float:
        return 1.0


class RayExecutor:
    def __init__(self, worker_args, workers: int):
        import ray
        self.ray = ray
        self.worker_args = worker_args
        self.workers = workers            # --workers: the budget is at least this many CPUs
        self.pools: dict[int, _RayPool] = {}
        self.inflight: dict = {}          # ref -> stage index
        self._budget_read: threading.Thread | None = None
        self._budget_box: dict = {}       # "cpus": the last budget the GCS gave

    BUDGET_TIMEOUT_S = 10.0

    def submit(self, stage: Stage, videos: list[str]):
        if stage.index not in self.pools:
            self.pools[stage.index] = _RayPool(stage, self.worker_args(stage))
        ref = self.pools[stage.index].submit(videos)
        self.inflight[ref] = stage.index
        return ref

    def wait(self, timeout: float) -> list[tuple[object, tuple]]:
        if not self.inflight:
            return []
        refs = list(self.inflight)
        done, rest = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if done and rest:   # and whatever else is finished already
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        out = []
        for ref in done:
            try:
                outcome = ("done", self.ray.get(ref))
            except Exception as e:  # noqa: BLE001 - the worker died (crash, OOM kill) or raised
                outcome = ("failed", failures.of_lost_worker(e))
            out.append((ref, outcome))
        return out

    def release(self, handle, dead: bool) -> None:
        stage = self.inflight.pop(handle, None)
        if stage is not None:
            self.pools[stage].release(handle, dead)

    def shutdown(self) -> None:
        for p in self.pools.values():
            p.shutdown()
        self.pools, self.inflight = {}, {}

    def cpu_budget(self) -> float:
        """The cluster's CPUs, at least --workers (an autoscaling cluster that starts empty must
        still see demand); re-read as nodes come and go. The GCS read runs in a thread of its own
        with a deadline: a GCS that does not answer leaves the last known budget (or the local
        CPUs) instead of blocking the run (seen in a driver process that had run Ray Train and Ray
        Data before: ``GlobalStateAccessor.GetAllTotalResources`` waited forever)."""
        if self._budget_read is None or not self._budget_read.is_alive():
            box = self._budget_box
            def read():   # noqa: E306
                box["cpus"] = float(self.ray.cluster_resources().get("CPU", 0.0))
            self._budget_read = threading.Thread(target=read, name="cpu-budget", daemon=True)
            self._budget_read.start()
            self._budget_read.join(self.BUDGET_TIMEOUT_S)
            if self._budget_read.is_alive():
                logging.getLogger(__name__).warning(
                    "the Ray GCS did not give the cluster's CPUs within %g s; using %s",
                    self.BUDGET_TIMEOUT_S, box.get("cpus", "the local CPU count"))
        cpus = self._budget_box.get("cpus", float(os.cpu_count() or 1))
        return max(cpus, float(self.workers))


class _RayPool:
    """Tasks (stateless stages) or actors (stages that load a model), each call one batch."""

    def __init__(self, stage: Stage, args: tuple):
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
            self.task = ray.remote(task).options(num_cpus=res.num_cpus, max_retries=1, **opts)

    def submit(self, videos: list[str]):
        if not self.stage.stateful:
            return self.task.remote(self.args, videos)
        actor = self.idle.pop() if self.idle else self.cls.remote(*self.args)
        ref = actor.__call__.remote(videos)
        self.busy[ref] = actor
        return ref

    def release(self, ref, dead: bool) -> None:
        if self.stage.stateful:
            actor = self.busy.pop(ref, None)
            if actor is not None and not dead:
                self.idle.append(actor)
            elif actor is not None:
                self.ray.kill(actor, no_restart=True)

    def shutdown(self) -> None:
        """Idle actors close their operators (teardown) before they go; busy ones (a run that
        stops early) are killed."""
        if not self.stage.stateful:
            return
        closing = [a.close.remote() for a in self.idle]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=10)
        for a in self.idle + list(self.busy.values()):
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.idle, self.busy = [], {}


def init_ray(workers: int | None = None) -> None:
    """Start a local Ray (CPUs: the machine's, at least 2 and ``workers``), or join the cluster of
    ``RAY_ADDRESS``."""
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
