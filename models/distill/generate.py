"""Streaming generation with a distilled causal student (``curation generate --stream``): chunk by chunk
from audio + a reference image, the few-step backbone (its KV cache holds each chunk's last step:
noisy history, or x0 at t = 0 with ``distill.history: clean``) and optionally the one-step refiner
(its own cache), decoding each chunk as it is done. Reports frames per second.

The audio conditions of a file are projected once for the whole file (each latent frame reads its own
frames and ``audio_context`` frames on each side: a live stream lags by that many frames).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from models.avatar import Avatar
from models.checkpoint import load_weights
from models.data import to_unit
from models.distill.causal import CausalStudent, chunk_bounds
from models.distill.spec import distill_spec
from models.distill.stages import renoise
from models.distill.stream import Branches, fewstep_chunk
from models.generate import Generator


class StreamGenerator(Generator):
    def __init__(self, checkpoint, refiner=None, which: str = "ema", device: str = "cpu"):
        super().__init__(checkpoint, which, device)
        self.spec = distill_spec(self.cfg.distill)
        self.refiner = None
        if refiner:
            self.refiner = Avatar(self.task.dit_cfg, self.cfg.text)
            self.refiner.load_state_dict(load_weights(refiner, which))
            self.refiner.eval().to(device)

    def _branches(self, avatar, texts, sp, li, ref_lat, b):
        student = CausalStudent(avatar, self.spec.causal_spec())
        zeros = torch.zeros(b, 1, dtype=torch.long)
        refs = student.references(ref_lat[:, None], zeros, zeros, torch.ones(b, 1, dtype=torch.bool))
        return Branches(student, [avatar.conditions(texts, sp, li)], [1.0], refs, b)

    @torch.no_grad()
    def stream(self, speak: list, listen: list, references: list, texts: list, seed: int = 0,
               on_chunk=None) -> tuple[np.ndarray, dict]:
        """uint8 frames (B, T, H, W, 3) and timing {frames, seconds, fps}; ``on_chunk(frames)`` gets each
        decoded chunk as soon as it exists."""
        t0 = time.perf_counter()
        n = min(self.n_frames(len(a)) for a in speak)
        conds = [self.conditions(s, l, n, None) for s, l in zip(speak, listen)]
        sp, li = torch.cat([c[0] for c in conds]), torch.cat([c[1] for c in conds])
        refs = torch.stack([to_unit(self.fit_reference(r)) for r in references])[:, :, None].to(self.device)
        ref_lat = self.vae.encode(refs)
        b, t_lat = len(speak), sp.shape[1]
        back = self._branches(self.avatar, texts, sp, li, ref_lat, b)
        ref = self._branches(self.refiner, texts, sp, li, ref_lat, b) if self.refiner is not None else None
        gen = torch.Generator().manual_seed(seed)
        latents, frames = [], []
        cs = self.spec.causal_spec()
        for c, (s, e) in enumerate(chunk_bounds(t_lat, cs.chunk, cs.first_chunk)):
            x0 = self._chunk(back, ref, ref_lat, c, s, e, gen)
            latents.append(x0)
            frames.append(self._decode(latents, c))
            if on_chunk:
                on_chunk(frames[-1])
        took = time.perf_counter() - t0
        out = np.concatenate(frames, 1)
        return out, {"frames": out.shape[1], "seconds": round(took, 3), "fps": round(out.shape[1] / took, 2)}

    def _chunk(self, back, ref, ref_lat, c, s, e, gen):
        full = lambda x, t: torch.full((x.shape[0], x.shape[2]), float(t), device=x.device)
        if c == 0:                                   # the reference image is the clean first latent
            x0 = ref_lat[:, :, : e - s]
            for br in [back] + ([ref] if ref else []):
                _, kvs = br.velocity(x0, full(x0, 0.0), c, s)
                br.commit(c, s, e, kvs)
            return x0
        shape = (ref_lat.shape[0], ref_lat.shape[1], e - s, *ref_lat.shape[3:])
        noise = torch.randn(shape, generator=gen).to(self.device)
        x0, kvs = fewstep_chunk(back, noise, c, s, list(self.spec.steps), gen, self.spec.history)
        back.commit(c, s, e, kvs)
        if ref is not None:
            t2 = float(self.spec.refiner_t)
            x_in = renoise(x0, full(x0, t2), gen)
            v, kvs = ref.velocity(x_in, full(x_in, t2), c, s)
            x0 = x_in + t2 * v
            ref.commit(c, s, e, kvs)
        return x0

    def _decode(self, latents: list, c: int) -> np.ndarray:
        """The frames of chunk c alone: the first chunk as a sequence start, a later one as a
        continuation with the 2 latents before it as the causal decoder's context."""
        r = self.vae.temporal
        if c == 0:
            x = self.vae.decode(latents[0])
        else:
            ctx = torch.cat(latents[:-1], 2)[:, :, -2:]
            x = self.vae.decode(torch.cat([ctx, latents[-1]], 2), first=False)[:, :, r * ctx.shape[2]:]
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
