"""asd: active-speaker scores per frame of each person clip (Light-ASD or LR-ASD, released weights).

For each person-centric clip (``clip_kind = 'person'``), the clip's frames at 25 fps and the video's
own size are cropped around the track's face box with the networks' geometry (ASD.md §1.2: median
smoothed box, 0.40 padding, grey centre 112 px: nose, mouth, chin), and scored with the 16 kHz audio
of the same span (MFCC at 100 Hz, 4 rows per frame). Frames without a face box near them take the
nearest face box of the track within ``max_gap_s``; frames with none get no score (NaN).

Columns (lists aligned with ``frame_times``, seconds from the start of the video):
- ``asd_logits``: the raw class-1 logit of the audio-visual head, mean over the six window lengths
  of the original inference (ASD.md §1.5); the original demo calls >= 0 speaking.
- ``asd_prob``: the network's own posterior (softmax of the same head, same averaging), not re-fitted
  here: probability that the face's lips move in sync with the audio (speaking).
- ``asd_sync_gain``: how much that logit depends on the timing of this voice: the logit with the
  true audio minus the mean logit with the same audio moved by 6, 10 and 14 frames either way
  (operators.nets.asd.ActiveSpeakerNet.sync_gain). Near 0 for a face that talks but not with this
  voice (mouthing, dubbed, another person's words), positive for the face the voice comes from.
- ``asd_backend``: network and weight file, and the runtime when it is not PyTorch:
  ``LR-ASD/LR-ASD_pretrain_AVA (onnxruntime 1.31.1)``. ``runtime: onnxruntime`` (the default) runs
  the same weights exported to ONNX (operators/nets/asd_onnx.py: about 2.8 times cheaper here, the
  logits equal PyTorch's within 2e-6); without onnxruntime or when the export fails it runs
  PyTorch, logs why and names no runtime.
Weights: the AVA-pretrained checkpoint by default. The TalkSet fine-tuned ones score a talking face
as speaking with silence or white noise as its audio (mean logit +2 to +4, as with its own voice; the
original code gives the same logits): they tell a talking face, not whose voice is heard, and their
sync gain is about 0 everywhere. The audio is the separated voice (``vocals_uri``) when separation
ran: music under speech moved the AVA logits by several units on dj_video4.
Videos without audio get the error "no audio stream" on their person clips.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Param, Resources
from curation.tracks import face_boxes_at, nearest, track_of

FPS = 25.0


def fill_gaps(boxes: np.ndarray) -> np.ndarray:
    """Hold the nearest valid box over NaN rows inside the valid range (the crop's median filter
    needs a box on every frame it smooths)."""
    ok = np.all(np.isfinite(boxes), axis=1)
    if not ok.any():
        return boxes
    idx = np.where(ok)[0]
    return boxes[idx[nearest(idx, np.arange(len(boxes)), np.inf)]]


def face_span(video: dict, row: dict, frames, max_gap_s: float, what: str, margin: int = 0,
              voice: bool = False):
    """The part of a person clip's frames from the first to the last frame with a face of its
    track: (has_face over all frames, slice of that part, its boxes in image pixels with short
    gaps filled, its 16 kHz int16 audio from its first frame, one frame longer); the slice is None
    when no frame has a face. With ``margin`` (frames), the audio starts that many frames earlier
    and ends that many later (silence outside the file's audio); with ``voice``, it is the separated
    vocals (``videos.vocals_uri``) when separation ran. Shared by ``asd`` and ``sync``; ``what``
    names the step in errors."""
    if not video.get("has_audio"):
        raise OperatorError(f"no audio stream: {what} need the soundtrack")
    track = track_of(video, row)
    if track is None:
        raise OperatorError(f"track {row.get('track_id')!r} of this clip not found")
    boxes = face_boxes_at(track, frames.times, max_gap_s)
    has_face = np.all(np.isfinite(boxes), axis=1)
    if not has_face.any():
        return has_face, None, None, None
    lo, hi = np.where(has_face)[0][[0, -1]]
    seg = slice(lo, hi + 1)
    start = float(frames.times[lo]) - margin / FPS
    # the separated voice when separation ran (music and noise mislead the networks), else the mix
    uri = video.get("vocals_uri") if voice else None
    with local_path(uri or video["uri"]) as path:
        try:
            audio = load_audio(path, 16000, start_s=max(0.0, start),
                               duration_s=(hi - lo + 2 + 2 * margin) / FPS + min(0.0, start))
        except MediaError as e:
            raise OperatorError(str(e)) from None
    if start < 0:            # before the file's start: silence
        audio = np.concatenate([np.zeros(int(round(-start * 16000)), np.float32), audio])
    want = int(round((hi - lo + 2 + 2 * margin) / FPS * 16000))
    if len(audio) < want:   # the audio stream ends before the span does: silence (load_audio's rule)
        audio = np.pad(audio, (0, want - len(audio)))
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    return has_face, seg, fill_gaps(boxes[seg]) * frames.scale, pcm


def track_crops(frames, seg: slice, boxes: np.ndarray) -> np.ndarray:
    """The ASD crops (operators.nets.asd.asd_crops) of ``frames.images[seg]`` with ``boxes``, made
    once per decoded span for every step of a fused group that reads them (``asd`` and ``sync``:
    ``Frames.derived``, keyed by the span and the boxes)."""
    import hashlib

    from operators.nets.asd import asd_crops
    key = ("asd_crops", seg.start, seg.stop, hashlib.sha1(np.ascontiguousarray(boxes).tobytes()).hexdigest())
    derived = getattr(frames, "derived", None)
    if derived is None:
        return asd_crops(frames.images[seg], boxes)
    if key not in derived:
        derived[key] = asd_crops(frames.images[seg], boxes)
    return derived[key]


class Asd(Operator):
    name = "asd"
    summary = ("person clips: LR-ASD / Light-ASD active-speaker logits, probabilities and sync gain "
               "per frame (25 fps face crops, MFCC of the voice)")
    version = "3"   # 2: AVA weights by default, asd_sync_gain; audio on the file's timeline; 3: onnxruntime
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'person'"
    reads = ("clips.start_s", "clips.end_s", "clips.track_id", "tracks.track_id",
             "tracks.frame_times_s", "tracks.face_boxes", "videos.has_audio", "videos.vocals_uri")
    writes = pa.schema([
        pa.field("frame_times", pa.list_(pa.float64())),
        pa.field("asd_logits", pa.list_(pa.float32())),
        pa.field("asd_prob", pa.list_(pa.float32())),
        pa.field("asd_sync_gain", pa.list_(pa.float32())),
        pa.field("asd_backend", pa.string()),
    ])
    params = {
        "network": Param("lr", choices=("lr", "light"), help="LR-ASD (IJCV 2025) or Light-ASD"),
        "checkpoint": Param("ava", choices=("talkset", "ava"),
                            help="pretrained on AVA (its score depends on the voice) or finetuned on "
                                 "TalkSet (a talking face scores high with any sound, even silence)"),
        "max_gap_s": Param(0.2, help="longest stretch without a face box that borrows the nearest one"),
        "chunk_edges": Param("padded", choices=("padded", "context"),
                             help="padded: each chunk of the six durations sees zeros past its edges, "
                                  "as the original's chunked passes; context: the whole track's visual "
                                  "embedding for every chunk (no edge passes)"),
        "runtime": Param("onnxruntime", choices=("onnxruntime", "torch"),
                         help="the networks through onnxruntime (exported from the weights at set-up, "
                              "cached; PyTorch when that fails) or PyTorch"),
    }
    resources = Resources(num_cpus=1)
    frames = FrameSpec(fps=FPS, max_side=None)
    needs_model = True

    def weight_files(self) -> list[str]:
        from operators.nets import asd as asd_net   # torch is imported where a step runs, not at load
        return [asd_net.WEIGHTS[(self.p["network"], self.p["checkpoint"])]]

    def setup(self) -> None:
        import torch
        from operators.nets import asd as asd_net
        torch.set_num_threads(max(1, int(self.resources.num_cpus)))
        self.net = asd_net.ActiveSpeakerNet(self.model_dir, self.p["network"], self.p["checkpoint"],
                                            runtime=self.p["runtime"])

    def process_row(self, video: dict, row: dict, frames) -> dict:
        from operators.nets.asd import SAMPLES_PER_FRAME, SYNC_SHIFTS
        margin = max(SYNC_SHIFTS)
        has_face, seg, boxes, pcm = face_span(video, row, frames, float(self.p["max_gap_s"]),
                                              "active-speaker scores", margin=margin, voice=True)
        times = frames.times
        n = len(times)
        logits, prob, gain = (np.full(n, np.nan, np.float32) for _ in range(3))
        if seg is not None:
            own = pcm[margin * SAMPLES_PER_FRAME:][: (seg.stop - seg.start + 1) * SAMPLES_PER_FRAME]
            scores = self.net.score(track_crops(frames, seg, boxes), own,
                                    chunk_edges=self.p["chunk_edges"])
            logits[seg], prob[seg] = scores.logits, scores.prob
            t = scores.n_scored
            g = np.full(seg.stop - seg.start, np.nan, np.float32)
            g[:t] = self.net.sync_gain(scores.visual_emb[:t], pcm, margin)
            gain[seg] = g
            logits[~has_face], prob[~has_face], gain[~has_face] = np.nan, np.nan, np.nan
        return {"frame_times": [round(float(t), 4) for t in times],
                "asd_logits": _floats(logits), "asd_prob": _floats(prob), "asd_sync_gain": _floats(gain),
                "asd_backend": self.net.name + ("" if self.p["chunk_edges"] == "padded" else "/context-edges")}


def _floats(x: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in x]
