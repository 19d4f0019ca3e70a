"""probe: container and stream facts and a decode-integrity check, in-process (PyAV, one open).

Non-video, zero-byte, truncated, corrupt and undecodable files fail here with one clear line on the
video row, and later steps skip them. ``decode_check`` chooses the check (see
``curation.media_probe``): "full" decodes every frame (finds corruption anywhere; about the cost of
one decode of the video at native size without colour conversion), "ends" demuxes every packet and
decodes the first and last group of pictures (finds truncation; cheap however long the video),
"none" decodes the first frame only. ``on_corrupt``: "error" (the video fails here, the message says
how much decoded and where it stopped) or "flag" (the facts are written, ``decode_errors`` and
``decoded_frames`` tell, later steps still run; filter on them).
"""
from __future__ import annotations

import pyarrow as pa

from curation.media import MediaError, local_path
from curation.media_probe import CHECKS, facts, probe, verdict
from curation.operator import Operator, OperatorError, Resources
from schemas import VIDEOS

_PROBE_COLUMNS = ("container", "duration_s", "fps", "fps_nominal", "variable_fps", "num_frames", "width",
                  "height", "rotation", "video_codec", "pix_fmt", "bit_rate", "has_audio", "audio_codec",
                  "audio_sample_rate", "audio_channels", "decode_check", "decoded_frames", "decode_errors",
                  "decoded_until_s", "decode_error_at_s")
ON_CORRUPT = ("error", "flag")


class Probe(Operator):
    name = "probe"
    summary = ("container and stream facts in-process (PyAV), every frame decoded to catch "
               "truncation and corruption")
    version = "2"   # 2: PyAV in-process, full decode check, decode facts
    input_table = output_table = "videos"
    writes = pa.schema([VIDEOS.field(c) for c in _PROBE_COLUMNS])
    params = {"decode_check": "full", "on_corrupt": "error"}
    resources = Resources(num_cpus=0.5)

    def __init__(self, model_dir: str | None = None, **params):
        super().__init__(model_dir=model_dir, **params)
        if self.p["decode_check"] not in CHECKS:
            raise OperatorError(f"probe: decode_check must be one of {', '.join(CHECKS)}, "
                                f"not {self.p['decode_check']!r}")
        if self.p["on_corrupt"] not in ON_CORRUPT:
            raise OperatorError(f"probe: on_corrupt must be one of {', '.join(ON_CORRUPT)}, "
                                f"not {self.p['on_corrupt']!r}")

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        with local_path(video["uri"]) as path:
            info = probe(path, self.p["decode_check"])
        problem = verdict(info)
        if problem and self.p["on_corrupt"] == "error":
            raise MediaError(problem)
        return [facts(info)]
