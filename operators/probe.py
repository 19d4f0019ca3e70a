"""probe: container and stream facts (ffprobe via ffmpeg-python); rejects what is not a usable video.

Non-video, zero-byte, truncated and undecodable files fail here with one clear line on the video row,
and later steps skip them.
"""
from __future__ import annotations

import pyarrow as pa

from curation.media import check_decodable, local_path, probe
from curation.operator import Operator, Resources
from schemas import VIDEOS

_PROBE_COLUMNS = ("container", "duration_s", "fps", "fps_nominal", "variable_fps", "num_frames", "width",
                  "height", "rotation", "video_codec", "pix_fmt", "bit_rate", "has_audio", "audio_codec",
                  "audio_sample_rate", "audio_channels")


class Probe(Operator):
    name = "probe"
    version = "1"
    input_table = output_table = "videos"
    writes = pa.schema([VIDEOS.field(c) for c in _PROBE_COLUMNS])
    params = {"check_decode": True}   # decode a frame at the start and at the end (finds truncation)
    resources = Resources(num_cpus=0.5)

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        with local_path(video["uri"]) as path:
            info = probe(path)
            if self.p["check_decode"]:
                check_decodable(path, info["duration_s"], info["fps"])
        return [info]
