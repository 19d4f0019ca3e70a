"""From ClipStream samples (the CONTRACTS.md dict) to training tensors, and a synthetic source.

:func:`prepare` turns one sample into tensors (frames cropped to the causal VAE's 1 + r*k frames,
speak/listen audio features per frame, reference images at the frame size with their kind and
sub-index, the text); :func:`collate` stacks prepared samples into a :class:`Batch`. A sample that
cannot be used raises :class:`SampleError` (one line: which clip, why); the trainer skips it with a
warning and takes the next one, which keeps runs deterministic. A padding sample of ClipStream
(``pad`` True: a repeated window that keeps every rank's batch the same size) gets ``weight`` 0 in
the :class:`Batch`, and the losses leave it out.

:class:`MouthSource` yields the same dicts for synthetic "mouth" videos whose truth is known by
construction: a white ellipse (the mouth) on a dark background of a random colour, whose height follows
the envelope of the speak audio (a voiced tone), while an independent listen track plays beside it. A
model that learned the speak conditioning draws the mouth as large as the held-out audio is loud.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.audio import SR, role_features
from models.dit import REF_TYPES


class SampleError(ValueError):
    """A sample the trainer cannot use (one line naming the clip and the reason)."""


@dataclass
class DataSpec:
    audio_features: str = "logmel"    # whisper | logmel (models/audio.py)
    frames_per_latent: int = 4        # the VAE's temporal factor
    spatial: int = 4                  # frames must be multiples of spatial * patch
    max_refs: int = 4


@dataclass
class Batch:
    frames: torch.Tensor              # (B, 3, T, H, W) in [-1, 1]
    speak: torch.Tensor               # (B, T, G, D)
    listen: torch.Tensor              # (B, T, G, D)
    texts: list
    refs: torch.Tensor | None = None  # (B, K, 3, 1, H, W) in [-1, 1]
    ref_types: torch.Tensor | None = None   # (B, K) index into REF_TYPES
    ref_subs: torch.Tensor | None = None    # (B, K) sub-index j within the type
    ref_valid: torch.Tensor | None = None   # (B, K) bool
    clip_ids: list = field(default_factory=list)
    weight: torch.Tensor | None = None      # (B,) 1.0 for a real sample, 0.0 for padding (None: all 1)

    @property
    def size(self) -> int:
        return self.frames.shape[0]


def to_unit(img: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return torch.tensor(np.asarray(img), dtype=torch.float32).movedim(-1, -3) / 127.5 - 1.0


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    import cv2
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def prepare(sample: dict, spec: DataSpec) -> dict:
    """One sample -> tensors (see the module docstring); raises SampleError."""
    cid = sample.get("clip_id", "?")
    frames = np.asarray(sample["frames"])
    r = spec.frames_per_latent
    t = 1 + r * ((frames.shape[0] - 1) // r)
    if frames.shape[0] < 1 + r:
        raise SampleError(f"clip {cid}: {frames.shape[0]} frames, fewer than {1 + r}")
    h, w = frames.shape[1:3]
    if h % spec.spatial or w % spec.spatial:
        raise SampleError(f"clip {cid}: frame size {h}x{w} is not a multiple of {spec.spatial}")
    try:
        speak, listen = role_features(sample, spec.audio_features, t)
    except ValueError as e:
        raise SampleError(str(e)) from None
    refs, kinds = list(sample.get("references") or [])[: spec.max_refs], sample.get("reference_kinds")
    kinds = list(kinds or ["global"] * len(refs))[: len(refs)]
    types = [REF_TYPES.index(k) if k in REF_TYPES else 0 for k in kinds]
    subs = [types[:i].count(ty) for i, ty in enumerate(types)]
    return {"frames": to_unit(frames[:t]).movedim(0, 1),
            "speak": torch.from_numpy(speak), "listen": torch.from_numpy(listen),
            "refs": [to_unit(_resize(np.asarray(im), h, w))[:, None] for im in refs],
            "ref_types": types, "ref_subs": subs, "text": str(sample.get("text") or ""),
            "clip_id": str(cid)}


def collate(items: list[dict]) -> Batch:
    """Stack prepared samples; frames are cropped to the shortest (1 + r*k keeps holding), references
    padded to the largest count with ``ref_valid`` False; ``weight`` from the items' (default 1)."""
    t = min(it["frames"].shape[1] for it in items)
    k = max(len(it["refs"]) for it in items)
    batch = Batch(frames=torch.stack([it["frames"][:, :t] for it in items]),
                  speak=torch.stack([it["speak"][:t] for it in items]),
                  listen=torch.stack([it["listen"][:t] for it in items]),
                  texts=[it["text"] for it in items], clip_ids=[it["clip_id"] for it in items],
                  weight=torch.tensor([float(it.get("weight", 1.0)) for it in items]))
    if k:
        blank = torch.zeros_like(items[0]["frames"][:, :1])
        batch.refs = torch.stack([torch.stack(it["refs"] + [blank] * (k - len(it["refs"])))
                                  for it in items])
        pad = lambda key: torch.tensor([it[key] + [0] * (k - len(it[key])) for it in items])
        batch.ref_types, batch.ref_subs = pad("ref_types"), pad("ref_subs")
        batch.ref_valid = torch.tensor([[j < len(it["refs"]) for j in range(k)] for it in items])
    return batch


