"""Training configs (YAML, models/configs/*.yaml): one file says what is trained, on what, and how.

Sections: ``task`` (flow: the DiT; vae: the toy causal VAE), ``seed``, ``model`` (a DiT flavour of
models/dit.py plus overrides), ``vae`` / ``text`` / ``audio`` (front ends: models/vae.py, text.py,
audio.py), ``data`` (:class:`DataConfig`), ``train`` (:class:`TrainSpec`), ``flow``
(models/flow.py's FlowSpec), ``generate`` (:class:`GenerateSpec`) and ``distill`` (models/distill/).
Unknown keys are errors. The whole config is stored in every checkpoint; generation and distillation
rebuild the model from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from models.dit import DiTConfig, flavour
from models.flow import FlowSpec


@dataclass
class DataConfig:
    source: str = "store"            # store (curation.data.ClipStream over --store) | mouth (synthetic)
    window_s: float = 1.0
    fps: float = 25.0
    size: list | None = None         # [H, W] frames are resized to (ClipStream's size)
    where: str | None = None         # SQL over clips (ClipStream's where)
    profile: str | None = None       # validator profile (ClipStream's profile)
    max_refs: int = 4
    frames: int = 25                 # mouth source: frames per sample
    image: int = 16                  # mouth source: frame side
    pool: int = 0                    # mouth source: distinct clips (0: every sample new)
    cache: int = 0                   # prepared windows kept in memory (small synthetic pools only)


@dataclass
class TrainSpec:
    batch_size: int = 2              # per rank
    lr: float = 3e-4
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    warmup: int = 10
    schedule: str = "constant"       # constant | cosine (to 0 at the run's last step)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 50
    threads: int = 1                 # torch threads per process
    workers: int = 1                 # > 1: Ray Train TorchTrainer with FSDP2 over that many workers
    device: str = "cpu"              # cpu | cuda
    precision: str = "fp32"          # fp32 | bf16 (autocast on CUDA)
    kl_weight: float = 1e-4          # task vae


@dataclass
class GenerateSpec:
    steps: int = 20
    shift: float = 1.0
    text_scale: float = 1.0
    audio_scale: float = 1.0


@dataclass
class Config:
    task: str = "flow"
    seed: int = 0
    model: dict = field(default_factory=lambda: {"flavour": "toy"})
    vae: dict = field(default_factory=lambda: {"kind": "pixel", "spatial": 4, "temporal": 4})
    text: dict = field(default_factory=lambda: {"kind": "bytes", "depth": 1})
    audio: dict = field(default_factory=lambda: {"features": "logmel"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSpec = field(default_factory=TrainSpec)
    flow: FlowSpec = field(default_factory=FlowSpec)
    generate: GenerateSpec = field(default_factory=GenerateSpec)
    distill: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d or {})
        sub = {"data": DataConfig, "train": TrainSpec, "flow": FlowSpec, "generate": GenerateSpec}
        _check(d, {f.name for f in fields(cls)}, "config")
        for key, kind in sub.items():
            if key in d:
                _check(d[key] or {}, {f.name for f in fields(kind)}, key)
                d[key] = kind(**(d[key] or {}))
        if d.get("task", "flow") not in ("flow", "vae"):
            raise ValueError(f"unknown task {d['task']!r} (flow, vae)")
        return cls(**d)

    def audio_shape(self) -> tuple[int, int]:
        """(G, D) of the audio features of this config's backend."""
        kind = self.audio.get("features", "logmel")
        if kind == "logmel":
            return 1, 80
        if kind == "whisper":
            return int(self.audio.get("groups", 5)), int(self.audio.get("dim", 384))
        raise ValueError(f"unknown audio.features {kind!r} (whisper, logmel)")

    def dit_config(self, vae) -> DiTConfig:
        """The DiT config: the flavour, its overrides, and what the VAE and audio backend fix."""
        m = dict(self.model)
        g, d = self.audio_shape()
        return flavour(m.pop("flavour", "toy"), **m, in_channels=vae.latent_channels,
                       frames_per_latent=vae.temporal, audio_groups=g, audio_dim=d)


def _check(d: dict, known: set, where: str) -> None:
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(bad)} (known: {', '.join(sorted(known))})")


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """A YAML config with dotted-key overrides (``{"train.batch_size": 4}``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config not found: {p}")
    d = yaml.safe_load(p.read_text()) or {}
    for key, value in (overrides or {}).items():
        node = d
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return Config.from_dict(d)
