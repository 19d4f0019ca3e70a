"""Batches for a training loop: a DataLoader over a :class:`ClipStream` whose batches are whole global
steps (this rank's share), in step order, with spawn-started workers, and a state to resume from.

    loader = make_loader(stream, num_workers=2)
    for batch in loader: ...                      # collate(): padded tensors + lists
    torch.save(loader.state_dict(), "ckpt")       # a few integers; load_state_dict() to resume

Worker k of K computes every K-th step from the start position, from the k-th on, and the DataLoader's round-robin returns them in
step order, so batches do not depend on K (nor, through the plan, on the number of ranks). Workers
are started with ``spawn``: Lance is not fork-safe (a forked worker can hang in its runtime; lance
issues 3640, 2204, 2405), and neither are decoders with threads.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation.data import buffers
from curation.data.stream import ClipStream


class StepDataset(IterableDataset):
    """Yields this rank's share of each global step as a list of samples (one DataLoader item).
    ``flags``: the workers' ring slots (see :class:`curation.data.buffers.SharedRing`),
    ``slots`` of them per worker; ``tails``: a step's other arrays go in its slot after the frames
    (not with ``pin_memory``: the pin thread copies the frames tensor alone)."""

    def __init__(self, stream: ClipStream, flags: torch.Tensor | None = None, slots: int = 0,
                 tails: bool = True):
        self.stream, self.flags, self.slots, self.tails = stream, flags, slots, tails

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.flags is not None:
            buffers.RING = buffers.SharedRing(self.flags, range(worker * self.slots, (worker + 1) * self.slots),
                                              tails=self.tails)
        yield from self.stream.iter_steps(worker, workers)


def _pad(arrays: list[np.ndarray], length: int, fill=0, shared: bool = False):
    """The arrays stacked and padded with ``fill`` to ``length``, written once into the batch's
    array: a tensor in the main process (on :data:`buffers.POOL`'s memory); in a DataLoader worker a
    numpy array, which travels to the main process by value and becomes a tensor there
    (:func:`as_tensors`), or with ``shared`` a shared-memory tensor (see :func:`_in_slot` for how
    a worker's step usually sends them)."""
    shape = (len(arrays), length) + arrays[0].shape[1:]
    if get_worker_info() is not None and not shared:
        out = view = np.empty(shape, arrays[0].dtype)
    else:
        out = buffers.empty(shape, arrays[0].dtype)
        view = out.numpy()
    _fill(view, arrays, fill)
    return out


def _fill(view: np.ndarray, arrays: list[np.ndarray], fill) -> None:
    for i, a in enumerate(arrays):
        view[i, :len(a)] = a
        view[i, len(a):] = fill


def _in_slot(parts: dict, frames) -> tuple[dict, list]:
    """In a DataLoader worker: ``parts`` (key -> (arrays, length, fill)) stacked and padded as
    :func:`_pad` does, written into the ring slot after the step's ``frames``; returns ({key: None},
    [(key, byte offset in the slot, shape, dtype)]) for :meth:`buffers.Releaser.hold` to make them
    tensors on the slot the main process receives with the frames, or ({}, []) when the frames have
    no slot (or it is too small: then they go by value)."""
    layout, size = [], 0
    for key, (arrays, length, _) in parts.items():
        shape = (len(arrays), length) + arrays[0].shape[1:]
        layout.append((key, size, shape, arrays[0].dtype.str))
        size = buffers.aligned(size + int(np.prod(shape)) * arrays[0].dtype.itemsize)
    tail = buffers.tail_of(frames, size)
    if tail is None:
        return {}, []
    region, base = tail
    for (key, offset, shape, dtype), (arrays, _, fill) in zip(layout, parts.values()):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        _fill(region[offset:offset + n].view(dtype).reshape(shape), arrays, fill)
    return dict.fromkeys(parts), [(key, base + offset, shape, dtype) for key, offset, shape, dtype in layout]


def as_tensors(batch: dict) -> dict:
    """The batch's numpy arrays as tensors (no copy)."""
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(value)
    return batch


def _frames(samples: list[dict], t_max: int) -> torch.Tensor:
    """The step's frames: the batch tensor they were decoded into when every sample's frames are
    the start of its row there (:meth:`ClipStream.iter_steps` does that; the rest of each row is
    zeros), else a copy padded with zeros."""
    held = [s.get("frames_buffer") for s in samples]
    if all(held) and all(h[0] is held[0][0] and h[1] == k for k, h in enumerate(held)):
        buf = held[0][0]
        rows = buf.numpy()
        if buf.shape[:2] == (len(samples), t_max) and all(
                buffers.starts_row(s["frames"], rows[k]) for k, s in enumerate(samples)):
            return buf
    out = _pad([s["frames"] for s in samples], t_max, shared=True)
    for h in {id(h[0]): h[0] for h in held if h}.values():
        buffers.give_back(h)          # not sent: its ring slot is free again
    return out


def collate(samples: list[dict]) -> dict:
    """One step's samples as a batch: frames (B, T, H, W, 3) uint8, audio / speak_audio /
    listen_audio (B, N) float32, states (B, T) int8 (-1 past a window's end), audio_features
    (B, T, G, D) float32 or None, ``frame_mask`` (B, T) bool: True on real frames (windows of one
    token bucket differ by under 2 % in length; the shorter ones are padded), ``pad`` (B,) bool and
    ``weight`` (B,) float32, 0 for a padding sample (a repeated window, see curation.data.plan: give
    it no weight in the loss) and 1 otherwise, and lists of the rest."""
    t_max = max(len(s["frames"]) for s in samples)
    n_max = max(len(s["audio"]) for s in samples)
    frames = _frames(samples, t_max)
    parts = {"frame_mask": ([np.ones(len(s["frames"]), bool) for s in samples], t_max, 0),
             "states": ([s["states"] for s in samples], t_max, -1)}
    for key in ("audio", "speak_audio", "listen_audio"):
        parts[key] = ([s[key] for s in samples], n_max, 0)
    feats = [s.get("audio_features") for s in samples]
    if not any(f is None for f in feats):
        parts["audio_features"] = (feats, t_max, 0)
    batch = {
        "frames": frames, "audio_features": None,
        "start_s": np.array([s["start_s"] for s in samples], np.float64),
        "pad": np.array([bool(s.get("pad")) for s in samples]),
        "weight": np.array([0.0 if s.get("pad") else 1.0 for s in samples], np.float32),
        "epoch": samples[0]["epoch"], "step": samples[0]["step"],
    }
    in_slot, layout = _in_slot(parts, frames) if get_worker_info() is not None else ({}, [])
    batch.update(in_slot)
    for key, (arrays, length, fill) in parts.items():
        if key not in in_slot:
            batch[key] = _pad(arrays, length, fill)
    for key in ("clip_id", "video_id", "text", "references", "fps", "replaced", "audio_source", "audio_read"):
        batch[key] = [s.get(key) for s in samples]
    if get_worker_info() is not None:       # its arrays become tensors in the main process
        batch["frames_slot"] = buffers.slot_of(batch["frames"])   # WindowLoader gives it back
        batch["in_slot"] = layout
        return batch
    return as_tensors(batch)


class WindowLoader:
    """A DataLoader over whole steps, that knows the last step it handed out (see module doc)."""

    def __init__(self, stream: ClipStream, num_workers: int = 0, collate_fn=collate,
                 prefetch_factor: int | None = 2, pin_memory: bool = False):
        self.stream, self.num_workers, self.collate_fn = stream, int(num_workers), collate_fn
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self.releaser: buffers.Releaser | None = None    # the ring slots of the last iteration's workers

    def __iter__(self):
        kw, releaser, slots = {}, None, 0
        if self.num_workers:
            kw = dict(multiprocessing_context="spawn", prefetch_factor=self.prefetch_factor,
                      persistent_workers=False)
            # a worker's steps in flight (prefetched, being built) and the two the trainer may hold
            slots = (self.prefetch_factor or 2) + 3
            releaser = buffers.Releaser(self.num_workers * slots)
            buffers.check_shared_memory(self.num_workers, slots, self.stream.largest_step_bytes())
        self.releaser = releaser
        dl = DataLoader(StepDataset(self.stream, releaser.flags if releaser else None, slots,
                                    tails=not self.pin_memory),
                        batch_size=None, num_workers=self.num_workers, collate_fn=self.collate_fn,
                        pin_memory=self.pin_memory, **kw)
        for batch in dl:
            # the position after this step (workers ran on copies of the stream)
            self.stream.epoch, self.stream.step, self.stream.offset = batch["epoch"], batch["step"] + 1, 0
            if releaser is not None:
                releaser.release()        # the slots of the batches the trainer has dropped
                batch = releaser.hold(as_tensors(batch))
            else:
                batch.pop("frames_slot", None)
                batch.pop("in_slot", None)
            yield batch

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def make_loader(stream: ClipStream, num_workers: int = 0, **kw) -> WindowLoader:
    return WindowLoader(stream, num_workers=num_workers, **kw)
