"""The streaming engine's scheduling policy: which videos are ready for which stage, what to run
next, how many videos per call, when to commit. Pure: no store, no Ray, no clock of its own, so it
is unit-tested with fake pools in milliseconds (tests/test_policy.py).

- A video is *ready* for a stage once every stage upstream of it is settled for the video
  (committed, or not needed); it is *skipped* (settled at once, counted failed, and so are the
  stages below) when one of those failed it (:class:`Tracker`).
- Calls go out downstream first (videos finish, memory stays flat), at most ``workers`` calls in
  flight per stage, and within the run's CPU budget (:func:`next_calls`). A stage's first calls
  carry one video until its seconds per video are measured, then about :data:`CALL_SECONDS` of
  work (tiny videos need big batches), never more than an even share of the ready videos among
  the stage's workers (:func:`batch_size`). A video lost with its worker goes again alone.
- Results are committed at most once a second while workers are busy (a commit costs tens of
  milliseconds whatever its size), sooner when nothing else is left to wait for or workers would
  starve, and at least every ``max_s`` (:func:`commit_due`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

CALL_SECONDS = 1.0          # target seconds of work per worker call
MAX_BATCH = 64              # videos per call at most (when sized from measured seconds)
LOCAL_BATCH = 8             # videos per in-process call of a stage without a batch size


@dataclass
class StageInfo:
    """What the policy needs to know of a stage."""
    index: int
    deps: set[int]
    workers: int = 1
    batch: int | None = None     # fixed videos per call (None: sized from seconds per video)
    cpus: float = 1.0            # CPUs one call asks for
    inline: bool = False         # runs in the driver, all ready videos in one call


@dataclass
class Call:
    stage: int
    videos: list[str]
    alone: bool = False          # a retry of a video lost with its worker
    cpus: float = 0.0


@dataclass
class Tracker:
    """Per stage: the videos waiting for upstream stages, ready to run, settled and failed."""
    stages: list[StageInfo]
    need: list[set[str]]
    video_ids: list[str]
    ready: list[deque] = field(init=False)
    waiting: list[set[str]] = field(init=False)
    settled: list[set[str]] = field(init=False)
    failed: list[set[str]] = field(init=False)
    total: list[int] = field(init=False)
    committed: list[int] = field(init=False)

    def __post_init__(self):
        n = len(self.stages)
        self.ready = [deque() for _ in range(n)]
        self.waiting = [set(x) for x in self.need]
        self.failed = [set() for _ in range(n)]
        self.settled = [{v for v in self.video_ids if v not in self.need[i]} for i in range(n)]
        self.total = [len(x) for x in self.need]
        self.committed = [0] * n
        self.dependents = {s.index: [d.index for d in self.stages if s.index in d.deps]
                           for s in self.stages}
        self._move([(i, v) for i in range(n) for v in self.video_ids if v in self.waiting[i]])

    def done(self, results: list[tuple[int, str, bool]]) -> set[int]:
        """(stage, video, whole video failed) just committed: settle them and move the videos
        waiting on them on. Returns the stages whose counts changed."""
        for i, vid, failed in results:
            self.settled[i].add(vid)
            self.committed[i] += 1
            if failed:
                self.failed[i].add(vid)
        changed = {i for i, _, _ in results}
        return changed | self._move([(j, vid) for i, vid, _ in results for j in self.dependents[i]])

    def _move(self, pairs: list[tuple[int, str]]) -> set[int]:
        changed, work = set(), deque(pairs)   # in order: videos become ready in input order
        while work:
            i, vid = work.popleft()
            if vid not in self.waiting[i]:
                continue
            deps = self.stages[i].deps
            if any(vid in self.failed[d] for d in deps):   # failed upstream: skipped, and below
                self.waiting[i].discard(vid)
                self.settled[i].add(vid)
                self.failed[i].add(vid)
                self.total[i] -= 1
                changed.add(i)
                work += [(j, vid) for j in self.dependents[i]]
            elif all(vid in self.settled[d] or vid not in self.need[d] for d in deps):
                self.waiting[i].discard(vid)
                self.ready[i].append(vid)
        return changed

    def drop(self, stage: int) -> None:
        """A stage that stops (its setup failed): its ready videos are not run."""
        self.ready[stage].clear()


def batch_size(per_video_s: float | None, ready: int, workers: int) -> int:
    """Videos per call of a stage without a set batch size: one until its seconds per video are
    measured, then enough for about CALL_SECONDS of work, never more than an even share of the
    ready videos among the stage's workers."""
    want = 1 if per_video_s is None else int(min(MAX_BATCH, max(1, CALL_SECONDS / max(per_video_s, 1e-3))))
    return max(1, min(want, -(-ready // max(1, workers))))


def smoothed(old: float | None, new: float) -> float:
    """Seconds per video of a stage, smoothed over its calls."""
    return new if old is None else 0.7 * old + 0.3 * new


def next_calls(stages: list[StageInfo], tracker: Tracker, running: dict[int, int],
               cpu_used: float, cpu_budget: float, per_video_s: dict[int, float],
               retry_alone: list[set[str]], local: bool = False) -> list[Call]:
    """The calls to make now (their videos leave ``tracker.ready``). ``running``: calls in flight
    per stage; ``local``: in-process executor (one call at a time: it is committed before the
    next); inline stages always take all their ready videos in one call."""
    calls: list[Call] = []
    for st in reversed(stages):        # downstream first: videos finish, memory stays flat
        ready, i = tracker.ready[st.index], st.index
        while ready:
            if st.inline or local:
                n = len(ready) if st.inline else max(1, st.batch or LOCAL_BATCH)
                calls.append(Call(i, [ready.popleft() for _ in range(min(n, len(ready)))]))
                if st.inline:
                    continue
                return calls
            if running.get(i, 0) + sum(1 for c in calls if c.stage == i) >= st.workers:
                break
            if (any(running.values()) or calls) and cpu_used + st.cpus > cpu_budget + 1e-9:
                return calls
            calls.append(_call(st, ready, per_video_s.get(i), retry_alone[i]))
            cpu_used += st.cpus
    return calls


def _call(st: StageInfo, ready: deque, per_video_s: float | None, alone: set[str]) -> Call:
    if ready[0] in alone:
        return Call(st.index, [ready.popleft()], alone=True, cpus=st.cpus)
    n = st.batch or batch_size(per_video_s, len(ready), st.workers)
    videos = []
    while ready and len(videos) < n and ready[0] not in alone:
        videos.append(ready.popleft())
    return Call(st.index, videos, cpus=st.cpus)


def commit_due(pending: int, since_s: float, in_flight: int, ready: int, workers: int,
               flush_every: int, min_s: float = 1.0, max_s: float = 15.0) -> bool:
    """Whether to commit the ``pending`` results now, ``since_s`` after the last commit."""
    if not pending:
        return False
    if (not in_flight and not ready) or since_s >= max_s:   # nothing else to wait for
        return True
    starving = in_flight < max(1, workers) and not ready    # committing lets a stage below start
    return since_s >= min_s and (pending >= flush_every or starving)
