"""operators/emotion.py on real faces, called directly with a ``video`` dict whose ``tables.tracks`` is
filled by MediaPipe's BlazeFace (short range) at the operator's frame rate, as people.py would.

What is on screen: pf_single_face (a man looks neutral for the first ~0.6 s, then smiles broadly to
the end), lp_d3 (a woman grimacing: pout with lowered brows, mouth wide open with raised brows),
vr_face1 (a man talking calmly to the camera).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import frames_of, largest_faces
from curation.tracks import face_boxes_at
from operators.emotion import CLASSES, FPS, MATCH_S, Emotion
from operators.nets import MissingWeights


def clip_input(media, models, name: str, start_s: float = 0.0, end_s: float = 1e9):
    """(video, row, frames) of a person clip over [start_s, end_s) of ``name``, track from BlazeFace."""
    frames = frames_of(media / name, start_s, end_s, fps=FPS, max_side=None)
    boxes = largest_faces(frames.images, models, frames.scale)
    track = {"track_id": f"{name}:0:0", "frame_times_s": [float(t) for t in frames.times],
             "face_boxes": [None if not np.isfinite(b).all() else [float(v) for v in b] for b in boxes]}
    video = {"video_id": name, "tables": {"tracks": [track]}}
    row = {"clip_id": f"{name}:0:0:p0", "clip_kind": "person", "track_id": track["track_id"],
           "start_s": start_s, "end_s": float(frames.times[-1]) + 0.2}
    return video, row, frames


@pytest.fixture(scope="module")
def op(models):
    o = Emotion(str(models))
    o.setup()
    return o


@pytest.fixture(scope="module")
def results(op, media, models):
    """The three clips through one process_rows call (one batched network pass)."""
    items = [clip_input(media, models, n) for n in ("pf_single_face.mp4", "lp_d3.mp4", "vr_face1.mp4")]
    out = op.process_rows(items)
    return {it[0]["video_id"]: (it, o) for it, o in zip(items, out)}


def test_smiling_man_is_happy(results):
    (video, row, frames), out = results["pf_single_face.mp4"]
    # 12 frames at 5 fps: the top-10 mean of "happy" takes in one or two neutral frames of the start
    assert out["emotion_label"] == "happy" and out["emotional"] and out["emotion_score"] > 0.75
    assert out["emotion_top1"] == "happy" and not out["emotion_neutral_corrected"]
    assert out["emotion_backend"] == "emotion_model.hdf5/onnxruntime"
    # frame-aligned: one entry per decoded frame (5 per second of the 2.4 s clip)
    times, probs = out["emotion_frame_times"], out["emotion_frame_probs"]
    assert len(times) == len(probs) == len(frames) and 11 <= len(times) <= 13
    assert np.allclose(np.diff(times), 1 / FPS, atol=0.02)
    assert out["emotion_face_frames"] == sum(p is not None for p in probs) >= len(times) - 1
    top = [max(p, key=p.get) if p else None for p in probs]
    assert top[0] == "neutral"                                            # still face at 0 s
    assert all(t == "happy" for t, s in zip(top, times) if 0.8 < s < 2.2)  # broad smile
    assert sum(probs[-1].values()) == pytest.approx(1.0, abs=1e-4) and set(probs[-1]) == set(CLASSES)


def test_grimaces_are_not_neutral(results):
    _, out = results["lp_d3.mp4"]
    assert out["emotion_top1"] != "neutral" and not out["emotion_neutral_corrected"]
    assert out["emotional"] and out["emotion_label"] not in ("neutral", "happy")
    top = [max(p, key=p.get) for p in out["emotion_frame_probs"] if p]
    assert np.mean([t != "neutral" for t in top]) > 0.7
    at_10s = [p["surprise"] for p, t in zip(out["emotion_frame_probs"], out["emotion_frame_times"])
              if p and 9.9 <= t <= 10.4]
    print("lp_d3", out["emotion_label"], out["emotion_score"], "surprise at ~10 s", at_10s)
    assert max(at_10s) > 0.8                         # mouth wide open, raised brows at ~10 s


def test_calm_speaker_neutral_corrected(results):
    _, out = results["vr_face1.mp4"]
    assert out["emotion_top1"] == "neutral" and out["emotion_neutral_corrected"]
    assert out["emotion_label"] != "neutral" and not out["emotional"]
    scores = out["emotion_scores"]
    assert out["emotion_score"] == pytest.approx(max(v for k, v in scores.items() if k != "neutral"), abs=1e-6)


def test_top_n_param_changes_the_score(op, results, models):
    """Top-20 averages more frames than top-10, so the clip score cannot rise."""
    (video, row, frames), out10 = results["lp_d3.mp4"]
    op20 = Emotion(str(models), top_n=20)
    op20.net, op20.crop, op20.backend = op.net, op.crop, op.backend
    out20 = op20.process_row(video, row, frames)
    assert out20["emotion_label"] == out10["emotion_label"]
    assert out20["emotion_score"] < out10["emotion_score"]
    with pytest.raises(Exception, match="top_n"):
        Emotion(str(models), top_n=15)


def test_no_face_and_missing_track(op, media, models):
    video, row, frames = clip_input(media, models, "pf_single_face.mp4", 0.0, 1.0)
    video["tables"]["tracks"][0]["face_boxes"] = [None] * len(frames)
    out = op.process_row(video, row, frames)
    assert out["emotion_label"] is None and out["emotional"] is False and out["emotion_face_frames"] == 0
    assert out["emotion_frame_probs"] == [None] * len(frames)
    bad = op.process_rows([(video, {**row, "track_id": "nope"}, frames), (video, row, frames)])
    assert isinstance(bad[0], ValueError) and isinstance(bad[1], dict)   # per-row error


def test_face_boxes_at_nearest_frame():
    """The face at a frame's time (curation.tracks): the nearest track frame with a face."""
    track = {"frame_times_s": [0.0, 0.04, 0.08, 1.0], "face_boxes": [[0, 0, 1, 1], None, [2, 2, 3, 3], [4, 4, 5, 5]]}
    b = face_boxes_at(track, np.array([0.01, 0.03, 0.07, 0.5, 0.95]), MATCH_S)
    assert b[0].tolist() == [0, 0, 1, 1]
    assert b[1].tolist() == [0, 0, 1, 1]   # 0.04 has no face: the nearest frame with one (0.0)
    assert b[2].tolist() == [2, 2, 3, 3]
    assert np.isnan(b[3]).all()                       # no track frame within 0.1 s
    assert b[4].tolist() == [4, 4, 5, 5]


