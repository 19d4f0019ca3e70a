"""Qwen-Omni captioning (operators/nets/omni.py) on a tiny randomly initialised Qwen2.5-Omni thinker.

The model, its byte-level tokenizer and its processor are built offline from a config (no hub) and
saved to a temporary model directory, so the real loading path runs. Inputs are real: vr_face1.mp4
(one person talking to camera, ~5.6 s, speech) at 2 fps with its 16 kHz audio.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import frames_of

torch = pytest.importorskip("torch")

from operators.nets import MissingWeights  # noqa: E402
from operators.nets.omni import (FRAME_FPS, MalformedOutput, OmniCaptioner, OmniOutputError,  # noqa: E402
                                 OmniRequest, behaviour_windows, build_instruction, caption_with_retry,
                                 parse_output, sample_frames, scene_prob_from_tokens, silent_verification,
                                 span_units)
from schemas.taxonomy import SCENE_CLASSES, TAG_KEYS  # noqa: E402

SPECIAL = {  # Qwen2.5-Omni's placeholder tokens
    "qwen2_5": {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
    "qwen3": {"image_token": "<|image_pad|>", "audio_token": "<|audio_pad|>", "video_token": "<|video_pad|>",
              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
              "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"},
}
PIXELS = 112 * 112   # small frames: 8x8 patches of 14 px -> 16 tokens per temporal patch


def build_tiny_omni(path, family: str = "qwen2_5") -> None:
    """Save a random 1-layer Qwen2.5-Omni (or Qwen3-Omni-MoE) thinker with a byte-level tokenizer
    (256 byte symbols, no merges, plus the chat and placeholder tokens) and its processor."""
    import transformers
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = SPECIAL[family]
    vocab = {c: i for i, c in enumerate(sorted(bytes_to_unicode().values()))}
    for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *special.values()]:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], extra_special_tokens=dict(special))
    ids = lambda key: tok.convert_tokens_to_ids(special[key])  # noqa: E731
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
    audio = dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                 output_dim=32)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32)
    tokens = dict(audio_token_id=ids("audio_token"), image_token_id=ids("image_token"),
                  video_token_id=ids("video_token"), audio_start_token_id=ids("audio_bos_token"))
    if family == "qwen2_5":
        patch, prefix = 14, "Qwen2_5Omni"
        vision.update(fullatt_block_indexes=[0], window_size=112)
        audio.update(n_window=100)
        tokens = {k.replace("_id", "_index") if k in ("audio_token_id", "image_token_id", "video_token_id") else k: v
                  for k, v in tokens.items()}
    else:
        patch, prefix = 16, "Qwen3OmniMoe"
        vision.update(deepstack_visual_indexes=[0], num_position_embeddings=64)
        audio.update(downsample_hidden_size=8)
        text.update(moe_intermediate_size=16, num_experts=2, num_experts_per_tok=1, head_dim=16)
        text["rope_parameters"]["mrope_interleaved"] = True
    proc = getattr(transformers, f"{prefix}Processor")(
        image_processor=Qwen2VLImageProcessor(patch_size=patch), video_processor=Qwen2VLVideoProcessor(patch_size=patch),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    cfg = getattr(transformers, f"{prefix}ThinkerConfig")(audio_config=audio, vision_config=vision, text_config=text,
                                                          **tokens)
    cfg.vision_start_token_id = ids("vision_bos_token")   # read by get_rope_index, not a config field
    cfg.vision_end_token_id = ids("vision_eos_token")
    cfg.audio_end_token_id = ids("audio_eos_token")
    torch.manual_seed(0)
    getattr(transformers, f"{prefix}ThinkerForConditionalGeneration")(cfg).save_pretrained(path)
    proc.save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_omni")
    build_tiny_omni(d)
    return d


@pytest.fixture(scope="module")
def captioner(model_dir):
    return OmniCaptioner(model_dir, max_new_tokens=12, max_pixels=PIXELS, min_pixels=56 * 56)


@pytest.fixture(scope="module")
def clip(media):
    """vr_face1.mp4, first 4 s: frames at 2 fps (8 frames) and the 16 kHz audio."""
    from curation.media import load_audio
    fr = frames_of(media / "vr_face1.mp4", 0.0, 4.0, max_side=224)
    frames = sample_frames(fr.images, fr.times, FRAME_FPS, start_s=0.0, end_s=4.0)
    audio = load_audio(str(media / "vr_face1.mp4"), 16000, 0.0, 4.0)
    return frames, audio


SENTENCES = [{"start_s": 0.2, "end_s": 1.9, "text": "Hello everyone."},
             {"start_s": 2.1, "end_s": 3.8, "text": "Today we talk."}]


def _request(clip, **kw):
    frames, audio = clip
    return OmniRequest(frames=frames, audio=audio, sentences=SENTENCES, **kw)


def _answer(req, cls="speak", spans=None, listener=None, behaviour=None, tags=None, prob=0.8) -> str:
    obj = {"scene_class": cls, "scene_prob": prob, "caption_dense": "A woman talks to the camera.",
           "caption_summary": "A woman talks."}
    if spans is None and not req.listener:
        spans = [{"unit": i, "text": f"she talks {i}"} for i in range(len(span_units(req)))]
    if spans is not None:
        obj["caption_spans"] = spans
    if listener is not None:
        obj["listener"] = listener
    if behaviour is not None:
        obj["behaviour_captions"] = behaviour
    obj["tags"] = tags if tags is not None else {"emotion": ["neutral"], "shot_size": ["close_up"]}
    return "```json\n" + json.dumps(obj) + "\n```"


# ---- weights -------------------------------------------------------------------------------------
def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(MissingWeights, match=str(tmp_path / "config.json")):
        OmniCaptioner(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_omni_thinker"}')
    with pytest.raises(MissingWeights, match=str(tmp_path / "model.safetensors")):
        OmniCaptioner(tmp_path)
    with pytest.raises(MissingWeights, match="no model directory"):
        OmniCaptioner(None)


# ---- prompt assembly -----------------------------------------------------------------------------
def test_prompt_states_rate_units_and_vocabulary(clip):
    req = _request(clip)
    assert len(req.frames) == 8 and req.duration_s == pytest.approx(4.0, abs=0.01)
    text = build_instruction(req)
    assert "8 frames sampled at 2 frames per second" in text and "16 kHz" in text
    assert 'unit 0: 0.20-1.90 s, speech: "Hello everyone."' in text
    assert 'unit 1: 2.10-3.80 s, speech: "Today we talk."' in text
    assert all(c in text for c in SCENE_CLASSES) and all(f"  {k}: " in text for k in TAG_KEYS)
    assert "behaviour_captions" not in text and "LISTENER" not in text
    # who the subject is: the default sentence, or the request's own (person clips)
    assert "The clip lasts 4.00 s. The subject is the most prominent visible person.\n" in text
    who = "The subject is the person on the left of the frame; describe only the subject."
    mine = build_instruction(_request(clip, subject=who))
    assert f"The clip lasts 4.00 s. {who}\n" in mine and "most prominent" not in mine
    assert build_instruction(_request(clip, subject="  ")) == text
    # no ASR units: fixed 3 s windows over the 4 s clip
    assert [(u["start_s"], u["end_s"]) for u in span_units(OmniRequest(req.frames, req.audio))] == [(0, 3), (3, 4)]


def test_listener_prompt_is_time_invariant(clip):
    text = build_instruction(_request(clip, listener=True, behaviour=True))
    assert "LISTENER" in text and '"appearance"' in text and '"relation"' in text
    assert "caption_spans" not in text and "behaviour_captions" not in text and "unit 0" not in text


def test_behaviour_windows_every_1_5_s(clip):
    assert behaviour_windows(4.0, 1.5) == [{"start_s": 0.0, "end_s": 1.5}, {"start_s": 1.5, "end_s": 3.0},
                                           {"start_s": 3.0, "end_s": 4.0}]
    text = build_instruction(_request(clip, behaviour=True))
    assert "window 2: 3.00-4.00 s" in text and "window 3" not in text


# ---- input tensors -------------------------------------------------------------------------------
def test_input_tensors_interleave_video_and_audio(captioner, clip):
    tok = captioner.tokenizer
    inputs = captioner.build_inputs(_request(clip))
    ids = inputs["input_ids"][0].tolist()
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4                                   # 8 frames at 2 fps, 2 frames per temporal patch
    n_video = t * h * w // 4                        # 2x2 spatial merge
    assert ids.count(tok.video_token_id) == n_video == 4 * (h // 2) * (w // 2)
    assert h * 14 * w * 14 <= PIXELS
    assert ids.count(tok.audio_token_id) == 100     # 4 s of audio at 25 tokens per second
    assert inputs["input_features"].shape == (1, 128, 3000)
    assert inputs["video_second_per_grid"].tolist() == [1.0]  # 2 frames / 2 fps
    # <|vision_bos|><|audio_bos|> video and audio chunks ... <|audio_eos|><|vision_eos|>
    vb = ids.index(tok.convert_tokens_to_ids("<|vision_bos|>"))
    assert ids[vb + 1] == tok.convert_tokens_to_ids("<|audio_bos|>")
    ve = ids.index(tok.convert_tokens_to_ids("<|vision_eos|>"))
    assert ids[ve - 1] == tok.convert_tokens_to_ids("<|audio_eos|>")
    body = ids[vb + 2: ve - 1]
    assert set(body) == {tok.video_token_id, tok.audio_token_id}
    assert body[0] == tok.video_token_id and body[n_video // 2] == tok.audio_token_id  # 2 s chunks
    prompt = tok.decode(ids)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_input_tensors_without_audio(captioner, clip):
    frames, _ = clip
    inputs = captioner.build_inputs(OmniRequest(frames=frames, audio=None))
    ids = inputs["input_ids"][0].tolist()
    assert captioner.tokenizer.audio_token_id not in ids and "input_features" not in inputs
    assert "no audio track" in captioner.tokenizer.decode(ids)


# ---- generation ----------------------------------------------------------------------------------
def test_generate_runs_and_random_output_fails_twice(captioner, clip):
    req = _request(clip)
    text, tokens = captioner.generate(req)
    assert 1 <= len(tokens) <= 12 and "".join(p for p, _ in tokens) == text
    assert all(lp <= 0 for _, lp in tokens)
    with pytest.raises(OmniOutputError, match="^malformed Omni output twice: ") as e:
        captioner.caption(req)
    assert "\n" not in str(e.value)
    # per-item results: an input the processor rejects does not stop the next item
    empty = OmniRequest(frames=np.zeros((0, 112, 112, 3), np.uint8), audio=None, duration_s=1.0)
    bad, rnd = captioner.caption_many([empty, req])
    assert bad.index == 0 and bad.record is None and bad.error and "\n" not in bad.error
    assert rnd.index == 1 and rnd.error.startswith("OmniOutputError: malformed Omni output twice")


def test_sample_frames_on_a_2_fps_grid(media):
    fr = frames_of(media / "vr_face1.mp4", 0.0, 4.0, max_side=224)
    t0 = fr.times[0]   # vr_face1's first frame is at 0.033 s on the file's timeline
    picked = sample_frames(np.arange(len(fr.times)), fr.times, 2.0, start_s=t0, end_s=4.0)
    assert len(picked) == 8
    assert np.abs(fr.times[picked] - (t0 + np.arange(8) / 2.0)).max() <= 0.5 / fr.fps + 1e-6


def test_forced_answer_through_real_generate(captioner, clip):
    """Force the tiny model to emit a valid answer: the real generate, token log-probs and parsing run."""
    req = _request(clip)
    target = _answer(req, tags={"emotion": ["Neutral", "bliss"], "shot_size": ["close up"]}).replace(", ", ",")
    want = captioner.tokenizer(target, add_special_tokens=False)["input_ids"]
    n_in = captioner.build_inputs(req)["input_ids"].shape[1]
    text, tokens = captioner.generate(req, max_new_tokens=len(want),
                                      prefix_allowed_tokens_fn=lambda b, ids: [want[min(len(ids) - n_in, len(want) - 1)]])
    assert text == target and "".join(p for p, _ in tokens) == text
    rec = parse_output(text, req, tokens)
    assert rec["scene_class"] == "speak" and rec["scene_prob_source"] == "tokens"
    # byte-level tokens: the probability of "speak" is the product over its 5 tokens (random model: ~1/269 each)
    start = text.index('"speak"') + 1
    lps = [lp for (piece, lp), pos in zip(tokens, np.cumsum([0] + [len(p) for p, _ in tokens]))
           if start <= pos < start + 5]
    assert len(lps) == 5 and rec["scene_prob"] == pytest.approx(math.exp(sum(lps)), rel=1e-6)
    assert 0 < rec["scene_prob"] < 0.8                                   # not the stated 0.8
    assert rec["caption_spans"] == [{"start_s": 0.2, "end_s": 1.9, "text": "she talks 0"},
                                    {"start_s": 2.1, "end_s": 3.8, "text": "she talks 1"}]
    assert rec["tags"]["emotion"] == ["neutral"] and rec["tags"]["shot_size"] == ["close_up"]
    assert rec["tags_dropped"] == ["emotion:bliss"] and rec["tags"]["motion"] == []
    assert rec["listener_captions"] is None and rec["behaviour_captions"] is None


def test_qwen3_omni_thinker(tmp_path, clip):
    build_tiny_omni(tmp_path, "qwen3")
    cap = OmniCaptioner(tmp_path, max_new_tokens=6, max_pixels=128 * 128, min_pixels=64 * 64)
    assert cap.backend.startswith("transformers:qwen3_omni_moe_thinker:")
    req = _request(clip)
    inputs = cap.build_inputs(req)
    ids = inputs["input_ids"][0].tolist()
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4 and ids.count(cap.tokenizer.video_token_id) == t * h * w // 4
    assert ids.count(cap.tokenizer.audio_token_id) == 52         # Qwen3-Omni: 13 audio tokens per second
    assert cap.tokenizer.decode(ids).count("<|vision_start|><|audio_start|>") == 1
    text, tokens = cap.generate(req)
    assert 1 <= len(tokens) <= 6 and "".join(p for p, _ in tokens) == text


def test_full_omni_checkpoint_loads_its_thinker(tmp_path, model_dir):
    """A full Qwen2.5-Omni checkpoint (thinker + speaker file) is loaded without its talker."""
    from transformers import (AutoConfig, AutoProcessor, Qwen2_5OmniConfig,
                              Qwen2_5OmniForConditionalGeneration)
    cfg = Qwen2_5OmniConfig(thinker_config=AutoConfig.from_pretrained(model_dir).to_dict(), enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(cfg)
    full.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(tmp_path)
    with pytest.raises(MissingWeights, match=str(tmp_path / "spk_dict.pt")):
        OmniCaptioner(tmp_path)
    torch.save({}, tmp_path / "spk_dict.pt")
    cap = OmniCaptioner(tmp_path)
    assert type(cap.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    ref = full.thinker.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in cap.model.state_dict().items())


def test_silent_needs_two_agreeing_judgements():
    idle = ["idle"] * 40 + ["listen"] * 10
    assert silent_verification("silence", idle) == {"silent_omni": True, "silent_frames": True, "silent": True}
    assert silent_verification("listen_dialogue", idle)["silent"] is True
    assert silent_verification("speak", idle) == {"silent_omni": False, "silent_frames": True, "silent": False}
    talking = idle[:-5] + ["speak"] * 5
    assert silent_verification("silence", talking) == {"silent_omni": True, "silent_frames": False, "silent": False}
    assert silent_verification("silence", talking, max_speak_ratio=0.2)["silent"] is True
    assert silent_verification("silence", idle[:-1] + ["discard"])["silent_frames"] is False
    assert silent_verification("silence", None) == {"silent_omni": True, "silent_frames": None, "silent": False}
    assert silent_verification(None, idle)["silent"] is False


# ---- parsing, validation and retry ---------------------------------------------------------------
def test_parse_good_answers(clip):
    req = _request(clip, behaviour=True)
    beh = [{"window": i, "text": f"nods {i}"} for i in range(3)]
    rec = parse_output(_answer(req, cls="Conversation", behaviour=beh), req)
    assert rec["scene_class"] == "conversation" and rec["scene_prob"] == 0.8 and rec["scene_prob_source"] == "stated"
    assert [b["end_s"] for b in rec["behaviour_captions"]] == [1.5, 3.0, 4.0]
    lreq = _request(clip, listener=True)
    lis = {"appearance": "dark hair, white shirt", "personality": "calm", "relation": "colleague"}
    rec = parse_output(_answer(lreq, cls="listen_dialogue", listener=lis), lreq)
    assert rec["listener_captions"] == lis and rec["caption_spans"] == [] and rec["behaviour_captions"] is None


@pytest.mark.parametrize("bad, reason", [
    ("I think she is talking.", "no JSON object"),
    ('{"scene_class": "singing", "scene_prob": 0.5}', "not one of the six classes"),
    ("SPANS_MISSING_UNIT", "cover units"),
    ("LISTENER_WITHOUT_OBJECT", "without the listener object"),
    ("PROB_OUT_OF_RANGE", "scene_prob"),
    ("EMPTY_SUMMARY", "caption_summary"),
])
def test_parse_rejects_malformed(clip, bad, reason):
    req = _request(clip, listener=bad == "LISTENER_WITHOUT_OBJECT")
    text = {"SPANS_MISSING_UNIT": _answer(req, spans=[{"unit": 0, "text": "x"}]),
            "LISTENER_WITHOUT_OBJECT": _answer(req, cls="listen_dialogue"),
            "PROB_OUT_OF_RANGE": _answer(req, prob="high"),
            "EMPTY_SUMMARY": _answer(req).replace('"A woman talks."', '""')}.get(bad, bad)
    with pytest.raises(MalformedOutput, match=reason):
        parse_output(text, req)


def test_scene_prob_from_hand_tokens():
    text = '{"scene_class": "speak", "x": 1}'
    tokens = [('{"scene_class": "', -0.1), ("spe", -0.2), ("ak", -0.3), ('", "x": 1}', -0.5)]
    assert scene_prob_from_tokens(text, tokens) == pytest.approx(math.exp(-0.5))
    assert scene_prob_from_tokens(text, tokens[:2]) is None      # tokens do not spell the text
    assert scene_prob_from_tokens(text, None) is None


def test_retry_once_then_error(clip):
    req = _request(clip)
    calls = []

    def scripted(answers):
        def gen(r, note):
            calls.append(note)
            return answers[len(calls) - 1], None
        return gen

    rec = caption_with_retry(scripted(["no json here", _answer(req)]), req)
    assert rec["attempts"] == 2 and calls == [None, "no JSON object in the output"]
    calls.clear()
    rec = caption_with_retry(scripted([_answer(req)]), req)
    assert rec["attempts"] == 1 and len(calls) == 1
    calls.clear()
    with pytest.raises(OmniOutputError, match="not one of the six classes"):
        caption_with_retry(scripted(["garbage", '{"scene_class": "dancing"}']), req)
    assert len(calls) == 2
