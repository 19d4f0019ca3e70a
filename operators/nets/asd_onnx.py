"""LR-ASD / Light-ASD through onnxruntime: the same weights, exported from operators.nets.asd's
PyTorch modules, about 3 times cheaper on this CPU (one thread, a 10 s track scored over six window
lengths with its sync gain: 5.4 -> 1.7-1.9 CPU-s; the visual encoder, 92 % of the ``asd`` step's
time, 2.3 -> 0.95 CPU-s for 250 frames).

The graphs of a network (:data:`PARTS`), with free batch and time axes:

- ``visual``: the visual encoder, (B, T, 112, 112) grey 0..255 -> (B, T, 128), exported with the
  frames laid out as a batch of images (:class:`_FramesVisual`: the same sums, 10 % faster here);
- ``audio``: the audio encoder, (B, 4T, 13) MFCC -> (B, T, 128);
- ``backend``: fusion, back end and the ``lossAV.FC`` head, embeddings (B, T, 128) twice -> (B, T, 2)
  logits;
- ``visual_start`` / ``visual_end``: the visual encoder on chunk-edge pieces of 2 r frames (fixed
  length) -> the r frames ActiveSpeakerNet._edges keeps, carrying only the frames that reach them
  (:class:`_FramesVisual` ``trim``).

They are exported with torch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``:
offline, deterministic, no extra package) at the first set-up into ``$CURATION_CACHE`` (default
``~/.cache/curation``) ``/asd-onnx/<weight file stem>-<sha256 prefix of the weights and of this
network code>/``, written to a temporary directory and renamed (workers racing on a first export
both succeed), and checked against the PyTorch modules on a small input before they are kept.
:class:`OnnxParts` loads them; ``operators.nets.asd.ActiveSpeakerNet(runtime="onnxruntime")`` uses
them in place of the modules, and falls back to PyTorch (saying why) when onnxruntime or the export
is missing. The outputs equal PyTorch's up to float summation order (max |difference| ~2e-6 on the
encoder outputs; tests/nets/test_asd_onnx.py, docs/av-labels.md#what-asd-and-sync-cost).
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARTS = ("visual", "audio", "backend", "visual_start", "visual_end")
CHECK_TOL = 1e-3    # largest |difference| from PyTorch accepted when an export is checked


def _bn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _spatial(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (1, k, k) Conv3d on frames laid out as a batch of images (B*T, C, H, W)."""
    return F.conv2d(x, conv.weight[:, :, 0], None, conv.stride[1:], conv.padding[1:])