def test_emotiefflib_backend_needs_its_weights(tmp_path, models):
    op = Emotion(str(models), backend="emotiefflib")
    assert op.weight_files() == ["emotiefflib/enet_b0_8_best_vgaf.onnx"]
    assert Emotion(str(models)).weight_files() == ["emotion/emotion_model.hdf5"]
    with pytest.raises(MissingWeights, match="emotiefflib/enet_b0_8_best_vgaf.onnx"):
        op.setup()
    with pytest.raises(MissingWeights, match="emotion/emotion_model.hdf5"):
        Emotion(str(tmp_path)).setup()


def tiny_emotiefflib_model(path, n_classes: int = 8) -> None:
    """A random network with EmotiEffLib's I/O (input "input" (N, 3, 224, 224), a final Gemm giving
    the class logits, the node the library splits off), to run the backend's code path offline."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "conv.w"),
            numpy_helper.from_array(rng.normal(0, 1.0, (n_classes, 16)).astype(np.float32), "fc.w"),
            numpy_helper.from_array(rng.normal(0, 0.1, (n_classes,)).astype(np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["input", "conv.w"], ["c"], strides=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["features"]),
             helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_emotiefflib_backend_code_path(results, tmp_path, monkeypatch):
    """The emotiefflib backend with a tiny random model in a model directory: its crops and its
    7 FER-order probabilities land in the same columns, frame-aligned; nothing is downloaded."""
    from operators.nets.emotieff import EmotiEff, face_crops
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tiny_emotiefflib_model(tmp_path / "models/emotiefflib/enet_b0_8_best_vgaf.onnx")
    op = Emotion(str(tmp_path / "models"), backend="emotiefflib")
    (video, row, frames), _ = results["pf_single_face.mp4"]
    out = op.process_row(video, row, frames)
    assert out["emotion_backend"] == "emotiefflib/enet_b0_8_best_vgaf.onnx/onnxruntime"
    boxes = face_boxes_at(video["tables"]["tracks"][0], frames.times, MATCH_S)
    have = np.isfinite(boxes).all(axis=1)
    want = EmotiEff(tmp_path / "models").predict(face_crops(frames.images[have], boxes[have], frames.scale))
    got = np.array([[p[c] for c in CLASSES] for p in out["emotion_frame_probs"] if p])
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
    assert not (tmp_path / "home/.emotiefflib").exists()
