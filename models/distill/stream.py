"""Chunk-by-chunk rollouts of a causal model (models/distill/causal.py): the teacher's ODE trajectories
(Euler, many steps per chunk, with guidance), the few-step student's samples (predict x0, re-noise to
the next t), the one-step refiner, and streaming generation.

Guidance in a causal rollout needs one KV cache per guidance branch (the hidden states differ with
the conditions): :class:`Branches` keeps them in step. Chunk 0 is the clean first latent (the
reference image, or a window's first frame) when one is given: it is run at t = 0 to fill the caches.
"""
from __future__ import annotations

import torch

from models.distill.causal import CausalStudent, chunk_bounds


def guided_conditions(avatar, texts, speak, listen, text_scale: float = 1.0, audio_scale: float = 1.0):
    """(conditions, weights): v = sum_i w_i v_i = v_none + s_t (v_text - v_none) + s_a (v_full - v_text)."""
    full = avatar.conditions(texts, speak, listen)
    if (text_scale, audio_scale) == (1.0, 1.0):
        return [full], [1.0]
    text_only = full.muted(speak=True, listen=True)
    none = avatar.conditions([""] * len(texts), speak, listen).muted(speak=True, listen=True)
    return [full, text_only, none], [audio_scale, text_scale - audio_scale, 1.0 - text_scale]


class Branches:
    """A causal model rolled out under one or more condition sets whose velocities are combined."""

    def __init__(self, student: CausalStudent, conds: list, weights: list, refs, batch: int):
        self.student, self.conds, self.weights = student, conds, weights
        self.caches = [student.prime(refs, c, batch) for c in conds]

    def velocity(self, x, t, c: int, s: int):
        v, kvs = 0.0, []
        for cond, cache, w in zip(self.conds, self.caches, self.weights):
            vi, kv = self.student.step(x, t, cond, cache, c, s)
            v, kvs = v + w * vi.float(), kvs + [kv]
        return v, kvs

    def commit(self, c: int, s: int, e: int, kvs: list) -> None:
        for cache, kv in zip(self.caches, kvs):
            self.student.commit(cache, c, s, e, kv)


def _full_t(x, t: float):
    return torch.full((x.shape[0], x.shape[2]), float(t), device=x.device)


def euler_chunk(branches: Branches, x, c, s, grid, record):
    """The teacher's ODE on one chunk: Euler steps over ``grid`` (1 -> 0); returns (x0, kvs of a
    forward on x0 at t = 0 (clean history), {t: x at t for t in record})."""
    seen = {}
    for i in range(len(grid) - 1):
        if grid[i] in record:
            seen[grid[i]] = x.clone()
        v, _ = branches.velocity(x, _full_t(x, grid[i]), c, s)
        x = x + (grid[i] - grid[i + 1]) * v
    seen[0.0] = x.clone()
    _, kvs = branches.velocity(x, _full_t(x, 0.0), c, s)
    return x, kvs, seen


def fewstep_chunk(branches: Branches, x, c, s, schedule, gen, history: str):
    """A few-step student on one chunk: at each t predict x0 = x + t v, re-noise it to the next t;
    returns (x0, kvs to cache: the last step's (noisy history) or a forward on x0 at t = 0 (clean))."""
    dtype = x.dtype
    for k, tk in enumerate(schedule):
        v, kvs = branches.velocity(x, _full_t(x, tk), c, s)
        x0 = (x + tk * v).to(dtype)
        if k + 1 < len(schedule):
            t_next = schedule[k + 1]
            x = ((1 - t_next) * x0 + t_next * torch.randn(x0.shape, generator=gen).to(x0.device)).to(dtype)
    if history == "clean":
        _, kvs = branches.velocity(x0, _full_t(x0, 0.0), c, s)
    return x0, kvs


@torch.no_grad()
def rollout(branches: Branches, shape, gen, chunk_fn, first=None, device="cpu"):
    """Roll a causal model over latents of ``shape`` (B, C, T', h, w) chunk by chunk; ``chunk_fn(x_noise,
    c, s)`` -> (x0, kvs, extra); ``first`` (B, C, 1, h, w) is the clean first chunk. Returns (x0 of the
    whole sequence, list of each chunk's extra)."""
    spec = branches.student.spec
    bounds = chunk_bounds(shape[2], spec.chunk, spec.first_chunk)
    out, extras = [], []
    for c, (s, e) in enumerate(bounds):
        if c == 0 and first is not None:
            if e - s != first.shape[2]:
                raise ValueError(f"the first chunk has {e - s} latent frames, the first latent {first.shape[2]}")
            _, kvs = branches.velocity(first, _full_t(first, 0.0), c, s)
            x0, extra = first, None
        else:
            noise = torch.randn((shape[0], shape[1], e - s, *shape[3:]), generator=gen).to(device)
            x0, kvs, extra = chunk_fn(noise, c, s)
        branches.commit(c, s, e, kvs)
        out.append(x0)
        extras.append(extra)
    return torch.cat(out, 2), extras
