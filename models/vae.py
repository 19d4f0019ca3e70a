"""Video VAEs: frames (B, 3, T, H, W) in [-1, 1] <-> latents (B, C, T', H/s, W/s), causal in time.

Every VAE here follows the causal-VAE layout of Wan / LongCat (LPM §3.2): T = 1 + r * (T' - 1)
frames map to T' latent frames, the first latent frame encodes the first video frame alone (an
image) and each later one the next r frames; a latent frame never depends on later frames. An image
is a one-frame video (its latent has T' = 1): reference images go through the same encoder.

Kinds (``vae.kind`` in a training config):

- ``pixel``: a fixed, exact space-time-to-depth rearrangement (r frames x s x s pixels -> channels; the
  first frame repeated r times). No parameters, lossless: the DiT's learning tests use it so that
  what they measure is the DiT, not a VAE's reconstruction.
- ``causal``: :class:`CausalVAE3D`, a small trainable causal 3D VAE (per-frame 2D convolutions for
  space, causal strided convolutions for time); trained with ``task: vae``
  (models/configs/vae_toy.yaml) and loaded from that run's checkpoint (``vae.checkpoint``).
- ``wan``: the interface for a pretrained video VAE (Wan2.1's, through diffusers'
  ``AutoencoderKLWan`` from a local directory, ``vae.path``); fails naming what is missing.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class PixelVAE(nn.Module):
    """Causal space-time-to-depth: latent channels = 3 * temporal * spatial**2; exact when ``pool`` is
    1. With ``pool`` > 1 each pool x pool block is first averaged (decoded by repeating it): a fixed,
    lossy linear encoder that keeps every block's mean colour (so a shape's brightness sum) and gives
    the toy DiT few channels per token. Downsampling in total: spatial * pool."""

    def __init__(self, spatial: int = 4, temporal: int = 4, scale: float = 1.0, pool: int = 1):
        super().__init__()
        self.pool, self.temporal, self.scale = pool, temporal, scale
        self.s2d, self.spatial = spatial, spatial * pool
        self.latent_channels = 3 * temporal * spatial * spatial

    def encode(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        check_frames(x.shape[2], self.temporal)
        if self.pool > 1:
            x = F.avg_pool3d(x, (1, self.pool, self.pool))
        b, c, t, h, w = x.shape
        r, s = self.temporal, self.s2d
        x = torch.cat([x[:, :, :1].expand(-1, -1, r - 1, -1, -1), x], 2)       # (B, 3, r*T', H, W)
        x = x.reshape(b, c, -1, r, h // s, s, w // s, s)
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, -1, x.shape[2], h // s, w // s) * self.scale

    def decode(self, z: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Frames of latents z; ``first`` False: z continues a sequence (its first latent is not the
        image latent: all r frames of every latent are returned)."""
        b, _, tl, hl, wl = z.shape
        r, s = self.temporal, self.s2d
        x = (z / self.scale).reshape(b, 3, r, s, s, tl, hl, wl).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, 3, tl * r, hl * s, wl * s)[:, :, (r - 1 if first else 0):]
        if self.pool > 1:
            x = x.repeat_interleave(self.pool, 3).repeat_interleave(self.pool, 4)
        return x


def check_frames(t: int, r: int) -> None:
    if (t - 1) % r:
        raise ValueError(f"a causal VAE with temporal factor {r} needs 1 + {r}k frames, got {t}")


class CausalConv(nn.Module):
    """Conv3d padded on the past side only in time (replicating the first frame) and 'same' in space."""

    def __init__(self, cin, cout, k=(3, 3, 3)):
        super().__init__()
        self.kt = k[0]
        self.conv = nn.Conv3d(cin, cout, k, padding=(0, k[1] // 2, k[2] // 2))

    def forward(self, x):
        if self.kt > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1), x], 2)
        return self.conv(x)


