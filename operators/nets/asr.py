"""Speech recognition with openai-whisper: word timestamps and sentence units (issue 7 item 8).

Model: ``MODEL_DIR/whisper/<name>.pt`` (openai-whisper checkpoint format, ``whisper.load_model(path)``);
default ``tiny.en`` (the file shipped in the shared model directory); larger or multilingual
checkpoints by file name (``small``, ``large-v3``, ...). When the file stem is an official model name,
its cross-attention alignment heads (``whisper._ALIGNMENT_HEADS``) are set, as ``whisper.load_model``
does for downloaded models (a path load otherwise uses all heads of the decoder's second half, which
gives coarser word times).

Language: English-only checkpoints (``*.en``, ``model.is_multilingual`` false) transcribe English and
report ``language = "en"`` with no probability; a multilingual checkpoint detects the language on the
first 30 s (``model.detect_language``) unless one is given, and reports its probability.

Decoding: ``whisper.transcribe`` with ``word_timestamps=True``, greedy at temperature 0 with whisper's
default fallback temperatures, ``condition_on_previous_text=False`` (limits repetition loops on
music and silence), whisper's own no-speech rule (a 30 s window is dropped when
``no_speech_prob > 0.6`` and ``avg_logprob < -1``), fp32 on CPU.

Sentence units (LPM 1.0 §2.3: "we split transcripts using punctuation cues ... and align each sentence
unit with its corresponding temporal span"): the recognised words in order, cut after every word that
ends with sentence-final punctuation (``. ! ? …`` and CJK ``。！？``), not after a few common
abbreviations (Mr., Dr., e.g., ...). A trailing run of words without final punctuation (speech cut
by the clip end) is a last unit with ``complete = False``. Each unit:

- ``start_s``/``end_s``: first word's start and last word's end, seconds from the start of the audio
  plus ``offset_s`` (pass the clip's start time to get video time);
- ``text``, ``words`` (``word``, ``start_s``, ``end_s``, ``prob``: whisper's word probability, the mean
  of its tokens' probabilities);
- ``confidence``: the mean word probability of the unit (0-1, per unit);
- ``avg_logprob``, ``no_speech_prob``: whisper's values for the decoding window(s) the unit's words
  came from (whisper computes them per 30 s window, so every segment of one window shares them; the
  lowest ``avg_logprob`` and highest ``no_speech_prob`` when a unit spans windows);
  ``exp(avg_logprob)`` is the window's geometric-mean token probability.

Word times are clamped to [0, audio duration] and made non-decreasing (whisper's DTW alignment can
give zero-length words, never decreasing ones in practice).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from operators.nets import weight_path

SAMPLE_RATE = 16000          # whisper.audio.SAMPLE_RATE
DEFAULT_MODEL = "tiny.en"
SENTENCE_END = ".!?…。！？"
CLOSERS = "\"'”’)]}»"
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "vs.", "etc.", "e.g.", "i.e.",
                 "u.s.", "no.", "mt.", "approx."}


def ends_sentence(word: str) -> bool:
    """True when a whisper word closes a sentence: final punctuation, maybe inside closing quotes."""
    w = word.strip().rstrip(CLOSERS)
    if not w or w[-1] not in SENTENCE_END:
        return False
    return w.lower().lstrip("\"'“(") not in ABBREVIATIONS


def sentence_units(words: list[dict]) -> list[dict]:
    """Group words (dicts with word, start_s, end_s, prob, and optionally avg_logprob / no_speech_prob)
    into sentence units (see the module docstring)."""
    units, cur = [], []

    def close(complete: bool) -> None:
        if not cur:
            return
        text = re.sub(r"\s+", " ", "".join(w["word"] for w in cur)).strip()
        units.append({
            "start_s": cur[0]["start_s"], "end_s": cur[-1]["end_s"], "text": text,
            "words": [{k: w[k] for k in ("word", "start_s", "end_s", "prob")} for w in cur],
            "confidence": float(np.mean([w["prob"] for w in cur])),
            "avg_logprob": min((w.get("avg_logprob", 0.0) for w in cur)),
            "no_speech_prob": max((w.get("no_speech_prob", 0.0) for w in cur)),
            "complete": complete,
        })
        cur.clear()

    for w in words:
        cur.append(w)
        if ends_sentence(w["word"]):
            close(True)
    close(False)
    return units


class ASR:
    """openai-whisper from the model directory; ``transcribe(wav, sr) -> dict`` (see module docstring)."""

    def __init__(self, model_dir: str | Path | None, name: str = DEFAULT_MODEL, threads: int | None = None,
                 device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import whisper
        if threads:
            torch.set_num_threads(threads)
        self.path = weight_path(model_dir, f"whisper/{name}.pt")
        self._whisper = whisper
        self.model = whisper.load_model(str(self.path), device=device)
        heads = getattr(whisper, "_ALIGNMENT_HEADS", {}).get(name)
        if heads is not None and _heads_fit(self.model, heads):
            self.model.set_alignment_heads(heads)
        self.name = name
        self.multilingual = bool(self.model.is_multilingual)
        self.backend = f"openai-whisper {_version('openai-whisper')} {name}"

    def detect_language(self, audio16k: np.ndarray) -> tuple[str, float | None]:
        """(language code, probability) from the first 30 s; English-only models give ("en", None)."""
        if not self.multilingual:
            return "en", None
        wh = self._whisper
        mel = wh.log_mel_spectrogram(wh.pad_or_trim(audio16k), self.model.dims.n_mels).to(self.model.device)
        _, probs = self.model.detect_language(mel)
        lang = max(probs, key=probs.get)
        return lang, float(probs[lang])

    def transcribe(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, offset_s: float = 0.0,
                   language: str | None = None) -> dict:
        """Mono (or [N, C], averaged) waveform -> {language, language_prob, text, segments, sentences, duration_s}.

        ``segments``: whisper's segments (start_s, end_s, text, avg_logprob, no_speech_prob,
        compression_ratio); ``sentences``: the sentence units. Times in seconds plus ``offset_s``.
        """
        x, duration = prepare_audio(wav, sample_rate)
        if len(x) < SAMPLE_RATE // 10 or not np.any(x):           # < 0.1 s or digital silence
            return empty_result(language or ("en" if not self.multilingual else None), duration)
        prob = None
        if language is None:
            language, prob = self.detect_language(x)
        return from_segments(self._segments(x, language), duration, offset_s, language, prob)

    def _segments(self, x: np.ndarray, language: str) -> list[dict]:
        """The runtime's segments of 16 kHz audio, as openai-whisper gives them (with ``words``)."""
        return self._whisper.transcribe(self.model, x, word_timestamps=True, fp16=False, language=language,
                                        condition_on_previous_text=False, verbose=None)["segments"]


