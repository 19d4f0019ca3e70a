"""asr: Whisper speech recognition per video, with word times and sentence units (LPM §2.3).

Runs Whisper (``MODEL_DIR/whisper/<model>.pt``; ``tiny.en`` here, larger or multilingual checkpoints
on clusters) through CTranslate2 / faster-whisper (``runtime: ctranslate2``, the default: the
checkpoint converted offline once, operators/nets/whisper_ct2.py; the same sentence units as
openai-whisper on the shared clips for a fifth to a ninth of the CPU) or openai-whisper itself
(``runtime: openai-whisper``) on the separated vocals when separation ran, else on the mix, and stores the
sentence units (split on punctuation, each with its span in video seconds, text, words and a
confidence: the mean word probability), whisper's segments, the language (detected on the first 30 s
with a multilingual model, ``en`` for English-only ones) and the backend. Videos without an audio
stream get no units and ``asr_backend = "no-audio"``. ``clip_transcript`` copies the units of each
clip's span onto the clip.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.media import MediaError, load_audio, local_path
from curation.operator import Operator, OperatorError, Param, Resources

from schemas.labels import SENTENCE, WORD  # noqa: F401 - WORD: the type of SENTENCE's words


class Asr(Operator):
    name = "asr"
    summary = ("Whisper (faster-whisper / CTranslate2 on the converted checkpoint, or openai-whisper: "
               "runtime) with word times, sentence units split on punctuation")
    version = "3"   # 2: presentation timeline; 3: CTranslate2 runtime (asr_backend names it)
    input_table = output_table = "videos"
    reads = ("videos.has_audio", "videos.vocals_uri", "videos.separation_ran")
    writes = pa.schema([
        pa.field("asr_sentences", pa.list_(SENTENCE)),
        pa.field("asr_text", pa.string()),
        pa.field("asr_language", pa.string()),
        pa.field("asr_language_prob", pa.float32()),
        pa.field("asr_source", pa.string()),
        pa.field("asr_backend", pa.string()),
    ])
    params = {
        "model": Param("tiny.en", help="checkpoint name under whisper/ in the model directory"),
        "language": Param("", help="force a language code; empty = detect (multilingual models)"),
        "use_vocals": Param(True, help="transcribe the separated vocals when separation ran"),
        "runtime": Param("ctranslate2", choices=("ctranslate2", "openai-whisper"),
                         help="ctranslate2: faster-whisper on the checkpoint converted once (cached)"),
    }
    resources = Resources(num_cpus=1)
    needs_model = True

    def weight_files(self) -> list[str]:
        return [f"whisper/{self.p['model']}.pt"]

    def setup(self) -> None:
        threads = max(1, int(self.resources.num_cpus))
        if self.p["runtime"] == "ctranslate2":
            from operators.nets.whisper_ct2 import FastASR
            self.asr = FastASR(self.model_dir, self.p["model"], threads=threads)
        else:
            from operators.nets.asr import ASR
            self.asr = ASR(self.model_dir, self.p["model"], threads=threads)

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        if not video.get("has_audio"):
            return [{"asr_sentences": [], "asr_text": "", "asr_language": None,
                     "asr_language_prob": None, "asr_source": "no-audio", "asr_backend": "no-audio"}]
        vocals = bool(self.p["use_vocals"]) and video.get("separation_ran") and video.get("vocals_uri")
        uri, source = (video["vocals_uri"], "vocals") if vocals else (video["uri"], "mix")
        with local_path(uri) as path:
            try:
                wav = load_audio(path, 16000)
            except MediaError as e:
                raise OperatorError(str(e)) from None
        res = self.asr.transcribe(np.asarray(wav, np.float32), 16000,
                                  language=self.p["language"] or None)
        sentences = [{**{k: s.get(k) for k in SENTENCE.names if k != "words"},
                      "words": [{k: w.get(k) for k in WORD.names} for w in s.get("words", [])]}
                     for s in res["sentences"]]
        return [{"asr_sentences": sentences, "asr_text": res["text"], "asr_language": res["language"],
                 "asr_language_prob": res["language_prob"], "asr_source": source,
                 "asr_backend": self.asr.backend}]
