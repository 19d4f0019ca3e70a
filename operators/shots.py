"""shots: split a video into single shots with PySceneDetect (content or adaptive detector).

Emits one ``shots`` row per shot; a video without cuts is one shot. Detector parameters come from the
workflow, so the same store can be re-cut with other thresholds.
"""
from __future__ import annotations

import pyarrow as pa

from curation.media import local_path
from curation.operator import Operator, OperatorError, Resources
from schemas import SHOTS

_COLUMNS = ("video_id", "shot_index", "start_s", "end_s", "start_frame", "end_frame", "duration_s",
            "detector")


class Shots(Operator):
    name = "shots"
    version = "1"
    input_table = "videos"
    output_table = "shots"
    reads = ("videos.fps", "videos.duration_s")
    writes = pa.schema([SHOTS.field(c) for c in _COLUMNS])
    params = {
        "detector": "content",     # content | adaptive
        "threshold": 27.0,         # content: HSV-difference threshold; adaptive: adaptive_threshold
        "min_scene_len_s": 0.5,    # shortest shot PySceneDetect may cut
        "downscale": 0,            # 0 = PySceneDetect's automatic downscale
    }
    resources = Resources(num_cpus=1)

    def _detector(self, fps: float):
        from scenedetect import AdaptiveDetector, ContentDetector
        min_len = max(1, int(round(self.p["min_scene_len_s"] * fps)))
        if self.p["detector"] == "content":
            return ContentDetector(threshold=float(self.p["threshold"]), min_scene_len=min_len)
        if self.p["detector"] == "adaptive":
            return AdaptiveDetector(adaptive_threshold=float(self.p["threshold"]) / 9.0,
                                    min_scene_len=min_len)
        raise OperatorError(f"shots: unknown detector {self.p['detector']!r} (content or adaptive)")

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        from scenedetect import SceneManager, open_video
        with local_path(video["uri"]) as path:
            stream = open_video(path, backend="opencv")
            fps = float(stream.frame_rate)
            manager = SceneManager()
            if self.p["downscale"]:
                manager.auto_downscale = False
                manager.downscale = int(self.p["downscale"])
            manager.add_detector(self._detector(fps))
            manager.detect_scenes(stream, show_progress=False)
            scenes = manager.get_scene_list(start_in_scene=True)
            end_frame = stream.frame_number
        if not scenes:  # no frame read at all
            if end_frame <= 0:
                raise OperatorError("shots: no frames could be read")
            scenes = [(0, end_frame)]
        label = f"pyscenedetect-{self.p['detector']}"
        out = []
        for i, (a, b) in enumerate(scenes):
            fa = a if isinstance(a, int) else a.frame_num
            fb = b if isinstance(b, int) else b.frame_num
            start, end = fa / fps, fb / fps
            out.append({"video_id": video["video_id"], "shot_index": i, "start_s": start, "end_s": end,
                        "start_frame": fa, "end_frame": fb, "duration_s": end - start, "detector": label})
        return out
