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
    # with ``audio_rate``: the mono PCM decoded in the same pass (float32 in [-1, 1]), sample k at
    # (audio_first + k) / audio_rate on the container timeline; None when the file has no audio
    # stream or the pass could not place it (the caller then reads it with curation.media.load_audio)
    audio: np.ndarray | None = None
    audio_first: int = 0


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
                backend: str = DEFAULT_BACKEND, rotation: int = 0, *, audio_rate: int | None = None,
                out: np.ndarray | None = None) -> WindowFrames:
    """The window's frames (RGB, resized to ``size`` = (H, W) when given).

    ``audio_rate``: also decode the window's audio (mono, that rate) in the same pass over the file
    (PyAV demuxes both streams; other backends leave ``audio`` None). ``out``: a (T_max, H, W, 3)
    uint8 array (T_max >= n) to write the frames into (e.g. a row of a batch in shared memory):
    ``images`` is then ``out[:T]`` and the rest of ``out`` is zeroed; an ``out`` of another frame
    size is ignored."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; one of {', '.join(BACKENDS)}")
    turned = size if not rotation % 180 else (size[::-1] if size else None)
    direct = out if not rotation % 360 else None
    if backend == "pyav":
        res = _pyav(path, start_s, n, fps, turned, audio_rate, direct)
    else:
        res = {"torchcodec": _torchcodec, "decord": _decord}[backend](path, start_s, n, fps, turned)
    if rotation % 360:
        res.images = np.ascontiguousarray(np.rot90(res.images, k=(rotation // 90) % 4, axes=(1, 2)))
    if _fits(out, res.images) and not _at(res.images, out):      # decoded elsewhere: copy it in
        out[:len(res.images)] = res.images
        out[len(res.images):] = 0
        res.images = out[:len(res.images)]
    return res


def _fits(out: np.ndarray | None, shape_or_images) -> bool:
    shape = getattr(shape_or_images, "shape", shape_or_images)
    return (out is not None and out.dtype == np.uint8 and out.ndim == 4 and out.shape[0] >= shape[0]
            and tuple(out.shape[1:]) == tuple(shape[1:]) and out.flags.c_contiguous)


def _at(images: np.ndarray, out: np.ndarray) -> bool:
    return images.__array_interface__["data"][0] == out.__array_interface__["data"][0]


def _span_end(start_s: float, n: int, fps: float) -> float:
    return start_s + n / fps + 0.5


def _pyav(path, start_s, n, fps, size, audio_rate=None, out=None) -> WindowFrames:
    import av
    from av.video.reformatter import VideoReformatter
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = THREADS
        src_fps = float(stream.average_rate or stream.guessed_rate or 25)
        origin = container.start_time / 1e6 if container.start_time is not None else 0.0
        sound = None
        if audio_rate and container.streams.audio:
            sound = _AudioPass(container, audio_rate, start_s, n / fps)
        if start_s > 0.5:
            container.seek(int((start_s + origin - 0.1) / float(stream.time_base)), stream=stream,
                           backward=True)
        frames, pts = _decode_span(container, stream, origin, start_s - 1.0 / src_fps,
                                   _span_end(start_s, n, fps), sound, n / fps)
        order = np.argsort(pts, kind="stable")
        frames, pts = [frames[i] for i in order], pts[order]
        idx = pick(pts, start_s, n, fps, src_fps)
        src = (frames[0].height, frames[0].width) if frames else (0, 0)
        h, w = size or src
        images = out if _fits(out, (len(idx), h, w, 3)) else np.empty((len(idx), h, w, 3), np.uint8)
        first_row: dict[int, int] = {}
        # one scaler for the window, one thread: a frame's own to_ndarray() would make (and free)
        # a scaler with a thread per core for every frame, most of a small window's system time
        scaler = VideoReformatter()
        for k, i in enumerate(idx):
            if i in first_row:              # a source frame shown twice (a slower source)
                images[k] = images[first_row[i]]
            else:
                first_row[i] = k
                images[k] = scaler.reformat(frames[i], format="rgb24", width=w, height=h,
                                            threads=1).to_ndarray()
        if images is out:
            out[len(idx):] = 0
            images = out[:len(idx)]
        audio, first = sound.result() if sound is not None else (None, 0)
    return WindowFrames(images, pts[idx], src_fps, src, len(first_row), audio, first)


def _decode_span(container, stream, origin: float, keep_from: float, end: float, sound=None,
                 span_s: float = 0.0):
    """(frames, times) of the video frames with times (pts less the container's ``origin``) in
    [keep_from, end), decoding from the current position; ``end`` moves to ``span_s`` + 0.5 s past
    the first frame kept (a window asked for before the video's first frame starts at that frame
    and is not cut short); with ``sound``, the audio packets met on the way go to it (one pass over
    the file)."""
    tb = float(stream.time_base)
    frames, pts = [], []
    packets = container.demux(stream, sound.stream) if sound is not None else container.demux(stream)
    video_done = False
    for packet in packets:
        if packet.stream is not stream:
            sound.feed(packet)
            if video_done and sound.done:
                break
            continue
        if video_done:   # the audio may trail the video in the file: read on a little
            if sound is None or sound.done or (packet.pts or 0) * tb - origin > end + 2.0:
                break
            continue
        for frame in packet.decode():
            if frame.pts is None:
                continue
            t = frame.pts * tb - origin
            if t >= end:
                video_done = True
                break
            if t >= keep_from:           # keep from a frame before the start (boundary)
                if not frames:
                    end = max(end, t + span_s + 0.5)
                    if sound is not None:
                        sound.cover(t)
                frames.append(frame)
                pts.append(t)
        if video_done and (sound is None or sound.done):
            break
    return frames, np.asarray(pts, np.float64)


class _AudioPass:
    """The audio packets of one pass over a container, decoded from a little before the window
    (``MARGIN_S``: a decoder started mid-stream gets its first frame wrong) to the window's end,
    resampled to mono s16 at ``rate`` as :func:`curation.media.load_audio` does and placed the same
    way (the pts of the first decoded frame, on the container timeline). ``result()`` is None (the
    caller falls back to load_audio) when the pass started too late to place the window's first
    sample (the demuxer's seek for the video landed after the audio it needs)."""

    MARGIN_S = 0.3

    def __init__(self, container, rate: int, start_s: float, span_s: float):
        import av
        self.stream = container.streams.audio[0]
        self.tb = float(self.stream.time_base or 0)
        self.origin = container.start_time / 1e6 if container.start_time is not None else 0.0
        self.rate, self.start_s, self.span_s = rate, start_s, span_s
        self.end_s = start_s + span_s + self.MARGIN_S
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self.first, self.chunks, self.have = None, [], 0
        self.ended = self.at_start = False     # ended: nothing more to decode (end of stream, unplaceable)

    @property
    def done(self) -> bool:
        return self.ended or (self.first is not None and self.first + self.have / self.rate >= self.end_s)

    def cover(self, first_frame_s: float) -> None:
        """The window's first frame is at ``first_frame_s``: decode the audio to its end."""
        self.end_s = max(self.end_s, first_frame_s + self.span_s + self.MARGIN_S)

    def feed(self, packet) -> None:
        if self.done:
            return
        t = None if packet.pts is None or not self.tb else packet.pts * self.tb - self.origin
        if self.first is None:
            if t is None and packet.size:       # cannot place it: leave it to load_audio
                self.ended = True
                return
            if t is not None and t < self.start_s - 2 * self.MARGIN_S:
                return                          # far before the window: not decoded
            start = self.stream.start_time
            self.at_start = start is None or packet.pts is None or packet.pts <= start
        for frame in packet.decode():
            if self.first is None:
                if frame.pts is None:
                    self.ended = True
                    return
                self.first = frame.pts * self.tb - self.origin
            self._add(frame)
        if not packet.size:                     # the end of the stream (a flush packet)
            self._add(None)
            self.ended = True

    def _add(self, frame) -> None:
        for pcm in self.resampler.resample(frame):
            self.chunks.append(pcm.to_ndarray().reshape(-1))
            self.have += pcm.samples

    def result(self) -> tuple[np.ndarray | None, int]:
        late = self.first is None or (not self.at_start and self.first > self.start_s - self.MARGIN_S / 3)
        if late:
            return None, 0
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0, int(round(self.first * self.rate))


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
    from curation.media import stream_origins
    origin = stream_origins(path)[0]             # torchcodec's times are the stream's pts
    lo, hi = float(meta.begin_stream_seconds or 0.0), float(meta.end_stream_seconds or 1e9)
    a = min(max(lo, start_s + origin - 1.0 / src_fps), hi)
    end = max(_span_end(start_s, n, fps) + origin, a + n / fps + 0.5)   # from the first frame there
    batch = dec.get_frames_played_in_range(a, max(a, min(hi - 1.0 / src_fps, end)))
    pts = batch.pts_seconds.numpy().astype(np.float64) - origin
    idx = pick(pts, start_s, n, fps, src_fps)
    images = batch.data[torch.from_numpy(idx)].cpu().numpy()
    src = (int(dec.metadata.height), int(dec.metadata.width))
    return WindowFrames(np.ascontiguousarray(images), pts[idx], src_fps, src, len(set(idx.tolist())))


def _decord(path, start_s, n, fps, size) -> WindowFrames:
    from curation.media import import_decord
    decord = import_decord()
    kwargs = {"width": size[1], "height": size[0]} if size is not None else {}
    reader = decord.VideoReader(path, num_threads=THREADS, **kwargs)
    from curation.media import stream_origins
    offset = stream_origins(path)[1]   # decord's times start at the video stream's first frame
    pts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64) + offset
    src_fps = float(reader.get_avg_fps() or 25)
    idx = pick(pts, start_s, n, fps, src_fps)
    uniq, inverse = np.unique(idx, return_inverse=True)
    images = reader.get_batch(uniq).asnumpy()[inverse] if len(uniq) else \
        np.zeros((0, *(size or (0, 0)), 3), np.uint8)
    src = tuple(reader[0].shape[:2]) if size is None and len(reader) else tuple(size or (0, 0))
    del reader
    return WindowFrames(np.ascontiguousarray(images), pts[idx], src_fps, src, len(uniq))