class CausalVAE3D(nn.Module):
    """A small causal 3D VAE (toy size, trainable on the CPU): space compressed by ``spatial``
    (a power of 2) with per-frame strided convolutions, time by ``temporal`` by grouping r frames
    (the first frame repeated r times) with a stride-r convolution, plus causal temporal mixing."""

    def __init__(self, latent_channels: int = 8, width: int = 32, spatial: int = 4, temporal: int = 4,
                 scale: float = 1.0):
        super().__init__()
        self.latent_channels, self.spatial, self.temporal, self.scale = latent_channels, spatial, temporal, scale
        n_down = spatial.bit_length() - 1
        if 2 ** n_down != spatial:
            raise ValueError(f"spatial factor must be a power of 2, got {spatial}")
        enc = [nn.Conv3d(3, width, (1, 3, 3), padding=(0, 1, 1))]
        for _ in range(n_down):
            enc += [nn.SiLU(), nn.Conv3d(width, width, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))]
        self.enc_space = nn.Sequential(*enc)
        self.enc_time = nn.Conv3d(width, width, (temporal, 1, 1), stride=(temporal, 1, 1))
        self.enc_mix = CausalConv(width, width)
        self.to_moments = nn.Conv3d(width, 2 * latent_channels, 1)
        self.from_latent = nn.Conv3d(latent_channels, width, 1)
        self.dec_mix = CausalConv(width, width)
        self.dec_time = nn.ConvTranspose3d(width, width, (temporal, 1, 1), stride=(temporal, 1, 1))
        dec = []
        for _ in range(n_down):
            dec += [nn.SiLU(), nn.ConvTranspose3d(width, width, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))]
        dec += [nn.SiLU(), nn.Conv3d(width, 3, (1, 3, 3), padding=(0, 1, 1))]
        self.dec_space = nn.Sequential(*dec)

    def moments(self, x: torch.Tensor):
        check_frames(x.shape[2], self.temporal)
        h = self.enc_space(x)
        h = torch.cat([h[:, :, :1].expand(-1, -1, self.temporal - 1, -1, -1), h], 2)
        h = F.silu(self.enc_mix(F.silu(self.enc_time(h))))
        mean, logvar = self.to_moments(h).chunk(2, 1)
        return mean, logvar.clamp(-20, 10)

    def encode(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The posterior mean (``generator`` given: a sample from the posterior), times ``scale``."""
        mean, logvar = self.moments(x)
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + noise * (0.5 * logvar).exp()
        return mean * self.scale

    def decode(self, z: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Frames of latents z; ``first`` False: z continues a sequence (all r frames of every latent;
        give the 2 latents before a chunk as context for exact frames: the decoder sees 2 back)."""
        h = F.silu(self.dec_mix(F.silu(self.from_latent(z / self.scale))))
        h = self.dec_time(h)[:, :, (self.temporal - 1 if first else 0):]
        return self.dec_space(h)

    def loss(self, x: torch.Tensor, generator, kl_weight: float = 1e-4, weight: torch.Tensor | None = None):
        """(loss, metrics): L1 + MSE reconstruction of a posterior sample plus ``kl_weight`` * KL;
        with ``weight`` (B,) each term is a mean over samples weighted by it (0: a padding sample)."""
        mean, logvar = self.moments(x)
        z = mean + torch.randn(mean.shape, generator=generator, dtype=mean.dtype) * (0.5 * logvar).exp()
        rec = self.decode(z)
        avg = lambda e: e.mean()
        if weight is not None and not bool((weight == 1).all()):
            w = weight.to(x.device, x.dtype)
            avg = lambda e: (e.flatten(1).mean(1) * w).sum() / w.sum().clamp(min=1e-12)
        l1, mse = avg((rec - x).abs()), avg((rec - x).pow(2))
        kl = avg(0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar))
        return l1 + mse + kl_weight * kl, {"l1": float(l1.detach()), "mse": float(mse.detach()),
                                                   "kl": float(kl.detach())}


class WanVAE(nn.Module):
    """A pretrained Wan2.1 VAE through diffusers (``AutoencoderKLWan``) from a local directory, with
    its latent mean/std normalisation. Frozen; nothing is downloaded."""

    def __init__(self, path: str):
        super().__init__()
        if not Path(path, "config.json").exists():
            raise FileNotFoundError(f"pretrained VAE not found: {path}/config.json (vae.path)")
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as e:
            raise ImportError("vae.kind 'wan' needs diffusers (pip install diffusers) to load "
                              f"{path}") from e
        self.vae = AutoencoderKLWan.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        c = self.vae.config
        self.latent_channels, self.temporal = c.z_dim, 2 ** sum(c.temperal_downsample)
        self.spatial = 2 ** len(c.temperal_downsample)
        self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    def encode(self, x, generator=None):
        return (self.vae.encode(x).latent_dist.mode() - self.mean) / self.std

    def decode(self, z):
        return self.vae.decode(z * self.std + self.mean).sample


def build_vae(spec: dict) -> nn.Module:
    """A VAE from a config's ``vae`` section (see the module docstring); ``checkpoint`` loads a trained
    toy VAE (a ``task: vae`` run's checkpoint directory)."""
    spec = dict(spec or {"kind": "pixel"})
    kind = spec.pop("kind", "pixel")
    ckpt = spec.pop("checkpoint", None)
    if kind == "pixel":
        return PixelVAE(**spec)
    if kind == "causal":
        vae = CausalVAE3D(**spec)
        if ckpt:
            from models.checkpoint import load_weights
            vae.load_state_dict(load_weights(ckpt, "ema"))
        return vae
    if kind == "wan":
        return WanVAE(spec["path"])
    raise ValueError(f"unknown vae kind {kind!r} (pixel, causal, wan)")
