"""The DiT's structure, checked on a random toy model: which layers audio reaches, the mute switch,
reference positions (LPM eq. 4), RoPE, local audio windows, flavour sizes."""
from __future__ import annotations

import pytest
import torch

from models.avatar import Avatar
from models.dit import DiTConfig, flavour, grid_positions, param_count
from models.layers import apply_rope, rope_cos_sin

torch.set_num_threads(1)
T_LAT, FPL = 3, 4
FRAMES = 1 + FPL * (T_LAT - 1)


def toy(**kw) -> Avatar:
    torch.manual_seed(0)
    cfg = flavour("toy", in_channels=4, audio_dim=8, audio_groups=2, depth=4, **kw)
    model = Avatar(cfg, {"kind": "bytes", "depth": 1})
    for b in model.dit.blocks:          # audio value projections start at 0: give them weights
        torch.nn.init.normal_(b.cross.v_audio.weight, std=0.2)
    torch.nn.init.normal_(model.dit.head.weight, std=0.2)
    return model


def inputs(seed=1, b=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, T_LAT, 4, 4, generator=g)
    t = torch.rand(b, T_LAT, generator=g)
    speak = torch.randn(b, T_LAT, FPL, 2, 8, generator=g)
    listen = torch.randn(b, T_LAT, FPL, 2, 8, generator=g)
    return x, t, ["a person talking"] * b, speak, listen


def block_outputs(model, *args, **kw):
    """Output of every block (and the embeddings) of one forward."""
    seen = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=i: seen.__setitem__(k, o[0].detach().clone()))
             for i, b in enumerate(model.dit.blocks)]
    hooks.append(model.dit.patch_embed.register_forward_hook(
        lambda m, i, o: seen.__setitem__("patch", o.detach().clone()) if "patch" not in seen else None))
    hooks.append(model.dit.text_embed.register_forward_hook(
        lambda m, i, o: seen.__setitem__("text", o.detach().clone())))
    out = model(*args, **kw)
    for h in hooks:
        h.remove()
    return out, seen


def test_speak_on_even_layers_listen_on_odd_with_their_own_projections():
    model = toy()
    assert [b.cross.branch for b in model.dit.blocks] == ["speak", "listen", "speak", "listen"]
    for muted, live in (("speak", "listen"), ("listen", "speak")):
        model.zero_grad(set_to_none=True)
        x, t, texts, speak, listen = inputs()
        on = {"speak_on": torch.ones(2), "listen_on": torch.ones(2)}
        on[f"{muted}_on"] = torch.zeros(2)
        model(x, t, texts, speak, listen, **on).pow(2).sum().backward()
        parity = 0 if muted == "speak" else 1
        for i, b in enumerate(model.dit.blocks):
            for p in (b.cross.k_audio.weight, b.cross.v_audio.weight, b.cross.o_audio.weight):
                g = torch.zeros_like(p) if p.grad is None else p.grad
                if i % 2 == parity:
                    assert torch.count_nonzero(g) == 0, f"{muted} is muted but block {i} learns from it"
                else:
                    assert torch.count_nonzero(g) > 0, f"block {i} ({live}) gets no gradient"
        proj = getattr(model.dit, f"{muted}_proj")
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in proj.parameters())
        assert all(torch.count_nonzero(p.grad) > 0 for p in getattr(model.dit, f"{live}_proj").parameters()
                   if p.dim() > 1)


def test_listen_audio_never_reaches_even_layers_nor_speak_audio_odd_ones():
    model = toy()
    x, t, texts, speak, listen = inputs()
    listen = listen.clone().requires_grad_(True)
    speak = speak.clone().requires_grad_(True)
    _, seen = block_outputs(model, x, t, texts, speak, listen)
    # d(block 0 output)/d(listen) is exactly zero; d/d(speak) is not
    hooks = {}
    h = model.dit.blocks[0].register_forward_hook(lambda m, i, o: hooks.__setitem__("o", o[0]))
    model(x, t, texts, speak, listen)
    h.remove()
    g_listen, g_speak = torch.autograd.grad(hooks["o"].sum(), [listen, speak], allow_unused=True)
    assert g_listen is None or torch.count_nonzero(g_listen) == 0
    assert torch.count_nonzero(g_speak) > 0
    # a different listen track leaves block 0 bit for bit unchanged and changes block 1
    _, other = block_outputs(model, x, t, texts, speak, listen + 1.0)
    assert torch.equal(seen[0], other[0]) and not torch.equal(seen[1], other[1])


def test_muting_a_branch_leaves_every_activation_before_its_first_layer_unchanged():
    model = toy()
    args = inputs()
    _, base = block_outputs(model, *args)
    _, no_listen = block_outputs(model, *args, listen_on=torch.zeros(2))
    assert torch.equal(base[0], no_listen[0]), "listen first acts at layer 1: layer 0 must not change"
    assert not torch.equal(base[1], no_listen[1])
    _, no_speak = block_outputs(model, *args, speak_on=torch.zeros(2))
    assert torch.equal(base["patch"], no_speak["patch"]) and torch.equal(base["text"], no_speak["text"])
    assert not torch.equal(base[0], no_speak[0]), "speak acts at layer 0"
    # per-sample: muting sample 1 only leaves sample 0 untouched everywhere
    _, half = block_outputs(model, *args, speak_on=torch.tensor([1.0, 0.0]))
    assert all(torch.equal(base[i][0], half[i][0]) for i in range(4))


