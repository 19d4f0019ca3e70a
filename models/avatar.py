"""The trainable avatar model: the DiT plus the text encoder it trains with, with one ``forward`` that
takes batch tensors (so data-parallel wrappers such as FSDP2 see every parameter used inside one call).

A frozen pretrained text encoder is held outside the module tree (not trained, not checkpointed, not
sharded); the byte encoder is a submodule and trains with the DiT.
"""
from __future__ import annotations

import torch
from torch import nn

from models.dit import DiT, DiTConfig
from models.text import ByteTextEncoder, build_text_encoder


class Avatar(nn.Module):
    def __init__(self, cfg: DiTConfig, text_spec: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.dit = DiT(cfg)
        enc = build_text_encoder(text_spec, cfg.text_dim)
        if isinstance(enc, ByteTextEncoder):
            self.text = enc
        else:
            self.text = None
            object.__setattr__(self, "frozen_text", enc)

    def encode_text(self, texts: list[str]):
        enc = self.text if self.text is not None else self.frozen_text
        tokens, mask = enc.encode(texts)
        return tokens.to(self.dit.head.weight.dtype), mask

    def conditions(self, texts, speak, listen, speak_on=None, listen_on=None, first_frame: int = 0):
        """Conditions from texts and audio features grouped per latent frame (B, T', r, G, D)."""
        tokens, mask = self.encode_text(texts)
        dt = self.dit.head.weight.dtype
        return self.dit.conditions(tokens, mask, speak.to(dt), listen.to(dt), speak_on, listen_on,
                                   first_frame)

    def references(self, ref_latents, ref_types, ref_subs, ref_valid, t_video: int):
        if ref_latents is None:
            return None
        return self.dit.references(ref_latents.to(self.dit.head.weight.dtype), ref_types, ref_subs,
                                   ref_valid, t_video)

    def forward(self, x, t, texts, speak, listen, speak_on=None, listen_on=None, ref_latents=None,
                ref_types=None, ref_subs=None, ref_valid=None, causal=None):
        """Velocity for noisy latents x (B, C, T', H, W) at per-frame timesteps t (B, T'); with
        ``causal`` (a models.distill.causal.CausalSpec) the causal student's full forward: references
        anchored at its cap, the chunk-wise block mask."""
        cond = self.conditions(texts, speak, listen, speak_on, listen_on)
        if causal is not None:
            from models.distill.causal import CausalStudent
            student = CausalStudent(self, causal)
            return student.full(x, t, cond, student.references(ref_latents, ref_types, ref_subs, ref_valid))
        refs = self.references(ref_latents, ref_types, ref_subs, ref_valid,
                               x.shape[2] // self.cfg.patch[0])
        return self.dit(x, t, cond, refs)
