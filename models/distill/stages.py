"""The losses of the four distillation stages (LPM §4.3, DMD2, LongCat §3.4). Every random number comes
from the step's generator.

- ``ode`` (eq. 5): the student, under its block-causal mask, maps teacher-trajectory latents at
  chunk-wise timesteps t_1 <= ... <= t_L in its schedule {T0, T1} to the trajectory's clean end.
- ``dmd-off`` (eq. 6): the student denoises clean teacher latents re-noised at such timesteps; the
  DMD gradient (fake score - real score, in x0 terms, over a per-sample normaliser) plus
  ``reg_weight`` x latent MSE to the teacher's target (LPM's LPIPS term: no LPIPS weights offline).
- ``dmd-on`` (eq. 7): the same DMD objective on re-noised latents of the student's own chunk-by-chunk
  rollout (no regression target: they are its own).
- ``refiner`` (eq. 8): a one-step refiner (initialised from the backbone) maps the backbone's rollout
  re-noised to T2 to clean latents, trained by DMD (+ ``reg_weight`` MSE to the teacher's target).

The real score is the frozen bidirectional teacher with guidance; the fake score is a bidirectional
copy of the teacher trained by flow matching on the student's (detached) outputs, ``fake_ratio``
updates per generator update. The clean first chunk (t = 0) is never part of a loss.
"""
from __future__ import annotations

import torch

from models.distill.causal import chunk_bounds
from models.flow import Guidance


def chunk_times(b: int, t_lat: int, spec, schedule: list, gen) -> torch.Tensor:
    """(B, T') per-frame t: chunk 0 (the clean first latent) at 0; the other chunks draw from
    ``schedule`` and are sorted so t never decreases along the sequence."""
    cs = spec.causal_spec()
    bounds = chunk_bounds(t_lat, cs.chunk, cs.first_chunk)
    sched = torch.tensor(schedule, dtype=torch.float32)
    draws = sched[torch.randint(len(schedule), (b, len(bounds) - 1), generator=gen)].sort(1).values
    t = torch.zeros(b, t_lat)
    for c, (s, e) in enumerate(bounds[1:]):
        t[:, s:e] = draws[:, c:c + 1]
    return t


def model_inputs(p: dict) -> dict:
    return dict(texts=p["texts"], speak=p["speak"], listen=p["listen"], ref_latents=p["ref_lat"],
                ref_types=p["ref_types"], ref_subs=p["ref_subs"], ref_valid=p["ref_valid"])


def student_x0(model, x_t, t, p: dict, causal):
    """The student's clean estimate x0 = x_t + t v under its block-causal mask."""
    kw = model_inputs(p)
    if p["ref_lat"].shape[1] == 0:
        kw.update(ref_latents=None, ref_types=None, ref_subs=None, ref_valid=None)
    v = model(x_t, t, kw.pop("texts"), kw.pop("speak"), kw.pop("listen"), causal=causal, **kw)
    return x_t + t[:, None, :, None, None] * v.float()


def renoise(x0, t, gen):
    tb = t[:, None, :, None, None]
    return (1 - tb) * x0 + tb * torch.randn(x0.shape, generator=gen).to(x0.device)


def masked_mse(a, b, t):
    w = (t > 0).float()[:, None, :, None, None].expand_as(a)
    return ((a - b) ** 2 * w).sum() / w.sum().clamp(min=1)


def ode_loss(student, p: dict, spec, gen):
    """LPM eq. 5 on one batch of the trajectory dataset."""
    b, _, t_lat = p["shape"][:3]
    t = chunk_times(b, t_lat, spec, list(spec.steps), gen)
    x_t = sum_by_t(p["x"], t)
    return masked_mse(student_x0(student, x_t, t, p, spec.causal_spec()), p["x"][0.0], t), t


def sum_by_t(xs: dict, t: torch.Tensor):
    """Per frame, the recorded latent at that frame's t (B, C, T', h, w)."""
    out = torch.zeros_like(xs[0.0])
    for tv, x in xs.items():
        sel = (t == tv).float()[:, None, :, None, None]
        out = out + sel * x
    return out


class Scores:
    """The real score (frozen teacher, guided) and the fake score (trainable, bidirectional)."""

    def __init__(self, teacher, fake, spec):
        self.teacher, self.fake, self.spec = teacher, fake, spec

    def x0(self, model, x_t, t, p, guided: bool):
        refs = None
        if p["ref_lat"].shape[1]:
            refs = model.references(p["ref_lat"], p["ref_types"], p["ref_subs"], p["ref_valid"], x_t.shape[2])
        s = self.spec
        guide = Guidance(model, p["texts"], p["speak"], p["listen"], refs,
                         s.text_scale if guided else 1.0, s.audio_scale if guided else 1.0)
        return x_t + t[:, None, :, None, None] * guide.velocity(x_t, t).float()

    def dmd_loss(self, x0_g, p: dict, gen):
        """DMD's generator loss 0.5 ||x0_g - sg(x0_g - grad)||^2 with grad = (x0_fake - x0_real) /
        mean |x0_g - x0_real| at a t ~ U(dmd_t) (the first frame kept clean), and the score gap
        mean (x0_fake - x0_real)^2: how far the fake score (fitted to the student's samples) is from
        the teacher's guided score, which falls as the student's distribution matches the teacher's."""
        b, t_lat = x0_g.shape[0], x0_g.shape[2]
        lo, hi = self.spec.dmd_t
        t = (lo + (hi - lo) * torch.rand(b, generator=gen))[:, None].expand(b, t_lat).clone()
        t[:, 0] = 0.0
        x_t = renoise(x0_g.detach(), t, gen)
        with torch.no_grad():
            real = self.x0(self.teacher, x_t, t, p, guided=True)
            fake = self.x0(self.fake, x_t, t, p, guided=False)
            norm = (x0_g.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-6)
            grad = (fake - real) / norm
            grad[:, :, :1] = 0.0
        target = (x0_g - grad).detach()
        gap = float((fake - real)[:, :, 1:].pow(2).mean())
        return 0.5 * masked_mse(x0_g, target, t), gap

    def fake_loss(self, x0_g, p: dict, gen):
        """Flow matching of the fake score on the generator's detached samples."""
        from models.flow import FlowSpec, draw_t
        b, t_lat = x0_g.shape[0], x0_g.shape[2]
        t = draw_t(b, gen, FlowSpec())[:, None].expand(b, t_lat).clone()
        t[:, 0] = 0.0
        noise = torch.randn(x0_g.shape, generator=gen)
        tb = t[:, None, :, None, None]
        x_t = (1 - tb) * x0_g.detach() + tb * noise
        kw = model_inputs(p)
        if p["ref_lat"].shape[1] == 0:
            kw.update(ref_latents=None, ref_types=None, ref_subs=None, ref_valid=None)
        v = self.fake(x_t, t, kw.pop("texts"), kw.pop("speak"), kw.pop("listen"), **kw)
        return masked_mse(v.float(), x0_g.detach() - noise, t)