# ---------------------------------------------------------------- synthetic "mouth" videos


def smooth_envelope(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """A speech-like loudness envelope in [0, 1] per frame: noise low-passed by a 0.28 s Hann window
    (syllable-rate modulation, a few Hz)."""
    k = max(3, int(round(0.28 * fps)))
    noise = rng.standard_normal(n + 2 * k)
    kernel = np.hanning(k)
    env = np.convolve(noise, kernel / kernel.sum(), "same")[k:k + n]
    env = (env - env.min()) / max(env.max() - env.min(), 1e-6)
    return np.clip(env * 1.1 - 0.05, 0.0, 1.0)


def voiced(rng: np.random.Generator, env: np.ndarray, fps: float) -> np.ndarray:
    """A 16 kHz voiced tone (f0 120-250 Hz and 3 harmonics) whose amplitude follows ``env``."""
    n = int(round(len(env) / fps * SR))
    ts = np.arange(n) / SR
    f0 = rng.uniform(120, 250)
    tone = sum(np.sin(2 * np.pi * f0 * k * ts + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    amp = np.interp(ts, (np.arange(len(env)) + 0.5) / fps, env)
    return (0.3 * amp * tone + 0.003 * rng.standard_normal(n)).astype(np.float32)


def draw_mouth(bg: np.ndarray, openness: float, size: int) -> np.ndarray:
    """A size x size RGB uint8 frame: an anti-aliased white ellipse (half-width size/4, half-height
    0.5 + openness * size * 0.22) centred at (0.6 size, 0.5 size) on background ``bg``."""
    ss = 4
    yy, xx = (np.mgrid[0:size * ss, 0:size * ss] + 0.5) / ss
    a, b = size / 4.0, 0.5 + openness * size * 0.22
    inside = ((xx - size / 2) / a) ** 2 + ((yy - 0.6 * size) / b) ** 2 <= 1.0
    cover = inside.reshape(size, ss, size, ss).mean((1, 3))[..., None]
    img = bg[None, None] * (1 - cover) + 255.0 * cover
    return img.round().clip(0, 255).astype(np.uint8)


def mouth_area(frames: np.ndarray) -> np.ndarray:
    """Mouth area per frame (pixels) of uint8 (T, H, W, 3) frames: the brightness above the frame's
    median (the background), relative to white."""
    g = frames.astype(np.float64).mean(-1)
    bg = np.median(g.reshape(len(g), -1), 1)[:, None, None]
    return np.clip((g - bg) / np.maximum(255.0 - bg, 1.0), 0, 1).sum((1, 2))


class MouthSource:
    """Endless deterministic stream of synthetic mouth samples (CONTRACTS.md dicts). Sample ``i`` is a
    pure function of (seed, i); rank ``r`` of ``world`` takes i = r, r + world, ...; the state is the
    number of samples this rank has yielded. With ``pool`` > 0, sample i is clip i % pool (kept in
    memory after its first use: cheaper data for CPU tests)."""

    def __init__(self, seed: int = 0, frames: int = 25, size: int = 16, fps: float = 25.0,
                 rank: int = 0, world: int = 1, pool: int = 0):
        self.seed, self.frames, self.size, self.fps = seed, frames, size, fps
        self.rank, self.world, self.count, self.pool = rank, world, 0, pool
        self._cache: dict = {}

    def sample(self, i: int) -> dict:
        if self.pool:
            i %= self.pool
            if i not in self._cache:
                self._cache[i] = self._make(i)
            return self._cache[i]
        return self._make(i)

    def _make(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        env = smooth_envelope(rng, self.frames, self.fps)
        listen_env = smooth_envelope(rng, self.frames, self.fps) * 0.7
        speak, listen = voiced(rng, env, self.fps), voiced(rng, listen_env, self.fps)
        bg = rng.uniform(0, 90, 3)
        frames = np.stack([draw_mouth(bg, e, self.size) for e in env])
        return {"clip_id": f"mouth:{self.seed}:{i}", "video_id": f"mouth:{self.seed}", "start_s": 0.0,
                "fps": self.fps, "frames": frames, "audio": speak + listen, "speak_audio": speak,
                "listen_audio": listen, "audio_features": None, "text": "a mouth speaking",
                "states": np.zeros(self.frames, np.int8), "references": [draw_mouth(bg, 0.0, self.size)],
                "envelope": env}

    def __iter__(self):
        while True:
            i = self.rank + self.world * self.count
            self.count += 1
            yield self.sample(i)

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


# ---------------------------------------------------------------- sources and batches


def open_source(data, store: str | None, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1):
    """The sample source of a config's ``data`` section for one rank: ``mouth`` (synthetic) or
    ``store`` (curation.data.ClipStream over ``store``: its global batch of ``batch_size`` x ``world``
    windows is split evenly over the ranks, so each rank's samples are its share, step by step)."""
    if data.source == "mouth":
        return MouthSource(seed, data.frames, data.image, data.fps, rank, world, data.pool)
    if data.source != "store":
        raise ValueError(f"unknown data.source {data.source!r} (store, mouth)")
    if not store:
        raise ValueError("data.source store needs a store (--store)")
    from curation.data import ClipStream
    return ClipStream(store, where=data.where, profile=data.profile, window_s=data.window_s, seed=seed,
                      fps=data.fps, size=tuple(data.size) if data.size else None, rank=rank,
                      world_size=world, batch_windows=batch_size * world,
                      divisible_by=batch_size * world, max_references=data.max_refs)


class Batches:
    """Batches of ``batch_size`` prepared samples drawn in order from a source; unusable samples are
    skipped with a one-line warning (after 100 in a row the source is declared broken)."""

    MAX_BAD = 100

    def __init__(self, source, spec: DataSpec, batch_size: int, warn=print, cache: int = 0):
        self.source, self.spec, self.batch_size, self.warn = source, spec, batch_size, warn
        self.skipped, self._it = 0, None
        self.cache, self._prepared = cache, {}

    def prepare(self, sample: dict) -> dict:
        """prepare(), memoised by (clip_id, start_s) for the last ``cache`` windows when cache > 0
        (small synthetic pools: the same windows come back)."""
        if not self.cache:
            return prepare(sample, self.spec)
        key = (sample.get("clip_id"), sample.get("start_s"))
        if key not in self._prepared:
            if len(self._prepared) >= self.cache:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepare(sample, self.spec)
        return self._prepared[key]

    def next(self) -> Batch:
        if self._it is None:
            self._it = iter(self.source)
        items, bad = [], 0
        while len(items) < self.batch_size:
            sample = next(self._it)
            try:
                items.append({**self.prepare(sample), "weight": 0.0 if sample.get("pad") else 1.0})
                bad = 0
            except SampleError as e:
                self.skipped, bad = self.skipped + 1, bad + 1
                self.warn(f"skipped: {e}")
                if bad >= self.MAX_BAD:
                    raise RuntimeError(f"{bad} unusable samples in a row; last: {e}") from None
        return collate(items)
