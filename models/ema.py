"""Exponential moving average of a model's parameters (kept in float32, like the parameters).

``decay`` is warmed up as min(decay, (1 + n) / (10 + n)) after n updates, so an early checkpoint's EMA
is not dominated by the initial weights. Works on plain tensors and on FSDP2's sharded DTensors (each
rank averages its own shards; models/train.py gathers them for a checkpoint).
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay, self.updates = decay, 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in model.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.shadow[n].to(p.dtype))
