"""Person boxes in frames, behind one interface with two real backends.

``load_person_detector(model_dir, backend, ...)`` returns an object with ``backend`` (a string naming
the model file and the runtime, stored on every row it produced) and
``detect(images, rgb=True) -> list[(K, 5) float32]``: per image, rows ``x1, y1, x2, y2, score`` in
that image's pixels, person class only, highest score first.

Backends:

- ``yolox``: YOLOX-nano trained on COCO (``detector/yolox_nano_coco.onnx``, Apache-2.0; facts from
  shared/models/README.md) through onnxruntime. Trained at 1x3x416x416, BGR, raw 0-255 values (no
  mean/std), letterboxed YOLOX-style: resized by r = min(416/h, 416/w) (bilinear) into the top-left
  corner of a canvas filled with 114. Output 1x3549x85: per anchor point of the stride-8/16/32 grids
  (52x52 + 26x26 + 13x13 = 3549) the raw box (dx, dy, log w, log h) and sigmoid objectness and 80
  class scores. Decoding as in YOLOX's ``demo_postprocess``: cx = (dx + gx) * stride,
  cy = (dy + gy) * stride, w = exp(log w) * stride, h = exp(log h) * stride. Score = objectness x
  person score (class 0); greedy NMS at IoU ``iou``. The file's batch size is fixed at 1 by three
  Reshape nodes ([1, 85, -1]); they are rewritten in memory to [0, 85, -1] (0 = copy the input's
  batch) so several frames run in one call (outputs are identical to one frame at a time).
  Rectangular inference (the default, as YOLOX's and ultralytics' own): the network is fully
  convolutional (its Slice, Resize-by-scale and Reshape nodes take any size), so the input's height
  and width are made free too and a frame runs at the smallest canvas holding its letterbox with
  sides multiples of 32 (a 16:9 frame: 256 x 416, 61 % of the square; 4:3: 320 x 416); the decode
  grid is built per input shape. The boxes are those of the square canvas to a few pixels (the
  network sees less grey below or right of the picture; measured in docs/faces.md, "YOLOX-nano on
  rectangular inputs", and bench/yolox_rect.py).
- ``ultralytics``: any detection weights ultralytics loads (``yolo/yolov8n.pt``, ``.onnx``,
  ``.engine`` ...; COCO-trained, so person = the class named "person", else class 0), on a chosen
  device (``auto`` = first CUDA GPU when torch sees one, else CPU), batched ``predict``. The
  production path on GPU clusters. YOLO_AUTOINSTALL is switched off: nothing is downloaded or
  pip-installed at run time.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from operators.nets import weight_path

YOLOX_FILE = "detector/yolox_nano_coco.onnx"
YOLOX_SIZE = 416                  # network input side (shared/models/README.md)
YOLOX_STRIDES = (8, 16, 32)       # YOLOX-nano's three output levels
YOLOX_PAD = 114                   # YOLOX's letterbox fill value
COCO_PERSON = 0


class PersonDetector(Protocol):
    backend: str

    def detect(self, images: Sequence[np.ndarray], rgb: bool = True) -> list[np.ndarray]: ...


def detector_weights(backend: str, weights: str | None = None) -> str:
    """The weight file (relative to the model directory) a backend loads."""
    if backend == "yolox":
        return weights or YOLOX_FILE
    if backend == "ultralytics":
        return weights or "yolo/yolov8n.pt"
    raise ValueError(f"unknown person detector backend {backend!r} (yolox or ultralytics)")


def load_person_detector(model_dir: str | Path | None, backend: str = "yolox", weights: str | None = None,
                         device: str = "auto", conf: float = 0.1, iou: float = 0.45,
                         batch_size: int = 8, threads: int | None = None,
                         imgsz: int = 640, rect: bool = True) -> PersonDetector:
    """A detector for ``backend`` with its weights from ``model_dir`` (MissingWeights when absent).

    ``conf`` is the lowest score returned (ByteTrack's second association uses boxes down to its
    low threshold, 0.1), ``iou`` the NMS overlap, ``batch_size`` the frames per network call,
    ``threads`` onnxruntime's intra-op threads (None = its default), ``imgsz`` ultralytics' input,
    ``rect`` YOLOX's rectangular input (False: every frame in a 416 x 416 square)."""
    path = weight_path(model_dir, detector_weights(backend, weights))
    if backend == "yolox":
        return YoloxDetector(path, conf=conf, iou=iou, batch_size=batch_size, threads=threads, rect=rect)
    return UltralyticsDetector(path, device=device, conf=conf, iou=iou, batch_size=batch_size, imgsz=imgsz)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of kept boxes (x1, y1, x2, y2), best first."""
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _yolox_grid(height: int = YOLOX_SIZE, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell offsets (A, 2) and strides (A, 1) in the order of YOLOX's output rows for an input
    of ``height`` x ``width`` (both multiples of 32; square when ``width`` is None): per stride, the
    cells row by row (3549 rows at 416 x 416, 2184 at 256 x 416). Cached per shape; read-only."""
    width = height if width is None else width
    grids, strides = [], []
    for s in YOLOX_STRIDES:
        ys, xs = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full((xs.size, 1), s))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)
    grid.flags.writeable = stride.flags.writeable = False
    return grid, stride