def test_audio_windows_are_local():
    """Speak window (0, 0): a video token sees its own latent frame's speak audio only; listen window
    (2, 2): frames i-2..i+2. Checked on the cross-attention outputs of blocks 0 (speak) and 1 (listen)
    when the audio of the last latent frame (4) changes."""
    model = toy(audio_context=0)
    assert [b.cross.window for b in model.dit.blocks][:2] == [(0, 0), (2, 2)]
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 4, 5, 4, 4, generator=g), torch.rand(1, 5, generator=g)
    speak, listen = torch.randn(1, 5, FPL, 2, 8, generator=g), torch.randn(1, 5, FPL, 2, 8, generator=g)

    def cross_outputs(sp, li):
        seen = {}
        hooks = [model.dit.blocks[i].cross.register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, o.detach().clone())) for i in (0, 1)]
        model(x, t, ["a"], sp, li)
        for h in hooks:
            h.remove()
        return seen

    base = cross_outputs(speak, listen)
    sp2, li2 = speak.clone(), listen.clone()
    sp2[:, 4] += 1.0
    li2[:, 4] += 1.0
    hw = base[0].shape[1] // 5                          # tokens per latent frame
    changed = lambda a, b: [f for f in range(5) if not torch.equal(a[:, f * hw:(f + 1) * hw], b[:, f * hw:(f + 1) * hw])]
    assert changed(base[0], cross_outputs(sp2, listen)[0]) == [4]
    assert changed(base[1], cross_outputs(speak, li2)[1]) == [2, 3, 4]


def test_audio_projector_aligns_latent_frames_with_their_video_frames():
    """Latent frame i (i >= 1) covers video frames 4i-3..4i; with 1 frame of context it reads 4i-4..4i+1."""
    model = toy(audio_context=1)
    proj = model.dit.speak_proj
    from models.audio import group_frames
    feats = torch.randn(1, FRAMES, 2, 8)
    base = proj(group_frames(feats, FPL))
    for f in range(FRAMES):
        moved = feats.clone()
        moved[:, f] += 1.0
        changed = [i for i in range(T_LAT) if not torch.equal(base[:, i], proj(group_frames(moved, FPL))[:, i])]
        expect = [i for i in range(T_LAT) if (0 if i == 0 else 4 * i - 4) <= f <= 4 * i + 1]
        assert changed == expect, (f, changed, expect)


def test_reference_tokens_get_the_documented_rope_offsets():
    model = toy()
    cfg = model.dit.cfg
    lat = torch.randn(1, 4, 4, 1, 4, 4)                       # 4 references, one latent frame each
    types = torch.tensor([[0, 1, 1, 2]])                      # global, expression x2, view
    subs = torch.tensor([[0, 0, 1, 0]])
    refs = model.dit.references(lat, types, subs, torch.ones(1, 4, dtype=torch.bool), t_video=T_LAT)
    t_pos = refs.pos[0, :, 0].reshape(4, 4)[:, 0].tolist()
    o = cfg.ref_type_offsets
    assert t_pos == [T_LAT + o["global"], T_LAT + o["expression"], T_LAT + o["expression"] + 1,
                     T_LAT + o["view"]] == [4, 11, 12, 23]
    assert torch.equal(refs.pos[0, :4, 1:], grid_positions(1, 2, 2)[:, 1:])     # row, column as video
    # the positions matter: the same reference as another type changes the video's output
    x, t, texts, speak, listen = inputs(b=1)
    kw = dict(ref_latents=lat[:, :1], ref_subs=subs[:, :1], ref_valid=torch.ones(1, 1, dtype=torch.bool))
    out_g = model(x, t, texts, speak, listen, ref_types=torch.tensor([[0]]), **kw)
    out_v = model(x, t, texts, speak, listen, ref_types=torch.tensor([[2]]), **kw)
    assert (out_g - out_v).abs().max() > 1e-4


def test_padded_references_are_ignored():
    model = toy()
    x, t, texts, speak, listen = inputs(b=1)
    lat = torch.randn(1, 2, 4, 1, 4, 4)
    one = model(x, t, texts, speak, listen, ref_latents=lat[:, :1], ref_types=torch.zeros(1, 1, dtype=torch.long),
                ref_subs=torch.zeros(1, 1, dtype=torch.long), ref_valid=torch.ones(1, 1, dtype=torch.bool))
    padded = model(x, t, texts, speak, listen, ref_latents=lat, ref_types=torch.zeros(1, 2, dtype=torch.long),
                   ref_subs=torch.tensor([[0, 1]]), ref_valid=torch.tensor([[True, False]]))
    assert (one - padded).abs().max() < 1e-5


def test_rope_is_relative():
    """q.k after RoPE depends on the position difference only, and norms are kept."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 24, generator=g), torch.randn(1, 2, 5, 24, generator=g)
    pos = torch.randn(1, 5, 3, generator=g) * 7
    dots = []
    for shift in (0.0, 1000.0):
        cos, sin = rope_cos_sin(pos + shift, 24)
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dots.append(qr @ kr.transpose(-1, -2))
        assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.allclose(dots[0], dots[1], atol=1e-3)


def test_flavours_from_cpu_toy_to_14b():
    toy_n = param_count(flavour("toy", in_channels=192, audio_dim=80, audio_groups=1))
    assert toy_n < 1_000_000
    # Wan2.1-1.3B's backbone + the audio branches and projectors; counted on the meta device
    assert 1.5e9 < param_count(flavour("1.3b")) < 1.8e9
    assert 16e9 < param_count(flavour("14b")) < 19e9
    assert DiTConfig.from_dict(flavour("1.3b").to_dict()) == flavour("1.3b")
    with pytest.raises(ValueError, match="unknown model flavour"):
        flavour("7b")
