"""captions / captions_conversation: Qwen-Omni semantic verification and captioning of clips (SPEC
item 11; LPM §2.2-2.3, LongCat §2.1 and §2.3, FlowAct-R1 §2.2), through ``operators.nets.omni``
(local transformers thinker) or ``operators.nets.omni_http`` (an OpenAI-compatible endpoint, e.g.
vLLM serving Qwen-Omni).

Two operators, one file, because the columns an operator reads force the steps that write them
upstream (``reads`` is checked when a workflow loads):

- ``captions`` reads only the clip span (and ``videos.has_audio``): it runs right after ``clips``
  (probe, shots, clips, captions) on the shot clips (``clip_kind = 'shot'``). Span captions are
  aligned to fixed ``omni.FIXED_SPAN_S`` windows, no clip is a listener clip, no silent check.
- ``captions_conversation`` runs on the person clips (``clip_kind = 'person'``) of the conversation
  pipeline and also reads ``transcript_segments`` (``clip_transcript``: ASR sentence units in VIDEO
  seconds, made clip-relative here, so span captions follow the sentences), ``role`` and
  ``frame_states`` (``rerank``). Clips whose role is in ``listener_roles`` get only time-invariant
  captions (LPM §2.3: appearance, personality, relation). It also writes LongCat §2.3's silent
  verification: ``silent_omni`` (Omni's class is silence / listen_dialogue / listen_nondialogue),
  ``silent_frames`` (the per-frame speak/listen/idle/discard states from lip motion + speech: no
  speak frames beyond ``max_speak_ratio``, no discard frames) and ``silent`` (both agree).
  The model is told which person the clip is about (``describe_subject``): the clip's track, by
  its place and size in the frame over the clip's span; stored as ``caption_subject``.

The two partition ``clips`` by ``clip_kind``, so one workflow may use both without captioning a clip
twice.

Who the subject is (``captions_conversation``): a person clip follows one track (``track_id``), and in a
two-person shot that track need not be the most prominent person, so the instruction names it instead
of ``omni.DEFAULT_SUBJECT``. ``describe_subject`` takes the medians of the track's ``person_boxes`` and
``face_boxes`` over its frames inside the clip span (display px, divided by ``videos.width`` /
``height``) and says, in words a vision-language model can ground:

- where: the horizontal fifth of the frame holding the face centre (the box centre without a face):
  on the left / left of centre / in the centre / right of centre / on the right; "the only person in
  the shot" when the shot has no other track. When other tracks of the shot have boxes in the span,
  the subject's order among them from the left ("the leftmost of 2 people"), only when its centre is
  at least ``MIN_SEPARATION`` of the frame width from each of theirs (one person right behind another
  gets no order);
- the median boxes in frame fractions ("median box x 0.13-0.72, y 0.40-0.99 of the frame, face x
  0.29-0.46, y 0.47-0.72");
- the shot size from the face height over the frame height (face-mesh boxes, about 0.85 of a head):
  a close-up from ``CLOSE_UP_FACE``, a wide shot below ``WIDE_FACE``, a medium shot between; without
  a face, from the person box height (medium from ``MEDIUM_PERSON``, else wide).

With other people in the shot the sentence ends "other people may be visible: describe only the
subject." A track without a box in the span, or a clip whose track is not in ``tracks``, gets the
default sentence. ``caption_subject`` stores the sentence the model was given, whichever it was.

Inputs the model sees: the clip's frames on a ``omni.FRAME_FPS`` (2 fps) grid from the clip start
(``omni.sample_frames``; decoded with the long side at most ``max_side`` px, 448 by default, which is
also the local processor's pixel cap ``max_side**2`` and the JPEG size sent to an endpoint) and its
mono 16 kHz audio (``curation.media.load_audio``: one ffmpeg call per video of a worker call,
covering its clips, sliced per clip; none when the video has no audio stream).

Outputs (``clips``): ``scene_class`` (one of ``schemas.taxonomy.SCENE_CLASSES``), ``scene_prob`` and
``scene_prob_source`` ("tokens": product of the token probabilities of the class name; "stated": the
model's own number, when the endpoint returns no log-probabilities), ``caption_dense``,
``caption_summary``, ``caption_spans`` and ``behaviour_captions`` (lists of {start_s, end_s, text}
in VIDEO seconds, like every time in the store; behaviour captions every ``behaviour_interval_s`` of
the clip when ``behaviour`` is on, FlowAct-R1 §2.2, null otherwise and for listener clips),
``listener_captions`` ({appearance, personality, relation}, listener clips only), ``tags`` (one list
per key of ``schemas.taxonomy.TAG_VOCAB``), ``tags_dropped`` (words the model gave outside the
taxonomy), ``caption_backend`` (backend, model and weight file or endpoint), ``caption_attempts``
(1, or 2 when the first answer was malformed). Malformed output twice, or an endpoint that cannot be
reached after its retries, is that row's ``error``; the other rows go on.

Batching: ``process_rows`` builds the requests of all rows of a worker call (all videos of the
batch) and hands them to the backend's ``caption_many`` at once. Over HTTP that keeps up to
``max_in_flight`` requests in flight per worker (set ``batch_size`` in the workflow step to give it
more rows per call); locally they run one after the other.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from curation.media import FrameSpec, Frames, MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Param, Resources
from curation.tracks import FRAME_TIMES, in_span
from operators.nets import omni
from schemas.taxonomy import LISTENER_FIELDS, TAG_KEYS

TEXT_SPAN = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])
TAGS = pa.struct([(k, pa.list_(pa.string())) for k in TAG_KEYS])
LISTENER = pa.struct([(k, pa.string()) for k in LISTENER_FIELDS])
AUDIO_SPAN_MAX_S = 600.0   # longest audio span read in one ffmpeg call (16 kHz float32: 38 MB)
MIN_UNIT_S = 0.05   # a sentence unit sharing less than this with the clip span is not one of its units
# describe_subject: shot size from the face box height / frame height (person box height without a face).
# A face a third of the frame high is a head-and-shoulders close-up; a tenth, a body in its setting.
CLOSE_UP_FACE = 0.3
WIDE_FACE = 0.1
MEDIUM_PERSON = 0.5
MIN_SEPARATION = 0.1    # centres closer than this share of the frame width: no left-to-right order
POSITIONS = ((0.2, "on the left of"), (0.4, "left of centre in"), (0.6, "in the centre of"),
             (0.8, "right of centre in"), (float("inf"), "on the right of"))

CAPTION_FIELDS = [
    pa.field("scene_class", pa.string()),
    pa.field("scene_prob", pa.float32()),
    pa.field("scene_prob_source", pa.string()),
    pa.field("caption_dense", pa.string()),
    pa.field("caption_summary", pa.string()),
    pa.field("caption_spans", pa.list_(TEXT_SPAN)),
    pa.field("tags", TAGS),
    pa.field("tags_dropped", pa.list_(pa.string())),
    pa.field("behaviour_captions", pa.list_(TEXT_SPAN)),
    pa.field("listener_captions", LISTENER),
    pa.field("caption_backend", pa.string()),
    pa.field("caption_attempts", pa.int32()),
]
SILENT_FIELDS = [
    pa.field("silent_omni", pa.bool_()),
    pa.field("silent_frames", pa.bool_()),
    pa.field("silent", pa.bool_()),
]
SUBJECT_FIELDS = [
    pa.field("caption_subject", pa.string()),   # the sentence telling the model who the subject is
]


def clip_sentences(segments, start_s: float, end_s: float) -> list[dict]:
    """Sentence units in video seconds -> clip-relative {start_s, end_s, text}, clamped to the clip;
    units overlapping it by less than MIN_UNIT_S are left out."""
    out = []
    for s in segments or []:
        a, b = max(float(s["start_s"]), start_s), min(float(s["end_s"]), end_s)
        if b - a >= MIN_UNIT_S:
            out.append({"start_s": round(a - start_s, 3), "end_s": round(b - start_s, 3),
                        "text": str(s.get("text") or "").strip()})
    return sorted(out, key=lambda u: u["start_s"])


def _to_video_time(spans, start_s: float):
    if spans is None:
        return None
    return [{"start_s": round(start_s + s["start_s"], 3), "end_s": round(start_s + s["end_s"], 3),
             "text": s["text"]} for s in spans]


def span_boxes(track: dict, column: str, start_s: float, end_s: float) -> np.ndarray:
    """The track's finite boxes (K, 4) of ``column`` on its frames in [start_s, end_s)."""
    times = np.asarray(track.get(FRAME_TIMES) or [], np.float64)
    boxes = track.get(column) or []
    keep = np.flatnonzero(in_span(times[: len(boxes)], start_s, end_s))
    out = [np.asarray(boxes[i], np.float64) for i in keep if boxes[i] is not None]
    out = [b for b in out if b.shape == (4,) and np.all(np.isfinite(b))]
    return np.stack(out) if out else np.zeros((0, 4))


