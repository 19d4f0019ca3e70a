"""The causal student: cached chunk-by-chunk == one full forward under the block mask; RAPR positions."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from models.avatar import Avatar
from models.dit import flavour
from models.distill.causal import CausalSpec, CausalStudent, block_mask, chunk_bounds, visible

torch.set_num_threads(1)
FPL = 4


def make(seed=0, depth=4, **spec):
    torch.manual_seed(seed)
    cfg = flavour("toy", in_channels=4, audio_dim=8, audio_groups=2, depth=depth)
    avatar = Avatar(cfg, {"kind": "bytes", "depth": 1})
    for b in avatar.dit.blocks:
        torch.nn.init.normal_(b.cross.v_audio.weight, std=0.2)
    torch.nn.init.normal_(avatar.dit.head.weight, std=0.2)
    return CausalStudent(avatar.eval(), CausalSpec(**spec))


def stream_inputs(n_lat, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, n_lat, 4, 4, generator=g)
    t = torch.rand(b, n_lat, generator=g)
    speak, listen = (torch.randn(b, n_lat, FPL, 2, 8, generator=g) for _ in range(2))
    ref = torch.randn(b, 2, 4, 1, 4, 4, generator=g)
    valid = torch.tensor([[True, True], [True, False]])[:b]
    return x, t, speak, listen, ref, valid


def chunked(student, x, t, cond, refs):
    cache = student.prime(refs, cond, x.shape[0])
    outs = []
    for c, (s, e) in enumerate(chunk_bounds(x.shape[2], student.spec.chunk, student.spec.first_chunk)):
        v, kv = student.step(x[:, :, s:e], t[:, s:e], cond, cache, c, s)
        student.commit(cache, c, s, e, kv)
        outs.append(v)
    return torch.cat(outs, 2), cache


@pytest.mark.parametrize("chunk,window", [(1, 2), (3, 1)])
def test_cached_chunks_equal_one_full_forward_under_the_block_mask(chunk, window):
    """Sink 1 chunk + a window that evicts chunks on the way (9 latent frames), two references (one
    padded in the second sample): max |chunked - full| <= 1e-5."""
    student = make(chunk=chunk, first_chunk=1, sink=1, window=window, cap=9)
    x, t, speak, listen, ref, valid = stream_inputs(9)
    zeros = torch.zeros(2, 2, dtype=torch.long)
    with torch.no_grad():
        cond = student.avatar.conditions(["a face", "another"], speak, listen)
        refs = student.references(ref, zeros, torch.tensor([[0, 1], [0, 1]]), valid)
        full = student.full(x, t, cond, refs)
        out, cache = chunked(student, x, t, cond, refs)
    bounds = chunk_bounds(9, chunk, 1)
    assert len(cache.chunks) == len(visible(len(bounds), student.spec)) - 1 < len(bounds)   # evicted
    err = (out - full).abs().max().item()
    assert err <= 1e-5, err
    # and the mask is what it says: chunk 3 of (1, 3, 3, 2) with window 1 sees chunks 0, 2, 3
    if chunk == 3:
        m = block_mask(bounds, 1, 0, student.spec)[0, 0]
        assert m[7].tolist() == [True, False, False, False, True, True, True, True, True]


@pytest.mark.slow
def test_rapr_chunk_10_and_chunk_10000_give_identical_outputs_and_5000_chunks_run():
    """Identical cache contents give bit-identical outputs at chunk 10 and chunk 10,000 (positions
    are relative to the current chunk and capped, the sink and references anchored); a stream of
    5,000 chunks keeps a bounded cache and finite outputs."""
    student = make(depth=1, chunk=1, first_chunk=1, sink=1, window=2, cap=6)
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(1, 3, FPL, 2, 8, generator=g)                # the audio of 3 latent frames
    ref = torch.randn(1, 1, 4, 1, 4, 4, generator=g)
    zeros = torch.zeros(1, 1, dtype=torch.long)
    x, t = torch.randn(1, 4, 1, 4, 4, generator=g), torch.rand(1, 1, generator=g)
    with torch.no_grad():
        refs = student.references(ref, zeros, zeros, torch.ones(1, 1, dtype=torch.bool))
        base = student.avatar.conditions(["a"], feats, feats)        # audio tokens of frames 0, 1, 2
        at = lambda c: replace(base, audio_frames=base.audio_frames + (c - 1))   # ... of c-1, c, c+1
        cache = student.prime(refs, base, 1)
        for c in range(10):                                          # a stream up to chunk 10
            v, kv = student.step(torch.randn(1, 4, 1, 4, 4, generator=g), torch.rand(1, 1, generator=g),
                                 at(c), cache, c, c)
            student.commit(cache, c, c, c + 1, kv)
        far = copy.deepcopy(cache)                                   # the same contents at chunk 10,000
        far.chunks = {(k if k < 1 else k + 9990): (s if k < 1 else s + 9990, e if k < 1 else e + 9990, kv)
                      for k, (s, e, kv) in cache.chunks.items()}
        v10, _ = student.step(x, t, at(10), cache, 10, 10)
        v1e4, _ = student.step(x, t, at(10000), far, 10000, 10000)
        assert torch.equal(v10, v1e4)
        for c in range(10, 5000):                                    # 5,000 chunks, bounded cache
            v, kv = student.step(x, t, at(c), cache, c, c)
            student.commit(cache, c, c, c + 1, kv)
        assert sorted(cache.chunks) == [0, 4998, 4999] and torch.isfinite(v).all()
