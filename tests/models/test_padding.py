"""Padding samples of ClipStream (``pad`` True: repeated windows that keep every rank's batch the same
size) carry weight 0 into the Batch, and the flow and VAE losses do not depend on their content."""
from __future__ import annotations

import torch

from models.avatar import Avatar
from models.data import Batch, Batches, DataSpec
from models.dit import flavour
from models.flow import FlowSpec, flow_loss
from models.vae import CausalVAE3D

torch.set_num_threads(1)


def batch(pad_seed: int, weight) -> Batch:
    """Two samples: the first fixed, the second drawn from ``pad_seed``."""
    def one(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(3, 9, 16, 16, generator=g) * 2 - 1, torch.randn(9, 2, 8, generator=g)
    (f0, a0), (f1, a1) = one(0), one(pad_seed)
    return Batch(frames=torch.stack([f0, f1]), speak=torch.stack([a0, a1]), listen=torch.stack([a1, a0]),
                 texts=["a person talking", "someone else"], weight=weight)


def test_a_padding_sample_is_out_of_the_flow_and_vae_losses():
    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=4, width=8, spatial=4, temporal=4)
    model = Avatar(flavour("toy", in_channels=4, audio_dim=8, audio_groups=2, depth=2),
                   {"kind": "bytes", "depth": 1})
    torch.nn.init.normal_(model.dit.head.weight, std=0.2)
    spec = FlowSpec(drop_first=0.0)

    def losses(pad_seed, weight):
        b = batch(pad_seed, weight)
        flow = flow_loss(model, vae, b, spec, torch.Generator().manual_seed(3), vae.temporal)[0]
        rec = vae.loss(b.frames, torch.Generator().manual_seed(3), 1e-4, b.weight)[0]
        return float(flow.detach()), float(rec.detach())

    pad = torch.tensor([1.0, 0.0])
    assert losses(1, pad) == losses(2, pad)                  # the padding sample's content is ignored
    assert losses(1, None) != losses(2, None)                # (it counts without the weight)
    assert losses(1, None) == losses(1, torch.ones(2))       # weight 1 changes nothing


def test_batches_give_padding_samples_weight_0():
    import numpy as np
    rng = np.random.default_rng(0)

    def sample(pad):
        return {"clip_id": "c", "start_s": 0.0, "frames": rng.integers(0, 255, (9, 16, 16, 3), np.uint8),
                "audio": np.zeros(5760, np.float32), "speak_audio": np.zeros(5760, np.float32),
                "listen_audio": np.zeros(5760, np.float32), "fps": 25.0, "text": "", "pad": pad}
    spec = DataSpec(audio_features="logmel", frames_per_latent=4, spatial=4, max_refs=0)
    got = Batches([sample(False), sample(True), sample(False)], spec, 3, cache=4).next()
    assert got.weight.tolist() == [1.0, 0.0, 1.0]            # also when the cache holds the window
