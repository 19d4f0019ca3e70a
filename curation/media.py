"""Media access: content ids, ffprobe, audio extraction (ffmpeg) and frame decoding (decord).

Everything that touches a media file goes through here, so operators never call ffmpeg or decord
themselves and a run decodes each video once for all of its frame operators.

Frames of a span come whole (:meth:`VideoDecoder.span`) or as consecutive chunks of at most a given
number of seconds (:meth:`VideoDecoder.chunks`, for long shots: memory bounded by the chunk, not the
shot); both give every part of a :class:`FrameSpec` the same frames on the same sampling grid.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv",
                    ".wmv", ".3gp"}
_HASH_CHUNK = 4 << 20


class MediaError(RuntimeError):
    """A media problem worth one clear line on the row (not a traceback)."""


# ---- files and ids --------------------------------------------------------------------------------
def _fs_and_path(uri: str):
    import pyarrow.fs as pafs
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri.removeprefix("file://")


def file_size(uri: str) -> int:
    fs, path = _fs_and_path(uri)
    info = fs.get_file_info(path)
    if info.size is None:
        raise MediaError(f"not a file: {uri}")
    return info.size


def content_id(uri: str) -> str:
    """A content hash: blake2b of the size and the whole file (files over 64 MiB: first, middle and
    last 4 MiB), so the same file under two names is one video and a changed file is a new one."""
    fs, path = _fs_and_path(uri)
    size = file_size(uri)
    h = hashlib.blake2b(digest_size=12)
    h.update(str(size).encode())
    with fs.open_input_file(path) as f:
        if size <= 16 * _HASH_CHUNK:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        else:
            for offset in (0, size // 2, size - _HASH_CHUNK):
                f.seek(offset)
                h.update(f.read(_HASH_CHUNK))
    return h.hexdigest()


@contextlib.contextmanager
def local_path(uri: str):
    """A local file path for ``uri``; object-store files are copied to a temporary file first."""
    if "://" not in uri or uri.startswith("file://"):
        yield uri.removeprefix("file://")
        return
    fs, path = _fs_and_path(uri)
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, tmp, _HASH_CHUNK)
        tmp.flush()
        yield tmp.name


# ---- probe -----------------------------------------------------------------------------------------
def _rate(text: str | None) -> float | None:
    if not text or text in ("0/0", "N/A"):
        return None
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 and math.isfinite(value) else None


def _rotation(stream: dict) -> int:
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            return int(round(float(sd["rotation"]))) % 360  # as ffprobe reports the display matrix
    rotate = (stream.get("tags") or {}).get("rotate")
    return int(rotate) % 360 if rotate else 0


def probe(path: str) -> dict:
    """Container and stream facts of a local file. Raises MediaError with one clear line."""
    import ffmpeg

    if not os.path.exists(path):
        raise MediaError(f"file not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        info = ffmpeg.probe(path)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise MediaError(f"not a readable media file: {msg[-1] if msg else 'ffprobe failed'}") from None
    fmt = info.get("format", {})
    videos = [s for s in info.get("streams", []) if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    audios = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not videos:
        raise MediaError(f"no video stream (format {fmt.get('format_name', '?')})")
    v = videos[0]
    a = audios[0] if audios else {}
    fps_avg = _rate(v.get("avg_frame_rate"))
    fps_nom = _rate(v.get("r_frame_rate"))
    fps = fps_avg or fps_nom
    duration = _float(v.get("duration")) or _float(fmt.get("duration"))
    if not fps or not duration or duration <= 0:
        raise MediaError("video stream has no usable duration or frame rate")
    rotation = _rotation(v)
    w, h = int(v.get("width") or 0), int(v.get("height") or 0)
    if w <= 0 or h <= 0:
        raise MediaError("video stream has no frame size")
    if rotation in (90, 270):
        w, h = h, w
    nb = v.get("nb_frames")
    return {
        "container": fmt.get("format_name"),
        "duration_s": duration,
        "fps": fps,
        "fps_nominal": fps_nom or fps,
        "variable_fps": bool(fps_avg and fps_nom and abs(fps_avg - fps_nom) / fps_nom > 0.01),
        "num_frames": int(nb) if nb and str(nb).isdigit() else int(round(duration * fps)),
        "width": w,
        "height": h,
        "rotation": rotation,
        "video_codec": v.get("codec_name"),
        "pix_fmt": v.get("pix_fmt"),
        "bit_rate": int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        "has_audio": bool(audios),
        "audio_codec": a.get("codec_name"),
        "audio_sample_rate": int(a["sample_rate"]) if a.get("sample_rate") else None,
        "audio_channels": int(a["channels"]) if a.get("channels") else None,
    }


def check_decodable(path: str, duration_s: float, fps: float = 25.0) -> None:
    """Decode a frame at the start and one near the end (half a second plus two frame intervals
    before it, so that 1 fps video has a frame there); a truncated or corrupt stream fails here."""
    for t in (0.0, max(0.0, duration_s - 0.5 - 2.0 / max(fps, 0.1))):
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{t:.3f}", "-i", path, "-map", "0:v:0",
               "-frames:v", "1", "-vf", "scale=16:16", "-pix_fmt", "gray", "-f", "rawvideo", "-"]
        r = subprocess.run(cmd, capture_output=True)
        err = r.stderr.decode(errors="replace").strip().splitlines()
        if r.returncode != 0 or len(r.stdout) < 256:
            where = "the start" if t == 0 else f"{t:.1f} s"
            raise MediaError(f"undecodable or truncated video: no frame decoded at {where}"
                             + (f" ({err[-1]})" if err else ""))


def _float(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ---- timeline --------------------------------------------------------------------------------------
# One presentation timeline for every stream of a file: the container's, as a player and ``ffmpeg -ss``
# see it. A time t (seconds) is a stream's pts (edit lists applied by the demuxer, encoder delay /
# priming samples dropped by the decoder) minus the container's start time (the earliest stream
# start, libavformat's ``AVFormatContext.start_time``). Frames (decord, PyAV, the ffmpeg pipe) and
# audio samples (PyAV, the ffmpeg pipe) are placed on it, so an audio stream that starts 0.5 s after
# the video is heard 0.5 s after the first frame, not with it (ffmpeg -itsoffset, edit lists).
def stream_origins(path: str) -> tuple[float, float | None]:
    """(container start, video stream start - container start) in seconds: where the file's timeline
    begins, and where its first video frame sits on it (None without a video stream; 0 when the
    file cannot be opened with PyAV: decord and ffmpeg then decide alone)."""
    import av
    try:
        with av.open(path) as c:
            origin = c.start_time / 1e6 if c.start_time is not None else 0.0
            if not c.streams.video:
                return origin, None
            v = c.streams.video[0]
            if v.start_time is None or not v.time_base:
                return origin, 0.0
            return origin, max(0.0, float(v.start_time * v.time_base) - origin)
    except Exception:  # noqa: BLE001 - not readable by PyAV: no offset known
        return 0.0, 0.0


# ---- audio -----------------------------------------------------------------------------------------
def load_audio(path: str, sample_rate: int = 16000, start_s: float = 0.0,
               duration_s: float | None = None) -> np.ndarray:
    """Mono float32 PCM in [-1, 1] at ``sample_rate`` of the first audio stream, placed on the file's
    presentation timeline (see :func:`stream_origins`): sample k is at ``start_s + k / sample_rate``
    seconds, the time frames of :class:`VideoDecoder` use. Where the stream has no samples yet (it
    starts after ``start_s``: a delayed or late audio stream) the result holds zeros (silence); it
    ends where the stream ends (shorter than ``duration_s`` then). Resampled and down-mixed by
    libswresample, in-process through PyAV (an ffmpeg process per call cost about 0.12 s of start-up,
    more than the whole decode of a short clip; the two agree to 1 LSB on the shared clips). Streams
    PyAV cannot read go through an ffmpeg pipe, which places them the same way."""
    try:
        return _load_audio_av(path, sample_rate, start_s, duration_s)
    except MediaError:
        raise
    except Exception:  # noqa: BLE001 - PyAV could not read it: let ffmpeg try (and explain)
        return _load_audio_ffmpeg(path, sample_rate, start_s, duration_s)


def _load_audio_av(path: str, sample_rate: int, start_s: float, duration_s: float | None) -> np.ndarray:
    """Samples from ``start_s`` on the presentation timeline, placed by the pts of the first decoded
    frame (after the decoder dropped any priming samples) and contiguous from there. A late start
    seeks to a packet a second before it."""
    import av
    with av.open(path) as container:
        if not container.streams.audio:
            raise MediaError("audio extraction failed: the file has no audio stream")
        stream = container.streams.audio[0]
        tb = float(stream.time_base or 0)
        origin = container.start_time / 1e6 if container.start_time is not None else 0.0
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        if start_s > 2.0 and tb > 0:
            container.seek(int((start_s + origin - 1.0) / tb), stream=stream, backward=True)
        want = None if duration_s is None else max(0, int(round(duration_s * sample_rate)))
        first, chunks, have = None, [], 0
        for frame in container.decode(stream):
            if first is None:
                if frame.pts is None or not tb:   # cannot place the samples: the stream's start
                    first = (float(stream.start_time * tb) - origin) if stream.start_time is not None and tb else 0.0
                else:
                    first = float(frame.pts * tb) - origin
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                have += out.samples
            if want is not None and have >= want + (start_s - first + 1.0) * sample_rate:
                break
        else:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    skip = int(round((start_s - (first or 0.0)) * sample_rate))
    if skip < 0:   # the stream starts after start_s: silence until its first sample
        pcm = np.concatenate([np.zeros(-skip, np.int16), pcm])
    else:
        pcm = pcm[skip:]
    return (pcm if want is None else pcm[:want]).astype(np.float32) / 32768.0


def _load_audio_ffmpeg(path: str, sample_rate: int, start_s: float,
                       duration_s: float | None) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if start_s:
        cmd += ["-ss", f"{start_s:.6f}"]
    cmd += ["-i", path]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    cmd += ["-map", "0:a:0", *PLACED_AUDIO, "-ac", "1", "-ar", str(sample_rate), "-f", "s16le",
            "-acodec", "pcm_s16le", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError(f"audio extraction failed: {msg[-1] if msg else 'ffmpeg error'}")
    return np.frombuffer(r.stdout, np.int16).astype(np.float32) / 32768.0


# ffmpeg arguments that keep an audio stream's place on the timeline in a raw (timestamp-less) output:
# silence from the output's start (the -ss position, or the container start) to the stream's first
# sample. Without them a raw PCM output starts with the stream's first sample, whenever that is.
PLACED_AUDIO = ("-af", "aresample=async=1:first_pts=0")


def extract_wav(path: str, out_path: str, sample_rate: int = 16000) -> str:
    """Write the first audio stream as a 16-bit mono WAV at ``sample_rate``, on the file's
    presentation timeline (its first sample at the container start, as :func:`load_audio`)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", path, "-map", "0:a:0", *PLACED_AUDIO, "-ac", "1",
           "-ar", str(sample_rate), "-acodec", "pcm_s16le", out_path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise MediaError(f"audio extraction failed: {r.stderr.strip().splitlines()[-1:]}")
    return out_path


