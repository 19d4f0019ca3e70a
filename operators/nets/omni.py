"""Qwen-Omni captioning and semantic verification of one clip (local backend: transformers).

What it computes, for one clip (frames + 16 kHz audio + the clip's ASR sentence units):

- the six-way scene class of LPM §2.2 (``schemas.taxonomy.SCENE_CLASSES``) and its probability;
- a dense and a summary caption, temporal-span captions aligned to the ASR sentence units (LPM §2.3:
  "sentence-bounded variable-length segments"; LongCat §2.1 temporal-span captions), or to fixed
  ``FIXED_SPAN_S`` windows when the clip has no sentence units (LPM §2.3 "fixed-length clips");
- structured tags from the fixed taxonomy (``schemas.taxonomy.TAG_VOCAB``);
- listener clips (``listener=True``, decided upstream from the frame states) get only time-invariant
  captions: appearance, personality, relation (LPM §2.3); no span or behaviour captions;
- optionally, dense behaviour captions every ``BEHAVIOUR_INTERVAL_S`` seconds (FlowAct-R1 §2.2:
  "detailed human behaviours within short-range intervals", used for streaming control);
- ``silent_verification``: LongCat §2.3's two-judgement rule for silent clips (Omni's class and the
  per-frame speak/listen/idle/discard states must both say "not speaking").

Inputs the model sees: frames at ``FRAME_FPS`` frames per second (2 fps, the Qwen2.5-Omni
processor's default, two frames per temporal patch, so one visual time step per second) and the
clip's mono 16 kHz audio (Whisper features, 25 audio tokens per second), interleaved in time
(``load_audio_from_video`` / ``use_audio_in_video``: Qwen2.5-Omni's TMRoPE in 2 s chunks), plus a text
instruction (``build_instruction``) listing the frame rate, the clip length, who the subject is, the
numbered sentence units with their times and ASR text, and the tag vocabularies. The model answers one
JSON object.

Who the subject is: ``OmniRequest.subject``, a sentence naming the person to describe (the
conversation captions describe the clip's own track by its place and size in the frame, see
``operators.captions.describe_subject``), or ``DEFAULT_SUBJECT`` ("the most prominent visible
person") when it is None (shot clips).

``scene_prob``: the probability the model gives to the class name it wrote, i.e. the product of the
probabilities of the tokens that spell the ``scene_class`` value, each conditioned on everything
before it (raw logits, softmax over the whole vocabulary, greedy decoding). It is the model's
probability of that class given its own preceding output, not renormalised over the six names.
When token probabilities are not available (an endpoint without logprobs) the model's own stated
``scene_prob`` is used; ``scene_prob_source`` says which ("tokens" or "stated").

Malformed output (no JSON, unknown class, spans not covering the units, schema violations) is retried
once with the reason appended to the instruction; a second failure raises :class:`OmniOutputError`
with a one-line message. Tag words outside the taxonomy are dropped and listed in ``tags_dropped``.

The local backend loads a Qwen2.5-Omni or Qwen3-Omni(-MoE) model directory: either a thinker
checkpoint (``model_type`` ``qwen2_5_omni_thinker`` / ``qwen3_omni_moe_thinker``) or the full Omni
checkpoint (``qwen2_5_omni`` / ``qwen3_omni_moe``; loaded without its talker, text output only; the
Qwen2.5 loader also reads ``spk_dict.pt``). The same prompt and parser serve the HTTP backend
(``operators.nets.omni_http``).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from operators.nets import MissingWeights, weight_path
from schemas.taxonomy import (LISTENER_FIELDS, NOT_SPEAKING_CLASSES, SCENE_CLASSES, TAG_KEYS, TAG_VOCAB,
                              CaptionInvalid, validate_caption)

FRAME_FPS = 2.0              # frames per second given to the model (Qwen2.5-Omni processor default)
AUDIO_SR = 16000             # Whisper feature extractor rate of Qwen-Omni's audio encoder
BEHAVIOUR_INTERVAL_S = 1.5   # FlowAct-R1 §2.2: behaviour every 1-2 s
FIXED_SPAN_S = 3.0           # span windows of a clip without sentence units (LPM §2.3, 3-8 s clips)
MAX_PIXELS = 448 * 448       # per frame after resizing (Qwen's video default is 768*28*28; smaller here)
MIN_PIXELS = 56 * 56
MAX_NEW_TOKENS = 1024
DEFAULT_SUBJECT = "The subject is the most prominent visible person."

SYSTEM_PROMPT = ("You are a careful video annotator. You watch a video clip, listen to its audio and "
                 "answer with one JSON object, exactly in the requested format.")

CLASS_HELP = {
    "conversation": "the subject both speaks and listens to another person in turn",
    "listen_dialogue": "the subject does not speak and listens to a dialogue partner, reacting to the speech",
    "listen_nondialogue": "speech is heard (narration, off-screen or background talk) but the subject "
                          "neither speaks nor reacts to it",
    "silence": "no one speaks and the subject is not speaking (mouth still or non-speech motion)",
    "speak": "the subject speaks for most of the clip",
    "unknown": "none of the above can be decided",
}


class OmniOutputError(RuntimeError):
    """The model's output was malformed twice in a row; the message is one line."""


