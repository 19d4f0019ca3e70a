"""ClipStream on a store of generated clips whose frames carry their numbers and whose audio is a
tone per clip (tests/synthetic.py): the contract's keys, frames / audio / states from the right place,
the same global batches on any number of ranks, every window once per epoch, equal step counts,
resume (also on another world size)."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

import synthetic as syn
from curation.data import ClipStream, StreamError

SPEC = [("a", "ok", 100), ("b", "ok", 75), ("c", "black", 50), ("d", "cut", 100), ("e", "jump", 100),
        ("f", "letterbox", 50), ("g", "silent", 50), ("h", "ok", 60)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    uri, tones = syn.build_store(tmp_path_factory.mktemp("synth"), SPEC)
    return uri, {f"v{i:03d}_{name}": tones[name] for i, (name, _, _) in enumerate(SPEC)}


def keys(batch):
    return [(s["clip_id"], round(s["start_s"], 4)) for s in batch]


def global_batches(uri, world, seed, epochs=1, **kw):
    """Every global step's windows, ranks' shares put together in rank order."""
    per_rank = [list(ClipStream(uri, window_s=1.0, seed=seed, rank=r, world_size=world,
                                epochs=epochs, **kw).iter_steps()) for r in range(world)]
    steps = {len(p) for p in per_rank}
    assert len(steps) == 1, f"ranks have different step counts: {steps}"
    return [sum((keys(p[s]) for p in per_rank), []) for s in range(steps.pop())]


def test_samples_follow_the_contract_and_come_from_the_right_place(synth):
    uri, tones = synth
    stream = ClipStream(uri, window_s=1.0, seed=0, epochs=1)
    seen = 0
    for x in stream:
        T = len(x["frames"])
        assert x["frames"].dtype == np.uint8 and x["frames"].shape == (25, syn.H, syn.W, 3)
        assert x["fps"] == 25.0 and isinstance(x["clip_id"], str) and isinstance(x["text"], str)
        # frames: the frame numbers painted into them are the window's, in order
        first = int(round(x["start_s"] * syn.FPS))
        assert [syn.frame_number(im) for im in x["frames"]] == list(range(first, first + T))
        # states: the label of each decoded frame
        expect = [syn.STATES.index(syn.state_of(first + k)) for k in range(T)]
        assert x["states"].dtype == np.int8 and x["states"].tolist() == expect
        # audio: N = T / fps * 16 kHz, first sample at start_s (the clip's tone, phase to the sample)
        a = x["audio"]
        assert a.dtype == np.float32 and len(a) == round(T / x["fps"] * 16000)
        if x["has_audio"]:
            f = tones[x["video_id"]]
            lag = max(range(-16, 17), key=lambda L: float(a @ syn.tone(f, len(a), x["start_s"] + L / 16000)))
            assert lag == 0
            assert np.abs(a - syn.tone(f, len(a), x["start_s"])).max() < 1e-3
            # speak / listen: the mix with the other role's frames silenced (audio_mask)
            k = 12   # a frame well inside the window: 0.48 s
            state = syn.state_of(first + k)
            mid = slice(int(k / 25 * 16000) - 100, int(k / 25 * 16000) + 100)
            assert (np.abs(x["listen_audio"][mid]).max() < 1e-6) == (state == "speak")
            assert (np.abs(x["speak_audio"][mid]).max() < 1e-6) == (state == "listen")
            assert x["audio_source"] == "mask"
        else:
            assert not a.any()
        assert x["audio_features"] is None and x["references"] == []
        seen += 1
    assert seen == 18   # 21 windows of 1 s; 3 global steps of 6; 3 spares
    assert "caption" in stream.text_missing


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_same_global_batches_on_any_world_size_and_every_window_once(synth, seed):
    uri, _ = synth
    ref = global_batches(uri, 1, seed)
    for world in (2, 3):
        assert global_batches(uri, world, seed) == ref
    flat = [k for b in ref for k in b]
    assert len(flat) == len(set(flat))                            # no window twice in an epoch
    plan = ClipStream(uri, window_s=1.0, seed=seed).plan(0)
    assert len(flat) + sum(map(len, plan.spares.values())) == 23  # all but the spares
    assert all(len(b) % 6 == 0 for b in ref)


def test_epochs_differ_and_world_size_must_divide_the_batch(synth):
    uri, _ = synth
    two = global_batches(uri, 2, 0, epochs=2)
    n = ClipStream(uri, window_s=1.0, seed=0).steps_per_epoch()
    assert two[:n] != two[n:]                                     # reshuffled
    assert sorted(sum(two[:n], [])) != sorted(sum(two[n:], [])) or two[:n] != two[n:]
    with pytest.raises(StreamError, match="does not divide"):
        ClipStream(uri, window_s=1.0, rank=0, world_size=4)


def digest(batch) -> str:
    h = hashlib.sha256()
    for s in batch:
        h.update(s["clip_id"].encode() + np.float64(s["start_s"]).tobytes())
        h.update(s["frames"].tobytes() + s["audio"].tobytes() + s["states"].tobytes())
    return h.hexdigest()


def test_resume_after_a_kill_on_another_world_size_gives_the_same_later_batches(synth):
    uri, _ = synth
    kw = dict(window_s=1.0, seed=3, epochs=3)
    full = [digest(b) for b in ClipStream(uri, **kw).iter_steps()]
    rng = random.Random(0)
    for stop in sorted({rng.randrange(1, len(full)), 3, 4}):      # mid-epoch and at epoch boundary
        s = ClipStream(uri, rank=0, world_size=2, **kw)
        it = iter(s)
        for _ in range(stop * 3):                                  # rank 0 has 3 samples a step
            next(it)
        state = s.state_dict()
        assert set(state) >= {"epoch", "step", "seed"} and state["offset"] == 0
        ranks = []
        for r in range(3):                                         # resume on 3 ranks
            t = ClipStream(uri, rank=r, world_size=3, **kw)
            t.load_state_dict(state)
            ranks.append(list(t.iter_steps()))
        resumed = [digest(sum((ranks[r][i] for r in range(3)), [])) for i in range(len(ranks[0]))]
        assert resumed == full[stop:]