def prepare_audio(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Mono float32 at 16 kHz and its duration in seconds."""
    from operators.nets.spleeter import resample
    x = np.asarray(wav, np.float32)
    if x.ndim == 2:
        x = x.mean(1)
    x = resample(x, sample_rate, SAMPLE_RATE)
    return x, len(x) / SAMPLE_RATE


def empty_result(language: str | None, duration: float) -> dict:
    return {"language": language, "language_prob": None, "text": "", "segments": [], "sentences": [],
            "duration_s": duration}


def from_segments(raw: list[dict], duration: float, offset_s: float, language: str | None,
                  prob: float | None) -> dict:
    """The result of :meth:`ASR.transcribe` from whisper's segments (dicts with text, avg_logprob,
    no_speech_prob, compression_ratio and words: word, start, end, probability), whichever runtime
    decoded them: word times clamped and made non-decreasing, sentence units."""
    segments, words, last = [], [], 0.0
    for s in raw:
        seg_words = []
        for w in s.get("words") or []:
            start = min(max(float(w["start"]), last, 0.0), duration)
            end = min(max(float(w["end"]), start), duration)
            last = start
            seg_words.append({"word": w["word"], "start_s": start + offset_s, "end_s": end + offset_s,
                              "prob": float(w["probability"]), "avg_logprob": float(s["avg_logprob"]),
                              "no_speech_prob": float(s["no_speech_prob"])})
        if not seg_words:
            continue                                         # whisper can emit empty segments
        words += seg_words
        segments.append({"start_s": seg_words[0]["start_s"], "end_s": seg_words[-1]["end_s"],
                         "text": s["text"].strip(), "avg_logprob": float(s["avg_logprob"]),
                         "no_speech_prob": float(s["no_speech_prob"]),
                         "compression_ratio": float(s["compression_ratio"]),
                         "confidence": math.exp(float(s["avg_logprob"]))})
    return {"language": language, "language_prob": prob,
            "text": " ".join(s["text"] for s in segments), "segments": segments,
            "sentences": sentence_units(words), "duration_s": duration}


def _heads_fit(model, heads: bytes) -> bool:
    """The official alignment heads apply only to a checkpoint of that model's shape."""
    import base64
    import gzip
    mask = np.frombuffer(gzip.decompress(base64.b85decode(heads)), dtype=bool)
    return mask.size == model.dims.n_text_layer * model.dims.n_text_head


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
