"""What a training run optimises (``task`` in the config): the model it builds, how a sample becomes
tensors, and the loss of a batch. models/train.py runs any task the same way (single process or Ray
Train, checkpoints, EMA, metrics).

- ``flow``: the avatar DiT (models/avatar.py) by flow matching on latents of a frozen VAE.
- ``vae``: the toy causal VAE (models/vae.py) by reconstruction + KL, on the frames alone.
"""
from __future__ import annotations

import torch

from models.avatar import Avatar
from models.config import Config
from models.data import DataSpec
from models.flow import flow_loss
from models.vae import CausalVAE3D, build_vae


class FlowTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        if cfg.vae.get("kind") == "causal" and not cfg.vae.get("checkpoint"):
            raise ValueError("vae.kind causal needs vae.checkpoint: a trained toy VAE (a task: vae run's "
                             "checkpoint directory, e.g. models/configs/vae_toy.yaml)")
        self.vae = build_vae(cfg.vae).eval().requires_grad_(False)
        self.dit_cfg = cfg.dit_config(self.vae)
        self.spec = DataSpec(audio_features=cfg.audio.get("features", "logmel"),
                             frames_per_latent=self.vae.temporal,
                             spatial=self.vae.spatial * max(self.dit_cfg.patch[1:]),
                             max_refs=cfg.data.max_refs)

    def build(self) -> torch.nn.Module:
        return Avatar(self.dit_cfg, self.cfg.text)

    def shard_units(self, model) -> list:
        """Submodules to shard one by one under FSDP2 (then the root)."""
        return list(model.dit.blocks)

    def to(self, device):
        self.vae.to(device)
        return self

    def loss(self, model, batch, gen):
        return flow_loss(model, self.vae, batch, self.cfg.flow, gen, self.vae.temporal)


class VaeTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        spec = {k: v for k, v in cfg.vae.items() if k not in ("kind", "checkpoint")}
        if cfg.vae.get("kind") != "causal":
            raise ValueError("task vae trains vae.kind causal (the toy causal VAE)")
        self.vae_args = spec
        probe = CausalVAE3D(**spec)
        self.spec = DataSpec(audio_features="none", frames_per_latent=probe.temporal,
                             spatial=probe.spatial, max_refs=0)

    def build(self) -> torch.nn.Module:
        return CausalVAE3D(**self.vae_args)

    def shard_units(self, model) -> list:
        return []

    def to(self, device):
        return self

    def loss(self, model, batch, gen):
        return model.loss(batch.frames, gen, self.cfg.train.kl_weight, batch.weight)


def make_task(cfg: Config):
    return {"flow": FlowTask, "vae": VaeTask}[cfg.task](cfg)
