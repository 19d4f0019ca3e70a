"""Decode one window: the frames shown at ``start_s + k / fps`` (k < n) with their pts, on the
container's timeline, from PyAV, torchcodec or decord (``bench/decode_window.py`` compares them here).

A window's first frame is the first frame whose pts is at or after the window's nominal start (less a
quarter frame); frame k is the frame on screen at ``first_pts + k / fps`` (the last frame whose pts is
at or before it), so a 30 fps source sampled at 25 fps drops frames evenly and a 25 fps source keeps
every frame. Each reader is opened per window and closed after it (no decoder state survives between
windows: no read-ahead memory, nothing shared across DataLoader workers)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

BACKENDS = ("pyav", "torchcodec", "decord")
DEFAULT_BACKEND = "pyav"
THREADS = 2   # decoder threads of every backend (a DataLoader worker's share of the cores)


@dataclass
class WindowFrames:
    images: np.ndarray      # (T, H, W, 3) uint8 RGB
    pts: np.ndarray         # (T,) float64 seconds, container timeline, of each chosen frame
    source_fps: float       # the stream's average frame rate
    source_size: tuple[int, int]   # (height, width) as decoded, before any resize
    distinct: int           # distinct source frames among the T chosen


def pick(pts: np.ndarray, start_s: float, n: int, fps: float, src_fps: float) -> np.ndarray:
    """Indices into ``pts`` (sorted) of the window's n frames (see the module docstring); fewer than
    n when the frames run out."""
    tol = 0.25 / max(src_fps, 1e-6)
    first = int(np.searchsorted(pts, start_s - tol))
    if first >= len(pts):
        return np.zeros(0, np.int64)
    targets = pts[first] + np.arange(n) / fps
    idx = np.searchsorted(pts, targets + tol, side="right") - 1
    last_shown = pts[-1] + 1.0 / max(src_fps, 1e-6)
    return idx[targets < last_shown - tol].astype(np.int64)


def read_window(path: str, start_s: float, n: int, fps: float, size: tuple[int, int] | None = None,
                backend: str = DEFAULT_BACKEND, rotation: int = 0) -> WindowFrames:
    """The window's frames (RGB, resized to ``size`` = (H, W) when given)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; one of {', '.join(BACKENDS)}")
    out = {"pyav": _pyav, "torchcodec": _torchcodec, "decord": _decord}[backend](
        path, start_s, n, fps, size if not rotation % 180 else (size[::-1] if size else None))
    if rotation % 360:
        out.images = np.ascontiguousarray(np.rot90(out.images, k=(rotation // 90) % 4, axes=(1, 2)))
    return out


def _span_end(start_s: float, n: int, fps: float) -> float:
    return start_s + n / fps + 0.5


def _pyav(path, start_s, n, fps, size) -> WindowFrames:
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = THREADS
        tb = float(stream.time_base)
        src_fps = float(stream.average_rate or stream.guessed_rate or 25)
        if start_s > 0.5:
            container.seek(int((start_s - 0.1) / tb), stream=stream, backward=True)
        frames, pts = [], []
        end = _span_end(start_s, n, fps)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = frame.pts * tb
            if t >= end:
                break
            if t >= start_s - 1.0 / src_fps:   # keep from a frame before the start (boundary)
                frames.append(frame)
                pts.append(t)
        pts = np.asarray(pts, np.float64)
        order = np.argsort(pts, kind="stable")
        frames, pts = [frames[i] for i in order], pts[order]
        idx = pick(pts, start_s, n, fps, src_fps)
        src = (frames[0].height, frames[0].width) if frames else (0, 0)
        h, w = size or src
        images = np.empty((len(idx), h, w, 3), np.uint8)
        converted: dict[int, np.ndarray] = {}
        for k, i in enumerate(idx):
            if i not in converted:
                converted[i] = frames[i].to_ndarray(format="rgb24", width=w, height=h)
            images[k] = converted[i]
    return WindowFrames(images, pts[idx], src_fps, src, len(converted))


def _torchcodec(path, start_s, n, fps, size) -> WindowFrames:
    import torch
    from torchcodec.decoders import VideoDecoder
    transforms = None
    if size is not None:
        from torchcodec.transforms import Resize
        transforms = [Resize(size=tuple(size))]
    device = os.environ.get("CURATION_DECODE_DEVICE") or None   # "cuda": NVDEC on a GPU node
    dec = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact", transforms=transforms,
                       num_ffmpeg_threads=THREADS, device=device)
    meta = dec.metadata
    src_fps = float(meta.average_fps or 25)
    lo, hi = float(meta.begin_stream_seconds or 0.0), float(meta.end_stream_seconds or 1e9)
    a = min(max(lo, start_s - 1.0 / src_fps), hi)
    batch = dec.get_frames_played_in_range(a, max(a, min(hi - 1.0 / src_fps, _span_end(start_s, n, fps))))
    pts = batch.pts_seconds.numpy().astype(np.float64)
    idx = pick(pts, start_s, n, fps, src_fps)
    images = batch.data[torch.from_numpy(idx)].cpu().numpy()
    src = (int(dec.metadata.height), int(dec.metadata.width))
    return WindowFrames(np.ascontiguousarray(images), pts[idx], src_fps, src, len(set(idx.tolist())))


def _decord(path, start_s, n, fps, size) -> WindowFrames:
    from curation.media import import_decord
    decord = import_decord()
    kwargs = {"width": size[1], "height": size[0]} if size is not None else {}
    reader = decord.VideoReader(path, num_threads=THREADS, **kwargs)
    offset = _video_start(path)   # decord's times start at the video stream's first frame
    pts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64) + offset
    src_fps = float(reader.get_avg_fps() or 25)
    idx = pick(pts, start_s, n, fps, src_fps)
    uniq, inverse = np.unique(idx, return_inverse=True)
    images = reader.get_batch(uniq).asnumpy()[inverse] if len(uniq) else \
        np.zeros((0, *(size or (0, 0)), 3), np.uint8)
    src = tuple(reader[0].shape[:2]) if size is None and len(reader) else tuple(size or (0, 0))
    del reader
    return WindowFrames(np.ascontiguousarray(images), pts[idx], src_fps, src, len(uniq))


def _video_start(path: str) -> float:
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        return float((stream.start_time or 0) * stream.time_base) if stream.start_time else 0.0
