"""The bundled avatar video DiT (LPM 1.0 §3.1, Wan2.1's DiT layout, LongCat §3.1-3.2).

A velocity predictor over video latents x (B, C, T, H, W):

- **3D patch embedding** (Conv3d, ``patch`` = (pt, ph, pw)) and **3D RoPE** on every self-attention
  (positions (time, row, column) given per call, models/layers.py).
- **Per-frame timesteps** ``t`` (B, T'): each latent frame has its own noise level (clean
  conditioning frames have t = 0; the causal student of models/distill/ uses chunk-wise levels).
  AdaLN shift/scale/gate come from the frame's timestep embedding, broadcast over its tokens.
- **Blocks**: AdaLN self-attention over [video tokens, reference tokens] -> cross-attention ->
  AdaLN FFN. The cross-attention holds one query projection, a text branch (global cross-attention)
  and ONE audio branch: **speak audio on even layers, listen audio on odd layers** (LPM eq. 1-2),
  each with its own K/V/O, and the output is LPM eq. 3: ``W_o^txt A_text + W_o^aud A_audio``. Audio
  value projections start at zero (LPM §3.2). Audio attends locally: a video token of latent frame i
  sees the audio tokens of frames i - left .. i + right (``speak_window`` narrow, ``listen_window``
  wide), with a temporal RoPE by frame index on that attention so it knows which audio is its own
  frame's. Audio acts on video tokens only (never on reference tokens).
- **Reference images** are patch-embedded like video latents (one latent frame each) and appended to
  the self-attention sequence at temporal RoPE position ``T' + o_type + sub * ref_sub_offset``
  (LPM eq. 4; T' = latent frames of the window, o_type from ``ref_type_offsets``).
- A **mute switch** per branch and per sample (``Conditions.speak_on`` / ``listen_on``): 0 removes the
  branch's output (CFG dropout, speaking-only / listening-only generation).

The model does not know where its latents, audio features or text tokens come from: models/vae.py,
models/audio.py and models/text.py build them; models/train.py trains it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.layers import (RMSNorm, SelfAttention, apply_rope, attention, heads, merge_heads,
                           rope_cos_sin)

REF_TYPES = ("global", "expression", "view")  # reference kinds (the store's references.kind)


@dataclass
class DiTConfig:
    in_channels: int = 16            # latent channels (set from the VAE)
    patch: tuple = (1, 2, 2)         # (time, height, width) patch of the latent
    dim: int = 1536
    depth: int = 30
    heads: int = 12
    ffn_dim: int = 8960
    text_dim: int = 4096             # width of the text encoder's tokens
    audio_dim: int = 1280            # D of the audio features (T, G, D)
    audio_groups: int = 5            # G
    audio_tokens: int = 4            # audio tokens per latent frame
    audio_context: int = 2           # extra video frames of audio on each side of a latent frame
    audio_hidden: int = 256          # per-frame width inside the audio projector
    audio_token_dim: int = 768       # width of the projector's tokens before the model width
    frames_per_latent: int = 4       # the VAE's temporal compression (set from the VAE)
    speak_window: tuple = (0, 0)     # latent frames of speak audio before / after a video frame
    listen_window: tuple = (2, 2)    # wider for listen audio (LPM §3.1)
    ref_type_offsets: dict = field(default_factory=lambda: {"global": 1, "expression": 8, "view": 20})
    ref_sub_offset: int = 1          # so_j = j * ref_sub_offset for the j-th reference of a type
    rope_theta: float = 10000.0
    freq_dim: int = 256              # sinusoidal timestep features
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"], d["speak_window"], d["listen_window"] = (list(d[k]) for k in
                                                            ("patch", "speak_window", "listen_window"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown model config keys: {', '.join(bad)}")
        d = dict(d)
        for k in ("patch", "speak_window", "listen_window"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


FLAVOURS = {
    # CPU toy: seconds per hundred steps on 16x16 frames
    "toy": dict(dim=64, depth=4, heads=4, ffn_dim=256, text_dim=64, audio_tokens=2, audio_hidden=32,
                audio_token_dim=32),
    "toy-128": dict(dim=128, depth=4, heads=4, ffn_dim=512, text_dim=128, audio_tokens=2,
                    audio_hidden=64, audio_token_dim=64),
    # Wan2.1-1.3B's backbone shape (dim 1536, 30 layers, 12 heads, FFN 8960, umT5-XXL text) with
    # Whisper-large features; never instantiated in tests (bench/gpu_check.py builds it on a GPU)
    "1.3b": dict(dim=1536, depth=30, heads=12, ffn_dim=8960, text_dim=4096, audio_dim=1280,
                 audio_tokens=32, audio_hidden=512),
    # Wan2.1-14B's shape
    "14b": dict(dim=5120, depth=40, heads=40, ffn_dim=13824, text_dim=4096, audio_dim=1280,
                audio_tokens=32, audio_hidden=1024),
}


def flavour(name: str, **overrides) -> DiTConfig:
    if name not in FLAVOURS:
        raise ValueError(f"unknown model flavour {name!r} (known: {', '.join(FLAVOURS)})")
    return DiTConfig.from_dict({**FLAVOURS[name], **overrides})


# ---------------------------------------------------------------- conditions and references


@dataclass
class Conditions:
    """Everything the cross-attention reads, projected to the model width once per sample (reused
    over denoising steps and chunks). Audio tokens carry the latent frame they belong to."""
    text: torch.Tensor               # (B, L, dim)
    text_mask: torch.Tensor          # (B, L) bool, True = a real token
    speak: torch.Tensor              # (B, Na, dim)
    listen: torch.Tensor             # (B, Na, dim)
    audio_frames: torch.Tensor       # (Na,) latent frame of each audio token
    speak_on: torch.Tensor           # (B,) 1 = on, 0 = muted / dropped
    listen_on: torch.Tensor          # (B,)

    def muted(self, speak: bool = False, listen: bool = False) -> "Conditions":
        return replace(self, speak_on=self.speak_on * (0.0 if speak else 1.0),
                       listen_on=self.listen_on * (0.0 if listen else 1.0))


@dataclass
class References:
    """Reference-image tokens appended to the self-attention sequence."""
    tokens: torch.Tensor             # (B, Nr, dim)
    pos: torch.Tensor                # (B, Nr, 3) RoPE positions
    valid: torch.Tensor              # (B, Nr) bool (False: padding of a sample with fewer references)


class Modulation:
    """Per-frame AdaLN parameters (B, T', k, D) of the video tokens (hw tokens per frame) and (B, 1, k,
    D) of the reference tokens, applied without materialising them per token."""

    def __init__(self, video: torch.Tensor, ref: torch.Tensor | None, hw: int):
        self.video, self.ref, self.hw = video, ref, hw

    def _apply(self, x, fn):
        b, t = self.video.shape[:2]
        nv = t * self.hw
        xv = x[:, :nv].unflatten(1, (t, self.hw))
        out = fn(xv, lambda i: self.video[:, :, i].unsqueeze(2)).flatten(1, 2)
        if x.shape[1] == nv:
            return out
        return torch.cat([out, fn(x[:, nv:], lambda i: self.ref[:, :, i])], 1)

    def affine(self, x, shift: int, scale: int):
        return self._apply(x, lambda y, m: y * (1 + m(scale)) + m(shift))

    def gate(self, y, i: int):
        return self._apply(y, lambda z, m: z * m(i))

    def plus(self, param: torch.Tensor) -> "Modulation":
        return Modulation(self.video + param, None if self.ref is None else self.ref + param, self.hw)


# ---------------------------------------------------------------- blocks


class CrossAttention(nn.Module):
    """Text cross-attention plus one audio branch (``branch`` = speak or listen) with its own K/V/O;
    out = W_o^txt A_text + W_o^aud A_audio (LPM eq. 3)."""

    def __init__(self, cfg: DiTConfig, branch: str):
        super().__init__()
        d, self.n_heads, self.branch = cfg.dim, cfg.heads, branch
        self.window = cfg.speak_window if branch == "speak" else cfg.listen_window
        self.q, self.norm_q = nn.Linear(d, d), RMSNorm(d, cfg.eps)
        self.k_text, self.v_text, self.o_text = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k_text = RMSNorm(d, cfg.eps)
        self.k_audio, self.v_audio, self.o_audio = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k_audio = RMSNorm(d, cfg.eps)

    def audio_mask(self, video_frames: torch.Tensor, audio_frames: torch.Tensor) -> torch.Tensor:
        """(Nv, Na) bool: video token of frame i sees audio of frames i - left .. i + right."""
        delta = audio_frames[None, :] - video_frames[:, None]
        return (delta >= -self.window[0]) & (delta <= self.window[1])

    def forward(self, x, cond: Conditions, video_frames: torch.Tensor):
        h = self.n_heads
        q = heads(self.norm_q(self.q(x)), h)
        k = heads(self.norm_k_text(self.k_text(cond.text)), h)
        a_text = attention(q, k, heads(self.v_text(cond.text), h), cond.text_mask[:, None, None, :])
        out = self.o_text(merge_heads(a_text))
        on = cond.speak_on if self.branch == "speak" else cond.listen_on
        if video_frames.numel() == 0 or (not torch.is_grad_enabled() and not bool((on != 0).any())):
            return out          # muted at inference: skip the branch (training always runs it, so
                                # every rank of a sharded model uses the same parameters)
        ctx = cond.speak if self.branch == "speak" else cond.listen
        nv = video_frames.shape[0]
        ka = heads(self.norm_k_audio(self.k_audio(ctx)), h)
        mask = self.audio_mask(video_frames, cond.audio_frames)
        base = video_frames.min()          # offsets from the first video frame: the same numbers
        qa, ka = frame_rope(q[:, :, :nv], video_frames - base), frame_rope(ka, cond.audio_frames - base)
        a_audio = attention(qa, ka, heads(self.v_audio(ctx), h), mask)
        audio_out = self.o_audio(merge_heads(a_audio)) * on[:, None, None].to(x.dtype)
        return torch.cat([out[:, :nv] + audio_out, out[:, nv:]], 1)


def frame_rope(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Temporal RoPE by latent frame index (B, H, N, d): in the audio cross-attention a video token
    tells its own frame's audio tokens from its neighbours' (relative offsets only; the caller passes
    offsets from the chunk's first frame, so frame 10 and frame 30,000 rotate by the same angles)."""
    pos = torch.zeros(1, frames.shape[0], 3, device=x.device)
    pos[0, :, 0] = frames.float()
    return apply_rope(x, *rope_cos_sin(pos, x.shape[-1]))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        d = cfg.dim
        self.index = index
        self.branch = "speak" if index % 2 == 0 else "listen"
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.attn = SelfAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps)
        self.cross = CrossAttention(cfg, self.branch)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 1, 6, d) / d ** 0.5)

    def forward(self, x, mod: Modulation, cond: Conditions, rope, video_frames, mask=None,
                kv_prefix=None):
        """``rope`` = (q_cos, q_sin, k_cos, k_sin) of the tokens; returns (x, (keys, values)) with
        the tokens' keys before RoPE for a KV cache."""
        m = mod.plus(self.modulation)
        y, kv = self.attn(m.affine(self.norm1(x), 0, 1), rope[:2], rope[2:], mask, kv_prefix)
        x = x + m.gate(y, 2)
        x = x + self.cross(self.norm2(x), cond, video_frames)
        x = x + m.gate(self.ffn(m.affine(self.norm3(x), 3, 4)), 5)
        return x, kv


