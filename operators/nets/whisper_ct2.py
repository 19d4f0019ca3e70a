"""Whisper through CTranslate2 (faster-whisper), converted offline from the openai-whisper checkpoint.

The model directory holds openai-whisper checkpoints (``whisper/<name>.pt``). :func:`convert` turns
one into a CTranslate2 model directory with no download: the checkpoint's tensors renamed into
transformers' ``WhisperForConditionalGeneration`` (in memory), CTranslate2's own Whisper loader
(``ctranslate2.converters.transformers.WhisperLoader``) on it, weights stored as float16 (the
checkpoint's own type: lossless), and a ``tokenizer.json`` built from the BPE ranks and special tokens
that the openai-whisper wheel ships (``whisper/assets/*.tiktoken``) with the same ids. The decoding
options are the checkpoint's: the non-speech tokens suppressed, blank and end-of-text suppressed at
the start, the official alignment heads of the model name (``whisper._ALIGNMENT_HEADS``) for word
times.

Where the converted model lives (:func:`ct2_dir`): ``<models>/whisper/<name>-ct2/`` when it exists
(``python -m operators.nets.whisper_ct2 --models DIR`` writes it there once), else a cache directory
(``$CURATION_CACHE`` or ``~/.cache/curation``) under ``whisper-ct2/<name>-<first 12 hex of the
checkpoint's sha256>``, converted at the first set-up (about 20 s for tiny.en; written to a temporary
directory and renamed, so workers converting at once never see half a model).

:class:`FastASR` decodes with faster-whisper as ``operators.nets.asr.ASR`` does with openai-whisper
(greedy at temperature 0 with the same fallback temperatures, the same no-speech and compression
rules, ``condition_on_previous_text=False``, word timestamps, fp32 compute on the CPU) and returns the
same dict (``operators.nets.asr.from_segments``: the same sentence units). Measured on vr_face1,
st_WDA_KatieHill_000 and dj_video4: the same sentence units, texts and times (to 0.01 s) as
openai-whisper, for 0.8-0.9 CPU-s per clip instead of 3.9-7.5 (one thread).
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from operators.nets import weight_path
from operators.nets.asr import ASR, DEFAULT_MODEL, _version

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)    # whisper.transcribe's default fallback
RENAME = [("blocks", "layers"), ("mlp.0", "fc1"), ("mlp.2", "fc2"), ("mlp_ln", "final_layer_norm"),
          (".attn.query", ".self_attn.q_proj"), (".attn.key", ".self_attn.k_proj"),
          (".attn.value", ".self_attn.v_proj"), (".attn_ln", ".self_attn_layer_norm"),
          (".attn.out", ".self_attn.out_proj"), (".cross_attn.query", ".encoder_attn.q_proj"),
          (".cross_attn.key", ".encoder_attn.k_proj"), (".cross_attn.value", ".encoder_attn.v_proj"),
          (".cross_attn_ln", ".encoder_attn_layer_norm"), (".cross_attn.out", ".encoder_attn.out_proj"),
          ("decoder.ln.", "decoder.layer_norm."), ("encoder.ln.", "encoder.layer_norm."),
          ("token_embedding", "embed_tokens"), ("encoder.positional_embedding", "encoder.embed_positions.weight"),
          ("decoder.positional_embedding", "decoder.embed_positions.weight"), ("ln_post", "layer_norm")]


def _transformers_model(checkpoint: dict):
    """The openai-whisper checkpoint as transformers' WhisperForConditionalGeneration (in memory)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    d = checkpoint["dims"]
    cfg = WhisperConfig(vocab_size=d["n_vocab"], num_mel_bins=d["n_mels"], d_model=d["n_audio_state"],
                        encoder_layers=d["n_audio_layer"], encoder_attention_heads=d["n_audio_head"],
                        decoder_layers=d["n_text_layer"], decoder_attention_heads=d["n_text_head"],
                        encoder_ffn_dim=4 * d["n_audio_state"], decoder_ffn_dim=4 * d["n_text_state"],
                        max_source_positions=d["n_audio_ctx"], max_target_positions=d["n_text_ctx"])
    state = {}
    for key, value in checkpoint["model_state_dict"].items():
        for a, b in RENAME:
            key = key.replace(a, b)
        state[key] = value.float()
    model = WhisperForConditionalGeneration(cfg)
    missing, unexpected = model.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"whisper checkpoint does not map onto transformers' Whisper: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model