def _temporal(conv: nn.Conv3d, x: torch.Tensor, b, trim: str | None = None, drop: int = 0) -> torch.Tensor:
    """A (k, 1, 1) Conv3d on (B*T, C, H, W) frames: as a Conv2d over (T, H*W), back to frames.
    ``trim`` "start" / "end": then ``drop`` frames are dropped at the other end (see _FramesVisual)."""
    n, c, h, w = x.shape
    y = x.reshape(b, n // b, c, h * w).transpose(1, 2)
    y = F.conv2d(y, conv.weight[..., 0], None, 1, (conv.padding[0], 0))
    if trim == "start":
        y = y[:, :, : y.shape[2] - drop]
    elif trim == "end":
        y = y[:, :, drop:]
    return y.transpose(1, 2).reshape(-1, c, h, w)


def _lr_block(k: nn.Module, x: torch.Tensor, b, trim: str | None = None) -> torch.Tensor:
    x = F.relu(_bn(k.s_norm_1, _spatial(k.s_1, x)))
    x = F.relu(_bn(k.s_norm_2, _spatial(k.s_2, x)))
    x = F.relu(_bn(k.t_norm_1, _temporal(k.t_1, x, b, trim, 2)))
    return F.relu(_bn(k.t_norm_2, _temporal(k.t_2, x, b, trim, 1)))


def _light_block(k: nn.Module, x: torch.Tensor, b, trim: str | None = None) -> torch.Tensor:
    # the two branches (temporal radius 1 and 2) keep the same frames: 2 dropped from both
    p = F.relu(_bn(k.bn_t_3, _temporal(k.t_3, F.relu(_bn(k.bn_s_3, _spatial(k.s_3, x))), b, trim, 2)))
    q = F.relu(_bn(k.bn_t_5, _temporal(k.t_5, F.relu(_bn(k.bn_s_5, _spatial(k.s_5, x))), b, trim, 2)))
    return F.relu(_bn(k.bn_last, _spatial(k.last, p + q)))


class _FramesVisual(nn.Module):
    """operators.nets.asd.VisualEncoder with its weights, computed with the frames as a batch of
    images: spatial convolutions and pools as 2-D ones on (B*T, C, H, W), temporal ones over (T, H*W).
    The same sums in PyTorch (equal outputs); onnxruntime runs it about 10 % faster than the 3-D
    graph (its 2-D convolutions are better optimised).

    ``trim`` "start" / "end" makes the graph of a chunk-edge piece (operators.nets.asd
    ActiveSpeakerNet._edges: 2 r frames, r the encoder's temporal radius, of which the first r are
    wanted when the chunk starts there, the last r when it ends there): after each temporal
    convolution the frames that depend on the far end's zero padding (as many as its radius) are
    dropped instead of carried through the rest of the network. The r frames left are the ones the
    whole piece gives (the same sums), for about 3/4 of its work."""

    def __init__(self, enc: nn.Module, trim: str | None = None):
        super().__init__()
        from operators.nets.asd import LRVisualBlock
        self.enc, self.trim = enc, trim
        lr = isinstance(enc.block1, LRVisualBlock)
        self.block = _lr_block if lr else _light_block

    def forward(self, x):                       # (B, T, 112, 112) grey 0..255
        from operators.nets.asd import MEAN, STD
        b, t = x.shape[0], x.shape[1]
        y = ((x / 255.0 - MEAN) / STD).reshape(b * t, 1, x.shape[2], x.shape[3])
        y = F.max_pool2d(self.block(self.enc.block1, y, b, self.trim), 3, 2, 1)
        y = F.max_pool2d(self.block(self.enc.block2, y, b, self.trim), 3, 2, 1)
        y = self.block(self.enc.block3, y, b, self.trim)
        return y.amax(dim=(2, 3)).reshape(b, -1, y.shape[1])   # (B, T, 128); trimmed: (B, r, 128)


class _Backend(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, a, v):
        return self.net.logits(a, v)


def cache_root() -> Path:
    return Path(os.environ.get("CURATION_CACHE") or Path.home() / ".cache" / "curation") / "asd-onnx"


def export_dir(weights: Path) -> Path:
    """Where the graphs of ``weights`` go: keyed by the weight file's bytes and this network code (a
    change to either exports anew)."""
    from operators.nets import asd
    h = hashlib.sha256(Path(weights).read_bytes())
    h.update(inspect.getsource(asd).encode())
    h.update(inspect.getsource(inspect.getmodule(_Backend)).encode())
    h.update(torch.__version__.encode())
    return cache_root() / f"{Path(weights).stem}-{h.hexdigest()[:12]}"


def _examples(piece: int, t: int = 30, batch: int = 2, seed: int = 0):
    """Inputs of each part: ``t`` frames, edge pieces of ``piece`` (2 r) frames."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 256, (batch, t, 112, 112), generator=g).float()
    a = torch.randn(batch, 4 * t, 13, generator=g) * 10
    e = torch.randn(batch, t, 128, generator=g).abs()
    p = torch.randint(0, 256, (batch, piece, 112, 112), generator=g).float()
    return {"visual": (v,), "audio": (a,), "backend": (e, e.flip(1)), "visual_start": (p,), "visual_end": (p,)}


def export(net: nn.Module, out_dir: Path) -> Path:
    """The graphs of ``net`` (an eval-mode operators.nets.asd.ASDNetwork) into ``out_dir``, each
    checked against PyTorch (RuntimeError when one differs by more than CHECK_TOL)."""
    # every module in eval mode before the export: the exporter switches a module in training mode to
    # eval and back to training afterwards, recursively, which would leave ``net`` training (batch
    # statistics, moving running means)
    enc = net.model.visualEncoder
    modules = {"visual": _FramesVisual(enc).eval(), "audio": net.model.audioEncoder, "backend": _Backend(net).eval(),
               "visual_start": _FramesVisual(enc, "start").eval(), "visual_end": _FramesVisual(enc, "end").eval()}
    names = {"visual": (["visual"], ["emb"]), "audio": (["mfcc"], ["emb"]), "backend": (["a", "v"], ["logits"]),
             "visual_start": (["piece"], ["emb"]), "visual_end": (["piece"], ["emb"])}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        ex = _examples(2 * net.temporal_radius)
        for part in PARTS:
            ins, outs = names[part]
            # edge pieces have a fixed length (2 r frames)
            axes = {n: {0: "batch"} if part.startswith("visual_") else {0: "batch", 1: "time"} for n in ins + outs}
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(modules[part], ex[part], str(tmp / f"{part}.onnx"), dynamo=False,
                                  input_names=ins, output_names=outs, dynamic_axes=axes, opset_version=17)
        net.eval()
        check(net, OnnxParts(tmp))
        try:
            tmp.rename(out_dir)
        except OSError:       # another worker's export won the race: keep it
            if not all((out_dir / f"{p}.onnx").is_file() for p in PARTS):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check(net: nn.Module, parts: "OnnxParts") -> None:
    """Raise RuntimeError when the graphs differ from the modules on an input of another length
    and batch than the export's."""
    r = net.temporal_radius
    ex = _examples(2 * r, t=41, batch=3, seed=1)
    enc = net.model.visualEncoder
    with torch.no_grad():
        piece = enc(*ex["visual_start"])          # an edge piece through the whole encoder
        want = {"visual": enc(*ex["visual"]), "audio": net.model.audioEncoder(*ex["audio"]),
                "backend": net.logits(*ex["backend"]), "visual_start": piece[:, :r], "visual_end": piece[:, r:]}
    for part in PARTS:
        got = parts._run(part, *ex[part])
        diff = float((got - want[part]).abs().max()) if got.shape == want[part].shape else float("inf")
        if not diff <= CHECK_TOL:
            raise RuntimeError(f"ONNX export of the ASD {part} graph differs from PyTorch by {diff:.3g}")


def load(net: nn.Module, weights: Path, threads: int = 1) -> "OnnxParts":
    """The graphs of ``net`` with ``weights`` (exported now unless cached), as callables. A cached
    graph onnxruntime cannot load (a damaged file) is exported again, not left to fail every run."""
    d = export_dir(weights)
    if all((d / f"{p}.onnx").is_file() for p in PARTS):
        try:
            return OnnxParts(d, threads)
        except Exception:  # noqa: BLE001 - whatever onnxruntime says of a damaged file: export anew
            shutil.rmtree(d, ignore_errors=True)
    export(net, d)
    return OnnxParts(d, threads)


class OnnxParts:
    """The graphs as callables on torch tensors (CPU, float32): ``visual``, ``audio``, ``backend``,
    and ``edge(kind, pieces)`` (kind "start" / "end": the r wanted frames of (B, 2 r) edge pieces)."""

    def __init__(self, directory: Path, threads: int = 1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")   # no busy waiting
        self.sessions = {p: ort.InferenceSession(str(Path(directory) / f"{p}.onnx"), opts,
                                                 providers=["CPUExecutionProvider"]) for p in PARTS}
        self.version = ort.__version__

    def _run(self, part: str, *xs: torch.Tensor) -> torch.Tensor:
        s = self.sessions[part]
        feed = {i.name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
                for i, x in zip(s.get_inputs(), xs)}
        return torch.from_numpy(s.run(None, feed)[0])

    def visual(self, v: torch.Tensor) -> torch.Tensor:
        return self._run("visual", v)

    def audio(self, a: torch.Tensor) -> torch.Tensor:
        return self._run("audio", a)

    def backend(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._run("backend", a, v)

    def edge(self, kind: str, pieces: torch.Tensor) -> torch.Tensor:
        return self._run(f"visual_{kind}", pieces)
