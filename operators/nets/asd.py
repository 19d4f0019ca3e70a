"""Active-speaker detection: Light-ASD (CVPR 2023) and LR-ASD (IJCV 2025), written from the fact sheet
shared/docs/ASD.md (no code of the original repositories; MIT weights in MODEL_DIR/asd/).

What a face track goes through (section numbers are ASD.md's):

- face crops (§1.2, :func:`face_crops_224`, :func:`asd_crops`): per-frame box -> half size
  s = max(w, h) / 2 and centre; s, cx, cy median-filtered along the track (scipy's medfilt, kernel 13,
  zero-padded ends, as the original); frame padded by int(s (1 + 2 * 0.40)) pixels of value 110; rows
  int(cy + p - s) .. int(cy + p + 1.8 s), columns int(cx + p - 1.4 s) .. int(cx + p + 1.4 s); resized to
  224 x 224 (BGR). The ASD nets see the grey (OpenCV BGR2GRAY) centre 112 x 112 (rows/cols 56:168): the
  lower half of the face. Frames must be 25 fps. The original writes the 224 crops through an XVID AVI
  and reads them back; ``roundtrip=True`` does that too (OpenCV VideoWriter), default off (see below).
- audio (§1.3-1.4): 16 kHz mono int16 samples of the track, first sample at the track's first frame
  (samples [640 first, 640 (last + 1)) of the video's audio); MFCC of operators/nets/mfcc.py, 100 rows/s,
  4 rows per video frame; T = min(floor(Na / 4), N) frames are scored (a track with exactly its own
  audio: Na = 4N - 1, so the last frame gets no score -> NaN here).
- multi-duration scoring (§1.5): for each d in {1, 2, 3, 4, 5, 6} s the T frames are cut into
  consecutive chunks of 25 d frames from frame 0 (remainder scored alone, never padded), each chunk a
  separate forward pass; per-frame score = mean of the six passes. The score is the raw class-1 logit of
  the ``lossAV.FC`` head (column 1; not a softmax, not a logit difference); the demo calls a frame
  speaking when its 5-frame mean (:func:`demo_smooth`) is >= 0.
- probability: ``prob`` = mean over the same six passes of softmax(lossAV.FC logits)[1], the posterior
  of the two-class cross-entropy the networks were trained with; it is what the original's AVA
  evaluation (train.py --evaluation) reports. Not re-fitted on our clips. Both heads keep
  logit0 ~ -logit1 (st_WDA_KatieHill_000: corr -0.995 / -0.991, logit0 + logit1 = 0.12 +- 0.12 Light
  TalkSet, -0.15 +- 0.16 LR TalkSet), so prob ~ sigmoid(2 logit1) and prob > 0.5 coincides with the
  demo's logit1 >= 0 on > 95 % of frames (asserted in tests/nets/test_asd.py).
- embeddings (§2): per-frame audio and visual encoder outputs (T, 128), from one pass over the whole
  track (encoders are convolutional; no chunking). Sync by comparing them across shifts was measured
  and rejected (operators/nets/avsync.py docstring).

Networks (§2-4): every conv bias-free, every BN eps 1e-3; visual input grey 0..255 normalised in the
model as (x / 255 - 0.4161) / 0.1688; audio (B, 4T, 13) as (B, 1, 13, 4T) (MFCC axis = height).
Root module children ``model``, ``lossAV.FC``, ``lossV.FC`` (training-only head) so that the released
state dicts load with strict=True.

The XVID round trip (``roundtrip=True``) moves scores by tenths of a logit and depends on the
OpenCV/FFmpeg build. Measured on vr_face1 (MediaPipe boxes), TalkSet weights: Light-ASD max |diff| 0.67
logit, 0 of 153 demo decisions flipped (speaking 1.00 both ways); LR-ASD max 0.85, 40 of 153 flipped
(speaking 0.77 without, 0.52 with). Default off: it is a lossy step of the demo pipeline whose output
depends on the codec build, and our face boxes (detector) already differ from the original's S3FD.

Speed (this 2-core CPU, torch 2 threads, other jobs running at load average ~3.5; st_WDA_KatieHill_000,
200 frames): 4.0 s (Light-ASD) / 3.4 s (LR-ASD) per second of 25-fps video per face track for the
six-duration score, crops and MFCC given (chunk-by-chunk as the original: 5.8 / 4.5 s). At load
average 15-30 the same took 20-32 s per second. The visual encoder is ~0.2 GMAC per frame; it runs
once over the track plus edge pieces per duration instead of six times.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from operators.nets import weight_path
from operators.nets.mfcc import mfcc

FPS = 25
SAMPLES_PER_FRAME = 640          # 16000 / 25
MFCC_PER_FRAME = 4               # 100 Hz MFCC / 25 fps
DURATIONS = (1, 2, 3, 4, 5, 6)   # seconds; the source's set literal {1,1,1,2,2,2,3,3,4,5,6} (§1.5)
SYNC_SHIFTS = (6, 10, 14)        # frames (both ways) the audio is moved by for :meth:`sync_gain`
CROP_SCALE = 0.40                # §1.2
PAD_VALUE = 110
MEDFILT = 13
BN_EPS = 1e-3
MEAN, STD = 0.4161, 0.1688       # §2 visual normalisation

WEIGHTS = {
    ("light", "talkset"): "asd/Light-ASD_finetuning_TalkSet.model",
    ("light", "ava"): "asd/Light-ASD_pretrain_AVA_CVPR.model",
    ("lr", "talkset"): "asd/LR-ASD_finetuning_TalkSet.model",
    ("lr", "ava"): "asd/LR-ASD_pretrain_AVA.model",
}


# ---- face crops --------------------------------------------------------------------------------
def _medfilt(x: np.ndarray, k: int = MEDFILT) -> np.ndarray:
    """scipy.signal.medfilt(x, k) (odd k, zero-padded ends, as the original), in numpy: the same
    numbers without importing scipy.signal (0.9-2.5 CPU-s, the only import of it in a
    conversation run)."""
    x = np.asarray(x, np.float64)
    if not len(x):
        return x
    return np.median(np.lib.stride_tricks.sliding_window_view(np.pad(x, k // 2), k), axis=1)


def face_crops_224(frames_rgb: np.ndarray, boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """(T, 224, 224, 3) BGR uint8 face-track crops (§1.2) from RGB frames (T, H, W, 3) and per-frame
    boxes (T, 4) x1, y1, x2, y2 in those frames' pixels. This is also SyncNet's input crop (§5.1)."""
    import cv2
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(frames_rgb):
        raise ValueError(f"{len(frames_rgb)} frames but {len(boxes)} boxes")
    if not len(boxes):
        return np.zeros((0, 224, 224, 3), np.uint8)
    s = _medfilt(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2)
    cx = _medfilt((boxes[:, 0] + boxes[:, 2]) / 2)
    cy = _medfilt((boxes[:, 1] + boxes[:, 3]) / 2)
    h, w = frames_rgb.shape[1:3]
    out = np.empty((len(boxes), 224, 224, 3), np.uint8)
    for i, frame in enumerate(frames_rgb):
        # the original pads the whole frame by p pixels of PAD_VALUE and slices the crop from it; the
        # same pixels come from filling only the crop's window (the frame's part of it copied in)
        bs = s[i]
        p = int(bs * (1 + 2 * crop_scale))
        my, mx = cy[i] + p, cx[i] + p
        y0, y1 = max(0, int(my - bs)), min(h + 2 * p, max(0, int(my + bs * (1 + 2 * crop_scale))))
        x0, x1 = max(0, int(mx - bs * (1 + crop_scale))), min(w + 2 * p, max(0, int(mx + bs * (1 + crop_scale))))
        if y1 <= y0 or x1 <= x0:
            out[i] = PAD_VALUE
            continue
        face = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, np.uint8)
        fy0, fy1, fx0, fx1 = max(y0, p), min(y1, p + h), max(x0, p), min(x1, p + w)
        if fy1 > fy0 and fx1 > fx0:
            face[fy0 - y0: fy1 - y0, fx0 - x0: fx1 - x0] = frame[fy0 - p: fy1 - p, fx0 - p: fx1 - p, ::-1]
        out[i] = cv2.resize(face, (224, 224))
    return out


def xvid_roundtrip(crops_bgr: np.ndarray) -> np.ndarray:
    """The original's lossy step (§1.2.6): write 224 x 224 BGR crops to an XVID AVI at 25 fps with
    OpenCV, read them back. Raises RuntimeError when this OpenCV build cannot write XVID."""
    import os
    import tempfile

    import cv2
    fd, path = tempfile.mkstemp(suffix=".avi")
    os.close(fd)
    try:
        w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"XVID"), FPS, (224, 224))
        if not w.isOpened():
            raise RuntimeError("OpenCV cannot write XVID here")
        for c in crops_bgr:
            w.write(np.ascontiguousarray(c))
        w.release()
        cap = cv2.VideoCapture(path)
        back = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            back.append(f)
        cap.release()
    finally:
        os.unlink(path)
    if len(back) != len(crops_bgr):
        raise RuntimeError(f"XVID round trip returned {len(back)} of {len(crops_bgr)} frames")
    return np.stack(back)


def asd_crops(frames_rgb: np.ndarray, boxes: np.ndarray, roundtrip: bool = False) -> np.ndarray:
    """(T, 112, 112) uint8 grey crops the ASD networks read (§1.2 step 7): grey of the 224 crop, centre
    rows/columns 56:168. ``roundtrip`` passes the 224 crops through XVID first, as the original."""
    import cv2
    crops = face_crops_224(frames_rgb, boxes)
    if roundtrip:
        crops = xvid_roundtrip(crops)
    if not len(crops):
        return np.zeros((0, 112, 112), np.uint8)
    return np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)[56:168, 56:168] for c in crops])


def track_audio(audio_int16: np.ndarray, first_frame: int, n_frames: int) -> np.ndarray:
    """Samples [640 first, 640 (first + n)) of a video's 16 kHz audio: the audio of a track (§1.3)."""
    return np.asarray(audio_int16)[SAMPLES_PER_FRAME * first_frame: SAMPLES_PER_FRAME * (first_frame + n_frames)]


