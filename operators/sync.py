"""sync: audio-visual offset and confidence of each person clip's face (SPEC item 8, LongCat §2.1).

Two backends over the same face crops (ASD.md §1.2 geometry, 25 fps) and the clip's 16 kHz audio:

- ``syncnet``: SyncNet (``MODEL_DIR/syncnet/...``, declared weights: a run without them stops before
  any step, naming the file), distances between 5-frame lip windows and 0.2 s audio windows over
  shifts of -15..+15 frames (``operators/nets/syncnet.py``).
- ``motion_energy`` (works with no weights): lower-face motion against the speech energy, Pearson
  correlation over the same shifts (``operators/nets/avsync.py``, which documents its measured error
  on shifted-audio copies of the shared clips: large offsets and offset changes are reliable, an
  absolute offset of a few frames is not).

Columns: ``sync_offset_frames`` (positive when the audio lags the video), ``sync_min_dist`` (LSE-D:
mean distance at the best offset, backend units), ``sync_confidence`` (LSE-C: median minus minimum of
the mean distance over offsets), ``sync_frame_conf`` (per frame of ``sync_frame_times``), and
``sync_backend``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec
from curation.operator import Operator, OperatorError, Param, Resources
from operators.asd import face_span

FPS = 25.0


class Sync(Operator):
    name = "sync"
    summary = ("person clips: audio-visual offset, LSE-D, LSE-C, per-frame confidence (SyncNet, or "
               "motion-energy)")
    version = "1"
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.start_s", "clips.end_s", "clips.track_id", "tracks.track_id",
             "tracks.frame_times_s", "tracks.face_boxes", "videos.has_audio")
    writes = pa.schema([
        pa.field("sync_offset_frames", pa.int32()),
        pa.field("sync_min_dist", pa.float32()),
        pa.field("sync_confidence", pa.float32()),
        pa.field("sync_frame_times", pa.list_(pa.float64())),
        pa.field("sync_frame_conf", pa.list_(pa.float32())),
        pa.field("sync_backend", pa.string()),
    ])
    params = {
        "backend": Param("motion_energy", choices=("motion_energy", "syncnet")),
        "max_gap_s": Param(0.2, help="longest stretch without a face box that borrows the nearest one"),
    }
    resources = Resources(num_cpus=1)
    frames = FrameSpec(fps=FPS, max_side=None)
    needs_model = True

    def weight_files(self) -> list[str]:
        if self.p["backend"] == "syncnet":
            from operators.nets.syncnet import WEIGHTS
            return [WEIGHTS]
        return []

    def setup(self) -> None:
        if self.p["backend"] == "syncnet":
            from operators.nets.syncnet import SyncNet
            self.net = SyncNet(self.model_dir)
            self.backend = f"syncnet ({self.net.path.name})"
        else:
            from operators.nets.avsync import AVSync
            self.net = AVSync()
            self.backend = "motion-energy (lower-face motion vs speech energy)"

    def process_row(self, video: dict, row: dict, frames) -> dict:
        has_face, seg, boxes, pcm = face_span(video, row, frames, float(self.p["max_gap_s"]),
                                              "sync estimates")
        if has_face.sum() < 10:
            raise OperatorError("fewer than 10 frames with a face: no sync estimate")
        images, times = frames.images[seg], frames.times[seg]
        from operators.nets.asd import asd_crops, face_crops_224
        if self.p["backend"] == "syncnet":
            res = self.net.sync(face_crops_224(images, boxes), pcm)
        else:
            res = self.net.sync(asd_crops(images, boxes), pcm)
        conf = np.asarray(res.frame_confidence, np.float64)
        return {"sync_offset_frames": int(res.offset_frames), "sync_min_dist": float(res.min_dist),
                "sync_confidence": float(res.confidence),
                "sync_frame_times": [round(float(t), 4) for t in times],
                "sync_frame_conf": [None if not np.isfinite(c) else float(c) for c in conf],
                "sync_backend": self.backend}
