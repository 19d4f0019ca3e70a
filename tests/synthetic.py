"""Small generated clips whose content is known, and a store of them (for the loader's tests).

Every frame carries its frame number in a strip of 12 blocks in its middle rows (Gray code: one block
changes per frame, so the strip adds the same small difference to every pair of frames); the rest is
a gradient that moves 1 px a frame. The audio is a tone per clip, sin(2 pi f t) with t the
container time, in FLAC (lossless), so a window's audio shows where it was cut from to the sample.

Kinds: ``ok``; ``black`` (black picture); ``letterbox`` (black bars top and bottom, a third of the
frame); ``cut`` (another scene from frame ``cut_at(n)`` on); ``jump`` (the motion skips 40 px there:
a removed chunk); ``silent`` (no audio stream).
"""
from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa

H, W, FPS, SR = 96, 128, 25, 16000
BITS, BLOCK, STRIP_Y = 12, 8, 40


def gray_code(n: int) -> int:
    return n ^ (n >> 1)


def frame_number(image: np.ndarray) -> int:
    """The frame number written into ``image`` (RGB, H x W at any size proportional to 96 x 128)."""
    h, w = image.shape[:2]
    sy, sx = h / H, w / W
    y0, y1 = int((STRIP_Y + 2) * sy), int((STRIP_Y + BLOCK - 2) * sy)
    g = 0
    for b in range(BITS):
        x0, x1 = int((b * BLOCK + 2) * sx), int((b * BLOCK + BLOCK - 2) * sx)
        if image[y0:y1, x0:x1].mean() > 127:
            g |= 1 << b
    n, shift = g, g >> 1     # Gray code back to binary
    while shift:
        n ^= shift
        shift >>= 1
    return n


def cut_at(n: int) -> int:
    """The frame where a ``cut`` clip's second scene / a ``jump`` clip's skip starts (mid-window)."""
    return n // 2 + 12


def frame(k: int, kind: str, n: int) -> np.ndarray:
    x = np.arange(W)[None, :]
    y = np.arange(H)[:, None]
    phase = k + (40 if kind == "jump" and k >= cut_at(n) else 0)
    img = np.zeros((H, W, 3), np.uint8)
    if kind != "black":
        scene_b = kind == "cut" and k >= cut_at(n)
        base = (x * 2 + phase * 1) % 256 if not scene_b else (y * 3 + phase) % 256
        img[..., 0] = base
        img[..., 1] = 60 + (y * 1) % 120 if not scene_b else 200 - base // 2
        img[..., 2] = 255 - base if not scene_b else 40
    if kind == "letterbox":
        img[:H // 6] = 0
        img[-H // 6:] = 0
    code = gray_code(k)
    for b in range(BITS):
        img[STRIP_Y:STRIP_Y + BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if code >> b & 1 else 0
    return img


def tone(f: float, n_samples: int, t0: float = 0.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * (t0 + np.arange(n_samples) / SR))).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def make_clip(path: Path, n: int, kind: str = "ok", f: float = 440.0) -> Path:
    """Write an MKV (H.264, every 10th frame a keyframe; FLAC audio unless ``silent``)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W}x{H}", "-r", str(FPS), "-i", "-"]
    if kind != "silent":
        wav = write_wav(path.with_suffix(".wav"), tone(f, int(n / FPS * SR)))
        cmd += ["-i", str(wav), "-c:a", "flac"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "8", "-g", "10", "-pix_fmt", "yuv444p",
            "-shortest" if kind != "silent" else "-y", str(path)]
    frames = b"".join(frame(k, kind, n).tobytes() for k in range(n))
    subprocess.run(cmd, input=frames, check=True)
    return path


STATES = ("speak", "listen", "idle", "discard")


def state_of(k: int) -> str:
    """The synthetic per-frame state of frame k (5-frame runs cycling speak, listen, idle, discard)."""
    return STATES[(k // 5) % 4]


CLIPS_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("video_id", pa.string()), ("shot_index", pa.int32()),
    ("clip_index", pa.int32()), ("clip_kind", pa.string()), ("start_s", pa.float64()),
    ("end_s", pa.float64()), ("duration_s", pa.float64()), ("width", pa.int32()),
    ("height", pa.int32()), ("fps", pa.float64()), ("frame_times", pa.list_(pa.float64())),
    ("frame_states", pa.list_(pa.string())), ("audio_mask", pa.list_(pa.int8())),
    ("camera_motion", pa.string()), ("jump_times_s", pa.list_(pa.float64())),
])


def build_store(root: Path, spec: list[tuple[str, str, int]]) -> tuple[str, dict]:
    """A store of generated clips: ``spec`` = [(name, kind, frames)]. Each video is one clip
    (0.0 s to its end) labelled with ``state_of`` per frame. Returns (store uri, {name: tone Hz})."""
    from curation.store import Store
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    videos, clips, tones = [], [], {}
    for i, (name, kind, n) in enumerate(spec):
        f = 300.0 + 50.0 * i
        tones[name] = f
        path = make_clip(media / f"{name}.mkv", n, kind, f)
        vid = f"v{i:03d}_{name}"
        videos.append({"video_id": vid, "uri": str(path), "has_audio": kind != "silent",
                       "fps": float(FPS), "width": W, "height": H, "duration_s": n / FPS,
                       "rotation": 0, "num_frames": n})
        times = [k / FPS for k in range(n)]
        states = [state_of(k) for k in range(n)]
        clips.append({"clip_id": f"{vid}:0:0", "video_id": vid, "shot_index": 0, "clip_index": 0,
                      "clip_kind": "shot", "start_s": 0.0, "end_s": n / FPS, "duration_s": n / FPS,
                      "width": W, "height": H, "fps": float(FPS), "frame_times": times,
                      "frame_states": states,
                      "audio_mask": [{"speak": 1, "listen": 2}.get(s, 0) for s in states],
                      "camera_motion": "static", "jump_times_s": []})
    uri = str(root / "store")
    store = Store(uri)
    store.upsert("videos", videos)
    store.upsert("clips", pa.Table.from_pylist(clips, schema=CLIPS_SCHEMA))
    return uri, tones


def add_audio_pcm(uri: str) -> None:
    """Runs the audio_pcm operator over the store's videos and writes its columns (as a run does)."""
    from curation.store import Store
    from operators.audio_pcm import AudioPcm
    store, op = Store(uri), AudioPcm()
    rows = []
    for video in store.query("videos").to_pylist():
        (row,) = op.process(video, [video])
        rows.append({"video_id": video["video_id"], **row})
    store.annotate("videos", pa.Table.from_pylist(rows, schema=pa.schema(
        [pa.field("video_id", pa.string())] + list(AudioPcm.writes))))