class AudioProjector(nn.Module):
    """LongCat §3.2's audio projector (MultiTalk's AudioProjModel layout): each latent frame gathers the
    features of its video frames plus ``audio_context`` frames on each side, (frames, G, D) -> per-frame
    ``audio_hidden`` -> ``audio_hidden`` -> ``audio_tokens`` tokens of ``audio_token_dim`` -> the model
    width. Input: features grouped per latent frame (B, T', frames_per_latent, G, D)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        span = cfg.frames_per_latent + 2 * cfg.audio_context
        self.frame = nn.Linear(cfg.audio_groups * cfg.audio_dim, cfg.audio_hidden)
        self.window = nn.Linear(span * cfg.audio_hidden, cfg.audio_hidden)
        self.tokens = nn.Linear(cfg.audio_hidden, cfg.audio_tokens * cfg.audio_token_dim)
        self.out = nn.Linear(cfg.audio_token_dim, cfg.dim)
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, grouped: torch.Tensor) -> torch.Tensor:
        c, fpl = self.cfg.audio_context, self.cfg.frames_per_latent
        b, t = grouped.shape[:2]
        x = grouped.flatten(3).flatten(1, 2)                       # (B, T'*fpl, G*D)
        x = torch.cat([x[:, :1].expand(-1, c, -1), x, x[:, -1:].expand(-1, c, -1)], 1)
        win = x.unfold(1, fpl + 2 * c, fpl).transpose(2, 3)        # (B, T', span, G*D)
        h = F.gelu(self.window(F.gelu(self.frame(win)).flatten(2)))
        tok = self.tokens(h).unflatten(-1, (self.cfg.audio_tokens, self.cfg.audio_token_dim))
        return self.norm(self.out(tok))


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] scaled to 0..1000 (B, T') -> (B, T', dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = (t.double() * 1000.0)[..., None] * freqs
    return torch.cat([ang.cos(), ang.sin()], -1).float()


# ---------------------------------------------------------------- the model


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embed = nn.Conv3d(cfg.in_channels, d, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embed = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"),
                                        nn.Linear(d, d))
        self.speak_proj, self.listen_proj = AudioProjector(cfg), AudioProjector(cfg)
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.depth))
        self.head_norm = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(d, cfg.in_channels * math.prod(cfg.patch))
        self.head_modulation = nn.Parameter(torch.randn(1, 1, 2, d) / d ** 0.5)
        self.checkpointing = False        # activation checkpointing per block (long sequences on GPUs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)
        for b in self.blocks:                       # LPM §3.2: audio value projections start at 0
            nn.init.zeros_(b.cross.v_audio.weight)

    # -------- inputs

    def conditions(self, text_tokens, text_mask, speak_feats, listen_feats, speak_on=None,
                   listen_on=None, first_frame: int = 0) -> Conditions:
        """Project text tokens (B, L, text_dim) and audio features grouped per latent frame
        (B, T', frames_per_latent, G, D) into the model width. ``first_frame`` is the latent index
        of the first audio group (a chunk of a stream)."""
        b = text_tokens.shape[0]
        speak, listen = self.speak_proj(speak_feats), self.listen_proj(listen_feats)
        t, a = speak.shape[1:3]
        frames = torch.arange(first_frame, first_frame + t, device=speak.device).repeat_interleave(a)
        ones = torch.ones(b, device=speak.device)
        return Conditions(self.text_embed(text_tokens), text_mask.bool(), speak.flatten(1, 2),
                          listen.flatten(1, 2), frames, ones if speak_on is None else speak_on.float(),
                          ones if listen_on is None else listen_on.float())

    def references(self, ref_latents, ref_types, ref_subs, ref_valid, t_video: int) -> References:
        """Reference latents (B, K, C, 1, h, w) -> tokens at temporal position
        ``t_video + ref_type_offsets[type] + sub * ref_sub_offset`` (LPM eq. 4); ``ref_types``
        (B, K) index REF_TYPES, ``ref_subs`` (B, K) the sub-type index j."""
        b, k = ref_latents.shape[:2]
        lat = ref_latents.flatten(0, 1)
        if self.cfg.patch[0] > 1:
            lat = lat.repeat(1, 1, self.cfg.patch[0], 1, 1)
        tok = self.patch_embed(lat)                                 # (B*K, D, 1, h', w')
        hh, ww = tok.shape[-2:]
        tok = tok.flatten(2).transpose(1, 2).unflatten(0, (b, k))   # (B, K, hw, D)
        offsets = torch.tensor([self.cfg.ref_type_offsets[n] for n in REF_TYPES], device=tok.device)
        t_pos = t_video + offsets[ref_types] + ref_subs * self.cfg.ref_sub_offset   # (B, K)
        grid = grid_positions(1, hh, ww, tok.device)[:, 1:]                         # (hw, 2)
        pos = torch.cat([t_pos[:, :, None, None].float().expand(-1, -1, hh * ww, 1),
                         grid[None, None].expand(b, k, -1, -1)], -1)
        valid = ref_valid[:, :, None].expand(-1, -1, hh * ww)
        return References(tok.flatten(1, 2), pos.flatten(1, 2), valid.flatten(1, 2))

    def time_modulation(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T') timesteps -> (B, T', D) embedding."""
        return self.time_embed(timestep_features(t, self.cfg.freq_dim).to(self.head.weight.dtype))

    def patchify(self, x: torch.Tensor):
        tok = self.patch_embed(x)                                   # (B, D, T', h', w')
        return tok.flatten(2).transpose(1, 2), tuple(tok.shape[2:])

    def unpatchify(self, tok: torch.Tensor, grid: tuple) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch
        t, h, w = grid
        x = tok.unflatten(1, (t, h, w)).unflatten(-1, (pt, ph, pw, self.cfg.in_channels))
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], self.cfg.in_channels, t * pt,
                                                          h * ph, w * pw)

    # -------- forward

    def forward(self, x, t, cond: Conditions, refs: References | None = None, video_pos=None,
                mask=None, video_frames=None):
        """Velocity for latents x (B, C, T, H, W) at per-frame timesteps t (B, T'). ``video_pos``
        (B or 1, Nv, 3) overrides the default (frame, row, column) RoPE positions, ``video_frames``
        (Nv,) the latent frame of each token that audio windows use (default 0..T'-1); ``mask``
        (B, 1, N, N) bool overrides the default (full attention, padded references masked as keys)."""
        tok, grid = self.patchify(x)
        pos = grid_positions(*grid, x.device)[None] if video_pos is None else video_pos
        e = self.time_modulation(t)
        mod, seq = self.sequence(tok, pos, e, refs, grid)
        if mask is None and refs is not None and not bool(refs.valid.all()):
            keys = torch.cat([torch.ones_like(tok[..., 0], dtype=torch.bool), refs.valid], 1)
            mask = keys[:, None, None, :]
        cos, sin = rope_cos_sin(seq[1], self.cfg.head_dim, self.cfg.rope_theta)
        frames = video_frames
        if frames is None:
            frames = torch.arange(grid[0], device=x.device).repeat_interleave(grid[1] * grid[2])
        h = seq[0]
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                h, _ = torch.utils.checkpoint.checkpoint(block, h, mod, cond, (cos, sin, cos, sin), frames,
                                                         mask, use_reentrant=False)
            else:
                h, _ = block(h, mod, cond, (cos, sin, cos, sin), frames, mask)
        return self.unpatchify(self.final(h[:, :tok.shape[1]], e, grid[1] * grid[2]), grid)

    def sequence(self, tok, pos, e, refs, grid):
        """(Modulation, (tokens, positions)) of [video tokens, reference tokens]."""
        b = tok.shape[0]
        mv = self.time_proj(e).unflatten(-1, (6, -1))
        pos = pos.expand(b, -1, -1)
        if refs is None:
            return Modulation(mv, None, grid[1] * grid[2]), (tok, pos)
        e0 = self.time_modulation(torch.zeros(b, 1, device=tok.device))
        mr = self.time_proj(e0).unflatten(-1, (6, -1))
        return Modulation(mv, mr, grid[1] * grid[2]), (torch.cat([tok, refs.tokens], 1),
                                                       torch.cat([pos, refs.pos], 1))

    def final(self, h, e, hw):
        m = Modulation((self.head_modulation + e[:, :, None]), None, hw)
        return self.head(m.affine(self.head_norm(h), 0, 1))


def grid_positions(t: int, h: int, w: int, device=None, t0: float = 0.0) -> torch.Tensor:
    """(t*h*w, 3) float positions (frame, row, column) in token order, frames from ``t0``."""
    tt, hh, ww = torch.meshgrid(torch.arange(t, device=device) + float(t0), torch.arange(h, device=device).float(),
                                torch.arange(w, device=device).float(), indexing="ij")
    return torch.stack([tt, hh, ww], -1).reshape(-1, 3).float()


def param_count(cfg: DiTConfig) -> int:
    """Parameters of a DiT of this config, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DiT(cfg).parameters())