def demo_smooth(score: np.ndarray, n_frames: int) -> np.ndarray:
    """The demo's 5-frame mean (§1.5), off-by-one included: frame f averages score[max(f-2,0) :
    min(f+3, T-1)] with T = len(score); NaN where that slice is empty (f >= T+1). Speaking iff >= 0."""
    t = len(score)
    out = np.full(n_frames, np.nan)
    for f in range(n_frames):
        seg = score[max(f - 2, 0): min(f + 3, t - 1)]
        if len(seg):
            out[f] = float(np.mean(seg))
    return out


# ---- network blocks ----------------------------------------------------------------------------
def _bn3(c):
    return nn.BatchNorm3d(c, eps=BN_EPS, momentum=0.01)


def _bn2(c):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


def _temporal(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (k, 1, 1) Conv3d (stride 1) as a Conv2d over (T, H*W): the same weights and sums (equal up
    to float summation order, ~2e-6 on the encoder's output), about twice as fast on CPU, where
    PyTorch's Conv3d is slow for kernels that do not span space."""
    b, c, t, h, w = x.shape
    y = F.conv2d(x.reshape(b, c, t, h * w), conv.weight[..., 0], None, 1, (conv.padding[0], 0))
    return y.reshape(b, y.shape[1], y.shape[2], h, w)


class LightVisualBlock(nn.Module):
    """§3.1: two (spatial -> temporal) branches, kernels 3 and 5, summed, then a 1x1x1 CBR."""

    def __init__(self, cin: int, c: int, first: bool):
        super().__init__()
        st = (1, 2, 2) if first else 1
        self.s_3, self.bn_s_3 = nn.Conv3d(cin, c, (1, 3, 3), st, (0, 1, 1), bias=False), _bn3(c)
        self.t_3, self.bn_t_3 = nn.Conv3d(c, c, (3, 1, 1), 1, (1, 0, 0), bias=False), _bn3(c)
        self.s_5, self.bn_s_5 = nn.Conv3d(cin, c, (1, 5, 5), st, (0, 2, 2), bias=False), _bn3(c)
        self.t_5, self.bn_t_5 = nn.Conv3d(c, c, (5, 1, 1), 1, (2, 0, 0), bias=False), _bn3(c)
        self.last, self.bn_last = nn.Conv3d(c, c, 1, bias=False), _bn3(c)

    def forward(self, x):
        a = F.relu(self.bn_t_3(_temporal(self.t_3, F.relu(self.bn_s_3(self.s_3(x))))))
        b = F.relu(self.bn_t_5(_temporal(self.t_5, F.relu(self.bn_s_5(self.s_5(x))))))
        return F.relu(self.bn_last(self.last(a + b)))


class LightAudioBlock(nn.Module):
    """§3.2: the audio analogue on (MFCC, time): branches (3,1)->(1,3) and (5,1)->(1,5), summed, 1x1 CBR."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.m_3, self.bn_m_3 = nn.Conv2d(cin, c, (3, 1), 1, (1, 0), bias=False), _bn2(c)
        self.t_3, self.bn_t_3 = nn.Conv2d(c, c, (1, 3), 1, (0, 1), bias=False), _bn2(c)
        self.m_5, self.bn_m_5 = nn.Conv2d(cin, c, (5, 1), 1, (2, 0), bias=False), _bn2(c)
        self.t_5, self.bn_t_5 = nn.Conv2d(c, c, (1, 5), 1, (0, 2), bias=False), _bn2(c)
        self.last, self.bn_last = nn.Conv2d(c, c, 1, bias=False), _bn2(c)

    def forward(self, x):
        a = F.relu(self.bn_t_3(self.t_3(F.relu(self.bn_m_3(self.m_3(x))))))
        b = F.relu(self.bn_t_5(self.t_5(F.relu(self.bn_m_5(self.m_5(x))))))
        return F.relu(self.bn_last(self.last(a + b)))


class LRVisualBlock(nn.Module):
    """§4.1: sequential CBRs (1,5,5) c_in->c/2, (1,3,3) c/2->c, (5,1,1), (3,1,1)."""

    def __init__(self, cin: int, c: int, first: bool):
        super().__init__()
        st = (1, 2, 2) if first else 1
        self.s_1, self.s_norm_1 = nn.Conv3d(cin, c // 2, (1, 5, 5), st, (0, 2, 2), bias=False), _bn3(c // 2)
        self.s_2, self.s_norm_2 = nn.Conv3d(c // 2, c, (1, 3, 3), 1, (0, 1, 1), bias=False), _bn3(c)
        self.t_1, self.t_norm_1 = nn.Conv3d(c, c, (5, 1, 1), 1, (2, 0, 0), bias=False), _bn3(c)
        self.t_2, self.t_norm_2 = nn.Conv3d(c, c, (3, 1, 1), 1, (1, 0, 0), bias=False), _bn3(c)

    def forward(self, x):
        x = F.relu(self.s_norm_1(self.s_1(x)))
        x = F.relu(self.s_norm_2(self.s_2(x)))
        x = F.relu(self.t_norm_1(_temporal(self.t_1, x)))
        return F.relu(self.t_norm_2(_temporal(self.t_2, x)))


class LRAudioBlock(nn.Module):
    """§4.2: sequential CBRs (5,1) c_in->c/2, (3,1) c/2->c, (1,5), (1,3)."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.m_1, self.m_norm_1 = nn.Conv2d(cin, c // 2, (5, 1), 1, (2, 0), bias=False), _bn2(c // 2)
        self.m_2, self.m_norm_2 = nn.Conv2d(c // 2, c, (3, 1), 1, (1, 0), bias=False), _bn2(c)
        self.t_1, self.t_norm_1 = nn.Conv2d(c, c, (1, 5), 1, (0, 2), bias=False), _bn2(c)
        self.t_2, self.t_norm_2 = nn.Conv2d(c, c, (1, 3), 1, (0, 1), bias=False), _bn2(c)

    def forward(self, x):
        x = F.relu(self.m_norm_1(self.m_1(x)))
        x = F.relu(self.m_norm_2(self.m_2(x)))
        x = F.relu(self.t_norm_1(self.t_1(x)))
        return F.relu(self.t_norm_2(self.t_2(x)))


class VisualEncoder(nn.Module):
    """§2: block1 (stride 2) -> max-pool (1,3,3)/(1,2,2) -> block2 -> pool -> block3 -> spatial max."""

    def __init__(self, block):
        super().__init__()
        self.block1, self.block2, self.block3 = block(1, 32, True), block(32, 64, False), block(64, 128, False)

    def forward(self, x):                       # (B, T, 112, 112) grey 0..255
        x = ((x / 255.0 - MEAN) / STD).unsqueeze(1)
        x = F.max_pool3d(self.block1(x), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        x = F.max_pool3d(self.block2(x), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        x = self.block3(x)                      # (B, 128, T, 14, 14)
        return x.amax(dim=(3, 4)).transpose(1, 2)   # (B, T, 128)


class AudioEncoder(nn.Module):
    """§2: block1 -> time max-pool (1,3)/(1,2) -> block2 -> pool -> block3 -> mean over MFCC axis."""

    def __init__(self, block):
        super().__init__()
        self.block1, self.block2, self.block3 = block(1, 32), block(32, 64), block(64, 128)

    def forward(self, x):                       # (B, 4T, 13) MFCC
        x = x.unsqueeze(1).transpose(2, 3)      # (B, 1, 13, 4T)
        x = F.max_pool2d(self.block1(x), (1, 3), (1, 2), (0, 1))
        x = F.max_pool2d(self.block2(x), (1, 3), (1, 2), (0, 1))
        x = self.block3(x)                      # (B, 128, 13, T)
        return x.mean(dim=2).transpose(1, 2)    # (B, T, 128)


class LightBackend(nn.Module):
    """§3.3: sum fusion, forward GRU -> GELU -> backward GRU over reversed time -> reverse -> GELU."""

    def __init__(self):
        super().__init__()
        self.gru_forward = nn.GRU(128, 128, 1, batch_first=True)
        self.gru_backward = nn.GRU(128, 128, 1, batch_first=True)

    def forward(self, a, v):
        f, _ = self.gru_forward(a + v)
        b, _ = self.gru_backward(torch.flip(F.gelu(f), [1]))
        return F.gelu(torch.flip(b, [1]))


class Gate(nn.Module):
    """§4.3: z = concat(P, Q); out = z * sigmoid(BN1d(Conv1d_k1(z)))."""

    def __init__(self, c: int):
        super().__init__()
        self.attention = nn.Conv1d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm1d(c, eps=BN_EPS, momentum=0.01)

    def forward(self, p, q):
        z = torch.cat([p, q], dim=2).transpose(1, 2)
        return (z * torch.sigmoid(self.bn(self.attention(z)))).transpose(1, 2)


class LRDetector(nn.Module):
    """§4.4: parallel forward / backward GRUs (hidden 64) on the fused input, gated (forward first)."""

    def __init__(self):
        super().__init__()
        self.gru_forward = nn.GRU(256, 64, 1, batch_first=True)
        self.gru_backward = nn.GRU(256, 64, 1, batch_first=True)
        self.attention = Gate(128)

    def forward(self, z):
        f, _ = self.gru_forward(z)
        b, _ = self.gru_backward(torch.flip(z, [1]))
        return self.attention(f, torch.flip(b, [1]))


class LightASDModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.visualEncoder = VisualEncoder(LightVisualBlock)
        self.audioEncoder = AudioEncoder(LightAudioBlock)
        self.GRU = LightBackend()

    def backend(self, a, v):
        return self.GRU(a, v)


class LRASDModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.visualEncoder = VisualEncoder(LRVisualBlock)
        self.audioEncoder = AudioEncoder(LRAudioBlock)
        self.fusion = Gate(256)
        self.detector = LRDetector()

    def backend(self, a, v):
        return self.detector(self.fusion(a, v))   # audio first (§4.4)


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.FC = nn.Linear(128, 2)


class ASDNetwork(nn.Module):
    """Root module matching the released state dicts: ``model``, ``lossAV.FC``, ``lossV.FC``."""

    def __init__(self, variant: str = "light"):
        super().__init__()
        self.model = {"light": LightASDModel, "lr": LRASDModel}[variant]()
        self.lossAV = _Head()
        self.lossV = _Head()     # training-only visual head; present for strict loading
        # frames of temporal context per side the visual encoder reads: 3 blocks x the largest
        # temporal half-kernel per block (Light: parallel 3/5 -> 2; LR: sequential 5 then 3 -> 3)
        self.temporal_radius = 6 if variant == "light" else 9

    def embed(self, visual: torch.Tensor, audio: torch.Tensor):
        """(B, T, 112, 112) grey, (B, 4T, 13) MFCC -> audio and visual embeddings, each (B, T, 128)."""
        return self.model.audioEncoder(audio), self.model.visualEncoder(visual)

    def logits(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, T, 128) each -> (B, T, 2) lossAV logits; the score is [..., 1]."""
        return self.lossAV.FC(self.model.backend(a, v))

    def forward(self, visual, audio):
        return self.logits(*self.embed(visual, audio))


# ---- inference wrapper -------------------------------------------------------------------------
@dataclass
class ASDScores:
    """Per video frame of a track (length N = number of crops given). Frames the audio does not cover
    (t >= n_scored; normally just the last one) are NaN in every array."""
    logits: np.ndarray      # (N,) float32: raw class-1 logit of lossAV.FC, mean of six durations
    prob: np.ndarray        # (N,) float32: mean over six durations of softmax(logits)[1]
    audio_emb: np.ndarray   # (N, 128) float32 audio-encoder output
    visual_emb: np.ndarray  # (N, 128) float32 visual-encoder output
    n_scored: int           # T = min(floor(Na / 4), N)

    def speaking(self) -> np.ndarray:
        """(N,) bool: the demo's decision, 5-frame mean of the logit >= 0 (NaN -> not speaking)."""
        sm = demo_smooth(self.logits[: self.n_scored].astype(np.float64), len(self.logits))
        return np.nan_to_num(sm, nan=-1.0) >= 0


class ActiveSpeakerNet:
    """One ASD network with released weights. ``variant`` light | lr, ``checkpoint`` talkset | ava;
    ``runtime`` torch | onnxruntime (the same weights exported to ONNX, operators/nets/asd_onnx.py:
    about 3 times cheaper on the CPU, the same numbers within 2e-6; PyTorch, with the reason in
    ``fallback``, when that fails). ``name`` names the network, the weights and a runtime other than
    PyTorch."""

    WEIGHTS = WEIGHTS

    RUNTIMES = ("torch", "onnxruntime")

    def __init__(self, model_dir: str | Path | None, variant: str = "light", checkpoint: str = "talkset",
                 device: str = "cpu", runtime: str = "torch"):
        if (variant, checkpoint) not in WEIGHTS:
            raise ValueError(f"unknown ASD model {variant!r}/{checkpoint!r}; choose from {sorted(WEIGHTS)}")
        if runtime not in self.RUNTIMES:
            raise ValueError(f"unknown ASD runtime {runtime!r}; choose from {self.RUNTIMES}")
        self.variant, self.checkpoint, self.device = variant, checkpoint, device
        self.weights = WEIGHTS[(variant, checkpoint)]
        self.path = weight_path(model_dir, self.weights)
        self.net = ASDNetwork(variant)
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.to(device).eval()
        self.name = f"{'Light-ASD' if variant == 'light' else 'LR-ASD'}/{Path(self.weights).stem}"
        self._use_torch()
        self.runtime, self.fallback = "torch", None
        self.edge_batch = 16     # edge pieces per encoder call (onnxruntime: 4, 8 % cheaper than 16 there)
        if runtime == "onnxruntime":
            self._use_onnx()

    def _use_torch(self) -> None:
        self._visual, self._audio = self.net.model.visualEncoder, self.net.model.audioEncoder
        self._logits, self._edge_graphs = self.net.logits, None

    def _use_onnx(self) -> None:
        """The encoders, edge pieces and back end through onnxruntime (operators.nets.asd_onnx);
        PyTorch, with the reason in ``fallback``, when onnxruntime, the export or a CPU device is
        missing."""
        if self.device != "cpu":
            self.fallback = f"onnxruntime runs on the CPU only, not {self.device}"
            return
        try:
            from operators.nets import asd_onnx
            parts = asd_onnx.load(self.net, self.path, threads=torch.get_num_threads())
        except Exception as e:  # noqa: BLE001 - any failure leaves the PyTorch path, said in the name
            self.fallback = f"{type(e).__name__}: {e}".splitlines()[0]
            import logging
            logging.getLogger(__name__).warning("ASD through PyTorch, not onnxruntime: %s", self.fallback)
            return
        self._visual, self._audio, self._logits = parts.visual, parts.audio, parts.backend
        self._edge_graphs = parts.edge
        self.runtime, self.edge_batch = f"onnxruntime {parts.version}", 4
        self.name += f" ({self.runtime})"

    def _tensors(self, crops: np.ndarray, feats: np.ndarray):
        v = torch.from_numpy(np.asarray(crops, np.float32)).to(self.device)
        a = torch.from_numpy(np.asarray(feats, np.float32)).to(self.device)
        return v, a

    @torch.inference_mode()
    def score_aligned(self, crops: np.ndarray, feats: np.ndarray, durations=DURATIONS, exact_chunks: bool = False,
                      chunk_edges: str = "padded"):
        """T grey crops (T, 112, 112) and 4T MFCC rows -> per-frame (logit1, prob) float64 arrays (T,)
        and the whole-track visual embedding (T, 128): the mean over ``durations`` of chunked passes (§1.5).

        The visual encoder (the costly part) runs once over the whole track; a chunk edge changes only
        the frames within the encoder's temporal radius of it (zero padding of the temporal convs), so
        those frames come from edge pieces of 2 radius frames cut at the chunk edges, each edge
        computed once for every duration that has it (:meth:`_edges`; identical arithmetic up to float
        summation order; ``exact_chunks=True`` runs every chunk through the whole network instead, as
        the original). ``chunk_edges="context"``: every chunk takes the whole track's visual embedding,
        its edge frames seeing their neighbours instead of zeros (no edge pieces: the visual encoder
        once per frame; the audio encoder and back end still run per chunk of each duration)."""
        if chunk_edges not in ("padded", "context"):
            raise ValueError(f"chunk_edges must be 'padded' or 'context', not {chunk_edges!r}")
        context = chunk_edges == "context" and not exact_chunks
        t = len(crops)
        v_all, a_all = self._tensors(crops, feats)
        enc_v, enc_a, logits = self._visual, self._audio, self._logits
        v_whole = enc_v(v_all[None])[0]
        r = self.net.temporal_radius
        edges = {} if exact_chunks or context else self._edges(v_all, t, durations)
        logit_sum, prob_sum = np.zeros(t), np.zeros(t)
        for d in durations:
            n = FPS * d
            ve = None if exact_chunks else v_whole.clone()
            for s in ([] if exact_chunks or context else range(0, t, n)):
                e = min(s + n, t)
                if e - s < 2 * r:      # a short last chunk: a pass of its own
                    ve[s:e] = enc_v(v_all[None, s:e])[0]
                    continue
                if s > 0:
                    ve[s: s + r] = edges[("start", s)]
                if e < t:
                    ve[e - r: e] = edges[("end", e)]
            outs = []
            full = t // n
            if full:   # equal-length chunks batched together: equivalent to one at a time (§1.5)
                a = enc_a(a_all[: full * n * 4].reshape(full, n * 4, 13))
                if ve is None:
                    v = enc_v(v_all[: full * n].reshape(full, n, 112, 112))
                else:
                    v = ve[: full * n].reshape(full, n, 128)
                outs.append(logits(a, v).reshape(-1, 2))
            if t > full * n:
                a = enc_a(a_all[None, full * n * 4:])
                v = enc_v(v_all[None, full * n:]) if ve is None else ve[None, full * n:]
                outs.append(logits(a, v)[0])
            lg = torch.cat(outs).double().cpu()
            logit_sum += lg[:, 1].numpy()
            prob_sum += torch.softmax(lg, dim=1)[:, 1].numpy()
        return logit_sum / len(durations), prob_sum / len(durations), v_whole

    def _edges(self, v_all: torch.Tensor, t: int, durations, batch: int | None = None) -> dict:
        """The visual embedding at every inner chunk edge of ``durations`` as that chunk's own pass
        sees it: ``("start", s)`` -> the first r frames of a chunk starting at s, ``("end", e)`` -> the
        last r frames of one ending at e (r the temporal radius), each from a piece of 2 r frames cut
        at the edge. An edge depends only on where it is, not on the chunk's length (>= 2 r), so the
        durations share them: 2 r frames per 25 instead of the 2 r per chunk of each duration."""
        r = self.net.temporal_radius
        want = set()
        for d in durations:
            n = FPS * d
            for s in range(0, t, n):
                e = min(s + n, t)
                if e - s >= 2 * r:
                    want |= {("start", s)} if s > 0 else set()
                    want |= {("end", e)} if e < t else set()
        batch = batch or self.edge_batch
        out = {}
        for kind in ("start", "end"):
            keys = sorted(k for k in want if k[0] == kind)
            for i in range(0, len(keys), batch):
                part = keys[i: i + batch]
                firsts = [p if kind == "start" else p - 2 * r for _, p in part]
                out.update(zip(part, self._edge(kind, torch.stack([v_all[f: f + 2 * r] for f in firsts]))))
        return out

    def _edge(self, kind: str, pieces: torch.Tensor) -> torch.Tensor:
        """(B, r, 128): the first (``kind`` "start") or last ("end") r frames of the visual encoder's
        output on (B, 2 r) pieces; onnxruntime's edge graphs compute only those."""
        if self._edge_graphs is not None:
            return self._edge_graphs(kind, pieces)
        r = self.net.temporal_radius
        emb = self._visual(pieces)
        return emb[:, :r] if kind == "start" else emb[:, r:]

    @torch.inference_mode()
    def audio_embedding(self, feats: np.ndarray) -> torch.Tensor:
        """Whole-track audio-encoder output (len(feats) // 4, 128) from MFCC rows."""
        a = torch.from_numpy(np.asarray(feats[: len(feats) // 4 * 4], np.float32)).to(self.device)
        return self._audio(a[None])[0]

    @torch.inference_mode()
    def visual_embedding(self, crops: np.ndarray) -> torch.Tensor:
        """Whole-track visual-encoder output (len(crops), 128) from grey 112 crops."""
        v = torch.from_numpy(np.asarray(crops, np.float32)).to(self.device)
        return self._visual(v[None])[0]

    @torch.inference_mode()
    def sync_gain(self, visual_emb: np.ndarray, audio_int16: np.ndarray, margin: int,
                  shifts=SYNC_SHIFTS, durations=DURATIONS) -> np.ndarray:
        """(T,) how much each frame's score depends on the timing of its audio: the class-1 logit with
        the track's own audio minus the mean logit with that audio moved by each of ``shifts`` frames
        (both ways), each the mean over ``durations`` of chunked passes (§1.5) of the fusion back end
        on the whole-track visual embedding (``visual_emb``, T x 128) and the audio embedding of the
        whole padded audio cut at the shift. ``audio_int16`` starts ``margin`` frames before the
        track's first frame (the shifted audio is real audio, not padding). A face whose lips move with
        this voice scores higher with it than with the same voice moved by a quarter to half a second;
        a face that merely talks (TalkSet weights, a face mouthing someone else's words) does not.
        NaN where an audio window is missing."""
        t = len(visual_emb)
        out = np.full(t, np.nan)
        lags = [0, *[s for k in shifts for s in (-k, k)]]
        if t == 0 or margin < max(abs(x) for x in lags):
            return out
        feats = mfcc(audio_int16) if len(audio_int16) else np.zeros((0, 13))
        a_all = self.audio_embedding(feats)                        # frame j = track frame j - margin
        avail = len(a_all) - margin - max(lags)                    # frames every lag covers
        t_ok = min(t, avail)
        if t_ok <= 0:
            return out
        v = torch.from_numpy(np.asarray(visual_emb[:t_ok], np.float32)).to(self.device)
        a = torch.stack([a_all[margin + lag: margin + lag + t_ok] for lag in lags])   # (lags, t, 128)
        total = torch.zeros(len(lags), t_ok, dtype=torch.float64)
        for d in durations:
            n = FPS * d
            for s0 in range(0, t_ok, n):
                e = min(s0 + n, t_ok)
                lg = self._logits(a[:, s0:e], v[None, s0:e].expand(len(lags), -1, -1))[..., 1]
                total[:, s0:e] += lg.double().cpu()
        total /= len(durations)
        out[:t_ok] = (total[0] - total[1:].mean(dim=0)).numpy()
        return out

    def score(self, crops: np.ndarray, audio_int16: np.ndarray, durations=DURATIONS,
              chunk_edges: str = "padded") -> ASDScores:
        """Score one face track: ``crops`` (N, 112, 112) uint8 from :func:`asd_crops` at 25 fps,
        ``audio_int16`` the track's 16 kHz mono samples starting at its first frame (:func:`track_audio`);
        ``chunk_edges``: see :meth:`score_aligned`."""
        n = len(crops)
        feats = mfcc(audio_int16) if len(audio_int16) else np.zeros((0, 13))
        t = min(len(feats) // MFCC_PER_FRAME, n)
        logits = np.full(n, np.nan, np.float32)
        prob = np.full(n, np.nan, np.float32)
        a_emb = np.full((n, 128), np.nan, np.float32)
        v_emb = np.full((n, 128), np.nan, np.float32)
        if t > 0:
            crops_t, feats_t = np.asarray(crops[:t]), feats[: 4 * t]
            lg, pr, ve = self.score_aligned(crops_t, feats_t, durations, chunk_edges=chunk_edges)
            logits[:t], prob[:t] = lg, pr
            a_emb[:t], v_emb[:t] = self.audio_embedding(feats_t).cpu().numpy(), ve.cpu().numpy()
        return ASDScores(logits=logits, prob=prob, audio_emb=a_emb, visual_emb=v_emb, n_scored=t)