# ---- frames ----------------------------------------------------------------------------------------
def import_decord():
    """``import decord``, without its CUDA preload. decord2's import dlopens every shared library
    under site-packages/nvidia/*/lib with RTLD_GLOBAL (meant for its GPU build), and with the CUDA
    build of torch installed that includes libnvblas, which then takes over the process's BLAS
    symbols: the next CPU matrix product (Whisper's mel filter bank, silero-vad) crashed the
    process with a segfault. Our decoding is on the CPU, so the preload is skipped: decord asks
    ``importlib.util.find_spec("nvidia")`` for the packages, and is told there are none."""
    import sys
    if "decord" in sys.modules:
        return sys.modules["decord"]
    import importlib.util
    real = importlib.util.find_spec

    def no_nvidia(name, package=None):
        return None if name == "nvidia" else real(name, package)
    importlib.util.find_spec = no_nvidia
    try:
        import decord
    finally:
        importlib.util.find_spec = real
    return decord


@dataclass(frozen=True)
class FrameSpec:
    """What a frame operator needs: sampling rate (None = every frame) and the long side in pixels
    (None = the video's own size, for operators that crop small regions such as faces).

    ``parts``: for the union of several specs (:meth:`union`), the specs it was made of. Given such a
    spec, :meth:`VideoDecoder.span` decodes the span once and makes each part's view directly at its
    own rate and size (no decode at the largest size followed by a resize of every frame)."""
    fps: float | None = 2.0
    max_side: int | None = 480
    parts: tuple["FrameSpec", ...] = field(default=(), compare=False, repr=False)

    @staticmethod
    def union(specs: list["FrameSpec"]) -> "FrameSpec":
        fpss = [s.fps for s in specs]
        sides = [s.max_side for s in specs]
        parts = tuple(dict.fromkeys(FrameSpec(s.fps, s.max_side) for s in specs))
        return FrameSpec(fps=None if any(f is None for f in fpss) else max(fpss),
                         max_side=None if any(m is None for m in sides) else max(sides),
                         parts=parts if len(parts) > 1 else ())


