"""The chunk-wise causal student: the bundled DiT's blocks run chunk by chunk with a KV cache, an
attention sink, a local window and reference-anchored, capped rolling positions (LPM §4.2, §4.4;
StreamAvatar §3.1; Self-Forcing's causal model).

Latent frames are cut into chunks (:func:`chunk_bounds`: a first chunk of ``first_chunk`` frames, the
image latent of a causal VAE, then ``chunk`` frames each). A video token of chunk c attends to

- the reference tokens (kept for ever: the reference sink), which attend only to each other,
- the first ``sink`` chunks (kept for ever),
- the ``window`` chunks before c, and chunk c itself (bidirectionally inside the chunk),

which is the block mask of :func:`block_mask`: one full forward of the DiT under that mask is what the
cached chunk-by-chunk path must reproduce (tested to 1e-5).

Positions (RAPR): keys are cached **before** RoPE and rotated at every step from positions computed
for that step. References sit at ``cap + o_type + j`` (LPM eq. 4 with the video length fixed at
``cap``) and the sink chunks at their own frame numbers: both are anchors that never move. The window
and the current chunk are placed relative to the current chunk, which ends at ``min(e, cap) - 1`` for
a chunk ending at latent frame e: until the stream reaches ``cap`` frames every position is the
frame number (so the full forward above is the DiT's own default layout), and from then on the same
relative layout repeats: chunk 10 and chunk 10,000 see the same positions, and no position grows
with the stream. ``cap`` must leave the window above the sink: cap >= first_chunk + (sink - 1 +
window + 1) * chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.dit import Conditions, Modulation, References
from models.layers import rope_cos_sin


@dataclass
class CausalSpec:
    chunk: int = 3            # latent frames per chunk
    first_chunk: int = 1      # latent frames of the first chunk (a causal VAE's image latent)
    sink: int = 1             # leading chunks kept in the cache for ever (with the references)
    window: int = 2           # earlier chunks kept besides the sink
    cap: int = 21             # RAPR: the current chunk ends at temporal position <= cap - 1

    def check(self) -> None:
        need = self.first_chunk + self.sink * self.chunk + self.window * self.chunk
        if self.cap < need:
            raise ValueError(f"causal cap {self.cap} < {need}: the rolling window would overlap the sink "
                             "(cap >= first_chunk + (sink + window) * chunk)")


def chunk_bounds(n_frames: int, chunk: int, first: int) -> list[tuple[int, int]]:
    """[(start, end)) of each chunk of ``n_frames`` latent frames (the last one may be shorter)."""
    bounds, s = [], 0
    size = min(first, n_frames) if first else chunk
    while s < n_frames:
        e = min(n_frames, s + size)
        bounds.append((s, e))
        s, size = e, chunk
    return bounds


def visible(c: int, spec: CausalSpec) -> list[int]:
    """Chunks a query of chunk c sees: the sink chunks, the window before c, c itself."""
    return sorted(set(range(min(spec.sink, c))) | set(range(max(0, c - spec.window), c + 1)))


def block_mask(bounds: list, hw: int, n_ref: int, spec: CausalSpec, ref_valid=None) -> torch.Tensor:
    """(B or 1, 1, N, N) bool mask over [video tokens, reference tokens] of the causal student."""
    chunk_of = torch.cat([torch.full(((e - s) * hw,), c) for c, (s, e) in enumerate(bounds)])
    nv = chunk_of.shape[0]
    vis = torch.zeros(len(bounds), len(bounds), dtype=torch.bool)
    for c in range(len(bounds)):
        vis[c, visible(c, spec)] = True
    m = torch.zeros(nv + n_ref, nv + n_ref, dtype=torch.bool)
    m[:nv, :nv] = vis[chunk_of[:, None], chunk_of[None, :]]
    m[:, nv:] = True                                     # everyone sees the references ...
    m[nv:, :nv] = False                                  # ... which see only each other
    m = m[None, None]
    if ref_valid is not None:
        keys = torch.cat([torch.ones(ref_valid.shape[0], nv, dtype=torch.bool), ref_valid], 1)
        m = m & keys[:, None, None, :]
    return m


def frame_positions(frames: torch.Tensor, anchored: torch.Tensor, e: int, cap: int) -> torch.Tensor:
    """RAPR temporal positions of latent ``frames`` for a query chunk ending at frame ``e``: anchored
    frames (the sink) keep their number; the others sit at min(e, cap) - (e - f)."""
    rel = min(e, cap) - (e - frames.double())
    return torch.where(anchored, frames.double(), rel)


@dataclass
class KVCache:
    """Keys (before RoPE) and values per layer: the references', and per cached chunk."""
    refs: list = field(default_factory=list)          # per layer (k, v), (B, H, Nr, d)
    ref_pos: torch.Tensor | None = None               # (B, Nr, 3)
    ref_valid: torch.Tensor | None = None             # (B, Nr) bool
    chunks: dict = field(default_factory=dict)        # chunk index -> (start, end, [per layer (k, v)])

    def keep(self, next_chunk: int, spec: CausalSpec) -> None:
        """Evict what chunk ``next_chunk`` will not see."""
        keep = set(visible(next_chunk, spec))
        for c in [c for c in self.chunks if c not in keep]:
            del self.chunks[c]