def _ordinal(k: int) -> str:
    return {1: "second", 2: "third", 3: "fourth"}.get(k, f"{k + 1}th")


def _median_boxes(track: dict, start_s: float, end_s: float, scale: np.ndarray):
    """Median person box and median face box (None without a face) in frame fractions, over the span."""
    boxes = span_boxes(track, "person_boxes", start_s, end_s)
    if len(boxes) == 0:
        return None, None
    faces = span_boxes(track, "face_boxes", start_s, end_s)
    box = np.clip(np.median(boxes, axis=0) / scale, 0.0, 1.0)
    return box, (np.clip(np.median(faces, axis=0) / scale, 0.0, 1.0) if len(faces) else None)


def _centre_x(box: np.ndarray, face: np.ndarray | None) -> float:
    b = box if face is None else face
    return float(b[0] + b[2]) / 2


def describe_subject(track: dict | None, others: Sequence[dict], width: float | None, height: float | None,
                     start_s: float, end_s: float) -> str | None:
    """One sentence telling the model which person ``track`` is over [start_s, end_s) (see the module
    docstring); ``others``: the other tracks of the same shot. None when the track has no person box
    in the span or the frame size is unknown (the caller falls back to ``omni.DEFAULT_SUBJECT``)."""
    if not track or not width or not height:
        return None
    scale = np.array([width, height, width, height], np.float64)
    box, face = _median_boxes(track, start_s, end_s, scale)
    if box is None:
        return None
    cx = _centre_x(box, face)
    where = next(w for edge, w in POSITIONS if cx < edge)
    if face is not None:
        share = face[3] - face[1]
        size = "close-up" if share >= CLOSE_UP_FACE else "wide shot" if share < WIDE_FACE else "medium shot"
    else:
        size = "medium shot" if box[3] - box[1] >= MEDIUM_PERSON else "wide shot"
    hint = f"median box x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f} of the frame"
    if face is not None:
        hint += f", face x {face[0]:.2f}-{face[2]:.2f}, y {face[1]:.2f}-{face[3]:.2f}"
    if not others:
        return f"The subject is the only person in the shot, {where} the frame ({hint}), in a {size}."
    centres = []
    for o in others:
        ob, of = _median_boxes(o, start_s, end_s, scale)
        if ob is not None:
            centres.append(_centre_x(ob, of))
    order = ""
    if centres and all(abs(c - cx) >= MIN_SEPARATION for c in centres):
        n, k = len(centres) + 1, sum(c < cx for c in centres)
        pos = "leftmost" if k == 0 else "rightmost" if k == n - 1 else f"{_ordinal(k)} from the left"
        order = f", the {pos} of {n} people"
    return (f"The subject is the person {where} the frame{order} ({hint}), in a {size}; "
            "other people may be visible: describe only the subject.")