def _tokenizer(n_vocab: int):
    """(tokenizers.Tokenizer, openai-whisper tokenizer) with the checkpoint's vocabulary and ids."""
    import whisper.tokenizer as wt
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    multilingual = n_vocab >= 51865
    languages = n_vocab - 51765 - int(multilingual)
    enc = wt.get_encoding("multilingual" if multilingual else "gpt2", num_languages=languages)
    ranks, byte_char = enc._mergeable_ranks, bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[c] for c in b)
    merges = []
    for token, rank in ranks.items():
        pairs = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(pairs, key=lambda p: (ranks[p[0]], ranks[p[1]]))
    merges.sort(key=lambda p: p[2])
    tok = Tokenizer(BPE({text(t): r for t, r in ranks.items()}, [(text(a), text(b)) for a, b, _ in merges],
                        fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = sorted(enc._special_tokens.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, _ in specials])
    if any(tok.token_to_id(t) != i for t, i in specials):
        raise ValueError("whisper tokenizer: special token ids do not match the checkpoint's")
    return tok, wt.get_tokenizer(multilingual, num_languages=languages)


def convert(pt_path: str | Path, out_dir: str | Path, name: str = DEFAULT_MODEL) -> Path:
    """Convert an openai-whisper checkpoint into a CTranslate2 model directory (see the module
    docstring); written to a temporary directory beside ``out_dir`` and renamed."""
    import torch
    import whisper
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters.transformers import WhisperLoader
    checkpoint = torch.load(str(pt_path), map_location="cpu")
    model = _transformers_model(checkpoint)
    tok, wtok = _tokenizer(checkpoint["dims"]["n_vocab"])
    gen = model.generation_config
    gen.suppress_tokens = list(wtok.non_speech_tokens)
    gen.begin_suppress_tokens = [wtok.encode(" ")[0], wtok.eot]
    if checkpoint["dims"]["n_vocab"] >= 51865:        # multilingual: the language tokens, for detection
        gen.lang_to_id = {f"<|{c}|>": i for c, i in zip(wtok.all_language_codes, wtok.all_language_tokens)}
    heads = getattr(whisper, "_ALIGNMENT_HEADS", {}).get(name)
    d = checkpoint["dims"]
    if heads is not None:
        mask = np.frombuffer(gzip.decompress(base64.b85decode(heads)), dtype=bool)
        if mask.size == d["n_text_layer"] * d["n_text_head"]:
            gen.alignment_heads = [[int(a), int(b)] for a, b in np.argwhere(mask.reshape(d["n_text_layer"], -1))]

    class _Vocabulary:   # what WhisperLoader asks of a tokenizer
        additional_special_tokens: list = []

        def get_vocab(self):
            return tok.get_vocab(with_added_tokens=True)

    class _Converter(Converter):
        def _load(self):
            return WhisperLoader()(model, _Vocabulary())

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _Converter().convert(str(tmp / "m"), quantization="float16", force=True)
        tok.save(str(tmp / "m" / "tokenizer.json"))
        try:
            os.rename(tmp / "m", out)
        except OSError:
            if not (out / "model.bin").exists():   # another worker's conversion won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ct2_dir(model_dir: str | Path | None, name: str = DEFAULT_MODEL) -> Path:
    """The CTranslate2 model of ``whisper/<name>.pt``: beside it, or in the cache (converted now)."""
    pt = weight_path(model_dir, f"whisper/{name}.pt")
    beside = pt.parent / f"{name}-ct2"
    if (beside / "model.bin").exists():
        return beside
    digest = hashlib.sha256(pt.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("CURATION_CACHE") or Path.home() / ".cache" / "curation")
    out = cache / "whisper-ct2" / f"{name}-{digest}"
    return out if (out / "model.bin").exists() else convert(pt, out, name)


class FastASR(ASR):
    """faster-whisper on the converted checkpoint; ``transcribe`` is ``operators.nets.asr.ASR``'s, only
    the decoding differs."""

    def __init__(self, model_dir: str | Path | None, name: str = DEFAULT_MODEL, threads: int | None = None):
        from faster_whisper import WhisperModel
        self.path = ct2_dir(model_dir, name)
        self.model = WhisperModel(str(self.path), device="cpu", compute_type="float32",
                                  cpu_threads=threads or 0, num_workers=1)
        self.name = name
        self.multilingual = bool(self.model.model.is_multilingual)
        self.backend = f"faster-whisper {_version('faster-whisper')} {name} (ctranslate2 {_version('ctranslate2')})"

    def detect_language(self, audio16k: np.ndarray) -> tuple[str, float | None]:
        if not self.multilingual:
            return "en", None
        lang, prob, _ = self.model.detect_language(audio16k)
        return lang, float(prob)

    def _segments(self, x: np.ndarray, language: str) -> list[dict]:
        segments, _ = self.model.transcribe(
            x, language=language, word_timestamps=True, beam_size=1, best_of=1, temperature=list(TEMPERATURES),
            condition_on_previous_text=False, vad_filter=False, without_timestamps=False)
        return [{"text": s.text, "avg_logprob": s.avg_logprob, "no_speech_prob": s.no_speech_prob,
                 "compression_ratio": s.compression_ratio,
                 "words": [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                           for w in s.words or []]} for s in segments]


def main() -> None:
    ap = argparse.ArgumentParser(description="Convert whisper/<name>.pt under --models into "
                                             "whisper/<name>-ct2/ beside it (one-time, offline).")
    ap.add_argument("--models", required=True)
    ap.add_argument("--name", default=DEFAULT_MODEL)
    args = ap.parse_args()
    pt = weight_path(args.models, f"whisper/{args.name}.pt")
    print(convert(pt, pt.parent / f"{args.name}-ct2", args.name))


if __name__ == "__main__":
    main()
