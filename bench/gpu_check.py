"""GPU check of the bundled avatar DiT (docs/model.md): a random-initialised model of a flavour
(default the 1.3B shape) trained for a few steps in bf16 on random inputs of a real shape (default
81 frames at 480x832 through a Wan-style VAE: 16 latent channels, 4x time, 8x space -> 21 x 60 x 104
latents, 32,760 video tokens + one reference image). Prints step time (forward + backward + AdamW),
peak memory, and video tokens per second as one JSON object; then the causal student on the same
weights (models/distill/causal.py): the max difference between its chunk-by-chunk KV-cache path and
one full forward under the block mask in that dtype, and frames per second of a chunk-by-chunk
rollout (chunk 3, 2 steps per chunk: the distilled backbone's cost, without the VAE decode).

    python bench/gpu_check.py                                # 1.3b, bf16 weights, CUDA
    python bench/gpu_check.py --flavour 14b --checkpointing  # activation checkpointing per block
    python bench/gpu_check.py --device cpu --flavour toy --frames 9 --size 32 32   # a dry run here

Nothing is downloaded: text tokens and audio features are random tensors of the flavour's widths
(umT5-XXL 4096, Whisper-large 5 x 1280). Needs a GPU with bf16 for the default (the whole 1.3B model,
gradients and AdamW states in bf16: about 13 GB before activations).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.dit import DiT, flavour  # noqa: E402


def inputs(model: DiT, frames: int, size: tuple, batch: int, text_len: int, device, dtype) -> dict:
    """Random latents, timesteps, text tokens, audio features and one reference latent per sample."""
    cfg = model.cfg
    t_lat = 1 + (frames - 1) // 4
    h, w = size[0] // 8, size[1] // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)
    ones = lambda *shape: torch.ones(*shape, dtype=torch.bool, device=device)
    return {"x": rnd(batch, cfg.in_channels, t_lat, h, w), "target": rnd(batch, cfg.in_channels, t_lat, h, w), "t": torch.rand(batch, t_lat, generator=g).to(device),
            "text": rnd(batch, text_len, cfg.text_dim), "text_mask": ones(batch, text_len),
            "speak": rnd(batch, t_lat, 4, cfg.audio_groups, cfg.audio_dim),
            "listen": rnd(batch, t_lat, 4, cfg.audio_groups, cfg.audio_dim),
            "ref": rnd(batch, 1, cfg.in_channels, 1, h, w), "ref_valid": ones(batch, 1),
            "zeros": torch.zeros(batch, 1, dtype=torch.long, device=device)}


def step(model: DiT, opt, d: dict):
    """One training step: conditions, references, the velocity, MSE to a random target, backward, AdamW."""
    cond = model.conditions(d["text"], d["text_mask"], d["speak"], d["listen"])
    refs = model.references(d["ref"], d["zeros"], d["zeros"], d["ref_valid"], d["x"].shape[2])
    loss = (model(d["x"], d["t"], cond, refs).float() - d["target"].float()).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, refs.tokens.shape[1]


@torch.no_grad()
def causal_check(model: DiT, d: dict, chunk: int, steps: int, sync) -> dict:
    """The causal student on the same model: max |chunked with KV cache - one full forward under the
    block mask| in the model's dtype, and frames per second of a chunk-by-chunk rollout (``steps``
    denoising steps per chunk, noisy-history cache)."""
    from types import SimpleNamespace

    from models.distill.causal import CausalSpec, CausalStudent, chunk_bounds
    from models.distill.stream import Branches, fewstep_chunk
    x, t = d["x"][:1], d["t"][:1]
    t_lat = x.shape[2]
    for w in [model.head.weight] + [b.cross.v_audio.weight for b in model.blocks]:
        torch.nn.init.normal_(w, std=model.cfg.dim ** -0.5)     # zero-initialised: give them values
    spec = CausalSpec(chunk=chunk, first_chunk=1, sink=1, window=2, cap=max(t_lat, 1 + 3 * chunk))
    avatar = SimpleNamespace(dit=model, references=lambda lat, ty, su, va, anchor: model.references(
        lat, ty, su, va, anchor))
    student = CausalStudent(avatar, spec)
    cond = model.conditions(d["text"][:1], d["text_mask"][:1], d["speak"][:1], d["listen"][:1])
    refs = student.references(d["ref"][:1], d["zeros"][:1], d["zeros"][:1], d["ref_valid"][:1])
    full = student.full(x, t, cond, refs)
    cache, outs = student.prime(refs, cond, 1), []
    for c, (s, e) in enumerate(chunk_bounds(t_lat, chunk, 1)):
        v, kv = student.step(x[:, :, s:e], t[:, s:e], cond, cache, c, s)
        student.commit(cache, c, s, e, kv)
        outs.append(v)
    err = (torch.cat(outs, 2).float() - full.float()).abs().max().item()
    branches = Branches(student, [cond], [1.0], refs, 1)
    gen = torch.Generator().manual_seed(0)
    sync()
    t0 = time.perf_counter()
    sched = [1.0, 0.5, 0.25, 0.125][:steps]
    for c, (s, e) in enumerate(chunk_bounds(t_lat, chunk, 1)):
        noise = torch.randn((1, x.shape[1], e - s, *x.shape[3:]), generator=gen).to(x.device, x.dtype)
        x0, kvs = fewstep_chunk(branches, noise, c, s, sched, gen, "noisy")
        branches.commit(c, s, e, kvs)
    sync()
    took = time.perf_counter() - t0
    frames = 1 + 4 * (t_lat - 1)
    return {"causal_chunk": chunk, "causal_steps": steps, "causal_cache_max_abs_diff": err,
            "causal_full_max_abs": full.float().abs().max().item(),
            "causal_rollout_s": round(took, 3), "causal_fps": round(frames / took, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 832))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--causal-chunk", type=int, default=3, help="latent frames per chunk of the causal "
                    "student's check (0: skip it)")
    ap.add_argument("--causal-steps", type=int, default=2, help="denoising steps per chunk of its rollout")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device (this check is for GPU machines; --device cpu --flavour toy is a dry run)")
    device, dtype = torch.device(a.device), torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = DiT(flavour(a.flavour)).to(dtype)
    model.checkpointing = a.checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    d = inputs(model, a.frames, tuple(a.size), a.batch, a.text_len, device, dtype)
    x = d["x"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        step(model, opt, d)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss, n_ref = step(model, opt, d)
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    n_video = a.batch * x.shape[2] * (x.shape[3] // model.cfg.patch[1]) * (x.shape[4] // model.cfg.patch[2])
    out = {"flavour": a.flavour, "params": sum(p.numel() for p in model.parameters()), "dtype": a.dtype,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "latent": list(x.shape), "video_tokens": n_video, "reference_tokens": n_ref * a.batch,
           "step_s": round(dt, 4), "tokens_per_s": round(n_video / dt, 1), "loss": float(loss.detach()),
           "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
           "checkpointing": a.checkpointing}
    if a.causal_chunk:
        model.eval()
        out.update(causal_check(model, d, a.causal_chunk, a.causal_steps, sync))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
