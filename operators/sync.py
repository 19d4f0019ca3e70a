"""sync: audio-visual offset of each person clip's face, how sure it is, and whether it is in sync
(SPEC item 8, LongCat §2.1).

Two backends over the same face crops (ASD.md §1.2 geometry, 25 fps) and the clip's 16 kHz audio:

- ``syncnet``: SyncNet (``MODEL_DIR/syncnet/...``, declared weights: a run without them stops before
  any step, naming the file), distances between 5-frame lip windows and 0.2 s audio windows over
  shifts of -15..+15 frames (``operators/nets/syncnet.py``): LSE-D / LSE-C as LatentSync reports them.
- ``motion_energy`` (works with no weights): lower-face motion against the speech energy, Pearson
  correlation over the same shifts (``operators/nets/avsync.py``).
A head learned on the frozen ASD encoders from the shared clips (and the ASD network's own logit
against the audio shift) were measured by leave-one-clip-out and do not generalise across speakers
(bench/sync_head_cv.py, docs/av-labels.md): not backends.

Whatever the backend, the answer is an offset only when the evidence holds; otherwise
``sync_offset_frames`` is NULL and ``sync_reason`` says why (never the edge of the search range):
- less than ``min_speech_s`` of speech (``voice_segments``) while the face is in view;
- the best offset is at the edge of the search range (within one frame of +-15);
- the best offset does not stand out from chance: ``sync_chance_sd`` (how many standard deviations
  the best mean distance is below the best of the same search with the audio moved by 1.2 s or more,
  operators.nets.syncnet.chance_sd: a calibrated, backend-neutral confidence) under ``min_chance_sd``.
``sync_ok`` is the backend-neutral decision a workflow filters on: true when the offset is known and
within the backend's tolerance (``TOLERANCE``, chosen from the shift table of docs/av-labels.md: what
the backend's own error on in-sync clips allows), false when known and beyond it, NULL when unknown.

Columns: ``sync_offset_frames`` (positive when the audio lags the video), ``sync_min_dist`` (LSE-D:
mean distance at the best offset, backend units), ``sync_confidence`` (LSE-C: median minus minimum of
the mean distance over offsets), ``sync_chance_sd``, ``sync_ok``, ``sync_reason``, ``sync_frame_conf``
(per frame of ``sync_frame_times``), and ``sync_backend``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec
from curation.operator import Operator, OperatorError, Param, Resources
from operators.asd import face_span

FPS = 25.0
# offsets (frames) within which a clip is in sync, per backend: SyncNet's usual +-3 (LatentSync,
# Wav2Lip filters); motion-energy's own error on in-sync talking clips reaches that much again
TOLERANCE = {"syncnet": 3, "motion_energy": 6}


class Sync(Operator):
    name = "sync"
    summary = ("person clips: audio-visual offset (NULL with a reason when it cannot tell), LSE-D, "
               "LSE-C, confidence above chance, `sync_ok`, per-frame confidence (SyncNet, or "
               "motion-energy)")
    version = "2"   # 2: NULL offset with a reason, sync_chance_sd, sync_ok; audio on the file's timeline
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.start_s", "clips.end_s", "clips.track_id", "tracks.track_id",
             "tracks.frame_times_s", "tracks.face_boxes", "videos.has_audio", "videos.voice_segments")
    writes = pa.schema([
        pa.field("sync_offset_frames", pa.int32()),
        pa.field("sync_min_dist", pa.float32()),
        pa.field("sync_confidence", pa.float32()),
        pa.field("sync_chance_sd", pa.float32()),
        pa.field("sync_ok", pa.bool_()),
        pa.field("sync_reason", pa.string()),
        pa.field("sync_frame_times", pa.list_(pa.float64())),
        pa.field("sync_frame_conf", pa.list_(pa.float32())),
        pa.field("sync_backend", pa.string()),
    ])
    params = {
        "backend": Param("motion_energy", choices=("motion_energy", "syncnet")),
        "max_gap_s": Param(0.2, help="longest stretch without a face box that borrows the nearest one"),
        "min_speech_s": Param(2.0, help="least speech with the face in view to give an offset"),
        "min_chance_sd": Param(2.0, help="least standing of the best offset above chance (sd)"),
        "tolerance_frames": Param(0, help="|offset| within which sync_ok is true; 0 = the backend's"),
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
        from operators.speaker_states import speech_share
        has_face, seg, boxes, pcm = face_span(video, row, frames, float(self.p["max_gap_s"]),
                                              "sync estimates")
        if has_face.sum() < 10:
            raise OperatorError("fewer than 10 frames with a face: no sync estimate")
        times = frames.times[seg]
        res, chance = self._search(frames, seg, boxes, pcm)
        conf = np.asarray(res.frame_confidence, np.float64)
        speech_s = float((speech_share(times, video.get("voice_segments")) >= 0.5)[has_face[seg]].sum()) / FPS
        offset, reason = self._judge(int(res.offset_frames), chance, speech_s, len(res.mean_dist) // 2)
        tol = int(self.p["tolerance_frames"]) or TOLERANCE[self.p["backend"]]
        return {"sync_offset_frames": offset, "sync_min_dist": float(res.min_dist),
                "sync_confidence": float(res.confidence),
                "sync_chance_sd": None if not np.isfinite(chance) else float(chance),
                "sync_ok": None if offset is None else abs(offset) <= tol, "sync_reason": reason,
                "sync_frame_times": [round(float(t), 4) for t in times],
                "sync_frame_conf": [None if not np.isfinite(c) else float(c) for c in conf],
                "sync_backend": self.backend}

    def _search(self, frames, seg, boxes, pcm):
        """The backend's offset search and how far its best offset stands above chance."""
        from operators.asd import track_crops
        from operators.nets.asd import face_crops_224
        from operators.nets.syncnet import chance_sd, shifted_distances, sync_from_distances
        if self.p["backend"] == "syncnet":
            v, a = self.net.embed(face_crops_224(frames.images[seg], boxes), pcm)
            res = sync_from_distances(shifted_distances(v, a), seg.stop - seg.start, backend=self.net.name)
            return res, chance_sd(lambda aa: shifted_distances(v, aa).mean(axis=0), a)
        crops = track_crops(frames, seg, boxes)   # asd's, when it ran on the same frames
        m, e = self.net.features(crops, pcm)
        res = self.net.sync(crops, pcm)
        return res, chance_sd(lambda ee: self.net.mean_dist(m, ee), e)

    def _judge(self, offset: int, chance: float, speech_s: float, vshift: int):
        """(offset or None, reason or None): see the module docstring."""
        if speech_s < float(self.p["min_speech_s"]):
            return None, f"too little speech with the face in view ({speech_s:.1f} s < {self.p['min_speech_s']:g} s)"
        if abs(offset) >= vshift - 1:
            return None, f"best offset at the edge of the search range ({offset:+d} of +-{vshift} frames)"
        if not np.isfinite(chance):
            return None, "track too short to compare with chance"
        if chance < float(self.p["min_chance_sd"]):
            return None, (f"no clear best offset ({offset:+d} frames stands {chance:.1f} sd above chance, "
                          f"needs {self.p['min_chance_sd']:g})")
        return offset, None