def record_to_row(record: dict, start_s: float, backend: str) -> dict:
    """A validated caption record (``omni.parse_output`` + attempts) as the columns of one clip."""
    return {
        "scene_class": record["scene_class"],
        "scene_prob": float(record["scene_prob"]),
        "scene_prob_source": record["scene_prob_source"],
        "caption_dense": record["caption_dense"],
        "caption_summary": record["caption_summary"],
        "caption_spans": _to_video_time(record["caption_spans"], start_s),
        "tags": {k: list(record["tags"].get(k, [])) for k in TAG_KEYS},
        "tags_dropped": list(record.get("tags_dropped") or []),
        "behaviour_captions": _to_video_time(record["behaviour_captions"], start_s),
        "listener_captions": record["listener_captions"],
        "caption_backend": backend,
        "caption_attempts": int(record.get("attempts", 1)),
    }


class Captions(Operator):
    name = "captions"
    summary = ("shot clips: Qwen-Omni scene class, dense / summary / span captions, tags (local "
               "transformers or an OpenAI-compatible endpoint)")
    version = "1"
    input_table = output_table = "clips"
    input_filter = "clip_kind = 'shot' OR clip_kind IS NULL"
    reads = ("clips.start_s", "clips.end_s", "clips.duration_s", "videos.has_audio")
    writes = pa.schema(CAPTION_FIELDS)
    params = {
        "backend": Param("local", choices=("local", "http"),
                         help="local: a Qwen-Omni checkpoint under --models (transformers); "
                              "http: an OpenAI-compatible endpoint (vLLM serving Qwen-Omni)"),
        "model": Param("qwen-omni/Qwen2.5-Omni-3B",
                       help="local: model directory under --models (thinker or full Omni checkpoint)"),
        "device": Param("auto", choices=("auto", "cpu", "cuda"), help="local: torch device"),
        "endpoint": Param("", help="http: base URL such as http://HOST:8000/v1 (SET ME)"),
        "api_model": Param("Qwen/Qwen2.5-Omni-7B", help="http: the model name the server serves"),
        "api_key_env": Param("", help="http: name of an environment variable holding the API key "
                                      "(never the key: workflow text is stored in the runs table)"),
        "max_in_flight": Param(8, type=int, help="http: concurrent requests per worker"),
        "timeout_s": Param(120.0, help="http: deadline of one request (connect, send, read)"),
        "retries": Param(3, type=int, help="http: further attempts on timeouts, drops, 429/5xx"),
        "backoff_s": Param(1.0, help="http: first back-off delay, doubled each retry"),
        "max_side": Param(448, type=int, help="long side of the frames the model sees, px"),
        "max_new_tokens": Param(omni.MAX_NEW_TOKENS, type=int, help="answer length limit, tokens"),
        "behaviour": Param(False, help="also dense behaviour captions (FlowAct-R1 §2.2)"),
        "behaviour_interval_s": Param(omni.BEHAVIOUR_INTERVAL_S, help="behaviour caption window, s"),
    }
    resources = Resources(num_cpus=1)
    frames = FrameSpec(fps=omni.FRAME_FPS, max_side=448)
    needs_model = True
    batch_size = 4

    def __init__(self, model_dir: str | None = None, **params):
        super().__init__(model_dir, **params)
        if self.p["backend"] == "http":
            u = urlsplit(str(self.p["endpoint"]))
            if u.scheme not in ("http", "https") or not u.hostname:
                raise OperatorError(f"operator {self.name!r}: backend http needs endpoint = an http(s) base "
                                    f"URL such as http://HOST:8000/v1; got {self.p['endpoint']!r}")
        if int(self.p["max_side"]) < 56:
            raise OperatorError(f"operator {self.name!r}: max_side must be at least 56 px")
        self.frames = FrameSpec(fps=omni.FRAME_FPS, max_side=int(self.p["max_side"]))
        self.net = None

    # ---- weights and set-up ----------------------------------------------------------------------
    def weight_files(self) -> list[str]:
        if self.p["backend"] != "local":
            return []
        m = str(self.p["model"]).strip("/")
        sharded = self.model_dir and (Path(self.model_dir) / m / "model.safetensors.index.json").is_file()
        return [f"{m}/config.json", f"{m}/tokenizer_config.json",
                f"{m}/model.safetensors.index.json" if sharded else f"{m}/model.safetensors"]

    def setup(self) -> None:
        p = self.p
        if p["backend"] == "http":
            from operators.nets.omni_http import OmniHTTPClient
            key = None
            if p["api_key_env"]:
                key = os.environ.get(p["api_key_env"])
                if not key:
                    raise OperatorError(f"api_key_env: environment variable {p['api_key_env']} is not set")
            self.net = OmniHTTPClient(p["endpoint"], p["api_model"], api_key=key,
                                      max_in_flight=p["max_in_flight"], timeout_s=p["timeout_s"],
                                      retries=p["retries"], backoff_s=p["backoff_s"],
                                      max_tokens=p["max_new_tokens"], max_side=p["max_side"])
            return
        import torch
        from operators.nets import weight_path
        weight_path(self.model_dir, f"{str(p['model']).strip('/')}/config.json")  # names --models when absent
        device = p["device"] if p["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            torch.set_num_threads(max(1, int(self.resources.num_cpus)))
        self.net = omni.OmniCaptioner(Path(self.model_dir) / str(p["model"]).strip("/"), device=device,
                                      max_new_tokens=p["max_new_tokens"],
                                      max_pixels=int(p["max_side"]) ** 2, min_pixels=omni.MIN_PIXELS)

    # ---- per clip --------------------------------------------------------------------------------
    def listener(self, row: dict) -> bool:
        return False

    def sentences(self, row: dict) -> list[dict]:
        return []

    def subject(self, video: dict, row: dict) -> str | None:
        """Who the model is to describe (one sentence), or None for ``omni.DEFAULT_SUBJECT``."""
        return None

    def request(self, video: dict, row: dict, frames: Frames, audio: np.ndarray | None) -> omni.OmniRequest:
        start, end = float(row["start_s"]), float(row["end_s"])
        if len(frames) == 0:
            raise OperatorError(f"no frames decoded between {start:.2f}s and {end:.2f}s")
        images = omni.sample_frames(frames.images, frames.times, omni.FRAME_FPS, start_s=start, end_s=end)
        return omni.OmniRequest(frames=images, audio=audio, fps=omni.FRAME_FPS,
                                sentences=self.sentences(row), listener=self.listener(row),
                                behaviour=bool(self.p["behaviour"]),
                                behaviour_interval_s=float(self.p["behaviour_interval_s"]),
                                duration_s=end - start, subject=self.subject(video, row),
                                extra={"clip_id": row.get("clip_id")})

    def finish(self, row: dict, record: dict, req: omni.OmniRequest | None = None) -> dict:
        """The output columns of one captioned clip (``req``: the request it was captioned from)."""
        return record_to_row(record, float(row["start_s"]), self.net.backend)

    def process_rows(self, items: list[tuple[dict, dict, Frames]]) -> list:
        """All rows of the call go to the backend at once (``caption_many``); per-row errors stay
        per row (an Exception in the returned list)."""
        if self.net is None:
            self.setup()
        out: list = [None] * len(items)
        audio = self._audio(items, out)
        reqs, where = [], []
        for i, (video, row, frames) in enumerate(items):
            if out[i] is None:
                try:
                    reqs.append(self.request(video, row, frames, audio.get(i)))
                    where.append(i)
                except Exception as e:  # noqa: BLE001 - that row's error
                    out[i] = e
        for i, req, res in zip(where, reqs, self.net.caption_many(reqs) if reqs else []):
            if res.error is not None:
                out[i] = OperatorError(res.error)
                continue
            try:
                out[i] = self.finish(items[i][1], res.record, req)
            except Exception as e:  # noqa: BLE001
                out[i] = e
        return out

    def _audio(self, items, out: list) -> dict[int, np.ndarray]:
        """16 kHz mono audio of each row (item index -> samples; none for videos without audio).
        One ffmpeg call per video covers all its rows of the call when they lie within
        AUDIO_SPAN_MAX_S of each other, else one call per row; a failure is those rows' error."""
        by_video: dict[str, list[int]] = {}
        for i, (video, _, _) in enumerate(items):
            if video.get("has_audio"):
                by_video.setdefault(video["uri"], []).append(i)
        got: dict[int, np.ndarray] = {}
        sr = omni.AUDIO_SR
        for uri, idx in by_video.items():
            spans = [(float(items[i][1]["start_s"]), float(items[i][1]["end_s"])) for i in idx]
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
            try:
                with local_path(uri) as path:
                    if hi - lo <= AUDIO_SPAN_MAX_S:
                        wav = load_audio(path, sr, start_s=lo, duration_s=hi - lo)
                        for i, (a, b) in zip(idx, spans):
                            got[i] = wav[int(round((a - lo) * sr)): int(round((b - lo) * sr))]
                    else:
                        for i, (a, b) in zip(idx, spans):
                            got[i] = load_audio(path, sr, start_s=a, duration_s=b - a)
            except MediaError as e:
                for i in idx:
                    out[i] = out[i] or OperatorError(str(e))
        return got


class CaptionsConversation(Captions):
    name = "captions_conversation"
    summary = ("person clips: the same about the clip's own track (named by its place and size in "
               "the frame), aligned to the ASR sentence units, listener captions, the two-judgement "
               "silent check")
    version = "2"   # 2: the instruction names the clip's track (caption_subject), not the most prominent person
    input_filter = "clip_kind = 'person'"
    reads = Captions.reads + ("clips.transcript_segments", "clips.role", "clips.frame_states",
                              "clips.track_id", "clips.shot_index", "videos.width", "videos.height",
                              "tracks.track_id", "tracks.shot_index", "tracks.frame_times_s",
                              "tracks.person_boxes", "tracks.face_boxes")
    writes = pa.schema(CAPTION_FIELDS + SILENT_FIELDS + SUBJECT_FIELDS)
    params = {
        **Captions.params,
        "listener_roles": Param("listener", help="comma-separated roles (rerank: speaker, listener, "
                                                 "idle, mixed) captioned as listener clips"),
        "max_speak_ratio": Param(0.0, help="silent check: largest share of speak frames still silent"),
    }

    def listener(self, row: dict) -> bool:
        roles = {r.strip() for r in str(self.p["listener_roles"]).split(",") if r.strip()}
        return row.get("role") in roles

    def sentences(self, row: dict) -> list[dict]:
        return clip_sentences(row.get("transcript_segments"), float(row["start_s"]), float(row["end_s"]))

    def subject(self, video: dict, row: dict) -> str | None:
        tracks = (video.get("tables") or {}).get("tracks") or []
        track = next((t for t in tracks if t.get("track_id") == row.get("track_id")), None)
        if track is None:
            return None
        shot = track.get("shot_index")
        others = [t for t in tracks if t.get("shot_index") == shot and t.get("track_id") != track["track_id"]]
        return describe_subject(track, others, video.get("width") or row.get("width"),
                                video.get("height") or row.get("height"),
                                float(row["start_s"]), float(row["end_s"]))

    def finish(self, row: dict, record: dict, req: omni.OmniRequest | None = None) -> dict:
        out = super().finish(row, record, req)
        out.update(omni.silent_verification(record["scene_class"], row.get("frame_states"),
                                            float(self.p["max_speak_ratio"])))
        out["caption_subject"] = omni.subject_sentence(req) if req is not None else None
        return out
