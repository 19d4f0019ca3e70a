"""LR-ASD through onnxruntime (operators/nets/asd_onnx.py): the same numbers as PyTorch on a real
clip, the export cached and checked, PyTorch when onnxruntime or the export is missing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.nets import asd_onnx
from operators.nets.asd import ActiveSpeakerNet, asd_crops, track_audio
from test_asd import audio16k, face_boxes, frames25   # tests/nets is on sys.path (rootdir-less import)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One export cache for the module (the first test to load the graphs exports them)."""
    d = tmp_path_factory.mktemp("asd_onnx") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CURATION_CACHE", str(d))
        yield d / "asd-onnx"


@pytest.mark.slow
def test_onnx_equals_torch_on_a_real_clip(cache, media, models):
    """vr_face1 (the man talking to the camera, 6 s): logits, probabilities, embeddings and sync gain
    through onnxruntime equal PyTorch's up to float rounding, and so do the speaking decisions."""
    torch.set_num_threads(1)
    path = media / "vr_face1.mp4"
    frames, audio = frames25(path), audio16k(path)
    crops = asd_crops(frames, face_boxes(frames, models))
    own = track_audio(audio, 0, len(crops))
    ort_net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    assert ort_net.runtime.startswith("onnxruntime") and ort_net.fallback is None
    assert ort_net.name.startswith("LR-ASD/LR-ASD_pretrain_AVA (onnxruntime ")
    assert not any(m.training for m in ort_net.net.modules())   # the export leaves the net in eval mode
    torch_net = ActiveSpeakerNet(models, "lr", "ava")
    assert torch_net.runtime == "torch" and torch_net.name == "LR-ASD/LR-ASD_pretrain_AVA"
    a, b = ort_net.score(crops, own), torch_net.score(crops, own)
    assert a.n_scored == b.n_scored == len(crops) - 1
    ok = np.isfinite(b.logits)
    assert np.isfinite(a.logits[ok]).all() and np.abs(a.logits[ok] - b.logits[ok]).max() < 1e-4
    assert np.abs(a.prob[ok] - b.prob[ok]).max() < 1e-5
    assert np.abs(a.visual_emb[ok] - b.visual_emb[ok]).max() < 1e-4
    assert np.abs(a.audio_emb[ok] - b.audio_emb[ok]).max() < 1e-4
    np.testing.assert_array_equal(a.speaking(), b.speaking())
    assert a.speaking().mean() > 0.5          # he talks most of the clip
    # the sync gain: the back end with the audio moved (audio padded by 14 frames each side)
    pcm = np.concatenate([np.zeros(14 * 640, np.int16), own, np.zeros(14 * 640, np.int16)])
    ga = ort_net.sync_gain(a.visual_emb[:a.n_scored], pcm, 14)
    gb = torch_net.sync_gain(b.visual_emb[:b.n_scored], pcm, 14)
    fin = np.isfinite(gb)
    assert fin.sum() > 100 and np.abs(ga[fin] - gb[fin]).max() < 1e-4


def test_onnx_edges_equal_chunked_passes(cache, models):
    """The edge graphs (only the frames that reach the kept half of a chunk-edge piece) and the
    whole-track graph give what the PyTorch path gives (which equals running every chunk through
    the whole network: tests/nets/test_asd.py): a 2.2 s track, durations 1 and 2 s sharing the
    edge at 50, short last chunks."""
    rng = np.random.default_rng(0)
    t = 55
    crops = rng.integers(0, 256, (t, 112, 112)).astype(np.uint8)
    feats = rng.normal(0, 20, (4 * t, 13))
    net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    assert net.runtime.startswith("onnxruntime")
    fast = net.score_aligned(crops, feats, (1, 2))
    slow = ActiveSpeakerNet(models, "lr", "ava").score_aligned(crops, feats, (1, 2))
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-4)
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-5)


def test_export_is_cached_and_checked(cache, models):
    """The graphs are written once per weight file (a second net loads them) and an export that
    does not reproduce the network is refused."""
    net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")   # exported here or before
    (d,) = list(cache.iterdir())
    assert d.name.startswith("LR-ASD_pretrain_AVA-") and sorted(p.name for p in d.iterdir()) == [
        "audio.onnx", "backend.onnx", "visual.onnx", "visual_end.onnx", "visual_start.onnx"]
    stamp = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    again = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    assert again.fallback is None and {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == stamp
    with torch.no_grad():     # a network that is not the exported one
        net.net.model.visualEncoder.block3.t_2.weight.mul_(0.5)
    with pytest.raises(RuntimeError, match="visual graph differs from PyTorch"):
        asd_onnx.check(net.net, asd_onnx.OnnxParts(d))


def test_a_damaged_cached_graph_is_exported_again(cache, models):
    """A cached graph onnxruntime cannot read is exported again: onnxruntime still runs (no
    PyTorch fallback on every later run)."""
    ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    (d,) = list(cache.iterdir())
    (d / "visual.onnx").write_bytes(b"not an onnx graph")
    net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    assert net.fallback is None and net.runtime.startswith("onnxruntime")
    assert (d / "visual.onnx").stat().st_size > 100_000


def test_falls_back_to_torch_without_onnxruntime(cache, models, monkeypatch):
    """No onnxruntime (or a failed export): the PyTorch modules, the reason kept, the backend name
    without a runtime (the rows say which produced the values)."""
    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'onnxruntime'")
    monkeypatch.setattr(asd_onnx, "load", missing)
    net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    assert net.runtime == "torch" and net.name == "LR-ASD/LR-ASD_pretrain_AVA"
    assert net.fallback == "ModuleNotFoundError: No module named 'onnxruntime'"
    assert net._visual is net.net.model.visualEncoder
    rng = np.random.default_rng(0)
    res = net.score(rng.integers(0, 256, (30, 112, 112)).astype(np.uint8),
                    (rng.normal(0, 3000, 30 * 640)).astype(np.int16))
    assert res.n_scored == 29 and np.isfinite(res.logits[:29]).all()
    with pytest.raises(ValueError, match="unknown ASD runtime"):
        ActiveSpeakerNet(models, "lr", "ava", runtime="tensorrt")