@dataclass
class Frames:
    """Decoded RGB frames of one time span: ``images`` (N, H, W, 3) uint8 and their ``times`` (s).

    ``scale`` is the decoded size over the displayed size of the video: a box in display pixels
    (as stored in the tables) is ``box * scale`` in these images (see :func:`crop_boxes`).
    ``views``: frames of the same span already decoded at other (fps, max_side), which
    :meth:`sample` returns as they are (a span decoded for a union :class:`FrameSpec`).
    ``derived``: what steps compute from these frames and other steps of the same fused group
    reuse (the face crops of a track, read by ``asd`` and ``sync``), keyed by what it is; it goes
    with the frames. Steps still never write into ``images``."""
    images: np.ndarray
    times: np.ndarray
    fps: float                      # native average frame rate of the video
    indices: np.ndarray = field(default=None)  # frame numbers in the video
    scale: float = 1.0
    views: dict = field(default_factory=dict, repr=False)
    derived: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.times)

    def sample(self, fps: float | None, max_side: int | None = None) -> "Frames":
        """A view at a lower sampling rate and/or a smaller size (one decode serves several specs)."""
        if (fps, max_side) in self.views:
            return self.views[(fps, max_side)]
        keep = _thin(self.times, fps, self.fps)
        if len(keep) == len(self.times) and (max_side is None or not self.images.size
                                             or max(self.images.shape[1:3]) <= max_side):
            return self   # the same frames: no copy (steps share frames; none may write to them)
        images = self.images[keep]
        scale = self.scale
        if max_side is not None and images.size and max(images.shape[1:3]) > max_side:
            images = resize_batch(images, max_side)
            scale = self.scale * images.shape[2] / self.images.shape[2]
        return Frames(images=images, times=self.times[keep], fps=self.fps,
                      indices=None if self.indices is None else self.indices[keep], scale=scale)

    def nbytes(self) -> int:
        """Bytes of decoded pictures this holds: its images and its views' (each array once)."""
        arrays = {id(a): a for a in [self.images, *(v.images for v in self.views.values())]}
        return sum(a.nbytes for a in arrays.values())

    def gray(self) -> np.ndarray:
        """(N, H, W) BT.601 luma, in one OpenCV call over the stacked frames."""
        import cv2
        n, h, w = self.images.shape[:3]
        if n == 0:
            return np.zeros((0, h, w), np.uint8)
        stacked = np.ascontiguousarray(self.images).reshape(n * h, w, 3)
        return cv2.cvtColor(stacked, cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def crop_boxes(images: np.ndarray, boxes: np.ndarray, size: int | tuple[int, int],
               scale: float = 1.0, expand: float = 1.0, pad_value: int = 0) -> np.ndarray:
    """Crops of ``images`` (N, H, W, C) at ``boxes`` (N, 4: x1, y1, x2, y2 in display
    pixels; NaN rows give blank crops), each box grown by ``expand`` around its centre, multiplied
    by ``scale`` (``Frames.scale``) into image pixels, padded with ``pad_value`` where it leaves the
    image and resized to ``size`` (an int: square). Returns (N, h, w, C) uint8."""
    import cv2
    w_out, h_out = (size, size) if isinstance(size, int) else size
    out = np.full((len(images), h_out, w_out) + images.shape[3:], pad_value, np.uint8)
    H, W = images.shape[1:3]
    for i, (im, box) in enumerate(zip(images, np.asarray(boxes, np.float64))):
        if not np.all(np.isfinite(box)):
            continue
        cx, cy = (box[0] + box[2]) / 2 * scale, (box[1] + box[3]) / 2 * scale
        hw, hh = (box[2] - box[0]) / 2 * scale * expand, (box[3] - box[1]) / 2 * scale * expand
        x1, y1, x2, y2 = int(round(cx - hw)), int(round(cy - hh)), int(round(cx + hw)), int(round(cy + hh))
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        patch = _inside(im, x1, y1, x2, y2, pad_value)
        out[i] = cv2.resize(patch, (w_out, h_out), interpolation=cv2.INTER_AREA
                            if patch.shape[1] > w_out else cv2.INTER_LINEAR).reshape(out[i].shape)
    return out


def _inside(im: np.ndarray, x1: int, y1: int, x2: int, y2: int, pad_value: int) -> np.ndarray:
    """``im[y1:y2, x1:x2]`` where the box may leave the image: a view when it does not, else the part
    inside placed on a ``pad_value`` patch (not the whole image padded: a copy of the frame per crop)."""
    H, W = im.shape[:2]
    if x1 >= 0 and y1 >= 0 and x2 <= W and y2 <= H:
        return im[y1:y2, x1:x2]
    out = np.full((y2 - y1, x2 - x1) + im.shape[2:], pad_value, im.dtype)
    ya, yb, xa, xb = min(max(y1, 0), H), max(min(y2, H), 0), min(max(x1, 0), W), max(min(x2, W), 0)
    if yb > ya and xb > xa:
        out[ya - y1:yb - y1, xa - x1:xb - x1] = im[ya:yb, xa:xb]
    return out


def resize_batch(images: np.ndarray, max_side: int) -> np.ndarray:
    import cv2
    size = _resized_size(*images.shape[1:3], max_side)
    return np.stack([cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images])


class ChunksRestart(Exception):
    """A chunked decode must start again from the span's first frame: the path it took failed
    after chunks were handed out (decord failed on a later window: the video switched to ffmpeg; or
    PyAV's frames stopped matching decord's index: pass ``views=False`` again). The chunks handed
    out so far are void; :meth:`VideoDecoder.span` would have used the other path for the span."""


class _NotMatched(Exception):
    """PyAV's frames could not be matched to the decoder's frame times: use the decord path."""


class VideoDecoder:
    """One reader per video: frame times once (decord's index), then spans decoded at a given spec.

    ``max_side``: the long side of decoded frames (None = the displayed size); ``size``: an exact
    (width, height) instead, aspect ratio not kept (networks with a fixed input, e.g. TransNetV2's
    48x27). ``threads``: decoder threads of the single-pass PyAV decode of :meth:`span` with a union
    :class:`FrameSpec` (frame threading: with 2 threads on 2 cores it decodes about as fast as
    ``ffmpeg -f null`` with its default threads)."""

    def __init__(self, path: str, rotation: int = 0, max_side: int | None = 480,
                 display_size: tuple[int | None, int | None] = (None, None),
                 size: tuple[int, int] | None = None, threads: int = 2):
        decord = import_decord()
        self._decord = decord
        # decord2 applies the display matrix itself: frames come out in display orientation and
        # width/height below are display sizes (tests/test_media.py checks a rotated file)
        w, h = display_size
        if not (w and h):  # not probed yet: ask the decoder
            try:
                probe_reader = decord.VideoReader(path, num_threads=1)
                h, w = probe_reader[0].shape[:2] if len(probe_reader) else (0, 0)
            except decord.DECORDError as e:
                raise MediaError(f"decoder cannot open the video: {str(e).splitlines()[0]}") from None
            del probe_reader
        self.display_size = (w, h)
        self.max_side = max_side
        if size is not None:
            self.width, self.height = size
        else:
            self.width, self.height = self._fit(max_side)
        # decord's resize returns garbage (4 channels) at odd sizes: decode at twice the size and
        # halve it (an exact 2x2 area average)
        self._halve = bool(self.width % 2 or self.height % 2)
        dw, dh = (2 * self.width, 2 * self.height) if self._halve else (self.width, self.height)
        try:
            self.reader = decord.VideoReader(path, width=dw, height=dh, num_threads=1)
        except decord.DECORDError as e:
            raise MediaError(f"decoder cannot open the video: {str(e).splitlines()[0]}") from None
        self.scale = self.width / w if w else 1.0  # decoded / displayed size
        self.rotation = rotation  # informational: decord already rotated the frames
        self.path = path
        self.threads = max(1, min(int(threads), os.cpu_count() or 1))
        self.backend = "decord"
        self._ahead = False   # decord read since the last pause (see pause)
        n = len(self.reader)
        if n == 0:
            raise MediaError("no decodable frames")
        ts = self.reader.get_frame_timestamp(np.arange(n))
        # decord counts from the video stream's first frame; the file's timeline (stream_origins)
        # may start earlier (an audio stream that starts first, an edit list, encoder delay)
        self.offset_s = stream_origins(path)[1] or 0.0
        self.times = ts[:, 0].astype(np.float64) + self.offset_s
        self.fps = float(self.reader.get_avg_fps()) or (n / max(self.times[-1], 1e-6))

    def _fit(self, max_side: int | None) -> tuple[int, int]:
        """Even (width, height) of a frame whose long side is at most ``max_side``."""
        w, h = self.display_size
        scale = min(1.0, max_side / max(h, w)) if h and w and max_side else 1.0
        return max(2, int(round(w * scale / 2) * 2)), max(2, int(round(h * scale / 2) * 2))

    def __len__(self) -> int:
        return len(self.times)

    def positions(self, start_s: float, end_s: float) -> np.ndarray:
        """Frame numbers of the frames with start_s <= time < end_s."""
        return np.nonzero((self.times >= start_s - 1e-6) & (self.times < end_s - 1e-6))[0]

    def pause(self) -> None:
        """Stop decord decoding ahead. After a read, decord's background thread goes on decoding the
        rest of the video into memory while the caller works (measured: 3.6 GB of a 450 s 480x360
        video within 7.5 s of idling after one 60-frame batch; dmlc/decord issues 157, 304); a seek
        stops it. Costs the next read a seek back to its keyframe (at most a GOP decoded again).
        Call it before long work with the decoder still open (the chunks do it after each read)."""
        if self.backend == "decord" and self._ahead:
            self._ahead = False
            try:
                self.reader.seek(0)
            except self._decord.DECORDError:   # then it decodes ahead: memory, not results
                pass

    def nbytes(self, idx: np.ndarray, spec: "FrameSpec") -> int:
        """About the bytes of decoded frames :meth:`span` holds for the frames ``idx`` at ``spec``
        (each part's kept frames at its size), to plan how many rows to decode at once."""
        times = self.times[idx]
        total = 0
        for part in spec.parts or (spec,):
            w, h = self._fit(part.max_side)
            total += len(_thin(times, part.fps, self.fps)) * w * h * 3
        return total

    def span(self, start_s: float, end_s: float, fps: "float | None | FrameSpec" = None) -> Frames:
        """The frames with start_s <= time < end_s, every frame or sampled at ``fps``.

        ``fps`` may be a union :class:`FrameSpec` (``FrameSpec.union``): then every frame of the span
        is decoded once and each of its parts gets its frames at its own rate and size, converted
        straight from the decoded picture; ``frames.sample(part.fps, part.max_side)`` returns them.
        The returned Frames' own images are those of the part with the most frames."""
        parts = fps.parts if isinstance(fps, FrameSpec) else ()
        if isinstance(fps, FrameSpec):
            fps = fps.fps
        idx = self.positions(start_s, end_s)
        if len(idx) == 0:
            return Frames(np.zeros((0, self.height, self.width, 3), np.uint8), np.zeros(0), self.fps,
                          idx, scale=self.scale)
        if parts and not self.rotation:
            try:
                return self._views(idx, parts)
            except _NotMatched:
                pass
        frames = self._span(idx, fps)
        if parts:  # rotated, or timestamps PyAV and decord disagree on: views from one decode
            frames.views = {(p.fps, p.max_side): frames.sample(p.fps, p.max_side) for p in parts}
        return frames

    def chunks(self, start_s: float, end_s: float, fps: "float | None | FrameSpec" = None,
               chunk_s: float = 10.0, views: bool = True) -> "SpanChunks":
        """The frames :meth:`span` gives, as consecutive chunks of at most ``chunk_s`` seconds of the
        span (memory: one chunk, not the span). Every part's frames are on the grid of the whole span
        (its kept frames are chosen over the whole span, relative to its first frame, then cut into
        chunks), so the chunks of a part put together equal ``span(...).sample(part)``, on the
        single-pass PyAV path and on the decord / ffmpeg path alike. Each chunk's ``views`` hold
        every part's frames (a plain ``fps`` is the one part ``(fps, max_side)``); take them with
        ``chunk.sample(part.fps, part.max_side)``. ``SpanChunks.times`` gives each part's frame
        times of the whole span before anything is decoded beyond the first chunk. Iterating may raise
        :class:`ChunksRestart`: then take ``chunks(..., views=False)`` and start over."""
        parts = fps.parts if isinstance(fps, FrameSpec) else ()
        if isinstance(fps, FrameSpec):
            fps = fps.fps
        return SpanChunks(self, self.positions(start_s, end_s), fps, parts, chunk_s, views)

    def _span(self, idx: np.ndarray, fps: float | None) -> Frames:
        if self.backend == "decord":
            keep = _thin(self.times[idx], fps, self.fps)
            try:
                images = self._read(idx[keep])
                return Frames(images=images, times=self.times[idx[keep]], fps=self.fps,
                              indices=idx[keep], scale=self.scale)
            except self._decord.DECORDError:
                # decord fails on some streams (seen: HEVC in .mov, "Error sending packet");
                # ffmpeg decodes them: switch this video to the ffmpeg pipe
                self.backend = "ffmpeg"
        images = self._ffmpeg_span(self.times[idx[0]], self.times[idx[-1]], len(idx))
        idx = idx[: len(images)]
        keep = _thin(self.times[idx], fps, self.fps)
        return Frames(images=images[keep], times=self.times[idx[keep]], fps=self.fps, indices=idx[keep],
                      scale=self.scale)

    def _read(self, frames: np.ndarray, batch: int = 8) -> np.ndarray:
        """The decoder's frames ``frames`` (sorted frame numbers) from decord, ``batch`` at a time into
        one array (one get_batch of them all held its result and the numpy copy at once: twice the
        frames). Consecutive reads go on decoding where the last one stopped: the same pictures.
        8 frames a batch (12 MB at 960 x 540, twice: decord's and numpy's copy) let the allocator
        reuse one batch's memory for the next; 32-frame batches were mapped and unmapped each time,
        every page faulted in afresh (on 3 clips: 3.3x the page faults, 4x the system time)."""
        images = np.empty((len(frames), self.height, self.width, 3), np.uint8)
        self._ahead = True
        for a in range(0, len(frames), batch):
            part = self.reader.get_batch(frames[a:a + batch]).asnumpy()
            images[a:a + len(part)] = _halve(part) if self._halve else part
            del part
        return images

    def _views(self, idx: np.ndarray, parts: tuple[FrameSpec, ...]) -> Frames:
        """One PyAV decode of the frames ``idx`` into each part's view (the whole span as one chunk
        of :meth:`_view_chunks`)."""
        chunks = self._view_chunks(idx, parts, [(0, len(idx))])
        try:
            return next(chunks)
        finally:
            chunks.close()

    def _view_chunks(self, idx: np.ndarray, parts: tuple[FrameSpec, ...],
                     windows: list[tuple[int, int]]) -> Iterator[Frames]:
        """One PyAV decode of the frames ``idx``; each part's frames converted (sws, bicubic like
        decord) straight to its own size. Frames are matched to decord's index by timestamp. Yields
        one Frames (with ``views``) per window ``(a, b)`` of positions into ``idx``; each part keeps
        the frames :func:`_thin` picks over the whole of ``idx``. Raises _NotMatched (possibly after
        some chunks) when a frame cannot be matched."""
        import av
        from av.video.reformatter import VideoReformatter

        times = self.times[idx]
        plans = []   # per part: key, kept positions, size, reformatter
        wanted: dict[int, list[tuple[int, int]]] = {}  # position -> [(plan, slot in its keep)]
        for k, part in enumerate(parts):
            keep = _thin(times, part.fps, self.fps)
            plans.append(((part.fps, part.max_side), keep, self._fit(part.max_side), VideoReformatter()))
            for slot, pos in enumerate(keep):
                wanted.setdefault(int(pos), []).append((k, slot))
        done = np.zeros(len(times), bool)
        tol = 1e-3

        def start(w: int):   # the output arrays of window w, and where each part's slots start
            a, b = windows[w]
            firsts, outs = [], []
            for _, keep, (fw, fh), _ in plans:
                lo, hi = np.searchsorted(keep, [a, b])
                firsts.append(int(lo))
                outs.append(np.empty((hi - lo, fh, fw, 3), np.uint8))
            return firsts, outs

        def finish(w: int, firsts, outs) -> Frames:
            a, b = windows[w]
            if not done[[p for p in range(a, b) if p in wanted]].all():
                raise _NotMatched
            views = {}
            for (key, keep, (fw, _), _), lo, images in zip(plans, firsts, outs):
                kept = keep[lo:lo + len(images)]
                views[key] = Frames(images=images, times=times[kept], fps=self.fps, indices=idx[kept],
                                    scale=fw / self.display_size[0] if self.display_size[0] else 1.0)
            densest = max(views.values(), key=len)
            return Frames(images=densest.images, times=densest.times, fps=self.fps,
                          indices=densest.indices, scale=densest.scale, views=views)

        w = 0
        firsts, outs = start(0)
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.threads
                tb = float(stream.time_base)
                t0 = stream.start_time
                if t0 is None or not tb:
                    raise _NotMatched
                if times[0] > self.offset_s:   # to the keyframe at or before the span's first frame
                    container.seek(int(t0 + (times[0] - self.offset_s) / tb), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        raise _NotMatched
                    t = (frame.pts - t0) * tb + self.offset_s   # decord's time of this frame
                    if t > times[-1] + tol:
                        break
                    pos = int(np.searchsorted(times, t - tol))
                    if pos >= len(times) or abs(times[pos] - t) > tol:
                        continue
                    while pos >= windows[w][1]:   # past the window: it is complete
                        chunk = finish(w, firsts, outs)
                        del outs
                        yield chunk
                        del chunk
                        w += 1
                        firsts, outs = start(w)
                    if pos < windows[w][0]:      # a repeated timestamp of a window already given
                        continue
                    done[pos] = True
                    for k, slot in wanted.get(pos, ()):
                        (fw, fh), ref = plans[k][2], plans[k][3]
                        outs[k][slot - firsts[k]] = ref.reformat(frame, width=fw, height=fh, format="rgb24",
                                                                 interpolation="BICUBIC").to_ndarray()
        except (av.FFmpegError, OSError):
            raise _NotMatched from None
        while True:   # the decode ended: the last windows
            yield finish(w, firsts, outs)
            w += 1
            if w == len(windows):
                return
            firsts, outs = start(w)

    def _plain_chunks(self, idx: np.ndarray, fps: float | None, parts: tuple[FrameSpec, ...],
                      windows: list[tuple[int, int]]) -> Iterator[Frames]:
        """:meth:`_span` (and :meth:`span`'s views of its frames for ``parts``) window by window:
        decord reads each window's kept frames; on a stream decord fails on, one ffmpeg pipe from
        the window it failed on to the end of the span. The kept frames are chosen over the whole
        span, the parts' frames over those (as :meth:`Frames.sample` chooses them)."""
        times = self.times[idx]
        keep = _thin(times, fps, self.fps)                               # positions into idx
        part_keeps = [_thin(times[keep], p.fps, self.fps) for p in parts]  # positions into keep
        pipe = None
        try:
            for a, b in windows:
                lo, hi = (int(x) for x in np.searchsorted(keep, [a, b]))
                sel = keep[lo:hi]
                images, short = None, False
                if self.backend == "decord" and not len(sel):   # none kept in this window
                    images = np.zeros((0, self.height, self.width, 3), np.uint8)
                elif self.backend == "decord":
                    try:
                        images = self._read(idx[sel])
                        self.pause()   # the caller works on the chunk now
                    except self._decord.DECORDError:   # see _span
                        self.backend = "ffmpeg"
                        if a > 0:   # windows came from decord: start again, all from ffmpeg
                            raise ChunksRestart(f"decord failed at {times[a]:.2f}s") from None
                if images is None:
                    if pipe is None:
                        pipe = _FfmpegPipe(self, self.times[idx[a]], self.times[idx[-1]], len(idx) - a)
                    every = pipe.read(b - a)   # fewer at the end of a truncated stream
                    short = len(every) < b - a
                    sel = sel[sel < a + len(every)]
                    hi = lo + len(sel)
                    images = every[sel - a]
                    if short and not len(every):
                        return
                frames = Frames(images=images, times=times[sel], fps=self.fps, indices=idx[sel],
                                scale=self.scale)
                # (the one part is a second Frames on the same arrays: a chunk in its own views
                # would be a reference cycle, freed only by the cyclic GC, chunks piling up till then)
                frames.views = {(fps, self.max_side): Frames(images=images, times=frames.times, fps=self.fps,
                                                             indices=frames.indices, scale=self.scale)} if not parts else {
                    (p.fps, p.max_side): self._part_of(frames, pk[(pk >= lo) & (pk < hi)] - lo, p.max_side)
                    for p, pk in zip(parts, part_keeps)}
                yield frames
                del frames, images   # not held while the next window decodes
                if short:
                    return
            if pipe is not None:
                pipe.end()   # ffmpeg's exit status, as _ffmpeg_span checks it
        finally:
            if pipe is not None:
                pipe.close()

    def _part_of(self, frames: Frames, local: np.ndarray, max_side: int | None) -> Frames:
        """The frames ``local`` of a decoded chunk at ``max_side``, as :meth:`Frames.sample` makes
        them from the whole span (also when the chunk holds none of them)."""
        images, scale = frames.images[local], frames.scale
        h, w = frames.images.shape[1:3]
        if max_side is not None and max(h, w) > max_side:
            if len(local):
                images = resize_batch(images, max_side)
            else:
                nw, nh = _resized_size(h, w, max_side)
                images = np.zeros((0, nh, nw, 3), np.uint8)
            scale = frames.scale * images.shape[2] / w
        return Frames(images=images, times=frames.times[local], fps=frames.fps,
                      indices=frames.indices[local], scale=scale)

    def _ffmpeg_cmd(self, first_t: float, expected: int) -> list[str]:
        return ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-ss", f"{max(0.0, first_t - 0.001):.4f}",
                "-i", self.path, "-map", "0:v:0", "-frames:v", str(expected), "-vf",
                f"scale={self.width}:{self.height}:flags=area", "-fps_mode", "passthrough", "-f", "rawvideo",
                "-pix_fmt", "rgb24", "-"]

    def _ffmpeg_span(self, first_t: float, last_t: float, expected: int) -> np.ndarray:
        """Every frame from ``first_t`` to ``last_t`` through an ffmpeg rawvideo pipe (which also
        applies the display rotation), resized to the decoder's size."""
        w, h = self.width, self.height
        r = subprocess.run(self._ffmpeg_cmd(first_t, expected), capture_output=True)
        n = len(r.stdout) // (w * h * 3)
        if r.returncode != 0 or n == 0:
            msg = r.stderr.decode(errors="replace").strip().splitlines()
            raise MediaError(f"decode failed between {first_t:.2f}s and {last_t:.2f}s: "
                             f"{msg[-1] if msg else 'no frames'}")
        return np.frombuffer(r.stdout[: n * w * h * 3], np.uint8).reshape(n, h, w, 3)


class SpanChunks:
    """The frames of one span as consecutive chunks (:meth:`VideoDecoder.chunks`).

    ``windows``: the chunks' (a, b) position ranges into the span's frames (time from the span's
    first frame cut every ``chunk_s`` seconds). ``times``: per part key (fps, max_side), the times of
    all the frames that part gets over the span, in order; known once the first chunk is decoded
    (on construction: that is when the single-pass PyAV path is tried, and on a mismatch the
    decord / ffmpeg path taken instead, which has a grid of its own). A truncated stream on the
    ffmpeg path may end before all of them (as :meth:`VideoDecoder.span` ends early there too).
    A path failing after chunks were handed out raises :class:`ChunksRestart` (``views=False``
    skips the PyAV path)."""

    def __init__(self, decoder: VideoDecoder, idx: np.ndarray, fps: float | None,
                 parts: tuple[FrameSpec, ...], chunk_s: float, views: bool = True):
        if not chunk_s > 0:
            raise ValueError(f"chunk_s must be > 0, got {chunk_s!r}")
        self.decoder = decoder
        self.windows = _windows(decoder.times[idx], chunk_s)
        self._first: Frames | None = None
        span_t = decoder.times[idx]
        gen = None
        if views and len(idx) and parts and not decoder.rotation:
            gen = decoder._view_chunks(idx, parts, self.windows)
            try:
                self._first = next(gen)
            except _NotMatched:
                gen.close()
                gen = None
            else:
                self.times = {(p.fps, p.max_side): span_t[_thin(span_t, p.fps, decoder.fps)]
                              for p in parts}
        if gen is None:
            kept = span_t[_thin(span_t, fps, decoder.fps)]
            self.times = {(p.fps, p.max_side): kept[_thin(kept, p.fps, decoder.fps)] for p in parts} \
                if parts else {(fps, decoder.max_side): kept}
            gen = decoder._plain_chunks(idx, fps, parts, self.windows) if len(idx) else iter(())
        self._gen = gen

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[Frames]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            del first
        try:
            yield from self._gen
        except _NotMatched:
            raise ChunksRestart("PyAV's frames stopped matching decord's index") from None

    def close(self) -> None:
        self._first = None
        if hasattr(self._gen, "close"):
            self._gen.close()


class _FfmpegPipe:
    """The frames of :meth:`VideoDecoder._ffmpeg_span` (same ffmpeg command) read a window at a
    time from the pipe instead of all at once."""

    def __init__(self, decoder: VideoDecoder, first_t: float, last_t: float, expected: int):
        self.shape = (decoder.height, decoder.width, 3)
        self.frame_bytes = decoder.height * decoder.width * 3
        self.first_t, self.last_t = first_t, last_t
        self.total = 0
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(decoder._ffmpeg_cmd(first_t, expected), stdout=subprocess.PIPE,
                                     stderr=self.err)

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` frames (fewer only at the end of the stream, which is then checked)."""
        buf = bytearray(n * self.frame_bytes)
        view, got = memoryview(buf), 0
        while got < len(buf):
            k = self.proc.stdout.readinto(view[got:])
            if not k:
                break
            got += k
        m = got // self.frame_bytes
        self.total += m
        if m < n:
            self.end()
        return np.frombuffer(buf, np.uint8, count=m * self.frame_bytes).reshape((m, *self.shape))

    def end(self) -> None:
        """After the last frame: ffmpeg's exit status (MediaError as _ffmpeg_span raises it)."""
        self.proc.stdout.read()
        if self.proc.wait() != 0 or self.total == 0:
            self.err.seek(0)
            msg = self.err.read().decode(errors="replace").strip().splitlines()
            raise MediaError(f"decode failed between {self.first_t:.2f}s and {self.last_t:.2f}s: "
                             f"{msg[-1] if msg else 'no frames'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


def _windows(times: np.ndarray, chunk_s: float) -> list[tuple[int, int]]:
    """(a, b) position ranges of ``times`` (sorted): the frames of each ``chunk_s`` seconds counted
    from the first frame (empty ranges left out)."""
    if len(times) == 0:
        return []
    w = np.floor((times - times[0]) / chunk_s + 1e-9).astype(np.int64)
    edges = [0, *(np.flatnonzero(np.diff(w)) + 1).tolist(), len(times)]
    return list(zip(edges[:-1], edges[1:]))


def _resized_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(width, height) :func:`resize_batch` gives an h x w image at ``max_side``."""
    scale = max_side / max(h, w)
    return max(2, int(round(w * scale))), max(2, int(round(h * scale)))


def _halve(images: np.ndarray) -> np.ndarray:
    """(N, 2H, 2W, C) -> (N, H, W, C): the mean of each 2x2 block, rounded."""
    n, h2, w2, c = images.shape
    blocks = images.reshape(n, h2 // 2, 2, w2 // 2, 2, c).astype(np.uint16)
    return ((blocks.sum(axis=(2, 4)) + 2) // 4).astype(np.uint8)


def _thin(times: np.ndarray, fps: float | None, native_fps: float) -> np.ndarray:
    """Positions of the frames to keep to sample ``times`` at ``fps`` (all when None)."""
    if fps is None or len(times) < 2 or fps >= native_fps * 0.999:
        return np.arange(len(times))
    slots = np.floor((times - times[0]) * fps + 1e-6).astype(int)
    return np.unique(slots, return_index=True)[1]
