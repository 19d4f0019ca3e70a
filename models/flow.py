"""Flow matching (LongCat eq. 3-4) with per-condition CFG dropout and the first-latent drop (LPM §3.2),
and the Euler sampler with text / audio guidance.

Training (:func:`flow_loss`): x_t = (1 - t) x0 + t eps, target v = x0 - eps, loss = mean squared error
of the predicted velocity over the frames that are generated. Per step, from the step's generator only:

- t per sample: ``logit_normal`` (sigmoid of a standard normal, as minRF) or ``uniform``, then the
  SD3/Wan shift ``s t / (1 + (s - 1) t)``;
- CFG dropout: text replaced by "" with probability ``drop_text``; speak and listen audio muted
  (their branch's output removed) with ``drop_speak`` / ``drop_listen``; all references dropped with
  ``drop_refs``;
- conditioning frame: with probability ``cond_first`` a sample's first latent frame is given clean
  (t = 0, left out of the loss): image-to-video and continuation;
- first-latent drop: with probability ``drop_first`` the batch's first k latent frames are removed,
  k uniform in [drop_first_min, drop_first_max] (at most T' - 2), so the window starts with a latent
  that encodes r frames causally, as a continuation window at inference does (LPM §3.2).

Sampling (:func:`sample`): Euler steps from t = 1 to 0 on the shifted grid; x <- x + (t_i - t_i+1) v.
With guidance scales (s_text, s_audio) != 1: v = v_none + s_text (v_text - v_none) + s_audio (v_full -
v_text), where v_text has the audio muted and v_none also has the text empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.audio import group_frames


@dataclass
class FlowSpec:
    t_sampling: str = "logit_normal"
    t_shift: float = 1.0
    drop_text: float = 0.1
    drop_speak: float = 0.1
    drop_listen: float = 0.1
    drop_refs: float = 0.0
    cond_first: float = 0.5
    drop_first: float = 0.2
    drop_first_min: int = 2
    drop_first_max: int = 5


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def draw_t(b: int, gen: torch.Generator, spec: FlowSpec) -> torch.Tensor:
    if spec.t_sampling == "logit_normal":
        t = torch.sigmoid(torch.randn(b, generator=gen))
    elif spec.t_sampling == "uniform":
        t = torch.rand(b, generator=gen)
    else:
        raise ValueError(f"unknown t_sampling {spec.t_sampling!r} (logit_normal, uniform)")
    return shift_t(t, spec.t_shift)


@torch.no_grad()
def encode(vae, batch):
    """Latents of the batch's frames (B, C, T', h, w) and of its references (B, K, C, 1, h, w) or None."""
    z = vae.encode(batch.frames)
    if batch.refs is None:
        return z, None
    b, k = batch.refs.shape[:2]
    return z, vae.encode(batch.refs.flatten(0, 1)).unflatten(0, (b, k))


def first_drop(t_lat: int, gen: torch.Generator, spec: FlowSpec) -> int:
    """How many leading latent frames this step drops (0 most of the time)."""
    u = float(torch.rand(1, generator=gen))
    k = int(torch.randint(spec.drop_first_min, spec.drop_first_max + 1, (1,), generator=gen))
    return min(k, t_lat - 2) if u < spec.drop_first and t_lat > 2 else 0


def flow_loss(model, vae, batch, spec: FlowSpec, gen: torch.Generator, r: int):
    """(loss, metrics) of one batch; every random number comes from ``gen`` in a fixed order."""
    z, ref_lat = encode(vae, batch)
    speak, listen = group_frames(batch.speak, r), group_frames(batch.listen, r)
    k = first_drop(z.shape[2], gen, spec)
    z, speak, listen = z[:, :, k:], speak[:, k:], listen[:, k:]
    b, t_lat, dev = z.shape[0], z.shape[2], z.device
    t = draw_t(b, gen, spec)[:, None].expand(b, t_lat).clone()
    cond = torch.rand(b, generator=gen) < spec.cond_first
    t[cond, 0] = 0.0
    noise = torch.randn(z.shape, generator=gen).to(dev)
    keep = lambda p: (torch.rand(b, generator=gen) >= p).float()
    text_on, speak_on, listen_on, refs_on = (keep(spec.drop_text), keep(spec.drop_speak),
                                             keep(spec.drop_listen), keep(spec.drop_refs))
    t, speak_on, listen_on, refs_on = t.to(dev), speak_on.to(dev), listen_on.to(dev), refs_on.to(dev)
    tb = t[:, None, :, None, None]
    x_t = (1 - tb) * z + tb * noise
    texts = [s if on else "" for s, on in zip(batch.texts, text_on.tolist())]
    valid = None if ref_lat is None else batch.ref_valid & refs_on.bool()[:, None]
    v = model(x_t, t, texts, speak, listen, speak_on, listen_on, ref_lat, batch.ref_types,
              batch.ref_subs, valid)
    weight = (t > 0).float()
    if batch.weight is not None:                  # 0 for a padding sample: out of the loss
        weight = weight * batch.weight.to(dev)[:, None]
    weight = weight[:, None, :, None, None].expand_as(z)
    loss = ((v.float() - (z - noise)) ** 2 * weight).sum() / weight.sum().clamp(min=1)
    return loss, {"dropped_first": k, "cond_first": float(cond.float().mean())}


class Guidance:
    """Conditions of one generation (full, audio muted, nothing) and the guided velocity."""

    def __init__(self, avatar, texts, speak, listen, refs, text_scale=1.0, audio_scale=1.0,
                 speak_on=None, listen_on=None):
        self.avatar, self.refs = avatar, refs
        self.scales = (text_scale, audio_scale)
        self.full = avatar.conditions(texts, speak, listen, speak_on, listen_on)
        self.guided = (text_scale, audio_scale) != (1.0, 1.0)
        if self.guided:
            self.text_only = self.full.muted(speak=True, listen=True)
            self.none = avatar.conditions([""] * len(texts), speak, listen).muted(speak=True, listen=True)

    def velocity(self, x, t):
        dit = self.avatar.dit
        v_full = dit(x, t, self.full, self.refs)
        if not self.guided:
            return v_full
        v_text, v_none = dit(x, t, self.text_only, self.refs), dit(x, t, self.none, self.refs)
        s_text, s_audio = self.scales
        return v_none + s_text * (v_text - v_none) + s_audio * (v_full - v_text)


@torch.no_grad()
def sample(guide: Guidance, shape, steps: int, gen: torch.Generator, shift: float = 1.0,
           first_latent: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (B, C, T', h, w) from noise by ``steps`` Euler steps; ``first_latent`` (B, C, 1, h, w)
    given clean as the first frame (t = 0) when not None."""
    dev = guide.avatar.dit.head.weight.device
    x = torch.randn(shape, generator=gen).to(dev)
    grid = shift_t(torch.linspace(1.0, 0.0, steps + 1), shift)
    for i in range(steps):
        t = torch.full((shape[0], shape[2]), float(grid[i]), device=dev)
        if first_latent is not None:
            x[:, :, :1] = first_latent
            t[:, 0] = 0.0
        x = x + float(grid[i] - grid[i + 1]) * guide.velocity(x, t).float()
    if first_latent is not None:
        x[:, :, :1] = first_latent
    return x
