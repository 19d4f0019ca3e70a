"""Light-ASD / LR-ASD on real clips, their MFCC, crop geometry and weight loading (operators/nets/asd.py)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from operators.nets import MissingWeights
from operators.nets.asd import WEIGHTS, ActiveSpeakerNet, asd_crops, face_crops_224, track_audio
from operators.nets.mfcc import mfcc


# ---- helpers shared with test_sync.py --------------------------------------------------------
def frames25(path) -> np.ndarray:
    """RGB frames at 25 fps (ffmpeg fps filter, as the original's -r 25 re-encode)."""
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                      "stream=width,height", "-of", "json", str(path)],
                                     capture_output=True, check=True).stdout)["streams"][0]
    w, h = info["width"], info["height"]
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", "fps=25",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def audio16k(path) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1",
                          "-ar", "16000", "-f", "s16le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16)


def face_boxes(frames: np.ndarray, models) -> np.ndarray:
    """Largest MediaPipe (BlazeFace short range) face per frame, x1 y1 x2 y2; gaps interpolated."""
    import mediapipe as mp
    from mediapipe.tasks import python as mpt
    from mediapipe.tasks.python import vision
    opts = vision.FaceDetectorOptions(
        base_options=mpt.BaseOptions(model_asset_path=str(models / "mediapipe/face_detection_short_range.tflite")),
        running_mode=vision.RunningMode.IMAGE, min_detection_confidence=0.5)
    boxes = np.full((len(frames), 4), np.nan)
    with vision.FaceDetector.create_from_options(opts) as det:
        for i, f in enumerate(frames):
            found = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))).detections
            if found:
                b = max(found, key=lambda d: d.bounding_box.width * d.bounding_box.height).bounding_box
                boxes[i] = [b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height]
    ok = ~np.isnan(boxes[:, 0])
    assert ok.mean() > 0.9, "the face should be found in nearly every frame"
    for j in range(4):
        boxes[:, j] = np.interp(np.arange(len(boxes)), np.nonzero(ok)[0], boxes[ok, j])
    return boxes


def speech_frames(audio: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool: silero-vad speech at each 25-fps frame."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad
    segs = get_speech_timestamps(torch.from_numpy(audio.astype(np.float32) / 32768), load_silero_vad(),
                                 sampling_rate=16000)
    t = (np.arange(n) + 0.5) / 25
    return np.array([any(s["start"] / 16000 <= x < s["end"] / 16000 for s in segs) for x in t])


# ---- MFCC --------------------------------------------------------------------------------------
def _mfcc_reference(x: np.ndarray) -> np.ndarray:
    """Frame-by-frame from the definition (ASD.md §1.3), written independently of mfcc.py."""
    x = x.astype(np.float64)
    y = np.concatenate([[x[0]], x[1:] - 0.97 * x[:-1]])
    n = 1 if len(y) <= 400 else 1 + int(np.ceil((len(y) - 400) / 160))
    y = np.concatenate([y, np.zeros((n - 1) * 160 + 400 - len(y))])
    mel = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 28)
    b = np.floor(513 * (700 * (10 ** (mel / 2595) - 1)) / 16000).astype(int)
    out = []
    for f in range(n):
        spec = np.abs(np.fft.rfft(y[160 * f: 160 * f + 400], 512)) ** 2 / 512
        fe = []
        for j in range(26):
            w = [(i - b[j]) / (b[j + 1] - b[j]) if i < b[j + 1] else (b[j + 2] - i) / (b[j + 2] - b[j + 1])
                 for i in range(b[j], b[j + 2])]
            fe.append(max(float(np.dot(w, spec[b[j]: b[j + 2]])), np.finfo(float).eps))
        logs = np.log(fe)
        c = [np.sqrt((1 if k == 0 else 2) / 26) * sum(logs[m] * np.cos(np.pi * k * (2 * m + 1) / 52)
                                                       for m in range(26)) for k in range(13)]
        c = [ck * (1 + 11 * np.sin(np.pi * k / 22)) for k, ck in enumerate(c)]
        c[0] = np.log(max(spec.sum(), np.finfo(float).eps))
        out.append(c)
    return np.array(out)


