"""Which window goes into which global batch: a pure function of (windows, seed, epoch, budget).

Nothing here depends on the number of ranks or DataLoader workers, which is what makes the stream
elastic (lancedb's ``StreamingDataset`` and Mosaic streaming make the same promise; this module is
where ours is kept):

1. ``cut_windows`` lists every candidate window of the selected clips, sorted by (clip, start): a
   window is ``window_s`` long (or, with ``window_s=(lo, hi)``, windows of ``hi`` seconds and a last
   one of at least ``lo``), ``stride_s`` apart, inside the clip.
2. ``epoch_plan`` shuffles them with ``numpy.random.default_rng([seed, epoch])`` and deals them, in
   that order, into token buckets (LPM §5.1): a bucket holds windows of one frame size and nearly the
   same number of frames (``frame_buckets``: bucket edges 2 % apart), a global batch is as many
   windows of one bucket as fill ``batch_tokens`` (frames x height x width), rounded down to a
   multiple of ``divisible_by`` (so every rank of a world size dividing it gets the same number of
   windows). At the end of the epoch what is left in the buckets of one frame size is sorted by
   length and cut into batches of ``divisible_by`` neighbours (padded to the longest); the last
   batch of a frame size, when fewer than ``divisible_by`` windows are left for it, is filled up
   with *padding*: repeats of its neighbours in length (the windows just before it in that order,
   or its own windows when there are none), marked in ``EpochPlan.pads`` (the sample says
   ``pad``: give it weight 0). So every window of the selection is in exactly one slot of the
   epoch that is not padding, and every global batch still splits evenly over the ranks.
3. A rank takes its contiguous share of each global batch; DataLoader worker k of K takes the steps
   s with s % K == k; the DataLoader's round-robin puts them back in step order.

A window rejected on its decoded frames is replaced by a pure function too (``replacements``): the
bucket's other windows in an order seeded by (seed, epoch, step, slot); the replacement is padding
as well (it is yielded once more somewhere in the epoch), so step counts never change and no window
is counted twice.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Window:
    clip_id: str
    video_id: str
    index: int            # the window's number in its clip
    start_s: float        # nominal start (the first frame is the first one at or after it)
    frames: int           # T
    height: int           # frame size of the batch (after resizing)
    width: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.clip_id, self.index, self.frames)

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width


@dataclass
class EpochPlan:
    epoch: int
    batches: list[list[int]]          # global batches (indices into the window list), in step order
    bucket_of: list[tuple]            # bucket of each window
    pads: dict[int, set] = field(default_factory=dict)   # step -> slots that repeat a window (padding)
    padding: float = 0.0              # padded share of the frames: shorter windows and pad slots
    per_bucket: dict = field(default_factory=dict)


def cut_windows(clips: list[dict], window_s: float | tuple[float, float], fps: float,
                stride_s: float | None = None, size: tuple[int, int] | None = None) -> list[Window]:
    """Candidate windows of ``clips`` (dicts with clip_id, video_id, start_s, end_s, width, height),
    sorted by clip id and start. Times are nominal; frame k of a window is shown at first + k / fps."""
    lo, hi = (window_s, window_s) if np.isscalar(window_s) else (float(window_s[0]), float(window_s[1]))
    if not 0 < lo <= hi or fps <= 0:
        raise ValueError(f"window_s must be > 0 (or lo <= hi), fps > 0; got {window_s!r}, {fps!r}")
    stride = float(stride_s or hi)
    out: list[Window] = []
    for c in sorted(clips, key=lambda c: c["clip_id"]):
        h, w = size or (int(c.get("height") or 0), int(c.get("width") or 0))
        start, end = float(c["start_s"]), float(c["end_s"])
        k = 0
        while True:
            t = start + k * stride
            length = min(hi, end - t)
            if length + 1e-6 < lo:
                break
            frames = int(math.floor(length * fps + 1e-6))
            out.append(Window(c["clip_id"], c.get("video_id") or "", k, round(t, 6), frames, h, w))
            k += 1
    return out


def frame_buckets(frames: int, step: float = 0.02) -> int:
    """The bucket of a window of ``frames`` frames: the largest edge <= frames of the grid
    1, 2, ..., e_{k+1} = max(e_k + 1, floor(e_k * (1 + step))) (edges 2 % apart past 50 frames), so
    padding a batch to its longest window costs under ``step`` of its frames."""
    e = 1
    while True:
        nxt = max(e + 1, int(math.floor(e * (1 + step))))
        if nxt > frames:
            return e
        e = nxt


def bucket_key(w: Window) -> tuple[int, int, int]:
    return (w.height, w.width, frame_buckets(w.frames))


def batch_size_of(bucket: tuple[int, int, int], windows: list[Window], members: list[int],
                  batch_tokens: int | None, batch_windows: int, divisible_by: int) -> int:
    """Windows per global batch of ``bucket``: as many as fill ``batch_tokens`` at the bucket's
    longest window (or ``batch_windows``), rounded down to a multiple of ``divisible_by``."""
    if batch_tokens is None:
        n = batch_windows
    else:
        longest = max(windows[i].frames for i in members)
        n = batch_tokens // max(1, longest * bucket[0] * bucket[1])
    return max(divisible_by, (n // divisible_by) * divisible_by)


def epoch_plan(windows: list[Window], seed: int, epoch: int, batch_tokens: int | None = None,
               batch_windows: int = 6, divisible_by: int = 6) -> EpochPlan:
    """The global batches of one epoch (see the module docstring)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(windows))
    bucket_of = [bucket_key(w) for w in windows]
    members: dict[tuple, list[int]] = {}
    for i in order:
        members.setdefault(bucket_of[i], []).append(int(i))
    sizes = {b: batch_size_of(b, windows, m, batch_tokens, batch_windows, divisible_by)
             for b, m in members.items()}
    batches, filling = [], {b: [] for b in members}
    for i in order:                                # full batches, in the order they fill
        b = bucket_of[i]
        filling[b].append(int(i))
        if len(filling[b]) == sizes[b]:
            batches.append(filling[b])
            filling[b] = []
    plan = EpochPlan(epoch, batches, bucket_of)
    plan.pads = _tails(windows, filling, divisible_by, batches)
    plan.padding = padding_fraction([[0 if k in plan.pads.get(s, ()) else windows[i].frames
                                      for k, i in enumerate(b)] for s, b in enumerate(batches)])
    plan.per_bucket = {b: {"windows": len(m), "batch": sizes[b]} for b, m in members.items()}
    return plan


