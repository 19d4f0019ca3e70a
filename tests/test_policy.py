"""The streaming engine's policy and loop with fake pools: no media, no store, no Ray (ms each)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from curation import failures, policy
from curation.operator import Resources, StepResult
from curation.scheduler import Scheduler


# ---- the pure policy --------------------------------------------------------------------------------
def test_batch_size_one_until_measured_then_about_a_second_of_work():
    assert policy.batch_size(None, ready=100, workers=2) == 1
    assert policy.batch_size(0.01, ready=100, workers=2) == 50          # even share of the ready
    assert policy.batch_size(0.001, ready=1000, workers=1) == policy.MAX_BATCH
    assert policy.batch_size(0.25, ready=100, workers=2) == 4           # about CALL_SECONDS
    assert policy.batch_size(3.0, ready=100, workers=2) == 1


def _chain(n_stages: int, workers: int = 2, **kw) -> list[policy.StageInfo]:
    return [policy.StageInfo(i, {i - 1} if i else set(), workers, **kw) for i in range(n_stages)]


def test_tracker_moves_videos_on_and_skips_below_a_failure():
    stages = _chain(3)
    t = policy.Tracker(stages, [{"a", "b"}, {"a", "b"}, {"a", "b"}], ["a", "b"])
    assert [list(r) for r in t.ready] == [["a", "b"], [], []]
    t.ready[0].clear()
    t.done([(0, "a", False), (0, "b", True)])           # b failed its whole video in stage 0
    assert list(t.ready[1]) == ["a"] and t.total == [2, 1, 1]
    assert "b" in t.failed[2] and "b" in t.settled[2]    # skipped below, counted
    # a video that does not need a stage does not wait for it
    t2 = policy.Tracker(stages, [{"a"}, set(), {"a"}], ["a"])
    t2.ready[0].clear()
    t2.done([(0, "a", False)])
    assert list(t2.ready[2]) == ["a"]


def test_next_calls_downstream_first_within_workers_and_cpu_budget():
    stages = _chain(2, workers=2)
    t = policy.Tracker(stages, [set("abcdef"), set("abcdef")], list("abcdef"))
    t.ready[1].extend("xy")
    calls = policy.next_calls(stages, t, running={}, cpu_used=0, cpu_budget=3, per_video_s={},
                              retry_alone=[set(), set()])
    assert [(c.stage, c.videos) for c in calls] == [(1, ["x"]), (1, ["y"]), (0, ["a"])]
    # a stage at its workers gets no more; the budget stops everything
    calls = policy.next_calls(stages, t, running={0: 2}, cpu_used=2, cpu_budget=8, per_video_s={},
                              retry_alone=[set(), set()])
    assert calls == []
    calls = policy.next_calls(stages, t, running={1: 1}, cpu_used=2, cpu_budget=2,
                              per_video_s={0: 0.1}, retry_alone=[set(), set()])
    assert calls == []


def test_a_lost_video_goes_again_alone():
    stages = _chain(1, workers=4)
    t = policy.Tracker(stages, [set("abcd")], list("abcd"))
    t.ready[0].clear()
    t.ready[0].extend(["c", "a", "b"])
    calls = policy.next_calls(stages, t, {}, 0, 8, {0: 0.001}, [{"c"}])
    assert [(c.videos, c.alone) for c in calls] == [(["c"], True), (["a"], False), (["b"], False)]


def test_inline_stages_take_everything_and_local_runs_one_call():
    stages = [policy.StageInfo(0, set(), inline=True), policy.StageInfo(1, {0}, batch=2)]
    t = policy.Tracker(stages, [set("abc"), set("abc")], list("abc"))
    t.ready[1].extend("abc")
    calls = policy.next_calls(stages, t, {}, 0, 1, {}, [set(), set()], local=True)
    assert [(c.stage, c.videos) for c in calls] == [(1, ["a", "b"])]     # one call, then commit
    calls = policy.next_calls(stages, t, {}, 0, 1, {}, [set(), set()], local=True)
    assert [(c.stage, c.videos) for c in calls] == [(1, ["c"])]
    calls = policy.next_calls(stages, t, {}, 0, 1, {}, [set(), set()], local=True)
    assert [(c.stage, c.videos) for c in calls] == [(0, ["a", "b", "c"])]


@pytest.mark.parametrize("args, due", [
    (dict(pending=0, since_s=99, in_flight=0, ready=0), False),
    (dict(pending=1, since_s=0.0, in_flight=0, ready=0), True),     # nothing else to wait for
    (dict(pending=1, since_s=0.5, in_flight=1, ready=0), False),    # at most once a second
    (dict(pending=1, since_s=1.5, in_flight=1, ready=0), True),     # a worker would starve
    (dict(pending=1, since_s=1.5, in_flight=2, ready=5), False),    # busy, few results
    (dict(pending=16, since_s=1.5, in_flight=2, ready=5), True),    # flush_every results
    (dict(pending=1, since_s=15.0, in_flight=2, ready=5), True),    # at least every 15 s
])
def test_commit_due(args, due):
    assert policy.commit_due(**args, workers=2, flush_every=16) is due


# ---- the loop, with fake pools -----------------------------------------------------------------------
@dataclass
class FakeStep:
    name: str


@dataclass
class FakeStage:
    index: int
    deps: set
    workers: int = 2
    batch: int | None = None
    inline: bool = False
    resources: Resources = Resources(num_cpus=1.0)
    steps: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.steps[0].name


def _stages(n: int, **kw) -> list[FakeStage]:
    return [FakeStage(i, {i - 1} if i else set(), steps=[FakeStep(f"s{i}")], **kw) for i in range(n)]


class FakePool:
    """Each wait() finishes the oldest call in flight; ``fail(stage, videos)`` decides an outcome."""

    def __init__(self, fail=lambda stage, videos: None, seconds: float = 0.01, budget: float = 4.0):
        self.fail, self.seconds, self.budget = fail, seconds, budget
        self.log: list[tuple[str, int, list[str]]] = []   # ("submit" | "done", stage, videos)
        self.inflight: list = []
        self.shut = False

    def submit(self, stage, videos):
        self.log.append(("submit", stage.index, list(videos)))
        self.inflight.append((len(self.log), stage, list(videos)))
        return len(self.log)

    def wait(self, timeout):
        if not self.inflight:
            return []
        handle, stage, videos = self.inflight.pop(0)
        self.log.append(("done", stage.index, videos))
        bad = self.fail(stage, videos)
        if isinstance(bad, failures.Failure):
            return [(handle, ("failed", bad))]
        return [(handle, ("done", [(v, [StepResult(s.name, v, seconds=self.seconds, kind=bad)
                                        for s in stage.steps]) for v in videos]))]

    def release(self, handle, dead):
        pass

    def shutdown(self):
        self.shut = True

    def cpu_budget(self):
        return self.budget


class FakeCommitter:
    def __init__(self):
        self.buffer, self.committed, self.commits = [], [], 0

    def add(self, stage, video, results):
        self.buffer.append((stage, video, results))

    def pending(self):
        return len(self.buffer)

    def commit(self):
        done = [(i, v, any(r.error for r in res)) for i, v, res in self.buffer]
        self.committed += self.buffer
        self.buffer, self.commits = [], self.commits + 1
        return done


def _run(stages, videos, pool, need=None):
    committer = FakeCommitter()
    s = Scheduler(pool, FakePool(), committer, progress=lambda *a: None, flush_every=4)
    s.min_commit_s = 0.0
    s.run(stages, need or [set(videos) for _ in stages], videos)
    return committer


def test_a_downstream_stage_starts_before_the_upstream_one_finishes():
    """The bug CI caught: a stage's first calls must not carry many videos, or the next stage
    cannot start on any of them before they are all done."""
    videos = [f"v{i}" for i in range(12)]
    pool = FakePool(seconds=0.05)
    committer = _run(_stages(2), videos, pool)
    first_b = next(k for k, (what, st, _) in enumerate(pool.log) if what == "submit" and st == 1)
    last_a = max(k for k, (what, st, _) in enumerate(pool.log) if what == "submit" and st == 0)
    assert first_b < last_a
    assert pool.log[0] == ("submit", 0, ["v0"])              # one video until measured
    assert sorted(v for i, v, _ in committer.committed if i == 1) == sorted(videos)


def test_calls_in_flight_never_exceed_a_stages_workers():
    videos = [f"v{i}" for i in range(20)]
    pool = FakePool(budget=64)
    in_flight, worst = {0: 0, 1: 0}, {0: 0, 1: 0}
    real_submit, real_wait = pool.submit, pool.wait

    def submit(stage, vids):
        in_flight[stage.index] += 1
        worst[stage.index] = max(worst[stage.index], in_flight[stage.index])
        return real_submit(stage, vids)

    def wait(timeout):
        out = real_wait(timeout)
        for h, _ in out:
            in_flight[pool.log[h - 1][1]] -= 1
        return out
    pool.submit, pool.wait = submit, wait
    _run([FakeStage(0, set(), workers=3, steps=[FakeStep("a")]),
          FakeStage(1, {0}, workers=1, steps=[FakeStep("b")])], videos, pool)
    assert worst[0] <= 3 and worst[1] == 1


def test_a_lost_video_is_retried_alone_once_then_marked():
    videos = [f"v{i}" for i in range(6)]
    lost = failures.Failure("crash", failures.CRASHED)
    pool = FakePool(fail=lambda st, vids: lost if "v3" in vids else None, seconds=0.001)
    committer = _run(_stages(1), videos, pool)
    alone = [v for what, _, v in pool.log if what == "submit" and v == ["v3"]]
    assert len(alone) >= 1
    results = {v: res for _, v, res in committer.committed}
    assert sorted(results) == videos
    assert results["v3"][0].error == failures.CRASHED and results["v3"][0].kind == "crash"
    assert all(results[v][0].error is None for v in videos if v != "v3")


def test_a_setup_failure_stops_its_stage_and_fails_the_run():
    stages = [FakeStage(0, set(), steps=[FakeStep("model")]), FakeStage(1, set(), steps=[FakeStep("cpu")])]
    videos = [f"v{i}" for i in range(8)]

    def fail(st, vids):
        return "setup" if st.index == 0 else None

    pool = FakePool(fail=fail)
    real_wait = pool.wait

    def wait(timeout):   # the model stage's results carry its setup error
        out = real_wait(timeout)
        for _, (kind, payload) in out:
            for _, res in payload:
                for r in res:
                    if r.kind == "setup":
                        r.error = "setup of step 'model' failed (model files m.onnx: missing)"
        return out
    pool.wait = wait
    committer = FakeCommitter()
    s = Scheduler(pool, FakePool(), committer, progress=lambda *a: None, flush_every=4)
    s.min_commit_s = 0.0
    with pytest.raises(failures.SetupFailed, match="m.onnx") as e:
        s.run(stages, [set(videos), set(videos)], videos)
    first_back = next(k for k, (what, st, _) in enumerate(pool.log) if what == "done" and st == 0)
    assert not [k for k, (what, st, _) in enumerate(pool.log)      # no call after its first result
                if what == "submit" and st == 0 and k > first_back]
    assert sorted(v for i, v, _ in committer.committed if i == 1) == videos   # the other went on
    assert dict((label, n) for label, n, _ in e.value.committed)["cpu"] == 8


def test_ctrl_c_commits_what_came_back_and_shuts_the_pool():
    videos = [f"v{i}" for i in range(10)]
    pool = FakePool()
    real_wait, calls = pool.wait, [0]

    def wait(timeout):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real_wait(timeout)
    pool.wait = wait
    committer = FakeCommitter()
    s = Scheduler(pool, FakePool(), committer, progress=lambda *a: None, flush_every=100)
    with pytest.raises(failures.Interrupted) as e:
        s.run(_stages(1), [set(videos)], videos)
    assert e.value.exit_code == 130 and pool.shut
    came_back = [v for what, _, vids in pool.log if what == "done" for v in vids]
    assert sorted(v for _, v, _ in committer.committed) == sorted(came_back)   # all committed
    assert committer.buffer == [] and 0 < len(came_back) < 10
    assert e.value.committed == [("s0", len(came_back), 10)]
