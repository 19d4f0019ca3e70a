"""ClipStream: the windows of a selection, re-checked on their frames, with their conditions, on every
rank and DataLoader worker, exactly once per epoch, resumable (see docs/training-data.md).

    from curation.data import ClipStream
    stream = ClipStream("store", where="clip_kind = 'person'", profile="workflows/validate/close_up_face.yaml",
                        window_s=2.0, seed=0)
    for sample in stream: ...                     # dicts (the contract in docs/training-data.md)
    state = stream.state_dict(); stream.load_state_dict(state)

Which window lands in which global step is decided by :mod:`curation.data.plan` from the selection,
the seed and the epoch only; this module reads the store (at the table versions it saw when made,
so every worker reads the same snapshot), decodes, validates and builds the sample.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from curation.data import buffers
from curation.data import conditions as cond
from curation.data.decode import DEFAULT_BACKEND, read_window
from curation.data.plan import (EpochPlan, Window, cut_windows, epoch_plan, fingerprint, rank_share,
                                replacements)

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_ATTEMPTS = 100        # candidates tried for one slot before the stream gives up (Energon: 100)
PLAN_COLUMNS = ["clip_id", "video_id", "start_s", "end_s", "width", "height"]
TRACK_COLUMNS = ["track_id", "frame_times_s", "face_boxes", "person_boxes", "composition", "hands_ratio"]


class StreamError(RuntimeError):
    pass


class _Cache(OrderedDict):
    """A small LRU of rows read from the store (per process)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class ClipStream(IterableDataset):
    """An iterable of window samples; also a ``torch.utils.data.IterableDataset`` (it has ``__iter__``
    and pickles small: workers re-read the selection at the pinned table versions).

    ``window_s``: seconds, or (lo, hi) for windows of up to hi seconds (a clip's last one at least lo);
    ``stride_s``: between window starts (default the window length); ``fps``: sampling rate of the
    frames; ``size``: (H, W) to resize to (None: the source size). ``batch_tokens`` (frames x H x W
    of a global step) or ``batch_windows``: the global batch; ``divisible_by``: every global batch
    has a multiple of this many windows (the world sizes that divide it can share it evenly).
    ``rank`` / ``world_size``: default torch.distributed's, else the RANK / WORLD_SIZE variables,
    else 0 / 1. ``epochs``: None = endless. ``validate``: run the profile's checks on each window
    (a rejected window is replaced by a padding sample, see :func:`curation.data.plan.replacements`;
    every sample has ``pad``: True for padding, which a trainer gives weight 0); ``verdicts``: leave
    the windows ``curation validate`` rejected for the profile out of the plan. ``stored_audio``: read
    a window's audio from the store's ``audio_pcm`` (operators/audio_pcm.py) when its video has it,
    else decode it from the file in the frames' pass (sample key ``audio_read``: "store" / "file")."""

    def __init__(self, store, where: str | None = None, profile: str | None = None,
                 window_s: float | tuple[float, float] = 2.0, seed: int = 0, fps: float = 25.0,
                 size: tuple[int, int] | None = None, *, stride_s: float | None = None,
                 batch_tokens: int | None = None, batch_windows: int = 6, divisible_by: int = 6,
                 rank: int | None = None, world_size: int | None = None, epochs: int | None = None,
                 validate: bool = True, verdicts: bool = True, max_references: int = 4,
                 backend: str = DEFAULT_BACKEND, stored_audio: bool = True):
        from curation import malloc
        from curation.store import Store
        from curation.validate.profile import load_profile
        malloc.tune()    # decoded frames reuse freed memory (see curation/malloc.py)
        self.uri = store.uri if isinstance(store, Store) else str(store)
        self.profile = load_profile(profile) if profile else None
        self.where = _and(where, self.profile.where if self.profile else None)
        self.window_s, self.stride_s, self.fps = window_s, stride_s, float(fps)
        self.size = tuple(size) if size else None
        self.seed = int(seed)
        self.batch_tokens, self.batch_windows = batch_tokens, int(batch_windows)
        self.divisible_by = int(divisible_by)
        self.epochs, self.validate = epochs, bool(validate and self.profile)
        self.max_references, self.backend = int(max_references), backend
        self.stored_audio = bool(stored_audio)
        self.rank, self.world_size = _topology(rank, world_size)
        if self.divisible_by % self.world_size:
            raise StreamError(f"world size {self.world_size} does not divide divisible_by="
                              f"{self.divisible_by}: every global batch must split evenly over ranks")
        s = Store(self.uri)
        self.versions = {t: s.dataset(t).version for t in ("clips", "videos", "references", "windows")
                         if s.exists(t)}
        if "clips" not in self.versions:
            raise StreamError(f"no clips table in {self.uri}")
        self._reset_caches()
        self.epoch, self.step, self.offset = 0, 0, 0
        self.known_drops = self._known_drops() if verdicts else set()
        self.windows = self._cut()
        if not self.windows:
            raise StreamError(f"no window of {window_s} s in the clips matching {self.where!r}")
        self.fingerprint = fingerprint(self.windows)
        self.text_missing = self._text_report()

    # ---- pickling: workers rebuild caches (and reopen the store) ------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_store", "_rows", "_videos", "_features", "_pcm", "_refs", "_plans", "windows"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        """A worker cuts the windows again from the same table versions (a million windows would
        be a 100 MB pickle per worker) and checks it got the same list."""
        from curation import malloc
        self.__dict__.update(state)
        malloc.tune()
        self._reset_caches()
        self.windows = self._cut()
        if fingerprint(self.windows) != self.fingerprint:
            raise StreamError("the selection read in a worker differs from the parent's")

    def _reset_caches(self):
        from curation.store import Store
        self._store = Store(self.uri)
        self._rows, self._videos = _Cache(512), _Cache(64)
        self._features, self._refs = _Cache(1024), _Cache(256)
        self._pcm = _Cache(1024)
        self._plans = _Cache(2)

    # ---- the selection ------------------------------------------------------------------------------
    def _query(self, table: str, where: str | None, columns=None):
        return self._store.query(table, where=where, columns=columns, version=self.versions[table])

    def _cut(self) -> list[Window]:
        clips = self._query("clips", _and(self.where, "error IS NULL"), PLAN_COLUMNS).to_pylist()
        windows = cut_windows(clips, self.window_s, self.fps, self.stride_s, self.size)
        return [w for w in windows if (w.clip_id, round(w.start_s, 4), w.frames) not in self.known_drops]

    def _known_drops(self) -> set:
        """Windows the offline validator already rejected for this profile at this fps (the
        ``windows`` table): left out of the plan, so they cost no replacement."""
        if not self.profile or "windows" not in self.versions:
            return set()
        from curation.store import sql_quote
        t = self._query("windows", f"profile = {sql_quote(self.profile.name)} AND NOT kept "
                                   f"AND fps = {self.fps!r}", ["clip_id", "start_s", "frames"])
        return {(r["clip_id"], round(r["start_s"], 4), r["frames"]) for r in t.to_pylist()}

    def _text_report(self) -> list[str]:
        names = set(self._store.dataset("clips", self.versions["clips"]).schema.names)
        missing = [part for part, sources in cond.TEXT_PARTS
                   if not any(src.split(".")[0] in names for src in sources)]
        if missing:
            log.warning("text condition: no column for %s in this store (captions need the "
                        "captions step: Qwen-Omni weights or an endpoint); texts leave them out",
                        ", ".join(missing))
        return missing

    def plan(self, epoch: int) -> EpochPlan:
        return self._plans.get_or(epoch, lambda: epoch_plan(
            self.windows, self.seed, epoch, self.batch_tokens, self.batch_windows, self.divisible_by))

    def largest_step_bytes(self, epoch: int | None = None, step: int = 0) -> int:
        """Bytes of a DataLoader worker's ring slot for this rank's largest step of ``epoch`` from
        ``step`` on (its frames and other arrays, :func:`curation.data.buffers.step_bytes`)."""
        plan = self.plan(self.epoch if epoch is None else epoch)
        return max((buffers.step_bytes([self.windows[i] for i in rank_share(b, self.rank, self.world_size)])
                    for b in plan.batches[step:]), default=0)

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        return len(self.plan(self.epoch if epoch is None else epoch).batches)

    # ---- iteration ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """Samples in step order from the current position. In a DataLoader worker, only the steps
        of that worker (use :func:`curation.data.loader.make_loader` for step-aligned batches)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for epoch, step, batch, skipped, share in self._steps(worker, workers, in_place=False):
            for i, sample in enumerate(batch):
                done = skipped + i + 1
                # the position is updated before the sample leaves: a state taken after it counts it
                self.epoch, self.step, self.offset = (epoch, step + 1, 0) if done == share else \
                    (epoch, step, done)
                yield sample

    def iter_steps(self, worker: int = 0, workers: int = 1) -> Iterator[list[dict]]:
        """This rank's share of each global step, as lists of samples, from the current position;
        with ``workers`` > 1 only every ``workers``-th step from it, starting at ``worker`` (a
        DataLoader's round-robin over its workers puts them back in order)."""
        for _, _, batch, _, _ in self._steps(worker, workers, in_place=True):
            yield batch

    def _steps(self, worker: int, workers: int, in_place: bool):
        epoch, step, start = self.epoch, self.step, (self.epoch, self.step, self.offset)
        g = -1   # steps counted from the start position, across epochs: worker g % workers has it
        while self.epochs is None or epoch < self.epochs:
            plan = self.plan(epoch)
            if in_place:     # a DataLoader worker's ring slots: made once at the epoch's largest step
                buffers.reserve(self.largest_step_bytes(epoch, step))
            for s in range(step, len(plan.batches)):
                g += 1
                if g % workers != worker:
                    continue
                skip = start[2] if (epoch, s) == start[:2] else 0   # resumed inside this step
                share = rank_share(plan.batches[s], self.rank, self.world_size)
                first = self.rank * len(share)
                todo = [(first + j, i) for j, i in enumerate(share) if j >= skip]
                # the step's frames decode straight into one batch tensor (shared memory in a
                # DataLoader worker): collate then has nothing to copy
                buf = buffers.frames_of([self.windows[i] for _, i in todo]) if in_place else None
                rows = buf.numpy() if buf is not None else [None] * len(todo)
                batch = [self._sample(plan, s, slot, i, row) for (slot, i), row in zip(todo, rows)]
                if buf is not None:
                    for k, sample in enumerate(batch):
                        sample["frames_buffer"] = (buf, k)
                if batch:
                    yield epoch, s, batch, skip, len(share)
                else:
                    buffers.give_back(buf)
                del batch, buf, rows     # the consumer holds the step; the next is built without it
            epoch, step = epoch + 1, 0
            self.epoch, self.step, self.offset = epoch, 0, 0

    def _sample(self, plan: EpochPlan, step: int, slot: int, index: int, out=None) -> dict:
        """The sample for ``slot`` of global batch ``step``: the planned window, or its first
        replacement that passes the checks. ``pad`` is True for a pad slot of the plan and for a
        replacement (a window the epoch yields elsewhere too): give it no weight. ``out``: where
        to decode the frames (a row of the step's batch tensor), see :meth:`build`."""
        tried = []
        candidates = iter([index])
        for attempt in range(MAX_ATTEMPTS):
            i = next(candidates, None)
            if i is None:
                break
            try:
                sample, verdict = self.build(self.windows[i], out)
            except Exception as e:  # noqa: BLE001 - an unreadable window is replaced like a rejected one
                from curation.store import one_line
                sample, verdict = None, f"error: {one_line(e, 200)}"
                log.warning("%s @ %.2f s: %s", self.windows[i].clip_id, self.windows[i].start_s, verdict)
            if verdict is None:
                pad = bool(tried) or slot in plan.pads.get(step, ())
                sample.update(epoch=plan.epoch, step=step, slot=slot, replaced=tried, pad=pad)
                return sample
            tried.append({"clip_id": self.windows[i].clip_id, "start_s": self.windows[i].start_s,
                          "reason": verdict})
            if attempt == 0:
                candidates = iter(replacements(plan, self.seed, step, slot, index, len(self.windows)))
        raise StreamError(f"step {step} slot {slot}: no window of its bucket passes the checks "
                          f"after {len(tried)} tries (last: {tried[-1]['reason'] if tried else '-'})")

    # ---- one window -----------------------------------------------------------------------------------
    def build(self, w: Window, out: np.ndarray | None = None) -> tuple[dict, str | None]:
        """(sample, None) for a window that passes the profile's checks, (partial sample, reason)
        for one that does not. ``out``: a (T_max, H, W, 3) uint8 array to decode the frames into
        (``frames`` is then a view of it; see :func:`curation.data.decode.read_window`)."""
        clip = self.clip_row(w.clip_id)
        video = self.video_row(w.video_id or clip["video_id"])
        from curation.media import local_path
        n_audio = int(round(w.frames / self.fps * cond.SR))
        pcm = self._pcm_meta_of(video) if video.get("has_audio") and self.stored_audio else None
        with local_path(video["uri"]) as path:
            # without the store's PCM the audio decodes in the same pass over the file as the
            # frames (PyAV demuxes both); the window's samples are cut at the first frame's pts
            wf = read_window(path, w.start_s, w.frames, self.fps, self.size, self.backend,
                             int(video.get("rotation") or 0),
                             audio_rate=cond.SR if video.get("has_audio") and pcm is None else None,
                             out=out)
            start = float(wf.pts[0]) if len(wf.pts) else w.start_s
            if pcm is not None:
                audio = self._stored_audio(pcm, start, n_audio)
            else:
                mix = (wf.audio, wf.audio_first) if wf.audio is not None else \
                    self._mix(path, video, w.start_s, n_audio)
                audio = cond.cut_audio(*mix, start, n_audio)
        sample = {"clip_id": w.clip_id, "video_id": clip["video_id"], "start_s": start,
                  "fps": self.fps, "frames": wf.images, "audio": audio, "window_index": w.index,
                  "pts": wf.pts, "has_audio": bool(video.get("has_audio")),
                  "audio_read": "store" if pcm is not None else "file"}
        if self.validate:
            from curation.validate.checks import WindowView, run_checks
            view = WindowView(clip, video, w, self.fps, frames=wf, audio=audio, track=self._track_of(clip))
            verdict = run_checks(self.profile, view)
            if not verdict.kept:
                return sample, verdict.reason
        self._conditions(sample, clip, w, wf.pts)
        return sample, None

    def _blob_meta(self, video_id: str, blob: str, cols: list[str]) -> tuple[dict, int] | None:
        """(the ``cols`` of the video's row, its row id in the videos table at the pinned version:
        each window's ranged read of the ``blob`` column then skips the search), None when the
        store has no such column."""
        from curation.store import sql_quote
        if blob not in self._store.dataset("videos", self.versions["videos"]).schema.names:
            return None
        where = f"video_id = {sql_quote(video_id)}"
        rows = self._query("videos", where, cols).to_pylist()
        return (rows[0] if rows else {}), self._store.row_id("videos", where, self.versions["videos"])

    def _pcm_meta_of(self, video: dict):
        """(samples, start sample, row id) of the video's ``audio_pcm`` at 16 kHz, None when the
        store has none for it (no audio_pcm step, or a row without PCM)."""
        def meta():
            got = self._blob_meta(video["video_id"], "audio_pcm",
                                  ["audio_pcm_samples", "audio_pcm_rate", "audio_pcm_start_s"])
            if got is None or not got[0].get("audio_pcm_samples") or got[0].get("audio_pcm_rate") != cond.SR:
                return None
            r, row_id = got
            return int(r["audio_pcm_samples"]), int(round((r.get("audio_pcm_start_s") or 0.0) * cond.SR)), row_id
        return self._pcm.get_or(video["video_id"], meta)

    def _stored_audio(self, pcm: tuple, start_s: float, n: int) -> np.ndarray:
        """The ``n`` samples from round(start_s * 16000) of the stored PCM (zeros outside it): one
        ranged read of the blob."""
        total, first, row_id = pcm
        a = int(round(start_s * cond.SR)) - first
        lo, hi = min(max(a, 0), total), min(max(a + n, 0), total)
        out = np.zeros(n, np.float32)
        if hi > lo:
            data = self._store.blob_range("videos", "audio_pcm", None, 2 * lo, 2 * (hi - lo),
                                          version=self.versions["videos"], row_id=row_id)
            got = np.frombuffer(data, "<i2")
            out[lo - a:lo - a + len(got)] = got.astype(np.float32) / 32768.0
        return out

    def _mix(self, path: str, video: dict, nominal: float, n: int) -> tuple[np.ndarray, int]:
        """(samples, index of the first) of the mix from 0.2 s before the window's nominal start to
        0.5 s past its end, read on its own (``load_audio``: a second open of the file) when the
        frames' pass gave none (a backend other than PyAV, or its seek landed after the audio it
        needs). Starting on a whole sample keeps the cut at round(pts * 16000) exact."""
        first = max(0, int(np.floor((nominal - 0.2) * cond.SR)))
        if not video.get("has_audio"):
            return np.zeros(0, np.float32), first
        from curation.media import load_audio
        return load_audio(path, cond.SR, start_s=first / cond.SR,
                          duration_s=(n + int(0.7 * cond.SR)) / cond.SR), first

    def _conditions(self, sample: dict, clip: dict, w: Window, pts: np.ndarray) -> None:
        start, n = sample["start_s"], len(sample["audio"])
        text, present, missing = cond.text_condition(clip, start, start + w.frames / self.fps)
        sample.update(text=text, text_parts=present, text_missing=missing)
        sample["states"] = cond.states_at(clip.get("frame_times"), clip.get("frame_states"), pts,
                                          self.fps)
        sample["speak_audio"], sample["listen_audio"], sample["audio_source"] = \
            self._roles(sample["audio"], clip, start, n)
        sample["audio_features"] = self._features_of(clip["video_id"], pts)
        sample["references"] = self._references(clip)

    def _roles(self, mix: np.ndarray, clip: dict, start: float, n: int):
        from curation.media import MediaError, load_audio, local_path
        if clip.get("speaker_audio_uri") and clip.get("listener_audio_uri"):
            try:
                out = []
                for uri in (clip["speaker_audio_uri"], clip["listener_audio_uri"]):
                    with local_path(uri) as p:   # the role WAVs start at the clip's start
                        out.append(cond.fit(load_audio(p, cond.SR, start_s=max(0.0, start - clip["start_s"]),
                                                       duration_s=n / cond.SR), n))
                return out[0], out[1], "role_tracks"
            except (MediaError, OSError) as e:
                log.warning("%s: role tracks unreadable (%s): masking the mix", clip["clip_id"], e)
        if clip.get("audio_mask") and clip.get("frame_times"):
            speak, listen = cond.mask_audio(mix, clip["audio_mask"], clip["frame_times"], start)
            return speak, listen, "mask"
        return mix.copy(), np.zeros(n, np.float32), "mix_unlabelled"

    def _features_of(self, video_id: str, pts: np.ndarray):
        """The video's Whisper features at the frame times: only the window's slice of the blob is
        read (an hour of tiny.en features is 1.4 GB)."""
        meta = self._features.get_or(video_id, lambda: self._features_meta(video_id))
        if meta is None or not len(pts):
            return None
        (frames, groups, dim), rate, t0, row_id = meta
        row = groups * dim * 2                                    # float16
        f0 = int(np.clip(np.floor((pts[0] - t0) * rate) - 1, 0, frames - 1))
        f1 = int(np.clip(np.ceil((pts[-1] - t0) * rate) + 2, f0 + 1, frames))
        data = self._store.blob_range("videos", "audio_features", None, f0 * row, (f1 - f0) * row,
                                      version=self.versions["videos"], row_id=row_id)
        values = np.frombuffer(data, np.float16).reshape(f1 - f0, groups, dim)
        return cond.features_at(values, rate, t0 + f0 / rate, pts)

    def _features_meta(self, video_id: str):
        """((F, G, D), rate, start, row id) of the video's features, None when it has none."""
        got = self._blob_meta(video_id, "audio_features",
                              ["audio_features_shape", "audio_features_hz", "audio_features_start_s"])
        if got is None or not got[0].get("audio_features_shape"):
            return None
        r, row_id = got
        return tuple(r["audio_features_shape"]), float(r["audio_features_hz"]), \
            float(r.get("audio_features_start_s") or 0.0), row_id

    def _references(self, clip: dict) -> list[np.ndarray]:
        if "references" not in self.versions or self.max_references <= 0:
            return []
        from curation.store import sql_quote
        key = clip.get("track_id") or clip["clip_id"]
        where = (f"track_id = {sql_quote(clip['track_id'])}" if clip.get("track_id")
                 else f"clip_id = {sql_quote(clip['clip_id'])}")

        def load():
            t = self._store.query_blobs("references", "image", _and(where, "error IS NULL"),
                                        ["ref_id", "kind", "score"], version=self.versions["references"])
            t = [r for r in t if r["image"]]
            t.sort(key=lambda r: (r["kind"] != "global", -(r["score"] or 0), r["ref_id"]))
            images = [cond.decode_jpeg(r["image"]) for r in t[: self.max_references]]
            return [im for im in images if im is not None]
        return self._refs.get_or(key, load)

    # ---- store rows -----------------------------------------------------------------------------------
    def clip_row(self, clip_id: str) -> dict:
        from curation.store import sql_quote
        return self._rows.get_or(clip_id, lambda: self._query(
            "clips", f"clip_id = {sql_quote(clip_id)}").to_pylist()[0])

    def video_row(self, video_id: str) -> dict:
        from curation.store import sql_quote
        cols = ["video_id", "uri", "has_audio", "rotation", "fps", "width", "height"]
        return self._videos.get_or(video_id, lambda: self._query(
            "videos", f"video_id = {sql_quote(video_id)}", cols).to_pylist()[0])

    def _track_of(self, clip: dict) -> dict | None:
        if not clip.get("track_id") or not self._store.exists("tracks"):
            return None
        from curation.store import sql_quote

        def load():
            cols = [c for c in TRACK_COLUMNS if c in self._store.schema("tracks").names]
            rows = self._store.query("tracks", f"track_id = {sql_quote(clip['track_id'])}", cols).to_pylist()
            return rows[0] if rows else None
        return self._rows.get_or(("track", clip["track_id"]), load)

    # ---- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the stream is: a few integers (and the selection's fingerprint, checked on load)."""
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "step": self.step,
                "offset": self.offset, "windows": len(self.windows), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") not in (None, self.fingerprint):
            raise StreamError("this state was saved from another selection (window list fingerprint "
                              f"{state.get('fingerprint')} != {self.fingerprint})")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.offset = int(state.get("offset", 0))
        self._plans = _Cache(2)


def _and(*clauses: str | None) -> str | None:
    parts = [f"({c})" for c in clauses if c and str(c).strip()]
    return " AND ".join(parts) or None


def _topology(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
