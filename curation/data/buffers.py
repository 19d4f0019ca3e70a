"""Batch tensors written once, on reused memory. In a DataLoader worker they live in shared memory (as
torch's ``default_collate`` allocates them), so handing a batch to the main process copies nothing;
a step's frames go to one of the worker's :class:`SharedRing` slots, which the main process gives
back (:class:`Releaser`) once the trainer has dropped the batch. In the main process they come from
:data:`POOL`, reused once nothing holds them. Fresh memory costs a page fault and a zeroed page per
4 kB (2 MB on huge pages) touched: 95 ms of CPU for a fresh 147 MB shared-memory step here against
5 ms to write it again. The stream decodes a step's frames straight into one."""
from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

POOL_BYTES = 1 << 30      # arrays kept for reuse in one process, at most (the least recently used go)
# bytes per window-frame a ring slot keeps after a step's frames for the step's other arrays (three
# audio tracks: 7.7 kB a frame at 25 fps; tiny.en's features: 7.7 kB; larger Whisper encoders more:
# a slot that proves too small is grown, see :meth:`SharedRing.tail`)
TAIL_PER_FRAME = 32 << 10
ALIGN = 64


class Pool:
    """Memory of the main process, reused: ``take(shape, dtype)`` gives a tensor on a kept buffer
    that nothing else uses any more (every tensor view of it, and every numpy array made from one,
    holds its storage: the storage's use count is back to the pool's own once the batch and all its
    views are gone), the smallest that fits, else on a new buffer (an eighth larger than asked, so
    the next step's few more frames fit it too). Up to ``limit`` bytes are kept."""

    def __init__(self, limit: int = POOL_BYTES):
        self.limit, self.kept, self.lock = limit, [], threading.Lock()   # [(uint8 tensor, idle uses)]

    @staticmethod
    def _uses(t: torch.Tensor) -> int:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata)

    def take(self, shape: tuple, dtype) -> torch.Tensor:
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
        with self.lock:
            free = [k for k, (base, idle) in enumerate(self.kept)
                    if len(base) >= n and self._uses(base) == idle]
            if free:
                k = min(free, key=lambda k: (len(self.kept[k][0]), -k))   # the warmest of the smallest
                self.kept.append(self.kept.pop(k))                # most recently used last
                base = self.kept[-1][0]
            else:
                base = torch.from_numpy(np.empty(n + n // 8 + 64, np.uint8))
                self.kept.append((base, self._uses(base)))
                while sum(len(t) for t, _ in self.kept) > self.limit and len(self.kept) > 1:
                    self.kept.pop(0)
            return base[:n].view(tdtype).view(shape)

    def clear(self) -> None:
        with self.lock:
            self.kept.clear()


POOL = Pool()


def empty(shape: tuple, dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` and numpy ``dtype`` (shared memory in a DataLoader worker,
    a reused array of :data:`POOL` in the main process)."""
    shape = tuple(int(s) for s in shape)
    if get_worker_info() is None or not int(np.prod(shape)):
        return POOL.take(shape, dtype)
    return _on(_shared(int(np.prod(shape)) * np.dtype(dtype).itemsize), shape, dtype)


def _shared(nbytes: int) -> torch.UntypedStorage:
    return torch.UntypedStorage._new_shared(nbytes)


def _on(storage: torch.UntypedStorage, shape: tuple, dtype, offset: int = 0) -> torch.Tensor:
    """A tensor of ``shape`` on ``storage`` from byte ``offset`` (a multiple of the item size)."""
    dtype = np.dtype(dtype)
    tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
    return torch.empty(0, dtype=tdtype).set_(storage, offset // dtype.itemsize, tuple(shape))


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN` bytes."""
    return -(-int(n) // ALIGN) * ALIGN


def _slot_bytes(shape: tuple, dtype, tail_per_frame: int) -> int:
    """Bytes of a ring slot for a step's frames of ``shape`` (B, T, ...) and its other arrays."""
    return aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize) + \
        int(tail_per_frame) * int(shape[0]) * int(shape[1])


class SharedRing:
    """A DataLoader worker's shared-memory buffers for its steps, reused: slot j is busy while
    ``flags[j]`` is 1 (set here when a step takes it, cleared by the main process's
    :class:`Releaser` once the batch is dropped there). ``flags`` is one shared int8 tensor of all
    workers' slots, made by the main process; this worker owns ``slots``.

    A slot holds a step's frames and, after them (:meth:`tail`), the step's other arrays (audio
    tracks, features, states): the batch then travels as one shared-memory segment the main process
    has mapped already, and only a few small values go by value through the DataLoader's pipe
    (1.5 MB a step of two 2 s windows went through it before, in 64 kB writes and reads)."""

    def __init__(self, flags: torch.Tensor, slots: range, tails: bool = True):
        self.flags, self.slots, self.tails = flags, slots, tails
        self.storage: dict[int, torch.UntypedStorage] = {}
        self.given: dict[int, int] = {}           # data_ptr of a handed-out buffer -> its slot
        self.reserve = 0     # bytes a slot gets when it is made or grown (see :func:`reserve`)
        self.tail_per_frame = TAIL_PER_FRAME if tails else 0   # grown when a step's arrays need more

    def take(self, shape: tuple, dtype) -> torch.Tensor:
        """A tensor on a free slot (the smallest that holds it and the step's other arrays, else a
        free one grown to hold them), or on fresh shared memory of no slot when all are busy."""
        nbytes = _slot_bytes(shape, dtype, self.tail_per_frame)
        free = [j for j in self.slots if not int(self.flags[j])]
        if not free:
            return _on(_shared(int(np.prod(shape)) * np.dtype(dtype).itemsize), shape, dtype)
        fits = [j for j in free if j in self.storage and self.storage[j].nbytes() >= nbytes]
        j = min(fits, key=lambda j: self.storage[j].nbytes()) if fits else free[0]
        if j not in fits:    # the epoch's largest step (or an eighth more): later steps fit it too
            self.storage[j] = _shared(max(nbytes + nbytes // 8 + 64, self.reserve))
        self.flags[j] = 1
        out = _on(self.storage[j], shape, dtype)
        self.given = {p: k for p, k in self.given.items() if k != j}
        self.given[out.data_ptr()] = j
        return out

    def slot_of(self, t: torch.Tensor) -> int:
        return self.given.get(t.data_ptr(), -1)

    def tail(self, t: torch.Tensor, nbytes: int) -> tuple[np.ndarray, int] | None:
        """(a uint8 array of ``nbytes`` after the step's frames ``t`` in their slot, its byte
        offset there), None when ``t`` has no slot or the slot is too small: the slots made from
        then on keep enough after a step's frames (the first step of a larger feature model goes
        by value)."""
        j = self.given.get(t.data_ptr())
        if j is None or not self.tails:
            return None
        offset = aligned(t.nbytes)
        if offset + nbytes > self.storage[j].nbytes():
            frames = int(t.shape[0]) * int(t.shape[1]) if t.dim() >= 2 else 1
            self.tail_per_frame = max(self.tail_per_frame, -(-int(nbytes) // max(frames, 1)) + ALIGN)
            return None
        return _on(self.storage[j], (nbytes,), np.uint8, offset).numpy(), offset

    def free(self, t: torch.Tensor) -> None:
        j = self.given.pop(t.data_ptr(), None)
        if j is not None:
            self.flags[j] = 0


RING: SharedRing | None = None     # this worker's, set by curation.data.loader.StepDataset


class Releaser:
    """The main process's side of the workers' rings: ``hold(batch)`` replaces the batch's frames by a
    view and keeps the received tensor; ``release()`` frees the slot of each held tensor whose memory
    nothing else uses any more (the view, its views and numpy arrays all gone).

    The storage last received for each slot stays referenced (``mapped``), so the slot's next step
    arrives on the same mapping: torch's receiving side looks a shared-memory file up in its cache and
    maps it again only when nothing holds the last mapping. Without that every step was mapped anew and
    its pages faulted in again by the first touch (a trainer's copy to the GPU): 6 ms of the main
    process's CPU per 2 s window here."""

    def __init__(self, slots: int):
        self.flags = torch.zeros(slots, dtype=torch.int8).share_memory_()
        self.held: list[tuple[torch.Tensor, int, int]] = []
        self.mapped: dict[int, torch.UntypedStorage] = {}
        self.released = 0          # slots given back so far

    def hold(self, batch: dict) -> dict:
        """The batch with its frames a view of the received tensor, and the arrays the worker wrote
        after them in the slot (``in_slot``: key, byte offset, shape, dtype) tensors on it."""
        slot = batch.pop("frames_slot", -1)
        in_slot = batch.pop("in_slot", ())
        frames = batch.get("frames")
        if slot >= 0 and isinstance(frames, torch.Tensor):
            storage = self.mapped[slot] = frames.untyped_storage()   # before the count: an idle use
            self.held.append((frames, Pool._uses(frames), slot))
            batch["frames"] = frames.view(frames.shape)
            for key, offset, shape, dtype in in_slot:
                batch[key] = _on(storage, shape, dtype, offset)
        elif in_slot:
            raise RuntimeError("a batch's arrays are in a ring slot but its frames are not")
        return batch

    def release(self) -> None:
        keep = []
        for t, idle, slot in self.held:
            if Pool._uses(t) == idle:
                self.flags[slot] = 0
                self.released += 1
            else:
                keep.append((t, idle, slot))
        self.held = keep


def step_bytes(windows) -> int:
    """The bytes of a ring slot for a step's windows: :func:`frames_of`'s tensor and the step's
    other arrays after it (0 when it makes no frames tensor)."""
    if not windows or len({(w.height, w.width) for w in windows}) != 1 or not windows[0].height:
        return 0
    shape = (len(windows), max(w.frames for w in windows), windows[0].height, windows[0].width, 3)
    return _slot_bytes(shape, np.uint8, RING.tail_per_frame if RING is not None else TAIL_PER_FRAME)


def check_shared_memory(workers: int, slots: int, step: int, path: str = "/dev/shm") -> str | None:
    """A warning (logged, and returned) when ``path`` has less free space than ``workers`` x
    ``slots`` ring slots of ``step`` bytes: a worker whose shared memory runs out dies of a bus
    error in the middle of a run (a container's default /dev/shm is 64 MB). None when it fits or
    ``path`` cannot be read."""
    need = int(workers) * int(slots) * int(step)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if need <= free:
        return None
    msg = (f"the loader's {workers} worker(s) may need up to {need / 2**30:.2f} GiB of shared memory "
           f"({slots} ring slots each of {step / 2**20:.0f} MiB, the largest step) and {path} has "
           f"{free / 2**30:.2f} GiB free: a worker that runs out dies with a bus error. Give the container "
           f"more (docker run --shm-size), or use fewer workers, a smaller prefetch_factor, smaller batches "
           f"or frames")
    log.warning(msg)
    return msg


def reserve(nbytes: int) -> None:
    """This worker's ring slots are made (or grown) at least ``nbytes`` large from now on: the
    stream reserves its epoch's largest step, so a slot is not made again for each larger step
    (a fresh shared-memory segment is zeroed page by page here, and the main process maps it anew)."""
    if RING is not None and get_worker_info() is not None:
        RING.reserve = max(RING.reserve, int(nbytes))


def frames_of(windows) -> torch.Tensor | None:
    """The (B, T_max, H, W, 3) uint8 frames tensor of a step's windows (one frame size: a token
    bucket's), or None when they differ in frame size: on a slot of this worker's :data:`RING`
    when there is one."""
    if not windows or len({(w.height, w.width) for w in windows}) != 1 or not windows[0].height:
        return None
    shape = (len(windows), max(w.frames for w in windows), windows[0].height, windows[0].width, 3)
    if RING is not None and get_worker_info() is not None:
        return RING.take(shape, np.uint8)
    return empty(shape, np.uint8)


def give_back(frames) -> None:
    """Frees the ring slot of a step's frames tensor that is not sent after all (the batch's
    frames were copied elsewhere, or the step had no sample)."""
    if RING is not None and isinstance(frames, torch.Tensor):
        RING.free(frames)


def slot_of(frames) -> int:
    """The ring slot of a step's frames tensor, -1 when it has none."""
    return RING.slot_of(frames) if RING is not None and isinstance(frames, torch.Tensor) else -1


def tail_of(frames, nbytes: int) -> tuple[np.ndarray, int] | None:
    """``nbytes`` of the ring slot after a step's frames tensor, see :meth:`SharedRing.tail`."""
    if RING is None or not isinstance(frames, torch.Tensor) or get_worker_info() is None:
        return None
    return RING.tail(frames, nbytes)


def starts_row(images: np.ndarray, row: np.ndarray) -> bool:
    """True when ``images`` is the first len(images) frames of ``row`` (decoded in place)."""
    return (images.dtype == row.dtype and images.shape[1:] == row.shape[1:] and len(images) <= len(row)
            and images.__array_interface__["data"][0] == row.__array_interface__["data"][0])
