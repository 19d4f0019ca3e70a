"""The streaming engine: the driver dispatches calls to an executor and commits what comes back.

A video's stage is dispatched as soon as the stages upstream of it are committed for that video,
so every stage runs at the same time as the others (CPU tasks next to GPU actors) and no stage
waits for the slowest video of the one before. What to run next, batch sizes and when to commit
are decided by :mod:`curation.policy`; where calls run by an executor (:mod:`curation.executors`);
the writes by :class:`curation.commit.Committer`. A video lost with its worker goes again alone
once, then its rows say "worker crashed while processing this video". A stage whose setup fails
stops (its ready videos are not run), the others go on, and the run then fails. Ctrl-C / SIGTERM:
calls in flight are abandoned, what came back is committed, :class:`failures.Interrupted`.
"""
from __future__ import annotations

import time
from typing import Callable

from curation import failures, policy
from curation.commit import Committer
from curation.executors import Executor
from curation.operator import StepResult
from curation.plan import Stage


class Scheduler:
    def __init__(self, remote: Executor, inline: Executor, committer: Committer,
                 progress: Callable[[str, int, int], None], flush_every: int = 16,
                 local: bool = False, max_commit_s: float = 15.0):
        self.remote, self.inline = remote, inline
        self.committer = committer
        self.progress = progress
        self.flush_every = flush_every
        self.local = local                  # one in-process call at a time
        self.max_commit_s = max_commit_s
        self.min_commit_s = 1.0             # commit at most once a second while workers are busy
        self.concurrency = (0.0, 0)         # (mean, max) calls in flight

    def run(self, stages: list[Stage], need: list[set[str]], video_ids: list[str]) -> None:
        self.stages = stages
        self.infos = [policy.StageInfo(st.index, st.deps, st.workers, st.batch,
                                       st.resources.num_cpus, st.inline) for st in stages]
        self.tracker = policy.Tracker(self.infos, need, video_ids)
        self.inflight: dict = {}            # (executor, handle) -> policy.Call
        self.per_video_s: dict[int, float] = {}
        self.retry_alone: list[set[str]] = [set() for _ in stages]
        self.broken: dict[int, str] = {}    # stages whose setup failed -> the error
        self.cpu_used, self.cpu_budget, self.budget_at = 0.0, self.remote.cpu_budget(), time.time()
        self.last_commit = time.perf_counter()
        for st in stages:
            self.progress(st.label, 0, self.tracker.total[st.index])
        stop = self._loop()
        if stop is None and self.broken:     # the other stages went on; the run still fails
            stop = failures.SetupFailed("; ".join(dict.fromkeys(self.broken.values())))
        if stop is not None:   # what finished is committed; what was in flight runs next time
            self.inflight.clear()
            self._commit(force=True)
            stop.committed = [(st.label, self.tracker.committed[st.index],
                               self.tracker.total[st.index]) for st in stages]
            raise stop

    def _loop(self) -> failures.Interrupted | None:
        busy_s, peak, t0 = 0.0, 0, time.perf_counter()
        try:
            while True:
                self._dispatch()
                if not self.inflight and not any(self.tracker.ready) \
                        and not self.committer.pending():
                    return None
                n, t = len(self.inflight), time.perf_counter()
                peak = max(peak, n)
                self._collect(0.2 if self.committer.pending() else 2.0)
                busy_s += n * (time.perf_counter() - t)
                self._commit(force=False)
        except KeyboardInterrupt as e:    # Ctrl-C, or SIGTERM (failures.Terminated)
            return failures.Interrupted.of(e)
        finally:
            self.remote.shutdown()
            self.inline.shutdown()
            self.concurrency = (busy_s / max(1e-9, time.perf_counter() - t0), peak)

    def _dispatch(self) -> None:
        if time.time() - self.budget_at > 10:   # nodes come and go
            self.cpu_budget, self.budget_at = self.remote.cpu_budget(), time.time()
        running: dict[int, int] = {}
        for call in self.inflight.values():
            running[call.stage] = running.get(call.stage, 0) + 1
        for call in policy.next_calls(self.infos, self.tracker, running, self.cpu_used,
                                      self.cpu_budget, self.per_video_s, self.retry_alone,
                                      local=self.local):
            st = self.stages[call.stage]
            ex = self.inline if st.inline else self.remote
            self.inflight[(ex, ex.submit(st, call.videos))] = call
            self.cpu_used += 0.0 if st.inline else call.cpus

    def _collect(self, timeout: float) -> None:
        for ex, wait in ((self.inline, 0.0), (self.remote, timeout)):
            for handle, outcome in ex.wait(wait):
                call = self.inflight.pop((ex, handle))
                self.cpu_used -= 0.0 if ex is self.inline else call.cpus
                ex.release(handle, dead=outcome[0] == "failed")
                self._take(call, outcome)

    def _take(self, call: policy.Call, outcome: tuple) -> None:
        """A finished call: results to the committer; videos lost with their worker again alone,
        once; a stage whose setup failed stops."""
        st, (kind, payload) = self.stages[call.stage], outcome
        if kind == "failed":
            for v in call.videos:
                if call.alone or v in self.retry_alone[st.index]:
                    self.committer.add(st.index, v, [StepResult.failure(s.name, v, payload)
                                                     for s in st.steps])
                else:
                    self.retry_alone[st.index].add(v)
                    self.tracker.ready[st.index].appendleft(v)
            return
        if payload:   # seconds of work per video of this stage
            sec = sum(r.seconds for _, res in payload for r in res) / len(payload)
            self.per_video_s[st.index] = policy.smoothed(self.per_video_s.get(st.index), sec)
        for vid, results in payload:
            self.committer.add(st.index, vid, results)
            setup = next((r for r in results if r.kind == "setup"), None)
            if setup is not None:   # no video can succeed in this stage: it stops here
                self.broken.setdefault(st.index, setup.error)
                self.tracker.drop(st.index)
        got = {vid for vid, _ in payload}
        for v in call.videos:       # a video row vanished between plan and work (deleted)
            if v not in got:
                self.committer.add(st.index, v, [StepResult(s.name, v, error="video row not found")
                                                 for s in st.steps])

    def _commit(self, force: bool) -> None:
        since = time.perf_counter() - self.last_commit
        ready = sum(len(r) for r in self.tracker.ready)
        if not force and not policy.commit_due(self.committer.pending(), since, len(self.inflight),
                                               ready, self._workers(), self.flush_every,
                                               min_s=self.min_commit_s, max_s=self.max_commit_s):
            return
        done = self.committer.commit()
        if not done:
            return
        self.last_commit = time.perf_counter()
        for i in sorted(self.tracker.done(done)):
            self.progress(self.stages[i].label, self.tracker.committed[i], self.tracker.total[i])
        for i in self.broken:
            self.tracker.drop(i)

    def _workers(self) -> int:
        return max((st.workers for st in self.stages), default=1)