class MalformedOutput(ValueError):
    """One model answer could not be parsed into a valid caption record."""


@dataclass
class OmniRequest:
    """One clip to caption. Times are seconds from the start of the clip."""
    frames: np.ndarray                      # (T, H, W, 3) uint8 RGB, sampled at ``fps``
    audio: np.ndarray | None                # (N,) float32 mono at 16 kHz, None when the clip has no audio
    fps: float = FRAME_FPS
    sentences: Sequence[dict] = ()          # ASR sentence units: {"start_s", "end_s", "text"}
    listener: bool = False                  # listener clip: time-invariant captions only
    behaviour: bool = False                 # also ask for behaviour captions every behaviour_interval_s
    behaviour_interval_s: float = BEHAVIOUR_INTERVAL_S
    duration_s: float | None = None         # defaults to the longer of frames and audio
    subject: str | None = None              # who to describe (one sentence); None: DEFAULT_SUBJECT
    extra: dict = field(default_factory=dict)  # free per-request data for the caller (clip id ...)

    def __post_init__(self):
        if self.duration_s is None:
            n_audio = 0 if self.audio is None else len(self.audio)
            self.duration_s = max(len(self.frames) / self.fps, n_audio / AUDIO_SR)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None and len(self.audio) > 0


# ---- inputs -------------------------------------------------------------------------------------
def sample_frames(frames: np.ndarray, times_s: Sequence[float], fps: float = FRAME_FPS,
                  start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
    """Pick from decoded ``frames`` (with their times) the ones nearest to a ``fps`` grid.

    The grid runs from ``start_s`` (default: the first time) in steps of 1/fps, up to and including
    the last frame time, or up to but excluding ``end_s`` when given (so a 4 s span at 2 fps gives 8
    frames and ``len(frames) / fps`` is the span's length); returns (K, H, W, 3), K >= 1.
    """
    t = np.asarray(times_s, dtype=np.float64)
    if len(t) == 0:
        raise ValueError("no frames to sample")
    t0 = t[0] if start_s is None else start_s
    if end_s is None:
        n = int(math.floor((t[-1] - t0) * fps + 1e-6)) + 1
    else:
        n = int(math.ceil((end_s - t0) * fps - 1e-6))
    grid = t0 + np.arange(max(1, n)) / fps
    idx = np.abs(t[None, :] - grid[:, None]).argmin(axis=1)
    return np.asarray(frames)[idx]


def span_units(req: OmniRequest) -> list[dict]:
    """The units temporal-span captions are aligned to: the ASR sentence units (clamped to the clip),
    or fixed FIXED_SPAN_S windows when there are none. Each: {start_s, end_s, text} (text = ASR)."""
    dur = float(req.duration_s)
    units = []
    for s in req.sentences:
        a, b = max(0.0, float(s["start_s"])), min(dur, float(s["end_s"]))
        if b > a:
            units.append({"start_s": round(a, 3), "end_s": round(b, 3), "text": str(s.get("text", "")).strip()})
    if units:
        return sorted(units, key=lambda u: u["start_s"])
    return [{"start_s": round(a, 3), "end_s": round(min(dur, a + FIXED_SPAN_S), 3), "text": ""}
            for a in np.arange(0.0, max(dur, 1e-3), FIXED_SPAN_S) if min(dur, a + FIXED_SPAN_S) > a]


def behaviour_windows(duration_s: float, interval_s: float = BEHAVIOUR_INTERVAL_S) -> list[dict]:
    """Consecutive windows of ``interval_s`` covering the clip (the last one may be shorter)."""
    n = max(1, int(math.ceil(duration_s / interval_s - 1e-6)))
    return [{"start_s": round(i * interval_s, 3), "end_s": round(min(duration_s, (i + 1) * interval_s), 3)}
            for i in range(n)]


def subject_sentence(req: OmniRequest) -> str:
    """The sentence of the instruction naming the subject: ``req.subject``, or DEFAULT_SUBJECT."""
    return (req.subject or "").strip() or DEFAULT_SUBJECT


def build_instruction(req: OmniRequest, retry_note: str | None = None) -> str:
    """The text of the user turn: what the inputs are, what to answer, and the JSON format."""
    n = len(req.frames)
    audio = ("interleaved in time with the clip's audio track (mono, 16 kHz)" if req.has_audio
             else "the clip has no audio track")
    lines = [
        f"The video has {n} frames sampled at {req.fps:g} frames per second (frame k is at k/{req.fps:g} s), "
        f"{audio}. The clip lasts {req.duration_s:.2f} s. {subject_sentence(req)}",
        "",
        "scene_class: exactly one of:",
        *[f"- {c}: {CLASS_HELP[c]}" for c in SCENE_CLASSES],
        "scene_prob: your confidence in scene_class, a number from 0 to 1.",
    ]
    keys = ["scene_class", "scene_prob", "caption_dense", "caption_summary"]
    if req.listener:
        lines += [
            "This is a LISTENER clip: describe only what does not change over time. caption_dense: a detailed "
            "description of the subject's appearance, clothing and the setting; caption_summary: one sentence; "
            "no moment-by-moment actions.",
            'listener: {"appearance": "...", "personality": "the personality the subject conveys", '
            '"relation": "the subject\'s relationship to the person speaking"}.',
        ]
        keys.append("listener")
    else:
        units = span_units(req)
        lines += [
            "caption_dense: a detailed description of the subject (appearance, motion, expression, gaze), "
            "the setting and the camera; caption_summary: one sentence.",
            "caption_spans: one caption per numbered unit below: what the subject does and expresses during it.",
            *[f"  unit {i}: {u['start_s']:.2f}-{u['end_s']:.2f} s" + (f', speech: "{u["text"]}"' if u["text"] else "")
              for i, u in enumerate(units)],
            '  format: [{"unit": 0, "text": "..."}, ...], every unit exactly once, in order.',
        ]
        keys.append("caption_spans")
        if req.behaviour:
            wins = behaviour_windows(req.duration_s, req.behaviour_interval_s)
            lines += [
                f"behaviour_captions: what the subject does in each {req.behaviour_interval_s:g} s window "
                "(head, face, gaze, hands, body), one short sentence each:",
                *[f"  window {i}: {w['start_s']:.2f}-{w['end_s']:.2f} s" for i, w in enumerate(wins)],
                '  format: [{"window": 0, "text": "..."}, ...], every window exactly once, in order.',
            ]
            keys.append("behaviour_captions")
    lines += ["tags: for each key a list of words taken only from its vocabulary (empty list if none apply):",
              *[f"  {k}: {', '.join(v)}" for k, v in TAG_VOCAB.items()]]
    keys.append("tags")
    lines += ["", "Answer with one JSON object only, with the keys: " + ", ".join(keys) + "."]
    if retry_note:
        lines += [f"Your previous answer could not be used ({retry_note}). Answer again, JSON only."]
    return "\n".join(lines)


def build_prompt(req: OmniRequest, vision_bos: str, video_token: str, vision_eos: str,
                 retry_note: str | None = None) -> str:
    """The full ChatML prompt of the Qwen-Omni chat template for a (video, text) user turn; the
    processor expands the video placeholder into interleaved video and audio tokens."""
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{vision_bos}{video_token}{vision_eos}{build_instruction(req, retry_note)}<|im_end|>\n"
            f"<|im_start|>assistant\n")


