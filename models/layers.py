"""Building blocks shared by the DiT (models/dit.py) and the causal student (models/distill/):
RMSNorm, 3D rotary position embedding applied at attention time from explicit positions, and one
attention function over torch SDPA that takes a key prefix (a KV cache) and a boolean mask.

RoPE layout (Wan2.1 ``rope_params``/``rope_apply``): a head of ``d`` channels is ``c = d // 2``
rotation pairs, split into time / height / width parts of ``c - 2 * (c // 3)``, ``c // 3`` and
``c // 3`` pairs. Positions are floats (B or 1, N, 3) given per call, never looked up in a table,
so any position (a reference offset, a capped rolling position) is valid and cached keys can be
stored before RoPE and rotated to new positions later (StreamAvatar's RAPR).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs for (time, height, width) of a head of ``head_dim`` channels."""
    if head_dim % 2:
        raise ValueError(f"head dim must be even for RoPE, got {head_dim}")
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """cos/sin of shape (B, 1, N, head_dim // 2) for positions ``pos`` (B, N, 3) (time, h, w)."""
    parts = []
    for axis, pairs in enumerate(rope_split(head_dim)):
        if pairs == 0:
            continue
        inv = 1.0 / theta ** (torch.arange(pairs, dtype=torch.float64, device=pos.device) * 2 / (2 * pairs))
        parts.append(pos[..., axis:axis + 1].double() * inv)
    ang = torch.cat(parts, -1).float().unsqueeze(1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, H, N, d) by the angles of cos/sin (B, 1, N, d/2)."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1)
    return out.flatten(-2).to(x.dtype)


def attention(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over (B, H, N, d) tensors; ``mask`` is boolean (True = may attend), broadcastable to
    (B, H, Nq, Nk), or None (full attention: the flash kernel on GPU)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys and RoPE at attention time.

    ``forward`` returns the output and the current tokens' keys (before RoPE) and values, so a causal
    caller can cache them; ``kv_prefix`` = (keys before RoPE, values, their cos, their sin) of earlier
    tokens is prepended to the keys (a KV cache). ``q_rope`` rotates the queries, ``k_rope`` the
    current keys.
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim), RMSNorm(dim)

    def forward(self, x, q_rope, k_rope, mask=None, kv_prefix=None):
        q = heads(self.norm_q(self.q(x)), self.n_heads)
        k = heads(self.norm_k(self.k(x)), self.n_heads)
        v = heads(self.v(x), self.n_heads)
        kr = apply_rope(k, *k_rope)
        keys, values = kr, v
        if kv_prefix is not None:
            pk, pv, pcos, psin = kv_prefix
            keys = torch.cat([apply_rope(pk, pcos, psin), kr], 2)
            values = torch.cat([pv, v], 2)
        out = attention(apply_rope(q, *q_rope), keys, values, mask)
        return self.o(merge_heads(out)), (k, v)