def _tails(windows: list[Window], filling: dict, divisible_by: int, batches: list) -> dict:
    """The windows left in the buckets at the end of an epoch: per frame size, sorted by length
    (then by their place in the epoch), cut into batches of ``divisible_by`` neighbours in length
    (a little padding instead of leaving them out); the last one, when short, is filled up with
    repeats of the windows before it in that order (none longer than its own: no extra length
    padding), or of its own windows. Returns the pad slots, {step: {slot, ...}}."""
    by_size: dict[tuple, list[int]] = {}
    for b in sorted(filling):
        by_size.setdefault(b[:2], []).extend(filling[b])
    pads: dict[int, set] = {}
    for size in sorted(by_size):
        rest = sorted(by_size[size], key=lambda i: windows[i].frames)   # stable: epoch order kept
        for k in range(0, len(rest), divisible_by):
            part = rest[k:k + divisible_by]
            missing = divisible_by - len(part)
            if missing:
                fill = rest[:k][::-1] or part
                pads[len(batches)] = set(range(len(part), divisible_by))
                part = part + [fill[j % len(fill)] for j in range(missing)]
            batches.append(part)
    return pads


def padding_fraction(batches: list[list[int]]) -> float:
    """Share of padded frames when each batch (the lengths of its windows, 0 for a pad slot) is
    padded to its longest window."""
    total = sum(max(b) * len(b) for b in batches if b)
    real = sum(sum(b) for b in batches)
    return 0.0 if not total else 1.0 - real / total


def rank_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The contiguous part of a global batch that ``rank`` takes (len(batch) % world_size == 0)."""
    n = len(batch) // world_size
    return batch[rank * n:(rank + 1) * n]


def replacements(plan: EpochPlan, seed: int, step: int, slot: int, window: int,
                 n_windows: int) -> list[int]:
    """Candidates, in order, to replace window ``window`` at ``slot`` of global batch ``step``
    (rejected on its decoded frames): every other window of its bucket, in an order seeded by
    (seed, epoch, step, slot). Pure: every rank and worker computes the same list."""
    b = plan.bucket_of[window]
    digest = hashlib.blake2b(f"{seed}:{plan.epoch}:{step}:{slot}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return [i for i in rng.permutation(n_windows).tolist() if plan.bucket_of[i] == b and i != window]


def fingerprint(windows: list[Window]) -> str:
    """A short hash of the window list: a resumed stream must be cut from the same selection."""
    h = hashlib.blake2b(digest_size=8)
    for w in windows:
        h.update(f"{w.clip_id}|{w.index}|{w.start_s}|{w.frames}|{w.height}|{w.width}\n".encode())
    return h.hexdigest()