def test_mfcc_matches_definition(media):
    audio = audio16k(media / "vr_face1.mp4")[16000:16000 + 4000]   # 0.25 s of speech
    for n in (300, 400, 401, 561, 4000):
        ours = mfcc(audio[:n])
        assert ours.shape == (1 if n <= 400 else 1 + -(-(n - 400) // 160), 13)
        np.testing.assert_allclose(ours, _mfcc_reference(audio[:n]), rtol=1e-9, atol=1e-9)
    assert len(mfcc(np.zeros(640 * 25, np.int16))) == 4 * 25 - 1    # 4 rows per 25-fps frame
    try:   # the library the networks were trained with, when installed (not a dependency)
        import python_speech_features as psf
    except ImportError:
        return
    np.testing.assert_array_equal(mfcc(audio), psf.mfcc(audio, 16000, numcep=13, winlen=0.025, winstep=0.010))


# ---- weights and network ---------------------------------------------------------------------
def test_all_four_weight_files_load_strict(models):
    counts = {"light": 1_021_120, "lr": 836_640}      # ASD.md §0, learnable parameters of `model.`
    for variant, checkpoint in WEIGHTS:
        net = ActiveSpeakerNet(models, variant, checkpoint)     # load_state_dict(strict=True) inside
        assert sum(p.numel() for p in net.net.model.parameters()) == counts[variant]
        assert net.path.name == WEIGHTS[(variant, checkpoint)].split("/")[1]


def test_missing_weights_names_the_file(tmp_path):
    with pytest.raises(MissingWeights, match="asd/LR-ASD_pretrain_AVA.model"):
        ActiveSpeakerNet(tmp_path, "lr", "ava")


def test_edge_recompute_equals_chunked_passes(models):
    """The visual encoder runs once; chunk edges are recomputed from edge pieces shared by the
    durations that have them. Must equal running every chunk through the whole network (the
    original's way): two durations sharing the edge at 50, short last chunks."""
    rng = np.random.default_rng(0)
    for variant, t, durations in (("light", 30, (1,)), ("lr", 55, (1, 2))):
        crops = rng.integers(0, 256, (t, 112, 112)).astype(np.uint8)
        feats = rng.normal(0, 20, (4 * t, 13))
        net = ActiveSpeakerNet(models, variant, "talkset")
        fast = net.score_aligned(crops, feats, durations)
        slow = net.score_aligned(crops, feats, durations, exact_chunks=True)
        np.testing.assert_allclose(fast[0], slow[0], atol=1e-4)
        np.testing.assert_allclose(fast[1], slow[1], atol=1e-5)


def test_temporal_conv_as_conv2d_equals_conv3d():
    """The visual blocks' (k, 1, 1) Conv3d run as a Conv2d over (T, H*W): the same numbers."""
    import torch

    from operators.nets.asd import _temporal
    torch.manual_seed(0)
    for k in (3, 5):
        conv = torch.nn.Conv3d(8, 16, (k, 1, 1), 1, (k // 2, 0, 0), bias=False)
        x = torch.randn(2, 8, 11, 7, 9)
        with torch.inference_mode():
            torch.testing.assert_close(_temporal(conv, x), conv(x), atol=1e-5, rtol=1e-5)


# ---- crop geometry ---------------------------------------------------------------------------
def test_crop_geometry_centre_and_padding():
    """Box of half size s centred at (cx, cy): the 112 crop is centred at (cx, cy + 0.4 s) with side
    1.4 s; outside the frame it is filled with 110."""
    h, w, s, cx, cy = 400, 500, 50.0, 250.0, 180.0
    frame = np.zeros((h, w, 3), np.uint8)
    frame[int(cy + 0.4 * s) - 3: int(cy + 0.4 * s) + 3, int(cx) - 3: int(cx) + 3] = 255   # marker
    frames = np.repeat(frame[None], 20, axis=0)
    boxes = np.tile([cx - s, cy - s, cx + s, cy + s], (20, 1))
    crops = asd_crops(frames, boxes)
    assert crops.shape == (20, 112, 112) and crops.dtype == np.uint8
    ys, xs = np.nonzero(crops[10] > 128)
    assert abs(ys.mean() - 55.5) < 2 and abs(xs.mean() - 55.5) < 2
    assert 8 < len(ys) < 20 * 20     # 6 px marker x (112 / 1.4 s) = 9.6 px wide
    big = face_crops_224(frames * 0 + 50, np.tile([0, 0, 100, 100], (20, 1)))[10]   # box at the corner
    assert (big[:, :30] == 110).all() and (big[:, 40:] == 50).all()   # columns -20..0 of the frame: pad


def _original_crops_224(frames_rgb, boxes, crop_scale=0.4):
    """The original's crop (§1.2): pad the whole frame by p pixels of 110, slice, resize."""
    import cv2

    from operators.nets.asd import _medfilt
    s = _medfilt(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2)
    cx, cy = _medfilt((boxes[:, 0] + boxes[:, 2]) / 2), _medfilt((boxes[:, 1] + boxes[:, 3]) / 2)
    out = []
    for i, frame in enumerate(frames_rgb):
        bs = s[i]
        p = int(bs * (1 + 2 * crop_scale))
        img = cv2.copyMakeBorder(np.ascontiguousarray(frame[:, :, ::-1]), p, p, p, p, cv2.BORDER_CONSTANT,
                                 value=(110, 110, 110))
        my, mx = cy[i] + p, cx[i] + p
        face = img[max(0, int(my - bs)):max(0, int(my + bs * (1 + 2 * crop_scale))),
                   max(0, int(mx - bs * (1 + crop_scale))):max(0, int(mx + bs * (1 + crop_scale)))]
        out.append(cv2.resize(face, (224, 224)) if face.size else np.full((224, 224, 3), 110, np.uint8))
    return np.stack(out)


def test_medfilt_is_scipys():
    """The crop's median filter (kernel 13, zero-padded ends) equals scipy.signal.medfilt, for
    tracks shorter and longer than the kernel."""
    from scipy.signal import medfilt

    from operators.nets.asd import _medfilt
    rng = np.random.default_rng(2)
    for n in (1, 5, 12, 13, 14, 200):
        x = rng.normal(100, 30, n)
        np.testing.assert_array_equal(_medfilt(x), medfilt(x, 13))
    assert len(_medfilt(np.zeros(0))) == 0


def test_crops_equal_the_originals_padded_frame():
    """face_crops_224 fills only the crop's window instead of padding the whole frame: the same
    pixels, for boxes inside, across and outside the frame edges, small and large."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (16, 90, 120, 3)).astype(np.uint8)
    for _ in range(8):
        c = rng.uniform(-40, [160, 130], (1, 2)) + np.cumsum(rng.normal(0, 3, (16, 2)), 0)
        s = rng.uniform(3, 80) + rng.normal(0, 1, 16)
        boxes = np.c_[c - s[:, None], c + s[:, None]]
        np.testing.assert_array_equal(face_crops_224(frames, boxes), _original_crops_224(frames, boxes))


# ---- real clips --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def talkset_nets(models):
    return {v: ActiveSpeakerNet(models, v, "talkset") for v in ("light", "lr")}


def _score(net, media, models, name):
    path = media / name
    frames = frames25(path)
    audio = audio16k(path)
    crops = asd_crops(frames, face_boxes(frames, models))
    res = net.score(crops, track_audio(audio, 0, len(crops)))
    return res, speech_frames(audio, len(crops))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vr_face1.mp4", "vr_face2.mp4", "st_WDA_KatieHill_000.mp4"])
def test_person_talking_to_camera_is_speaking(talkset_nets, media, models, name):
    res, speech = _score(talkset_nets["light"], media, models, name)
    assert res.n_scored == len(res.logits) - 1           # a track's own audio: last frame unscored
    assert np.isnan(res.logits[-1]) and np.isfinite(res.logits[:-1]).all()
    assert res.audio_emb.shape == res.visual_emb.shape == (len(res.logits), 128)
    speaking = res.speaking()
    assert speech.mean() > 0.5
    assert speaking[speech].mean() > 0.8, f"{name}: {speaking[speech].mean():.2f} of speech frames"
    scored = np.isfinite(res.logits)
    # the probability (softmax of the two logits) and the demo's logit-1 >= 0 agree almost everywhere
    assert ((res.prob[scored] > 0.5) == (res.logits[scored] >= 0)).mean() > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lp_d3.mp4", "pf_single_face.mp4"])
def test_no_speech_is_not_speaking(talkset_nets, media, models, name):
    for variant, net in talkset_nets.items():
        res, _ = _score(net, media, models, name)
        assert res.speaking().mean() < 0.1, f"{name} {variant}: {res.speaking().mean():.2f}"
        scored = np.isfinite(res.prob)
        assert (res.prob[scored] > 0.5).mean() < 0.15, f"{name} {variant}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vr_face1.mp4", "lp_d3.mp4"])
def test_context_chunk_edges_keep_the_scores(media, models, name):
    """chunk_edges="context" (the whole track's visual embedding in every chunk: no edge passes, the
    workflows' setting) against the original's zero-padded chunk edges, LR-ASD AVA: the per-frame
    probabilities move little and the speaking decisions stay (talking clip and silent one)."""
    net = ActiveSpeakerNet(models, "lr", "ava", runtime="onnxruntime")
    path = media / name
    frames = frames25(path)
    audio = audio16k(path)
    crops = asd_crops(frames, face_boxes(frames, models))
    own = track_audio(audio, 0, len(crops))
    padded, context = net.score(crops, own), net.score(crops, own, chunk_edges="context")
    ok = np.isfinite(padded.prob)
    diff = np.abs(padded.prob[ok] - context.prob[ok])
    assert diff.mean() < 0.03 and diff.max() < 0.35, (diff.mean(), diff.max())
    assert 0 < diff.max()                                          # not the same computation
    assert ((padded.prob[ok] > 0.5) == (context.prob[ok] > 0.5)).mean() > 0.97
    np.testing.assert_array_equal(padded.visual_emb, context.visual_emb)
