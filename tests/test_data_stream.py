"""ClipStream on a store of generated clips whose frames carry their numbers and whose audio is a
tone per clip (tests/synthetic.py): the contract's keys, frames / audio / states from the right place,
the same global batches on any number of ranks, every window once per epoch, equal step counts,
resume (also on another world size)."""
from __future__ import annotations

import hashlib
import itertools
import random
import resource

import numpy as np
import pytest
import torch

import synthetic as syn
from curation.data import ClipStream, StreamError

SPEC = [("a", "ok", 100), ("b", "ok", 75), ("c", "black", 50), ("d", "cut", 100), ("e", "jump", 100),
        ("f", "letterbox", 50), ("g", "silent", 50), ("h", "ok", 60)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    uri, tones = syn.build_store(tmp_path_factory.mktemp("synth"), SPEC)
    return uri, {f"v{i:03d}_{name}": tones[name] for i, (name, _, _) in enumerate(SPEC)}


def keys(batch):
    return [(s["clip_id"], round(s["start_s"], 4), s["pad"]) for s in batch]


def once_each(batches, expected: int):
    """Every window not padding is in the epoch exactly once; ``expected`` of them."""
    real = [k[:2] for b in batches for k in b if not k[2]]
    assert len(real) == len(set(real)) == expected, (len(real), len(set(real)), expected)
    return set(real)


def global_steps(uri, world, seed, epochs=1, **kw):
    """Every global step's samples, ranks' shares put together in rank order."""
    kw.setdefault("window_s", 1.0)
    per_rank = [list(ClipStream(uri, seed=seed, rank=r, world_size=world, epochs=epochs,
                                **kw).iter_steps()) for r in range(world)]
    steps = {len(p) for p in per_rank}
    assert len(steps) == 1, f"ranks have different step counts: {steps}"
    return [sum((p[s] for p in per_rank), []) for s in range(steps.pop())]


def global_batches(uri, world, seed, epochs=1, **kw):
    """Every global step's windows (clip, start, pad)."""
    return [keys(b) for b in global_steps(uri, world, seed, epochs, **kw)]


def test_samples_follow_the_contract_and_come_from_the_right_place(synth):
    uri, tones = synth
    stream = ClipStream(uri, window_s=1.0, seed=0, epochs=1)
    seen, pads = 0, []
    for x in stream:
        pads.append(x["pad"])
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
    assert seen == 6 * stream.steps_per_epoch() and seen - sum(pads) == len(stream.windows) == 23
    assert 0 < sum(pads) < 6 * 3               # one short batch per frame size, filled with repeats
    assert "caption" in stream.text_missing


def test_audio_read_from_the_stores_pcm_equals_the_files(synth, tmp_path):
    """With the audio_pcm step's column the window's audio is a slice of the stored PCM (no audio
    decode in the frames' pass): the same samples as the file's, placed the same way; the silent
    clip has none and reads nothing."""
    import shutil
    uri, tones = synth
    copy = str(tmp_path / "store")
    shutil.copytree(uri, copy)
    syn.add_audio_pcm(copy)
    stored = list(ClipStream(copy, window_s=1.0, seed=0, epochs=1))
    decoded = list(ClipStream(copy, window_s=1.0, seed=0, epochs=1, stored_audio=False))
    assert [(x["clip_id"], x["start_s"]) for x in stored] == [(x["clip_id"], x["start_s"]) for x in decoded]
    for x, y in zip(stored, decoded):
        assert y["audio_read"] == "file"
        assert x["audio_read"] == ("store" if x["has_audio"] else "file")
        np.testing.assert_array_equal(x["frames"], y["frames"])
        np.testing.assert_array_equal(x["audio"], y["audio"])
        if x["has_audio"]:
            a, f = x["audio"], tones[x["video_id"]]
            assert np.abs(a - syn.tone(f, len(a), x["start_s"])).max() < 1e-3
        np.testing.assert_array_equal(x["speak_audio"] != 0, y["speak_audio"] != 0)


@pytest.mark.parametrize("seed", [0, 7])
def test_same_global_batches_on_any_world_size_and_every_window_once(synth, seed):
    uri, _ = synth
    ref = global_batches(uri, 1, seed)
    for world in (2, 3):
        assert global_batches(uri, world, seed) == ref
    once_each(ref, 23)                                            # every window once, plus padding
    assert all(len(b) % 6 == 0 for b in ref)
    assert all(not k[2] for b in ref[:-1] for k in b)             # padding only in the last batch


def test_epochs_differ_and_world_size_must_divide_the_batch(synth):
    uri, _ = synth
    s = ClipStream(uri, window_s=1.0, seed=0)
    assert s.plan(0).batches != s.plan(1).batches                 # reshuffled (the stream follows its plan)
    with pytest.raises(StreamError, match="does not divide"):
        ClipStream(uri, window_s=1.0, rank=0, world_size=4)


PROFILE = """name: synth
window_s: 1.0
checks:
  - duration: {}
  - sampling_fps: {min_ratio: 0.9}
  - resolution: {min_short_side: 64}
  - brightness: {min_mean: 30, max_mean: 225, max_dark_frames: 0.2, max_bright_frames: 0.2}
  - black_white: {max_black: 0.4, max_white: 0.3}
  - border: {max_total: 0.1}
  - frame_jumps: {max_jumps: 0}
  - motion_intensity: {min: 0.0, max: 400.0}
  - audio: {min_rms_db: -50}
"""
# why each generated kind fails (window starts in seconds; the cut / jump is at 2.48 s)
EXPECTED = {"c": ("brightness", {0.0, 1.0}), "f": ("border", {0.0, 1.0}), "g": ("audio", {0.0, 1.0}),
            "d": ("frame_jumps", {2.0}), "e": ("frame_jumps", {2.0})}


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = tmp_path_factory.mktemp("profile") / "synth.yaml"
    p.write_text(PROFILE)
    return str(p)


def _name(clip_id: str) -> str:
    return clip_id.split(":")[0].split("_")[1]


def test_online_rejections_are_replaced_deterministically_for_the_expected_reasons(synth, profile):
    uri, _ = synth
    kw = dict(profile=profile, verdicts=False)
    steps = global_steps(uri, 1, 5, **kw)
    ref = [keys(b) for b in steps]
    assert global_batches(uri, 3, 5, **kw) == ref                   # replacements are topology-free
    assert len(ref) == ClipStream(uri, window_s=1.0, seed=5).steps_per_epoch()   # same step count
    rejected = sum(len(starts) for _, starts in EXPECTED.values())
    real = once_each(ref, 23 - rejected)              # each passing window once, replacements are padding
    assert not any(_name(c) in EXPECTED and t in EXPECTED[_name(c)][1] for c, t in real)
    reasons = {}
    for x in (x for b in steps for x in b):
        assert not (_name(x["clip_id"]) in EXPECTED and x["start_s"] in EXPECTED[_name(x["clip_id"])][1])
        for r in x["replaced"]:
            reasons[(_name(r["clip_id"]), r["start_s"])] = r["reason"].split(":")[0]
    assert reasons, "no planned window was rejected: the test store lost its bad clips"
    for (name, start), check in reasons.items():
        assert name in EXPECTED and EXPECTED[name][0] == check and start in EXPECTED[name][1]


def test_offline_validate_writes_verdicts_and_the_loader_plans_without_them(synth, profile):
    import json

    from typer.testing import CliRunner

    from curation.cli import app
    from curation.store import Store
    uri, _ = synth
    res = CliRunner().invoke(app, ["validate", "--store", uri, "--profile", profile, "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["profile"] == "synth" and out["candidates"] == 23
    left = out["candidates"]
    for row in out["funnel"]:                                       # consistent from N down to K
        assert row["remaining"] == left - row["removed"]
        left = row["remaining"]
    assert left == out["kept"] == 23 - 2 - 2 - 2 - 1 - 1
    rows = Store(uri).query("windows", "NOT kept").to_pylist()
    got = {(_name(r["clip_id"]), r["start_s"]): r["failed_check"] for r in rows}
    assert got == {(n, s): c for n, (c, starts) in EXPECTED.items() for s in starts}
    assert all(r["reason"].startswith(r["failed_check"]) and r["checks"][-1]["keep"] is False for r in rows)
    # the loader leaves the rejected windows out: every kept window exactly once, nothing replaced
    stream = ClipStream(uri, window_s=1.0, seed=2, profile=profile, epochs=1, divisible_by=1,
                        batch_windows=1)
    seen = [(x["clip_id"], x["start_s"], x["replaced"], x["pad"]) for x in stream]
    assert len(seen) == len({s[:2] for s in seen}) == out["kept"] and not any(s[2] or s[3] for s in seen)
    shown = CliRunner().invoke(app, ["show", "--store", uri, [r["clip_id"] for r in rows
                                                            if r["failed_check"] == "border"][0]])
    assert "border bars cover 0.333" in shown.stdout


def _batch_digest(b) -> str:
    h = hashlib.sha256()
    for cid, s in zip(b["clip_id"], b["start_s"].tolist()):
        h.update(cid.encode() + np.float64(s).tobytes())
    h.update(b["frames"].numpy().tobytes() + b["audio"].numpy().tobytes() + b["states"].numpy().tobytes())
    return h.hexdigest()


def test_dataloader_workers_give_the_same_steps_and_resume(synth):
    """Spawned DataLoader workers (0 and 2) give the steps in order, identical; a loader resumed from
    its state_dict, with another number of workers, gives the same later batches."""
    from curation.data.loader import collate, make_loader
    uri, _ = synth
    kw = dict(window_s=1.0, seed=4, epochs=2, rank=1, world_size=2)
    ref = [_batch_digest(collate(b)) for b in ClipStream(uri, **kw).iter_steps()]
    n = ClipStream(uri, **kw).steps_per_epoch()
    loader = make_loader(ClipStream(uri, **kw), num_workers=2)
    got, state = [], None
    for i, b in enumerate(loader):
        got.append(_batch_digest(b))
        if i == n:                                                 # the first step of epoch 1
            state = loader.state_dict()
    assert got == ref and state["step"] == 1 and state["epoch"] == 1
    resumed = make_loader(ClipStream(uri, **kw), num_workers=0)
    resumed.load_state_dict(state)
    assert [_batch_digest(b) for b in resumed] == ref[n + 1:]


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_memory_is_reused_only_once_the_trainer_dropped_the_batch(synth, workers):
    """Step buffers are reused (the main process's pool, the workers' shared-memory rings given back
    by the main process): batches a trainer keeps (here all of them, and a numpy view of one) keep
    their frames, and batches it drops give their memory back."""
    from curation.data import buffers
    from curation.data.loader import collate, make_loader
    uri, _ = synth
    kw = dict(window_s=1.0, seed=6, epochs=2, divisible_by=2, batch_windows=2)
    ref = [_batch_digest(collate(b)) for b in ClipStream(uri, **kw).iter_steps()]
    buffers.POOL.clear()
    kept = list(make_loader(ClipStream(uri, **kw), num_workers=workers))      # every batch held
    assert [_batch_digest(b) for b in kept] == ref
    view = kept[1]["frames"][0].numpy()
    first = view.copy()
    del kept
    pooled = len(buffers.POOL.kept)
    loader = make_loader(ClipStream(uri, **kw), num_workers=workers)
    got, faults = [], []
    for b in loader:                                   # each batch dropped once digested
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        got.append(_batch_digest(b))                   # reads every page, as a copy to a GPU does
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        del b
    assert got == ref and np.array_equal(view, first)
    if workers:
        assert loader.releaser.released >= len(ref) - 2 * (2 + 3)   # all but the last few in flight
        # a slot's later steps arrive on its first step's mapping: no page to map again (a new
        # mapping of a step faulted ~29 times here)
        assert np.median(faults[2 * (2 + 3):]) <= 2, faults
    else:
        assert len(buffers.POOL.kept) == pooled         # nothing new: the kept buffers were reused


@pytest.mark.filterwarnings("ignore:'pin_memory' argument")   # no accelerator here: nothing is pinned
def test_a_steps_arrays_travel_in_its_ring_slot_and_keep_it_busy(synth):
    """A worker writes a step's audio tracks, states and frame mask after its frames in the ring
    slot (one shared-memory segment, no bytes through the pipe): the main process's batch has them
    as tensors on the frames' storage, equal to a batch collated in the main process; an audio
    tensor the trainer keeps keeps its slot busy while later steps reuse the others. With
    ``pin_memory`` they go by value."""
    from curation.data.loader import collate, make_loader
    uri, _ = synth
    kw = dict(window_s=1.0, seed=7, epochs=2, divisible_by=2, batch_windows=2)
    ref = [collate(b) for b in ClipStream(uri, **kw).iter_steps()]
    loader = make_loader(ClipStream(uri, **kw), num_workers=1)
    kept = first = None
    for i, b in enumerate(loader):
        frames = b["frames"].untyped_storage().data_ptr()
        for key in ("audio", "speak_audio", "listen_audio", "states", "frame_mask"):
            assert b[key].untyped_storage().data_ptr() == frames, key
            assert b[key].dtype == ref[i][key].dtype and torch.equal(b[key], ref[i][key]), (i, key)
        if i == 1:
            kept = b["audio"].numpy()            # the trainer keeps one array of step 1
            first = kept.copy()
        del b
    assert len(ref) > 2 * (2 + 3) and loader.releaser.released >= len(ref) - 2 * (2 + 3) - 1
    assert np.array_equal(kept, first) and first.any()
    # with pin_memory the DataLoader's pin thread copies the frames tensor alone: the arrays go by value
    pinned = make_loader(ClipStream(uri, **{**kw, "epochs": 1}), num_workers=1, pin_memory=True)
    for i, b in enumerate(pinned):
        assert b["audio"].untyped_storage().data_ptr() != b["frames"].untyped_storage().data_ptr()
        assert torch.equal(b["audio"], ref[i]["audio"]) and torch.equal(b["states"], ref[i]["states"])


def test_a_ring_slot_too_small_for_a_steps_arrays_is_grown_for_the_next_steps():
    """The room a slot keeps after a step's frames grows when a step's other arrays need more (a
    larger feature model): that step sends them by value, the slot made next holds them."""
    from curation.data import buffers
    flags = torch.zeros(2, dtype=torch.int8)
    ring = buffers.SharedRing(flags, range(2))
    shape = (2, 10, 8, 8, 3)
    frames = ring.take(shape, np.uint8)
    assert ring.tail(frames, 2 * 10 * buffers.TAIL_PER_FRAME) is not None
    big = 2 * 10 * 3 * buffers.TAIL_PER_FRAME
    assert ring.tail(frames, big) is None and ring.tail_per_frame > 3 * buffers.TAIL_PER_FRAME
    ring.free(frames)
    frames = ring.take(shape, np.uint8)
    region, offset = ring.tail(frames, big)
    assert len(region) == big and offset >= frames.nbytes and offset % buffers.ALIGN == 0
    region[:] = 7                                   # the frames are not overwritten
    assert not frames.any()
    assert ring.tail(torch.zeros(3), 8) is None     # a tensor of no slot


def test_the_loader_warns_when_shared_memory_cannot_hold_its_workers_rings(synth, monkeypatch, caplog):
    """Workers whose ring slots would not fit in /dev/shm (a container's default is 64 MB) are
    warned about before they start, with the sizes and what to change (a worker that runs out later
    dies of a bus error); the sizes are the stream's largest step."""
    import collections
    import logging

    from curation.data import buffers
    from curation.data.loader import make_loader
    uri, _ = synth
    stream = ClipStream(uri, window_s=1.0, seed=0, epochs=1, divisible_by=2, batch_windows=2)
    step = stream.largest_step_bytes()
    w = max((stream.windows[i] for b in stream.plan(0).batches for i in b), key=lambda w: w.frames)
    assert step >= 2 * w.frames * w.height * w.width * 3          # two windows' frames and their arrays
    assert buffers.check_shared_memory(2, 5, 1 << 20) is None     # 10 MiB: this machine has room
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(buffers.shutil, "disk_usage", lambda path: usage(64 << 20, 60 << 20, 4 << 20))
    with caplog.at_level(logging.WARNING, logger="curation.data.buffers"):
        batch = next(iter(make_loader(stream, num_workers=1)))
    assert batch["frames"].shape[0] == 2
    msg = [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()]
    assert len(msg) == 1 and "1 worker(s)" in msg[0] and "5 ring slots" in msg[0] and "--shm-size" in msg[0]


def digest(batch) -> str:
    h = hashlib.sha256()
    for s in batch:
        h.update(s["clip_id"].encode() + np.float64(s["start_s"]).tobytes())
        h.update(s["frames"].tobytes() + s["audio"].tobytes() + s["states"].tobytes())
    return h.hexdigest()


def test_resume_after_a_kill_on_another_world_size_gives_the_same_later_batches(synth, profile):
    """Killed after a random step (and at an epoch boundary), with online rejections replaced on the
    way, resumed on 3 ranks from the state of rank 0 of 2."""
    uri, _ = synth
    kw = dict(window_s=1.0, seed=3, epochs=2, profile=profile, verdicts=False)
    steps = list(ClipStream(uri, **kw).iter_steps())
    full = [digest(b) for b in steps]
    n = ClipStream(uri, **kw).steps_per_epoch()
    assert sum(len(x["replaced"]) for b in steps[n:] for x in b) >= 3   # rejections after the stops
    rng = random.Random(0)
    for stop in sorted({rng.randrange(n + 1, len(full)), n}):      # at an epoch boundary, and later
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


def test_a_window_whose_video_is_gone_is_replaced_with_a_one_line_reason(tmp_path):
    uri, _ = syn.build_store(tmp_path, [("a", "ok", 50), ("b", "ok", 50)])
    (tmp_path / "media" / "b.mkv").unlink()
    got = [x for x in ClipStream(uri, window_s=1.0, seed=0, epochs=1, divisible_by=2, batch_windows=2)]
    assert len(got) == 4 and {x["clip_id"] for x in got} == {"v000_a:0:0"}
    assert sorted(x["start_s"] for x in got if not x["pad"]) == [0.0, 1.0]  # a's windows once each
    tried = [r for x in got for r in x["replaced"]]       # both b windows, maybe one twice
    assert {r["clip_id"] for r in tried} == {"v001_b:0:0"} and len(tried) >= 2
    assert all(x["pad"] == bool(x["replaced"]) for x in got)   # the replacements are padding
    assert all(r["reason"].startswith("error: ") and "b.mkv" in r["reason"] and "\n" not in r["reason"]
               for r in tried)


def test_references_come_from_the_references_table(tmp_path):
    """The clip's reference JPEGs (a blob column) come back as RGB images, global ones first."""
    import cv2

    from curation.store import Store
    uri, _ = syn.build_store(tmp_path, [("a", "ok", 25)])
    rows = []
    for k, (kind, bgr) in enumerate([("view_left", (0, 0, 255)), ("global", (255, 0, 0))]):
        img = np.zeros((32, 24, 3), np.uint8)
        img[:] = bgr
        rows.append({"ref_id": f"r{k}", "video_id": "v000_a", "clip_id": "v000_a:0:0", "kind": kind,
                     "score": 0.5, "image": cv2.imencode(".jpg", img)[1].tobytes()})
    Store(uri).upsert("references", rows)
    (x,) = list(ClipStream(uri, window_s=1.0, epochs=1, divisible_by=1, batch_windows=1))
    assert [r.shape for r in x["references"]] == [(32, 24, 3)] * 2
    assert x["references"][0][..., 2].mean() > 200 and x["references"][1][..., 0].mean() > 200  # blue, red


def test_a_step_decodes_into_its_batch_tensor(synth):
    """iter_steps decodes a step's frames into one (B, T, H, W, 3) tensor and collate hands that
    tensor over as the batch (no copy); the frames are the per-sample stream's."""
    from curation.data.loader import collate
    uri, _ = synth
    kw = dict(window_s=1.0, seed=5, epochs=1)
    flat = iter(ClipStream(uri, **kw))
    for step in itertools.islice(ClipStream(uri, **kw).iter_steps(), 2):
        b = collate(step)
        assert b["frames"] is step[0]["frames_buffer"][0] and b["frames"].shape[0] == len(step)
        for i, s in enumerate(step):
            x = next(flat)
            assert (x["clip_id"], x["start_s"]) == (s["clip_id"], s["start_s"])
            assert np.array_equal(b["frames"][i, :len(x["frames"])].numpy(), x["frames"])
            assert not b["frames"][i, len(x["frames"]):].numpy().any()