# ---- output -------------------------------------------------------------------------------------
def extract_json(text: str) -> dict:
    """The first JSON object in ``text`` (code fences and surrounding prose allowed)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise MalformedOutput("no JSON object in the output")


_CLASS_VALUE = re.compile(r'"scene_class"\s*:\s*"([^"]*)"')


def scene_prob_from_tokens(text: str, tokens: Sequence[tuple[str, float]] | None) -> float | None:
    """exp(sum of log-probabilities) of the generated tokens that spell the scene_class value.

    ``tokens``: the generated tokens in order as (decoded text, natural-log probability); their texts
    concatenate to ``text``. Returns None when tokens are missing or do not line up with the text.
    """
    if not tokens or "".join(t for t, _ in tokens) != text:
        return None
    m = _CLASS_VALUE.search(text)
    if not m or m.end(1) == m.start(1):
        return None
    a, b = m.span(1)
    pos, total, used = 0, 0.0, 0
    for piece, lp in tokens:
        end = pos + len(piece)
        if end > a and pos < b:      # the token overlaps the value's characters
            total += float(lp)
            used += 1
        pos = end
        if pos >= b:
            break
    return float(math.exp(total)) if used else None


def _norm_word(w) -> str:
    return re.sub(r"[\s\-]+", "_", str(w).strip().lower())


def _indexed(items, key: str, n: int, what: str) -> list[str]:
    if not isinstance(items, list):
        raise MalformedOutput(f"{what} is not a list")
    texts: dict[int, str] = {}
    for it in items:
        if not isinstance(it, dict) or key not in it or not str(it.get("text", "")).strip():
            raise MalformedOutput(f"{what} entry without {key} and text")
        texts[int(it[key])] = str(it["text"]).strip()
    if sorted(texts) != list(range(n)):
        raise MalformedOutput(f"{what} cover {key}s {sorted(texts)} instead of 0..{n - 1}")
    return [texts[i] for i in range(n)]


def parse_output(text: str, req: OmniRequest, tokens: Sequence[tuple[str, float]] | None = None) -> dict:
    """Parse one model answer into a validated caption record; raises MalformedOutput.

    The record: scene_class (str), scene_prob (float 0-1), scene_prob_source ("tokens" | "stated"),
    caption_dense, caption_summary (str), caption_spans (list of {start_s, end_s, text}, clip seconds),
    tags ({key: [words]} for every key of TAG_VOCAB), tags_dropped (off-vocabulary words),
    listener_captions ({appearance, personality, relation} for listener clips, else None),
    behaviour_captions (list of {start_s, end_s, text} when asked, else None).
    """
    try:
        obj = extract_json(text)
        cls = _norm_word(obj.get("scene_class", ""))
        if cls not in SCENE_CLASSES:
            raise MalformedOutput(f"scene_class {obj.get('scene_class')!r} is not one of the six classes")
        prob = scene_prob_from_tokens(text, tokens)
        source = "tokens"
        if prob is None:
            stated = obj.get("scene_prob")
            if isinstance(stated, bool) or not isinstance(stated, (int, float)):
                raise MalformedOutput("no token probabilities and no numeric scene_prob")
            prob, source = float(stated), "stated"
        tags_in = obj.get("tags") or {}
        if not isinstance(tags_in, dict):
            raise MalformedOutput("tags is not an object")
        tags, dropped = {}, []
        for k in TAG_KEYS:
            words = tags_in.get(k) or []
            words = [words] if isinstance(words, str) else words
            if not isinstance(words, list):
                raise MalformedOutput(f"tags/{k} is not a list")
            keep = []
            for w in map(_norm_word, words):
                if w in TAG_VOCAB[k]:
                    if w not in keep:
                        keep.append(w)
                else:
                    dropped.append(f"{k}:{w}")
            tags[k] = keep
        dropped += [f"{k}:*" for k in tags_in if k not in TAG_VOCAB]
        record = {
            "scene_class": cls, "scene_prob": min(1.0, max(0.0, prob)), "scene_prob_source": source,
            "caption_dense": str(obj.get("caption_dense", "")).strip(),
            "caption_summary": str(obj.get("caption_summary", "")).strip(),
            "caption_spans": [], "tags": tags, "tags_dropped": dropped,
            "listener_captions": None, "behaviour_captions": None,
        }
        if req.listener:
            lis = obj.get("listener")
            if not isinstance(lis, dict):
                raise MalformedOutput("listener clip without the listener object")
            record["listener_captions"] = {k: str(lis.get(k, "")).strip() for k in LISTENER_FIELDS}
        else:
            units = span_units(req)
            texts = _indexed(obj.get("caption_spans"), "unit", len(units), "caption_spans")
            record["caption_spans"] = [{"start_s": u["start_s"], "end_s": u["end_s"], "text": t}
                                       for u, t in zip(units, texts)]
            if req.behaviour:
                wins = behaviour_windows(req.duration_s, req.behaviour_interval_s)
                texts = _indexed(obj.get("behaviour_captions"), "window", len(wins), "behaviour_captions")
                record["behaviour_captions"] = [{**w, "text": t} for w, t in zip(wins, texts)]
        return validate_caption(record, listener=req.listener, duration_s=req.duration_s)
    except MalformedOutput:
        raise
    except (CaptionInvalid, KeyError, TypeError, ValueError) as e:
        raise MalformedOutput(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@dataclass
class CaptionResult:
    """The outcome of one request of ``caption_many``: a record or a one-line error."""
    index: int                  # position in the input list
    record: dict | None         # parse_output's record (+ attempts) when it worked
    error: str | None           # "ExceptionType: message", one line, when it did not
    seconds: float              # wall time of this item, retries included


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    msg = (str(e).splitlines() or [""])[0] or type(e).__name__
    return f"{type(e).__name__}: {msg}"[:300]


GenerateFn = Callable[[OmniRequest, "str | None"], "tuple[str, Sequence[tuple[str, float]] | None]"]


def caption_with_retry(generate: GenerateFn, req: OmniRequest) -> dict:
    """Generate and parse; on a malformed answer generate once more with the reason in the prompt.

    ``generate(req, retry_note)`` returns (text, tokens or None). The record gets ``attempts`` (1 or 2).
    Raises OmniOutputError (one line) when the second answer is malformed too.
    """
    note = None
    for attempt in (1, 2):
        text, tokens = generate(req, note)
        try:
            record = parse_output(text, req, tokens)
        except MalformedOutput as e:
            note = str(e)
            continue
        record["attempts"] = attempt
        return record
    raise OmniOutputError(f"malformed Omni output twice: {note}"[:300])


def silent_verification(scene_class: str | None, frame_states: Sequence[str] | None,
                        max_speak_ratio: float = 0.0) -> dict:
    """LongCat §2.3: a clip is silent only when two independent judgements agree that the subject
    is not speaking.

    Judgement 1, ``silent_omni``: Omni's scene class is one of ``NOT_SPEAKING_CLASSES`` (silence,
    listen_dialogue, listen_nondialogue). Judgement 2, ``silent_frames``: the per-frame speak / listen /
    idle / discard states of the subject (lip motion + voice activity, SPEC item 9) have at most
    ``max_speak_ratio`` of frames in ``speak`` and none in ``discard`` (lips moving without speech is
    not clean silence). Either is None when unavailable (no class, no states); ``silent`` is True only
    when both are True.
    """
    omni = None if scene_class is None else scene_class in NOT_SPEAKING_CLASSES
    frames = None
    if frame_states:
        n = len(frame_states)
        speak = sum(s == "speak" for s in frame_states) / n
        frames = speak <= max_speak_ratio and "discard" not in frame_states
    return {"silent_omni": omni, "silent_frames": frames, "silent": bool(omni and frames)}


# ---- local backend ------------------------------------------------------------------------------
_THINKER_CLASSES = {"qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
                    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration"}
_FULL_CLASSES = {"qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
                 "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration"}


def _weights_file(model_dir: str | Path | None) -> Path:
    if model_dir and (Path(model_dir) / "model.safetensors.index.json").is_file():
        return Path(model_dir) / "model.safetensors.index.json"
    return weight_path(model_dir, "model.safetensors")


def detokenize(tokenizer, ids: Sequence[int], logprobs: Sequence[float]) -> tuple[str, list[tuple[str, float]]]:
    """The decoded text and its pieces as (text, summed log-probability), the pieces concatenating to
    the text. Tokens that end inside a multi-byte character are merged with the following ones (their
    log-probabilities summed), so a piece is the text a group of tokens adds."""
    pieces: list[tuple[str, float]] = []
    emitted, pending = "", 0.0
    for i, lp in enumerate(logprobs):
        cur = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        pending += float(lp)
        if cur.endswith("\ufffd") and i < len(logprobs) - 1:
            continue
        while pieces and not cur.startswith(emitted):   # the decoded prefix changed: regroup
            text, plp = pieces.pop()
            emitted, pending = emitted[: len(emitted) - len(text)], pending + plp
        pieces.append((cur[len(emitted):], pending))
        emitted, pending = cur, 0.0
    return emitted, pieces


class OmniCaptioner:
    """A Qwen-Omni thinker from ``model_dir`` (config.json, model.safetensors[.index.json], tokenizer
    and processor files). ``caption(req)`` returns the validated record of ``parse_output``."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS,
                 max_pixels: int = MAX_PIXELS, min_pixels: int = MIN_PIXELS, dtype: str = "auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cfg_path = weight_path(model_dir, "config.json")
        weights = _weights_file(model_dir)
        weight_path(model_dir, "tokenizer_config.json")
        model_type = json.loads(cfg_path.read_text()).get("model_type", "")
        import torch
        import transformers
        from transformers import AutoProcessor
        self.torch = torch
        if model_type in _THINKER_CLASSES:
            cls = getattr(transformers, _THINKER_CLASSES[model_type])
            model = cls.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
        elif model_type in _FULL_CLASSES:
            if model_type == "qwen2_5_omni":
                weight_path(model_dir, "spk_dict.pt")  # its from_pretrained reads the speaker file
            cls = getattr(transformers, _FULL_CLASSES[model_type])
            model = cls.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True,
                                        enable_audio_output=False).thinker
        else:
            raise MissingWeights(f"{cfg_path} is not a Qwen-Omni checkpoint (model_type {model_type!r})")
        self.model = model.to(device).eval()
        self.device = device
        self.processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.video_size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        self.backend = f"transformers:{model_type}:{Path(model_dir).name}:{weights.name}"

    def build_inputs(self, req: OmniRequest, retry_note: str | None = None):
        """The processor's tensors: input_ids, attention_mask, pixel_values_videos, video_grid_thw,
        video_second_per_grid and, with audio, input_features and feature_attention_mask."""
        p = self.processor
        prompt = build_prompt(req, p.vision_bos_token, p.video_token, p.vision_eos_token, retry_note)
        frames = np.ascontiguousarray(req.frames)
        if len(frames) % 2:  # two frames per temporal patch: repeat the last one
            frames = np.concatenate([frames, frames[-1:]])
        kw = dict(text=[prompt], videos=[frames], fps=req.fps, return_tensors="pt",
                  videos_kwargs={"size": self.video_size, "do_sample_frames": False,
                                 "cap_pixels_per_frame": True})
        if req.has_audio:
            kw.update(audio=[np.asarray(req.audio, dtype=np.float32)], audio_from_video_indices=[0],
                      load_audio_from_video=True)
        with warnings.catch_warnings():  # transformers' processor passes copy=False to np.arange (numpy 2)
            warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
            return p(**kw).to(self.device)

    def generate(self, req: OmniRequest, retry_note: str | None = None, **generate_kwargs
                 ) -> tuple[str, list[tuple[str, float]]]:
        """Greedy generation; returns the answer text and its tokens as (text, log-probability)."""
        torch = self.torch
        inputs = self.build_inputs(req, retry_note)
        n_in = inputs["input_ids"].shape[1]
        kw = dict(max_new_tokens=self.max_new_tokens, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, use_audio_in_video=req.has_audio)
        kw.update(generate_kwargs)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kw)
        new = out.sequences[0, n_in:]
        logits = torch.stack(out.logits, 0)[:, 0].float()
        lps = torch.log_softmax(logits, -1).gather(1, new[: len(logits), None])[:, 0].tolist()
        return detokenize(self.tokenizer, new.tolist(), lps)

    def caption(self, req: OmniRequest, **generate_kwargs) -> dict:
        """The validated caption record (see parse_output) plus ``attempts``; OmniOutputError when the
        model answers malformed output twice."""
        return caption_with_retry(lambda r, note: self.generate(r, note, **generate_kwargs), req)

    def caption_many(self, reqs: Sequence[OmniRequest]) -> list[CaptionResult]:
        """Caption one request after the other; a failing item gets its error line, the rest go on."""
        out = []
        for i, req in enumerate(reqs):
            t0 = time.monotonic()
            try:
                out.append(CaptionResult(i, self.caption(req), None, time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 - one item's failure is recorded, never raised
                out.append(CaptionResult(i, None, error_line(e), time.monotonic() - t0))
        return out
