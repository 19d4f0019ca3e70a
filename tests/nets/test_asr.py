"""Whisper ASR with word timestamps and sentence units, on real clips.

What a person can check by listening: vr_face1 says "My biggest weakness is asking for help when I
need it. I'd like to do better at that." (about 0-2.8 s and 3.3-5.1 s); st_WDA_KatieHill_000 says
"... congressional district, and I'm currently in DC for my second week of new member orientation.
In addition to learning where things are and how to use the tunnels, ..." (cut mid-sentence at the
end); lp_d3 (silent track) and pf_single_face (faint room sound) have no speech.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from curation.media import load_audio
from operators.nets import MissingWeights
from operators.nets.asr import ASR, ends_sentence, sentence_units

SR = 16000


@pytest.fixture(scope="module", params=["openai-whisper", "ctranslate2"])
def asr(models, request):
    """Both runtimes: every test on real media holds for openai-whisper and for faster-whisper on the
    converted checkpoint (operators/nets/whisper_ct2.py; converted into the cache on first use)."""
    if request.param == "ctranslate2":
        from operators.nets.whisper_ct2 import FastASR
        return FastASR(models, threads=2)
    return ASR(models, threads=2)


def _words(result) -> list[str]:
    return [re.sub(r"[^a-z']", "", w["word"].lower()) for s in result["sentences"] for w in s["words"]]


def _check_timing(result, duration: float, offset: float = 0.0) -> None:
    words = [w for s in result["sentences"] for w in s["words"]]
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts)                                   # non-decreasing
    for w in words:
        assert offset <= w["start_s"] <= w["end_s"] <= offset + duration + 1e-6
    units = result["sentences"]
    for a, b in zip(units, units[1:]):
        assert a["end_s"] <= b["start_s"] + 1e-6                     # units in order, not overlapping
    for u in units:
        assert u["start_s"] == u["words"][0]["start_s"] and u["end_s"] == u["words"][-1]["end_s"]
        assert 0.0 <= u["confidence"] <= 1.0 and 0.0 <= u["no_speech_prob"] <= 1.0
        # a unit ends at sentence punctuation, except a last one the clip cuts off
        assert ends_sentence(u["words"][-1]["word"]) == u["complete"]
    assert all(u["complete"] for u in units[:-1])


def test_vr_face1_sentences(asr, media):
    wav = load_audio(str(media / "vr_face1.mp4"), SR)
    res = asr.transcribe(wav, SR, offset_s=10.0)          # times shifted as for a clip starting at 10 s
    assert res["language"] == "en"
    words = _words(res)
    for w in ("biggest", "asking", "help", "need", "better"):
        assert w in words
    _check_timing(res, len(wav) / SR, offset=10.0)
    first, second = res["sentences"][0], res["sentences"][1]
    assert first["text"].endswith("it.") and "help" in first["text"]
    assert second["text"].startswith("I'd like") and second["text"].endswith("that.")
    # the first sentence is spoken in about 0-2.8 s, the second in about 3.3-5.1 s
    assert 10.0 <= first["start_s"] < 10.5 and 12.3 < first["end_s"] < 13.3
    assert 12.8 < second["start_s"] < 13.8 and 14.6 < second["end_s"] < 15.6
    assert first["confidence"] > 0.7 and second["confidence"] > 0.7


def test_katie_hill_sentences(asr, media):
    wav = load_audio(str(media / "st_WDA_KatieHill_000.mp4"), SR)
    res = asr.transcribe(wav, SR)
    words = _words(res)
    for w in ("congressional", "district", "orientation", "tunnels"):
        assert w in words
    _check_timing(res, len(wav) / SR)
    units = res["sentences"]
    assert units[0]["text"].endswith("orientation.") and units[0]["complete"]
    assert len(units) >= 2 and units[1]["text"].startswith("In addition")


@pytest.mark.parametrize("clip", ["lp_d3", "pf_single_face"])
def test_no_speech_gives_no_sentences(asr, media, clip):
    wav = load_audio(str(media / f"{clip}.mp4"), SR)
    res = asr.transcribe(wav, SR)
    assert res["sentences"] == [] and res["text"] == ""


def test_ctranslate2_gives_openai_whispers_sentence_units(models, media):
    """The same sentence units (texts, times to 0.01 s) from both runtimes on a clip of speech."""
    from operators.nets.whisper_ct2 import FastASR
    wav = load_audio(str(media / "st_WDA_KatieHill_000.mp4"), SR)
    a, b = ASR(models, threads=2).transcribe(wav, SR), FastASR(models, threads=2).transcribe(wav, SR)
    assert len(a["sentences"]) >= 2
    assert [u["text"] for u in a["sentences"]] == [u["text"] for u in b["sentences"]]
    for u, v in zip(a["sentences"], b["sentences"]):
        assert u["start_s"] == pytest.approx(v["start_s"], abs=0.02)
        assert u["end_s"] == pytest.approx(v["end_s"], abs=0.02)
        assert u["confidence"] == pytest.approx(v["confidence"], abs=0.02)


def test_sentence_units_rules():
    def w(text, t):
        return {"word": text, "start_s": t, "end_s": t + 0.2, "prob": 0.9}
    words = [w(" Mr.", 0), w(" Smith", 0.3), w(" came.", 0.6), w(" Did", 1.0), w(' he?"', 1.3),
             w(" Yes!", 1.6), w(" and", 2.0), w(" then,", 2.3)]
    units = sentence_units(words)
    assert [u["text"] for u in units] == ["Mr. Smith came.", 'Did he?"', "Yes!", "and then,"]
    assert [u["complete"] for u in units] == [True, True, True, False]
    assert units[0]["start_s"] == 0 and units[0]["end_s"] == pytest.approx(0.8)
    assert sentence_units([]) == []


def test_resampled_and_silent_input(asr, media):
    wav44 = load_audio(str(media / "vr_face1.mp4"), 44100, duration_s=3.0)  # any rate: resampled to 16 kHz
    res = asr.transcribe(wav44, 44100)
    assert "help" in _words(res)
    assert asr.transcribe(np.zeros(SR * 2, np.float32), SR)["sentences"] == []


def test_asr_names_missing_weights(tmp_path):
    with pytest.raises(MissingWeights, match="whisper/tiny.en.pt"):
        ASR(tmp_path)
    with pytest.raises(MissingWeights, match="whisper/large-v3.pt"):
        ASR(tmp_path, name="large-v3")
    from operators.nets.whisper_ct2 import FastASR
    with pytest.raises(MissingWeights, match="whisper/tiny.en.pt"):
        FastASR(tmp_path)


def test_multilingual_checkpoint_detects_language(tmp_path, media, monkeypatch):
    """The language-detection path, on a random 1-layer multilingual Whisper saved as a checkpoint
    (the shared model directory has only the English-only tiny.en). Random weights: the language is
    arbitrary, but it must be one of Whisper's codes with a probability."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper
    from whisper.tokenizer import LANGUAGES
    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)   # torch.empty in whisper
    (tmp_path / "whisper").mkdir()
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()},
               tmp_path / "whisper" / "tiny.pt")
    asr = ASR(tmp_path, name="tiny")
    assert asr.multilingual
    wav = load_audio(str(media / "vr_face1.mp4"), SR)
    lang, prob = asr.detect_language(wav)
    assert lang in LANGUAGES and 0.0 < prob <= 1.0
    # the same checkpoint converted for faster-whisper (into the cache: CURATION_CACHE)
    from operators.nets.whisper_ct2 import FastASR
    monkeypatch.setenv("CURATION_CACHE", str(tmp_path / "cache"))
    fast = FastASR(tmp_path, name="tiny")
    assert fast.multilingual and fast.path.parent == tmp_path / "cache" / "whisper-ct2"
    lang, prob = fast.detect_language(wav)
    assert lang in LANGUAGES and 0.0 < prob <= 1.0
