"""SyncNet (Chung & Zisserman, ACCV 2016 workshops; syncnet_python ``syncnet_v2.model``) written from the
fact sheet shared/docs/ASD.md §5 (no code of the original repository), and the offset search shared
with operators/nets/avsync.py.

Inputs (§5.1): the 224 x 224 face-track crop of operators.nets.asd.face_crops_224 (the whole crop,
colour, BGR order, float 0..255, no normalisation) at 25 fps, 5-frame stacks (1, 3, 5, 224, 224); audio
16 kHz mono int16 of the track, MFCC of operators/nets/mfcc.py (identical parameters), windows of 20
MFCC columns (0.2 s) at stride 4 (one video frame). Window v = frames v..v+4 and MFCC columns
4v..4v+19; min_length = min(N, floor(samples / 640)) and windows v = 0 .. min_length - 6 (one fewer
than possible, as the original).

Network (§5.2): audio CNN on (1, 13, 20) and lip CNN on (3, 5, 224, 224), each to 512 then an MLP to a
1024-d embedding (not L2-normalised). All convs/linears with bias; BN eps 1e-5 (PyTorch default).
Weights: MODEL_DIR/syncnet/syncnet_v2.model (a state dict of the original ``S`` module, keys
``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``), loaded with strict=True;
absent -> MissingWeights naming the path.

Offset search (§5.3, :func:`sync_from_distances`): d[i][k] = ||V[i] - A[i + k - vshift] + 1e-6||
(zero vector outside), vshift = 15; mdist[k] = mean_i d[i][k]; k* = argmin.
- ``offset_frames = k* - vshift``: POSITIVE WHEN THE AUDIO LAGS THE VIDEO (the sound of video frame i is
  heard at frame i + offset). The original prints ``vshift - k*``, the opposite sign.
- ``min_dist`` (LSE-D) = min_k mdist; ``confidence`` (LSE-C) = median_k mdist - min_k mdist.
- per-window confidence median(mdist) - d[i][k*], median-filtered (kernel 9, zero-padded ends, as the
  original), placed at the window's centre frame i + 2; frames with no window centre are NaN.

Cost: ~1.6 GMAC per window, 25 windows per second of video (the lip CNN dominates). Measured here on a
randomly initialised network (same arithmetic as trained weights): 4.0 s per second of video at load
average ~3 on this 2-core CPU (~50 s per second when the machine was shared at load ~25).
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

WEIGHTS = "syncnet/syncnet_v2.model"
VSHIFT = 15          # ±15 frames, the shipped scripts' vshift
WINDOW = 5           # video frames per window (0.2 s at 25 fps)
MFCC_WINDOW = 20     # MFCC columns per window
SAMPLES_PER_FRAME = 640


@dataclass
class SyncResult:
    offset_frames: int            # positive when the audio lags the video
    min_dist: float               # LSE-D: mean distance at the best offset (backend units)
    confidence: float             # LSE-C: median over offsets minus min of the mean distance
    frame_confidence: np.ndarray  # (N,) per video frame, NaN where no window is centred
    mean_dist: np.ndarray         # (2 vshift + 1,) mean distance per candidate offset -vshift..+vshift
    backend: str = ""


def sync_from_distances(dists: np.ndarray, n_frames: int, centre: int = WINDOW // 2, vshift: int = VSHIFT,
                        backend: str = "", smooth: int = 9) -> SyncResult:
    """Offset, LSE-D, LSE-C and per-frame confidence from distances ``dists`` (W, 2 vshift + 1) where
    column j compares video window i with audio shifted by j - vshift frames (audio window i + j - vshift).
    Window i is reported at frame i + ``centre``. NaN entries (no data) are left out of the means."""
    from scipy.signal import medfilt
    d = np.asarray(dists, np.float64)
    mdist = np.nanmean(d, axis=0)
    k = int(np.nanargmin(mdist))
    minval = float(mdist[k])
    med = float(np.nanmedian(mdist))
    fconf = med - d[:, k]
    if len(fconf) and smooth > 1:
        fconf = medfilt(np.nan_to_num(fconf, nan=0.0), kernel_size=smooth)
    frame_conf = np.full(n_frames, np.nan)
    idx = np.arange(len(fconf)) + centre
    ok = idx < n_frames
    frame_conf[idx[ok]] = fconf[ok]
    return SyncResult(offset_frames=k - vshift, min_dist=minval, confidence=med - minval,
                      frame_confidence=frame_conf, mean_dist=mdist, backend=backend)


def chance_sd(mean_dist_of, audio_features, min_roll: int = 30, step: int = VSHIFT) -> float:
    """How far the best offset stands out from chance, in standard deviations: the lowest mean
    distance of the search on the real audio against the lowest of the same search with the audio
    features rolled (circularly, forwards and time-reversed) by ``min_roll`` frames or more (1.2 s:
    no true offset in reach), ``step`` frames apart (searches of +-15 frames ``step`` apart share
    half their offsets, not all: the null's spread is not underestimated). ``mean_dist_of(features)``
    gives the (2 vshift + 1,) curve. The same measure for any backend, so one threshold means the
    same for SyncNet and motion-energy. NaN when the track is too short for 6 such searches."""
    a = audio_features
    rolls = list(range(min_roll, len(a) - min_roll + 1, step))
    if 2 * len(rolls) < 6:
        return float("nan")
    best = float(np.nanmin(mean_dist_of(a)))
    null = np.array([np.nanmin(mean_dist_of(np.roll(x, r, axis=0))) for x in (a, a[::-1]) for r in rolls],
                    np.float64)
    null = null[np.isfinite(null)]
    if len(null) < 6 or not np.isfinite(best):
        return float("nan")
    return float((null.mean() - best) / max(null.std(), 1e-9))


def shifted_distances(v: torch.Tensor, a: torch.Tensor, vshift: int = VSHIFT) -> np.ndarray:
    """(W, 2 vshift + 1) Euclidean distances ||V[i] - Ap[i + k] + 1e-6||, Ap = A zero-padded by vshift
    at both ends (§5.3)."""
    ap = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    cols = [torch.nn.functional.pairwise_distance(v, ap[k: k + len(v)], eps=1e-6) for k in range(2 * vshift + 1)]
    return torch.stack(cols, dim=1).double().cpu().numpy()


def _hw(v):
    """The (height, width) part of a 3-d layer's size argument (an int applies to all three)."""
    return tuple(v[1:]) if isinstance(v, (tuple, list)) else v


def _cbr2(cin, cout, k, p):
    return [nn.Conv2d(cin, cout, k, padding=p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _cbr3(cin, cout, k, s=1, p=0):
    return [nn.Conv3d(cin, cout, k, stride=s, padding=p), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _mlp():
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 1024))


class SyncNetModel(nn.Module):
    """§5.2; Sequential indices match the original state dict keys."""

    def __init__(self):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_cbr2(1, 64, 3, 1), nn.MaxPool2d(1, 1),
            *_cbr2(64, 192, 3, 1), nn.MaxPool2d(3, stride=(1, 2)),
            *_cbr2(192, 384, 3, 1), *_cbr2(384, 256, 3, 1), *_cbr2(256, 256, 3, 1), nn.MaxPool2d(3, stride=2),
            *_cbr2(256, 512, (5, 4), 0))
        self.netfcaud = _mlp()
        self.netcnnlip = nn.Sequential(
            *_cbr3(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_cbr3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_cbr3(256, 256, (1, 3, 3), 1, (0, 1, 1)), *_cbr3(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *_cbr3(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_cbr3(256, 512, (1, 6, 6), 1, 0))
        self.netfclip = _mlp()

    def forward_aud(self, x):    # (B, 1, 13, 20)
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x):    # (B, 3, 5, 224, 224) BGR 0..255
        """Same arithmetic as ``netcnnlip`` applied as 3-d layers, computed with 2-d ops (several times
        faster on CPU): the first conv's temporal kernel (5) spans the whole 5-frame input, so its
        output depth is 1 and it equals a 2-d conv over the 15 stacked channel-frame planes; every
        later kernel/pool has depth 1."""
        b, c, d, h, w = x.shape
        x = x.reshape(b, c * d, h, w)
        for m in self.netcnnlip:
            if isinstance(m, nn.Conv3d):
                wt = m.weight
                x = F.conv2d(x, wt.reshape(wt.shape[0], -1, *wt.shape[3:]), m.bias, m.stride[1:], m.padding[1:])
            elif isinstance(m, nn.MaxPool3d):
                x = F.max_pool2d(x, _hw(m.kernel_size), _hw(m.stride), _hw(m.padding))
            elif isinstance(m, nn.BatchNorm3d):
                x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
            else:
                x = m(x)
        return self.netfclip(x.flatten(1))

    def forward_lip_3d(self, x):  # the literal 3-d computation, for checking forward_lip
        return self.netfclip(self.netcnnlip(x).flatten(1))


class SyncNet:
    """SyncNet with weights from ``model_dir`` (MissingWeights when absent). ``SyncNet.random(seed)``
    builds a randomly initialised one (tests of the code path)."""

    WEIGHTS = WEIGHTS
    name = "syncnet_v2"

    def __init__(self, model_dir: str | Path | None, device: str = "cpu", batch: int = 20, _state=None):
        self.device, self.batch = device, batch
        self.net = SyncNetModel()
        if _state is None:
            self.path = weight_path(model_dir, WEIGHTS)
            _state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(_state, strict=True)
        self.net.to(device).eval()

    @classmethod
    def random(cls, seed: int = 0, device: str = "cpu") -> "SyncNet":
        torch.manual_seed(seed)
        obj = cls(None, device=device, _state=SyncNetModel().state_dict())
        obj.path, obj.name = None, "syncnet-random-init"
        return obj

    @torch.inference_mode()
    def embed(self, crops_bgr: np.ndarray, audio_int16: np.ndarray):
        """224 crops (N, 224, 224, 3) BGR uint8 + the track's 16 kHz int16 audio -> video and audio
        window embeddings (W, 1024) each, W = min(N, floor(samples / 640)) - 5."""
        n = min(len(crops_bgr), len(audio_int16) // SAMPLES_PER_FRAME)
        w = n - WINDOW
        if w < 1:
            raise ValueError(f"track too short for SyncNet: {n} frames with audio (need {WINDOW + 1})")
        feats = torch.from_numpy(mfcc(audio_int16).T.astype(np.float32))     # (13, Na)
        vids, auds = [], []
        for s in range(0, w, self.batch):
            idx = range(s, min(s + self.batch, w))
            lip = np.stack([crops_bgr[i: i + WINDOW] for i in idx])          # (b, 5, 224, 224, 3)
            lip = torch.from_numpy(lip).float().permute(0, 4, 1, 2, 3).to(self.device)
            aud = torch.stack([feats[:, 4 * i: 4 * i + MFCC_WINDOW] for i in idx])[:, None].to(self.device)
            vids.append(self.net.forward_lip(lip))
            auds.append(self.net.forward_aud(aud))
        return torch.cat(vids), torch.cat(auds)

    def sync(self, crops_bgr: np.ndarray, audio_int16: np.ndarray, vshift: int = VSHIFT) -> SyncResult:
        """Offset (frames, positive = audio lags), LSE-D, LSE-C and per-frame confidence of one track."""
        v, a = self.embed(crops_bgr, audio_int16)
        return sync_from_distances(shifted_distances(v, a, vshift), len(crops_bgr), vshift=vshift,
                                   backend=self.name)