class CausalStudent:
    """Chunk-wise causal inference and training views of an :class:`models.avatar.Avatar` (its DiT's
    blocks, unchanged). Not a module: it holds the avatar (trainable, wrapped or not) and the spec."""

    def __init__(self, avatar, spec: CausalSpec):
        spec.check()
        self.avatar, self.spec = avatar, spec

    @property
    def dit(self):
        return self.avatar.dit

    # ---- references and the cache

    def references(self, ref_latents, ref_types, ref_subs, ref_valid) -> References | None:
        """Reference tokens anchored at cap + o_type + j."""
        return self.avatar.references(ref_latents, ref_types, ref_subs, ref_valid, self.spec.cap)

    def prime(self, refs: References | None, cond: Conditions, batch: int) -> KVCache:
        """A cache holding the references' keys and values of every layer (they attend to each other
        only, so they are computed once for the whole stream)."""
        cache = KVCache()
        if refs is None:
            return cache
        dit, dev = self.dit, refs.tokens.device
        e0 = dit.time_modulation(torch.zeros(batch, 1, device=dev))
        mr = dit.time_proj(e0).unflatten(-1, (6, -1))
        mod = Modulation(mr[:, :0], mr, 1)
        cos, sin = rope_cos_sin(refs.pos, dit.cfg.head_dim, dit.cfg.rope_theta)
        mask = None if bool(refs.valid.all()) else refs.valid[:, None, None, :]
        h, none = refs.tokens, torch.zeros(0, dtype=torch.long, device=dev)
        for block in dit.blocks:
            h, kv = block(h, mod, cond, (cos, sin, cos, sin), none, mask)
            cache.refs.append(kv)
        cache.ref_pos, cache.ref_valid = refs.pos, refs.valid
        return cache

    def _keys(self, cache: KVCache, c: int, s: int, e: int, hw: int, grid: torch.Tensor):
        """Positions and per-layer keys/values of what chunk c sees before itself, and its own positions."""
        spec, dev = self.spec, grid.device
        cached = [i for i in visible(c, spec) if i != c and i in cache.chunks]
        frames = [torch.arange(cache.chunks[i][0], cache.chunks[i][1], device=dev) for i in cached]
        frames.append(torch.arange(s, e, device=dev))
        anchored = [torch.full_like(f, i < spec.sink, dtype=torch.bool) for i, f in zip(cached + [c], frames)]
        t_pos = frame_positions(torch.cat(frames), torch.cat(anchored), e, spec.cap)
        pos = torch.cat([t_pos.float().repeat_interleave(hw)[:, None], grid.repeat(len(t_pos), 1)], 1)
        n_cur = (e - s) * hw
        return cached, pos[:-n_cur], pos[-n_cur:]

    def step(self, x, t, cond: Conditions, cache: KVCache, c: int, s: int):
        """Velocity of chunk c (latent frames s .. s + x.shape[2]) given the cache; returns (v, per-layer
        (k, v) of the chunk) and leaves the cache unchanged (see :meth:`commit`)."""
        dit, cfg = self.dit, self.dit.cfg
        b, e = x.shape[0], s + x.shape[2]
        tok, grid3 = dit.patchify(x)
        hw = grid3[1] * grid3[2]
        grid = torch.stack(torch.meshgrid(torch.arange(grid3[1]), torch.arange(grid3[2]), indexing="ij"), -1)
        grid = grid.reshape(-1, 2).float().to(x.device)
        cached, prefix_pos, cur_pos = self._keys(cache, c, s, e, hw, grid)
        hd, th = cfg.head_dim, cfg.rope_theta
        q_rope = rope_cos_sin(cur_pos[None].expand(b, -1, -1), hd, th)
        pre = [prefix_pos[None].expand(b, -1, -1)]
        if cache.refs:
            pre.insert(0, cache.ref_pos)
        p_cos, p_sin = rope_cos_sin(torch.cat(pre, 1), hd, th)
        mask = None
        if cache.refs and not bool(cache.ref_valid.all()):
            n_other = p_cos.shape[2] - cache.ref_valid.shape[1] + tok.shape[1]
            keys = torch.cat([cache.ref_valid, torch.ones(b, n_other, dtype=torch.bool, device=x.device)], 1)
            mask = keys[:, None, None, :]
        e_t = dit.time_modulation(t)
        mod = Modulation(dit.time_proj(e_t).unflatten(-1, (6, -1)), None, hw)
        frames = torch.arange(s, e, device=x.device).repeat_interleave(hw)
        h, new = tok, []
        for layer, block in enumerate(dit.blocks):
            ks = [cache.refs[layer][0]] if cache.refs else []
            vs = [cache.refs[layer][1]] if cache.refs else []
            ks += [cache.chunks[i][2][layer][0] for i in cached]
            vs += [cache.chunks[i][2][layer][1] for i in cached]
            prefix = (torch.cat(ks, 2), torch.cat(vs, 2), p_cos, p_sin) if ks else None
            h, kv = block(h, mod, cond, (*q_rope, *q_rope), frames, mask, prefix)
            new.append(kv)
        return dit.unpatchify(dit.final(h, e_t, hw), grid3), new

    def commit(self, cache: KVCache, c: int, s: int, e: int, kvs: list) -> None:
        """Store chunk c's keys/values and evict what chunk c + 1 will not see."""
        cache.chunks[c] = (s, e, [(k.detach(), v.detach()) for k, v in kvs])
        cache.keep(c + 1, self.spec)

    # ---- the whole sequence at once (training, and the reference for the cache)

    def full(self, x, t, cond: Conditions, refs: References | None):
        """Velocity of every chunk in one forward under the block mask (valid while the sequence is
        not longer than ``cap``: then every position is the frame number)."""
        if x.shape[2] > self.spec.cap:
            raise ValueError(f"a full causal forward needs at most cap = {self.spec.cap} latent frames, "
                             f"got {x.shape[2]}")
        bounds = chunk_bounds(x.shape[2], self.spec.chunk, self.spec.first_chunk)
        hw = (x.shape[3] // self.dit.cfg.patch[1]) * (x.shape[4] // self.dit.cfg.patch[2])
        n_ref = 0 if refs is None else refs.tokens.shape[1]
        mask = block_mask(bounds, hw, n_ref, self.spec, None if refs is None else refs.valid).to(x.device)
        return self.dit(x, t, cond, refs, mask=mask)
