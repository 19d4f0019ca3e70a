"""The ODE trajectory dataset (LPM §4.3 stage 1): for N windows of the data source, the teacher's
trajectory from noise to a clean latent sequence, recorded at the student's timesteps (its schedule
T0 > T1, the refiner's T2, and 0), with the window's conditions (audio features, text, references,
its clean first latent). Stages 1-4 read it: ODE regression (inputs at the recorded t, target x0),
off-policy DMD (x0 re-noised), the refiner's target, and the conditions of on-policy rollouts.

With ``ode_teacher: causal`` (the default; Causal-Forcing: a causal student regresses onto a causal
teacher's trajectories) the teacher's weights are rolled out chunk by chunk under the student's
causal attention (KV cache, sink, window) with guidance; ``bidirectional`` integrates the whole
sequence at once. Built once (deterministically from the seed) and saved as ``trajectories.pt`` in
the stage's run directory; a later stage reuses the one beside its ``--init`` checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.audio import group_frames
from models.distill.causal import CausalStudent
from models.distill.stream import Branches, euler_chunk, guided_conditions, rollout
from models.flow import Guidance, encode

KEYS = ("speak", "listen", "ref_lat", "ref_types", "ref_subs", "ref_valid", "first")


def conditions_of(batch, vae, r: int, max_refs: int) -> dict:
    """The conditions of a batch of windows as pool tensors (+ texts); references padded to
    ``max_refs`` (``ref_valid`` False) so batches stack."""
    z, ref_lat = encode(vae, batch)
    b, k = z.shape[0], 0 if ref_lat is None else ref_lat.shape[1]
    pad = max_refs - k
    if ref_lat is None:
        ref_lat = torch.zeros(b, 0, z.shape[1], 1, *z.shape[3:])
        batch.ref_types = batch.ref_subs = torch.zeros(b, 0, dtype=torch.long)
        batch.ref_valid = torch.zeros(b, 0, dtype=torch.bool)
    grow = lambda x: torch.cat([x, torch.zeros(b, pad, *x.shape[2:], dtype=x.dtype)], 1) if pad > 0 else x
    return {"speak": group_frames(batch.speak, r), "listen": group_frames(batch.listen, r),
            "ref_lat": grow(ref_lat), "ref_types": grow(batch.ref_types), "ref_subs": grow(batch.ref_subs),
            "ref_valid": grow(batch.ref_valid), "first": z[:, :, :1], "texts": list(batch.texts),
            "shape": tuple(z.shape)}


def refs_of(avatar, p: dict, anchor: int):
    if p["ref_lat"].shape[1] == 0:
        return None
    return avatar.references(p["ref_lat"], p["ref_types"], p["ref_subs"], p["ref_valid"], anchor)


@torch.no_grad()
def trajectories(teacher, p: dict, spec, gen) -> dict:
    """{t: latents (B, C, T', h, w)} of the teacher's trajectory at the recorded t."""
    record, grid = spec.record_at(), spec.grid()
    conds, weights = guided_conditions(teacher, p["texts"], p["speak"], p["listen"], spec.text_scale,
                                       spec.audio_scale)
    shape, b = p["shape"], p["shape"][0]
    if spec.ode_teacher == "causal":
        student = CausalStudent(teacher, spec.causal_spec())
        branches = Branches(student, conds, weights, refs_of(teacher, p, student.spec.cap), b)
        fn = lambda x, c, s: euler_chunk(branches, x, c, s, grid, set(record))
        x0, extras = rollout(branches, shape, gen, fn, first=p["first"])
        out = {t: torch.cat([p["first"] if ex is None else ex[t] for ex in extras], 2) for t in record if t > 0}
        out[0.0] = x0
        return out
    guide = Guidance(teacher, p["texts"], p["speak"], p["listen"], refs_of(teacher, p, shape[2]),
                     spec.text_scale, spec.audio_scale)
    x = torch.randn(shape, generator=gen)
    out = {}
    for i in range(len(grid) - 1):
        x[:, :, :1] = p["first"]
        if grid[i] in record:
            out[grid[i]] = x.clone()
        t = torch.full((b, shape[2]), grid[i])
        t[:, 0] = 0.0
        x = x + (grid[i] - grid[i + 1]) * guide.velocity(x, t).float()
    x[:, :, :1] = p["first"]
    out[0.0] = x
    return out


def build_pool(teacher, vae, batches, n: int, spec, seed: int) -> dict:
    """The trajectory dataset of the first ``n`` windows of ``batches`` (models.data.Batches)."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    while sum(len(p["texts"]) for p in parts) < n:
        p = conditions_of(batches.next(), vae, vae.temporal, batches.spec.max_refs)
        p["x"] = trajectories(teacher, p, spec, gen)
        parts.append(p)
    pool = {k: torch.cat([p[k] for p in parts])[:n] for k in KEYS}
    pool["texts"] = sum((p["texts"] for p in parts), [])[:n]
    pool["x"] = {t: torch.cat([p["x"][t] for p in parts])[:n] for t in parts[0]["x"]}
    return pool


def pick(pool: dict, idx: torch.Tensor) -> dict:
    """Entries ``idx`` of the pool, as the conditions dict the stages use."""
    out = {k: pool[k][idx] for k in KEYS}
    out["texts"] = [pool["texts"][i] for i in idx.tolist()]
    out["x"] = {t: x[idx] for t, x in pool["x"].items()}
    out["shape"] = tuple(out["x"][0.0].shape)
    return out


def load_or_build(path: Path, make) -> dict:
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    pool = make()
    tmp = path.with_suffix(".tmp")
    torch.save(pool, tmp)
    tmp.rename(path)
    return pool