def yolox_input_shape(h: int, w: int, square: bool = False) -> tuple[int, int]:
    """The network input (height, width) for an h x w image: the long side 416, the short side the
    resized image's rounded up to a multiple of the largest stride (32), as YOLOX's and
    ultralytics' rectangular inference do; 416 x 416 with ``square``."""
    if square:
        return YOLOX_SIZE, YOLOX_SIZE
    r = min(YOLOX_SIZE / h, YOLOX_SIZE / w)
    top = YOLOX_STRIDES[-1]
    up = lambda n: min(YOLOX_SIZE, -(-max(1, int(n * r)) // top) * top)  # noqa: E731
    return up(h), up(w)


def _batchable_yolox(path: Path) -> bytes:
    """The model with its batch, height and width dimensions free (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        tensor = consts[node.input[1]] if node.input[1] in consts else inits[node.input[1]]
        shape = numpy_helper.to_array(tensor).copy()
        if shape[0] != 1:
            raise ValueError(f"{path}: unexpected Reshape target {shape.tolist()}")
        shape[0] = 0
        tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    (images,), (output,) = model.graph.input, model.graph.output
    for dim, name in zip(images.type.tensor_type.shape.dim, ("N", None, "H", "W")):
        if name:
            dim.dim_param = name
    for dim, name in zip(output.type.tensor_type.shape.dim, ("N", "A")):
        dim.dim_param = name
    del model.graph.value_info[:]
    return model.SerializeToString()


class YoloxDetector:
    def __init__(self, path: Path, conf: float = 0.1, iou: float = 0.45, batch_size: int = 8,
                 threads: int | None = None, rect: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(_batchable_yolox(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.conf, self.iou, self.batch_size = float(conf), float(iou), max(1, int(batch_size))
        self.rect = bool(rect)
        self.backend = f"{Path(path).name}/onnxruntime"

    @staticmethod
    def letterbox(image_bgr: np.ndarray, shape: tuple[int, int] = (YOLOX_SIZE, YOLOX_SIZE)
                  ) -> tuple[np.ndarray, float]:
        """(3, H, W) float32 network input of ``shape`` (at least the resized image's) and the
        resize ratio r = min(416 / h, 416 / w)."""
        import cv2
        h, w = image_bgr.shape[:2]
        r = min(YOLOX_SIZE / h, YOLOX_SIZE / w)
        nw, nh = max(1, int(w * r)), max(1, int(h * r))
        canvas = np.full((*shape, 3), YOLOX_PAD, np.uint8)
        canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return canvas.transpose(2, 0, 1).astype(np.float32), r

    def decode(self, out: np.ndarray, r: float, shape: tuple[int, int] = (YOLOX_SIZE, YOLOX_SIZE)
               ) -> np.ndarray:
        """One image's (A, 85) output for an input of ``shape`` -> (K, 5) person boxes in the
        original image's pixels."""
        grid, strides = _yolox_grid(*shape)
        scores = out[:, 4] * out[:, 5 + COCO_PERSON]
        keep = scores >= self.conf
        if not keep.any():
            return np.zeros((0, 5), np.float32)
        o, s = out[keep], scores[keep]
        xy = (o[:, :2] + grid[keep]) * strides[keep]
        wh = np.exp(o[:, 2:4]) * strides[keep]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / r
        k = nms(boxes, s, self.iou)
        return np.concatenate([boxes[k], s[k, None]], 1).astype(np.float32)

    def detect(self, images: Sequence[np.ndarray], rgb: bool = True) -> list[np.ndarray]:
        """Per image its person boxes. Each image runs at its own input shape
        (:func:`yolox_input_shape`); a network call takes up to ``batch_size`` consecutive images of
        one shape (one video's frames), so the boxes are those of one image at a time."""
        shapes = [yolox_input_shape(*im.shape[:2], square=not self.rect) for im in images]
        results, i = [], 0
        while i < len(images):
            j = i + 1
            while j < min(len(images), i + self.batch_size) and shapes[j] == shapes[i]:
                j += 1
            inputs, ratios = zip(*(self.letterbox(im[..., ::-1] if rgb else im, shapes[i])
                                   for im in images[i:j]))
            out = self.session.run(None, {self.input: np.stack(inputs)})[0]
            results += [self.decode(o, r, shapes[i]) for o, r in zip(out, ratios)]
            i = j
        return results


def pick_device(device: str = "auto") -> str:
    """``auto`` -> "cuda:0" when torch sees a GPU, else "cpu"; anything else is passed through."""
    if device != "auto":
        return device
    import torch
    return "cuda:0" if torch.cuda.is_available() else "cpu"


class UltralyticsDetector:
    def __init__(self, path: Path, device: str = "auto", conf: float = 0.1, iou: float = 0.45,
                 batch_size: int = 8, imgsz: int = 640):
        os.environ["YOLO_AUTOINSTALL"] = "False"  # never pip-install at run time (STACK.md)
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        self.model = YOLO(str(path), task="detect")
        names = self.model.names or {}
        self.person = next((k for k, v in names.items() if v == "person"), COCO_PERSON)
        self.device = pick_device(device)
        self.conf, self.iou, self.batch_size, self.imgsz = float(conf), float(iou), max(1, int(batch_size)), imgsz
        self.backend = f"{Path(path).name}/ultralytics"

    def detect(self, images: Sequence[np.ndarray], rgb: bool = True) -> list[np.ndarray]:
        results = []
        for i in range(0, len(images), self.batch_size):
            chunk = [np.ascontiguousarray(im[..., ::-1] if rgb else im) for im in images[i:i + self.batch_size]]
            for r in self.model.predict(chunk, classes=[self.person], conf=self.conf, iou=self.iou,
                                        imgsz=self.imgsz, device=self.device, verbose=False):
                b = r.boxes
                d = np.concatenate([b.xyxy.cpu().numpy(), b.conf.cpu().numpy()[:, None]], 1).astype(np.float32)
                results.append(d[np.argsort(-d[:, 4], kind="stable")])
        return results
