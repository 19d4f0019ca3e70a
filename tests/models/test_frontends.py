"""Front ends: the VAEs (exact pixel VAE, causal toy VAE), audio features, text encoders, and the
sample -> tensor adapter on the synthetic mouth source."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.audio import group_frames, logmel_features, role_features
from models.data import MouthSource, DataSpec, SampleError, collate, mouth_area, prepare
from models.text import ByteTextEncoder, build_text_encoder
from models.vae import CausalVAE3D, PixelVAE, build_vae

torch.set_num_threads(1)


def test_pixel_vae_is_exact_and_causal():
    vae = PixelVAE(spatial=4, temporal=4)
    x = torch.rand(2, 3, 9, 8, 8) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 192, 3, 2, 2)
    assert torch.equal(vae.decode(z), x)
    assert torch.equal(vae.encode(x[:, :, :1]), z[:, :, :1])            # an image = the first latent
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        vae.encode(x[:, :, :8])


def test_causal_vae_latent_frames_never_see_later_frames_and_it_trains():
    torch.manual_seed(0)
    vae = CausalVAE3D(latent_channels=4, width=16, spatial=4, temporal=4)
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (1, 4, 3, 4, 4) and vae.decode(z).shape == x.shape
    later = x.clone()
    later[:, :, 5:] = 0.0                                                # frames 5-8: latent frame 2
    z2 = vae.encode(later)
    assert torch.equal(z[:, :, :2], z2[:, :, :2]) and not torch.equal(z[:, :, 2], z2[:, :, 2])
    dec = vae.decode(z2)
    z3 = z2.clone()
    z3[:, :, 2] += 1.0
    assert torch.equal(vae.decode(z3)[:, :, :5], dec[:, :, :5])        # decoding is causal too
    frames = torch.from_numpy(MouthSource(size=16, frames=9).sample(0)["frames"]).float()
    batch = (frames / 127.5 - 1).permute(3, 0, 1, 2)[None]
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, _ = vae.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_wan_vae_interface_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_vae({"kind": "wan", "path": str(tmp_path / "Wan2.1_VAE")})


def test_logmel_features_follow_loudness():
    sr, fps = 16000, 25.0
    t = np.arange(sr) / sr
    env = np.repeat([0.01, 0.3, 0.01, 0.3, 0.01], 5)                     # 25 frames, loud / quiet
    wave = (np.interp(t, (np.arange(25) + 0.5) / fps, env) * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    f = logmel_features(wave, 25, fps)
    assert f.shape == (25, 1, 80)
    energy = f[:, 0].max(1)                                              # the tone's band
    assert energy[7] > energy[2] + 0.5 and energy[17] > energy[12] + 0.5


def test_whisper_features_are_masked_per_role_and_required():
    n = 16000
    speak = np.zeros(n, np.float32)
    speak[: n // 2] = 0.5                                               # speaker in the first half
    listen = np.zeros(n, np.float32)
    listen[n // 2:] = 0.5
    feats = np.ones((25, 5, 384), np.float32)
    s = {"clip_id": "c", "fps": 25.0, "audio": speak + listen, "speak_audio": speak, "listen_audio": listen,
         "audio_features": feats}
    sp, li = role_features(s, "whisper", 25)
    assert sp[:12].min() == 1 and sp[13:].max() == 0 and li[:12].max() == 0 and li[13:].min() == 1
    s["audio_features"] = None
    with pytest.raises(ValueError, match="clip c has no Whisper audio features"):
        role_features(s, "whisper", 25)


def test_group_frames_repeats_the_first_frame_like_the_causal_vae():
    feats = torch.arange(9.0)[:, None, None]                             # 9 frames -> 3 latent frames
    g = group_frames(feats, 4)[..., 0, 0]
    assert g.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_text_encoders():
    enc = ByteTextEncoder(dim=32, depth=1)
    tok, mask = enc.encode(["", "héllo"])
    assert tok.shape == (2, 7, 32) and mask.sum(1).tolist() == [1, 7]   # empty text: one begin token
    with pytest.raises(FileNotFoundError, match="text encoder not found"):
        build_text_encoder({"kind": "pretrained", "path": "/nonexistent/umt5"}, 4096)


def test_mouth_source_truth_and_adapter():
    src = MouthSource(seed=3, frames=25, size=16)
    s = src.sample(0)
    assert s["frames"].shape == (25, 16, 16, 3) and s["audio"].shape == (16000,)
    assert np.corrcoef(mouth_area(s["frames"]), s["envelope"])[0, 1] > 0.99
    assert np.array_equal(src.sample(0)["frames"], s["frames"])          # a pure function of the index
    it = iter(src)
    first = [next(it)["clip_id"] for _ in range(3)]
    state = src.state_dict()
    later = next(it)["clip_id"]
    src2 = MouthSource(seed=3, frames=25, size=16)
    src2.load_state_dict(state)
    assert next(iter(src2))["clip_id"] == later and first == ["mouth:3:0", "mouth:3:1", "mouth:3:2"]
    items = [prepare(src.sample(i), DataSpec()) for i in range(2)]
    b = collate(items)
    assert b.frames.shape == (2, 3, 25, 16, 16) and b.speak.shape == (2, 25, 1, 80)
    assert b.refs.shape == (2, 1, 3, 1, 16, 16) and b.ref_valid.all()
    short = dict(s, frames=s["frames"][:4])
    with pytest.raises(SampleError, match="fewer than 5"):
        prepare(short, DataSpec())
