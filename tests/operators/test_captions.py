"""captions / captions_conversation (operators/captions.py) on real clips.

- HTTP backend: the operators talk to a local OpenAI-compatible server started here. It answers a
  valid caption shaped by what the instruction asks (units, behaviour windows, listener mode), with
  the class read from the real audio it receives ("silence" under -45 dBFS RMS, else "speak";
  vr_face1 talks at about -30 dBFS, pf_single_face is silent at about -60 dBFS), unless the clip's
  ASR text says otherwise (MODE:garbage, timeout, drop, badcaption, flaky, quiet).
- Local backend: a tiny random Qwen2.5-Omni thinker saved to a model directory (built as in
  tests/nets/test_omni.py), one row forced to emit a valid answer, one row left to its random output.
- One Runner run of workflows/captions.yaml with the http backend over vr_face1 + pf_single_face.
- Who the subject is: the people operator and person_clips on 1.0-2.2 s of dj_video4 (two women),
  the sentence naming each person clip's track, as the endpoint receives it; shot clips keep
  "the most prominent visible person".
"""
from __future__ import annotations

import base64
import io
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, FakeOpenAI, frames_of
from curation.operator import OperatorError
from operators.captions import Captions, CaptionsConversation, clip_sentences, describe_subject, record_to_row
from operators.nets import omni
from schemas.taxonomy import TAG_KEYS

REG_EXTRA = {"captions": Captions, "captions_conversation": CaptionsConversation}
SLEEP_S = 0.3


# ---- a local OpenAI-compatible server ------------------------------------------------------------
def _audio_dbfs(content: list[dict]) -> float | None:
    for part in content:
        if part.get("type") == "input_audio":
            with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
            return float(20 * np.log10(np.sqrt(np.mean(pcm ** 2)) + 1e-9))
    return None


def _answer(text: str, dbfs: float | None, mode: str) -> str:
    listener = "This is a LISTENER clip" in text
    units = re.findall(r"^  unit (\d+):", text, re.M)
    windows = re.findall(r"^  window (\d+):", text, re.M)
    if listener:
        cls = "listen_dialogue"
    elif mode == "quiet" or (dbfs is not None and dbfs < -45):
        cls = "silence"
    else:
        cls = "speak"
    obj = {"scene_class": cls if mode != "badcaption" else "dancing", "scene_prob": 0.9,
           "caption_dense": "A person with dark hair faces the camera in a plain room.",
           "caption_summary": "A person faces the camera.",
           "tags": {"emotion": ["neutral", "bliss"], "shot_size": ["close up"], "camera_motion": ["static"]}}
    if listener:
        obj["listener"] = {"appearance": "dark hair", "personality": "calm", "relation": "friend"}
    else:
        obj["caption_spans"] = [{"unit": int(u), "text": f"span {u}"} for u in units]
        if windows:
            obj["behaviour_captions"] = [{"window": int(w), "text": f"moves {w}"} for w in windows]
    return json.dumps(obj)


def _respond(text, content, mode, hit):
    if mode == "drop":
        return FakeOpenAI.DROP
    if mode == "garbage":
        return FakeOpenAI.GARBAGE
    return _answer(text, _audio_dbfs(content), "badcaption" if mode == "flaky" and hit == 1 else mode)


@pytest.fixture()
def server(fake_openai):
    """Answers by the class read off the request's real audio; "quiet": no log-probabilities."""
    return fake_openai(_respond, sleep_s=SLEEP_S, no_logprobs=("quiet",))


def _video(media, name="vr_face1.mp4") -> dict:
    return {"video_id": name, "uri": str(media / name), "has_audio": True, "width": 700, "height": 700}


def _item(media, row: dict, max_side: int):
    fr = frames_of(media / "vr_face1.mp4", row["start_s"], row["end_s"], fps=2.0, max_side=max_side)
    return _video(media), {"duration_s": row["end_s"] - row["start_s"], **row}, fr


# ---- pure parts -----------------------------------------------------------------------------------
def test_sentences_clip_relative_and_row_in_video_seconds():
    segs = [{"start_s": 0.5, "end_s": 1.8, "text": " Hello. "}, {"start_s": 3.98, "end_s": 5.0, "text": "x"},
            {"start_s": 2.0, "end_s": 3.6, "text": "How are you?", "confidence": 0.9}]
    assert clip_sentences(segs, 1.0, 4.0) == [{"start_s": 0.0, "end_s": 0.8, "text": "Hello."},
                                              {"start_s": 1.0, "end_s": 2.6, "text": "How are you?"}]
    rec = {"scene_class": "speak", "scene_prob": 0.25, "scene_prob_source": "tokens", "caption_dense": "d",
           "caption_summary": "s", "caption_spans": [{"start_s": 0.0, "end_s": 0.8, "text": "a"}],
           "tags": {"emotion": ["neutral"]}, "tags_dropped": ["emotion:bliss"], "listener_captions": None,
           "behaviour_captions": [{"start_s": 1.5, "end_s": 3.0, "text": "b"}], "attempts": 2}
    row = record_to_row(rec, 10.0, "be")
    assert row["caption_spans"] == [{"start_s": 10.0, "end_s": 10.8, "text": "a"}]
    assert row["behaviour_captions"] == [{"start_s": 11.5, "end_s": 13.0, "text": "b"}]
    assert set(row["tags"]) == set(TAG_KEYS) and row["tags"]["motion"] == [] and row["caption_attempts"] == 2
    assert set(row) == set(Captions.writes.names)


def test_params_weights_and_workflows(tmp_path, models):
    from curation.workflow import MissingWeightsError, check_weights, load
    from operators import REGISTRY
    with pytest.raises(OperatorError, match="endpoint"):
        Captions(backend="http")
    assert Captions(backend="http", endpoint="http://h:8000/v1").weight_files() == []
    with pytest.raises(OperatorError, match="CAPTIONS_TEST_UNSET_KEY is not set"):
        Captions(backend="http", endpoint="http://h:8000/v1", api_key_env="CAPTIONS_TEST_UNSET_KEY").setup()
    assert Captions(model_dir=str(tmp_path)).weight_files() == [
        "qwen-omni/Qwen2.5-Omni-3B/config.json", "qwen-omni/Qwen2.5-Omni-3B/tokenizer_config.json",
        "qwen-omni/Qwen2.5-Omni-3B/model.safetensors"]
    sharded = tmp_path / "m"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text("{}")
    assert Captions(model_dir=str(tmp_path), model="m").weight_files()[-1] == "m/model.safetensors.index.json"
    assert Captions(max_side=224).frames.max_side == 224
    reg = {**REGISTRY, **REG_EXTRA}
    for name in ("captions", "silent"):
        wf = load(ROOT / "workflows" / f"{name}.yaml", registry=reg)
        with pytest.raises(MissingWeightsError, match="step 'captions' needs .*qwen-omni/Qwen2.5-Omni-3B/config.json"):
            check_weights(wf, str(models))
    # captions_conversation reads what the conversation steps write: without them it does not load
    with pytest.raises(Exception, match="transcript_segments|role|frame_states"):
        load((ROOT / "workflows" / "captions.yaml").read_text().replace("op: captions\n", "op: captions_conversation\n"),
             registry=reg)


# ---- http backend ---------------------------------------------------------------------------------
def test_http_rows_in_flight_and_per_row_errors(server, media):
    op = CaptionsConversation(backend="http", endpoint=server.url, timeout_s=1.0, retries=1, backoff_s=0.05,
                              max_in_flight=4, max_side=160, behaviour=True, listener_roles="listener")
    op.setup()
    speak = ["speak"] * 75
    rows = [
        {"clip_id": "speaker", "start_s": 1.0, "end_s": 4.0, "role": "speaker", "frame_states": speak,
         "transcript_segments": [{"start_s": 0.5, "end_s": 1.8, "text": "MODE:ok Hello."},
                                 {"start_s": 2.0, "end_s": 3.6, "text": "How are you?"},
                                 {"start_s": 4.5, "end_s": 5.0, "text": "outside"}]},
        {"clip_id": "listener", "start_s": 0.0, "end_s": 4.0, "role": "listener",
         "frame_states": ["listen"] * 50 + ["idle"] * 50, "transcript_segments": []},
        {"clip_id": "quiet", "start_s": 2.0, "end_s": 4.0, "role": "idle",
         "frame_states": ["idle"] * 49 + ["speak"], "transcript_segments": [{"start_s": 2.5, "end_s": 3.0, "text": "MODE:quiet"}]},
        *[{"clip_id": m, "start_s": 0.0, "end_s": 2.0, "role": "speaker", "frame_states": speak,
           "transcript_segments": [{"start_s": 0.2, "end_s": 1.5, "text": f"MODE:{m}"}]}
          for m in ("garbage", "timeout", "drop", "badcaption", "flaky")],
    ]
    items = [_item(media, r, 160) for r in rows]
    out = dict(zip([r["clip_id"] for r in rows], op.process_rows(items)))
    assert 2 <= server.max_in_flight <= 4           # 8 rows at once, at most max_in_flight = 4 in flight

    sp = out["speaker"]
    assert sp["scene_class"] == "speak" and sp["scene_prob_source"] == "tokens" and 0.9 < sp["scene_prob"] < 1.0
    assert sp["caption_spans"] == [{"start_s": 1.0, "end_s": 1.8, "text": "span 0"},
                                   {"start_s": 2.0, "end_s": 3.6, "text": "span 1"}]   # video seconds
    assert sp["behaviour_captions"] == [{"start_s": 1.0, "end_s": 2.5, "text": "moves 0"},
                                        {"start_s": 2.5, "end_s": 4.0, "text": "moves 1"}]
    assert sp["listener_captions"] is None and sp["caption_attempts"] == 1
    assert sp["tags"]["emotion"] == ["neutral"] and sp["tags"]["shot_size"] == ["close_up"]
    assert sp["tags_dropped"] == ["emotion:bliss"] and sp["tags"]["motion"] == []
    assert sp["caption_backend"] == f"openai-http:Qwen/Qwen2.5-Omni-7B@{server.url}"
    assert (sp["silent_omni"], sp["silent_frames"], sp["silent"]) == (False, False, False)
    assert sp["caption_subject"] == omni.DEFAULT_SUBJECT      # no track_id / tracks: the default sentence
    # what the server received for that clip: 6 frames (3 s at 2 fps), 3 s of audio, clip-relative units
    body = next(b for b in server.bodies if 'speech: "MODE:ok Hello."' in b["messages"][1]["content"][-1]["text"])
    parts = body["messages"][1]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 6
    wav = wave.open(io.BytesIO(base64.b64decode(parts[6]["input_audio"]["data"])))
    assert wav.getframerate() == 16000 and abs(wav.getnframes() - 48000) <= 160
    assert "unit 0: 0.00-0.80 s" in parts[-1]["text"] and "unit 1: 1.00-2.60 s" in parts[-1]["text"]
    assert "unit 2" not in parts[-1]["text"] and "window 1: 1.50-3.00 s" in parts[-1]["text"]

    li = out["listener"]   # time-invariant captions only; two agreeing judgements -> silent
    assert li["scene_class"] == "listen_dialogue" and li["caption_spans"] == [] and li["behaviour_captions"] is None
    assert li["listener_captions"] == {"appearance": "dark hair", "personality": "calm", "relation": "friend"}
    assert (li["silent_omni"], li["silent_frames"], li["silent"]) == (True, True, True)
    qu = out["quiet"]      # Omni says silence, one speak frame says otherwise: not silent
    assert qu["scene_class"] == "silence" and qu["scene_prob_source"] == "stated" and qu["scene_prob"] == pytest.approx(0.9)
    assert (qu["silent_omni"], qu["silent_frames"], qu["silent"]) == (True, False, False)
    assert out["flaky"]["caption_attempts"] == 2 and server.hits["flaky"] == 2

    errors = {k: str(v) for k, v in out.items() if isinstance(v, BaseException)}
    assert set(errors) == {"garbage", "timeout", "drop", "badcaption"}
    assert errors["garbage"].startswith("TransportError: unparseable response body")
    assert errors["timeout"].startswith("TransportError: timed out after 1 s (2 attempts)")
    assert errors["drop"].startswith("TransportError: connection failed")
    assert errors["badcaption"].startswith("OmniOutputError: malformed Omni output twice: scene_class 'dancing'")
    assert server.hits["garbage"] == server.hits["drop"] == 2 and server.hits["badcaption"] == 2
    assert all("\n" not in e for e in errors.values())


# ---- who the subject is: person clips name their own track --------------------------------------
DJ4_SPAN = (1.0, 2.2)   # dj_video4: the woman in the green T-shirt in front, left of centre (her face
#                         at x 0.3-0.5 of the frame), the woman in blue behind her on the right


@pytest.fixture(scope="module")
def dj4(models, media):
    """The people operator on 1.0-2.2 s of dj_video4, and person_clips over a shot clip of that span,
    called the way a worker calls them."""
    from curation.media import probe
    from operators.people import People
    from operators.person_clips import PersonClips
    path = media / "dj_video4.mp4"
    video = {"video_id": "dj4", "uri": str(path), **probe(str(path))}
    people = People(str(models), hands_fps=0.5, min_track_s=0.5)
    people.setup()
    a, b = DJ4_SPAN
    tracks = people.process_row(video, {"video_id": "dj4", "shot_index": 0, "start_s": a, "end_s": b},
                                frames_of(path, a, b, fps=People.frames.fps, max_side=People.frames.max_side))
    shot = {"clip_id": "dj4:0:0", "video_id": "dj4", "clip_kind": "shot", "shot_index": 0, "clip_index": 0,
            "start_s": a, "end_s": b, "duration_s": b - a, "width": video["width"], "height": video["height"],
            "fps": video["fps"]}
    person = PersonClips().process({**video, "tables": {"clips": [shot]}}, tracks)
    return {**video, "tables": {"tracks": tracks}}, shot, person


def _numbers(sentence: str) -> dict[str, list[float]]:
    m = re.search(r"median box x ([\d.]+)-([\d.]+), y ([\d.]+)-([\d.]+) of the frame, "
                  r"face x ([\d.]+)-([\d.]+), y ([\d.]+)-([\d.]+)\)", sentence)
    v = [float(x) for x in m.groups()]     # x1, x2, y1, y2 as written -> x1, y1, x2, y2
    return {"box": [v[0], v[2], v[1], v[3]], "face": [v[4], v[6], v[5], v[7]]}


def test_dj_video4_person_clips_name_their_own_track(dj4):
    video, _, person = dj4
    assert len(person) == 2 and len({c["track_id"] for c in person}) == 2
    op = CaptionsConversation(backend="http", endpoint="http://127.0.0.1:9/v1")
    said = {c["track_id"]: op.subject(video, c) for c in person}
    for track_id, text in said.items():
        print(track_id, text)
    left, right = sorted(said.values(), key=lambda t: _numbers(t)["face"][0])
    # the woman in front: face left of centre; the woman behind her: on the right half
    assert left.startswith("The subject is the person left of centre in the frame, the leftmost of 2 people (")
    assert re.match(r"The subject is the person (right of centre in|on the right of) the frame, the rightmost of "
                    r"2 people \(", right)
    for text in (left, right):
        assert text.endswith("in a medium shot; other people may be visible: describe only the subject.")
        n = _numbers(text)
        x1, y1, x2, y2 = n["box"]
        fx1, fy1, fx2, fy2 = n["face"]
        assert 0 <= x1 < fx1 < fx2 < x2 <= 1 and 0 <= y1 <= fy1 < fy2 < y2 <= 1   # face inside the person box
        assert 0.1 <= fy2 - fy1 < 0.3          # seated, chest up: faces a sixth to a quarter of the frame high
    assert 0.25 < sum(_numbers(left)["face"][::2]) / 2 < 0.45 < 0.6 < sum(_numbers(right)["face"][::2]) / 2


def test_person_clip_instruction_names_the_track_shot_clip_keeps_the_default(dj4, server, media):
    video, shot, person = dj4
    a, b = DJ4_SPAN
    frames = frames_of(media / "dj_video4.mp4", a, b, fps=2.0, max_side=160)
    # shot clip: the old sentence
    cap = Captions(backend="http", endpoint=server.url, max_side=160)
    text = omni.build_instruction(cap.request(video, shot, frames, None))
    assert "The subject is the most prominent visible person." in text and "describe only the subject" not in text
    # person clips, through the endpoint: each request names its own track, the row stores the sentence
    op = CaptionsConversation(backend="http", endpoint=server.url, max_side=160, retries=0)
    op.setup()
    rows = [{**c, "role": "speaker", "frame_states": ["speak"] * 30, "transcript_segments": []} for c in person]
    out = op.process_rows([(video, r, frames) for r in rows])
    sent = [b["messages"][1]["content"][-1]["text"] for b in server.bodies]
    assert len(out) == len(sent) == 2
    subjects = [o["caption_subject"] for o in out]
    assert subjects == [op.subject(video, r) for r in rows] and len(set(subjects)) == 2
    for s in subjects:
        assert sum(s in t for t in sent) == 1 and "most prominent" not in s
    assert not any("most prominent" in t for t in sent)
    # a track without a box in the clip span: the default sentence
    later = {**rows[0], "start_s": 5.0, "end_s": 6.0}
    assert op.subject(video, later) is None
    assert op.request(video, later, frames, None).subject is None


def test_describe_subject_rules():
    """describe_subject on boxes written out by hand (640 x 360 frame, one frame per 0.1 s)."""
    def track(tid, box, face=None, t0=0.0, n=10):
        return {"track_id": tid, "frame_times_s": [t0 + i / 10 for i in range(n)],
                "person_boxes": [box] * n, "face_boxes": [face] * n if face else [[float("nan")] * 4] * n}
    me = track("v:0:t0", [401, 20, 620, 360], [470, 40, 562, 170])      # face 0.36 of the height, x 0.81
    alone = describe_subject(me, [], 640, 360, 0.0, 1.0)
    assert alone == ("The subject is the only person in the shot, on the right of the frame (median box "
                     "x 0.63-0.97, y 0.06-1.00 of the frame, face x 0.73-0.88, y 0.11-0.47), in a close-up.")
    # three people: the subject's order from the left (face centres, box centre without a face)
    others = [track("v:0:t1", [0, 100, 200, 360], [60, 120, 120, 170]),
              track("v:0:t2", [160, 100, 330, 360], [220, 120, 270, 170])]
    centre = describe_subject(track("v:0:t3", [300, 150, 400, 360]), others, 640, 360, 0.0, 1.0)   # no face
    assert centre.startswith("The subject is the person in the centre of the frame, the rightmost of 3 people (")
    assert "face x" not in centre and centre.endswith("in a medium shot; other people may be visible: describe only "
                                                "the subject.")
    second = describe_subject(others[1], [others[0], track("v:0:t3", [420, 150, 520, 360])], 640, 360, 0.0, 1.0)
    assert ", the second from the left of 3 people (" in second
    # someone right behind the subject (face centres 0.03 of the width apart): no left-to-right order;
    # another track of the shot outside the span does not count, but it is still "other people"
    behind = track("v:0:t4", [330, 60, 430, 300], [360, 70, 400, 110])
    later = track("v:0:t5", [0, 0, 100, 100], t0=5.0)
    text = describe_subject(track("v:0:t6", [250, 100, 450, 360], [330, 130, 390, 200]), [behind, later],
                            640, 360, 0.0, 1.0)
    assert text.startswith("The subject is the person in the centre of the frame (median box")
    assert "people (" not in text and "in a medium shot" in text
    small = describe_subject(track("v:0:t7", [300, 200, 330, 300], [308, 205, 322, 225]), [later],
                             640, 360, 0.0, 1.0)
    assert "in a wide shot" in small
    # no box in the span, no frame size: None (the default sentence)
    assert describe_subject(me, [], 640, 360, 2.0, 3.0) is None
    assert describe_subject(me, [], None, None, 0.0, 1.0) is None
    assert describe_subject(None, [], 640, 360, 0.0, 1.0) is None
    # frames exactly at the end of the span are not in it; None boxes are skipped
    edge = {**me, "person_boxes": [None] * 9 + [[0, 0, 10, 10]]}
    assert describe_subject(edge, [], 640, 360, 0.0, 0.9) is None


# ---- local backend (tiny random Omni thinker) -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("torch")
    from nets.test_omni import build_tiny_omni
    root = tmp_path_factory.mktemp("models")
    build_tiny_omni(root / "tiny-omni")
    return root


def test_local_backend_forced_answer_and_malformed_twice(tiny_models, media):
    op = Captions(model_dir=str(tiny_models), backend="local", model="tiny-omni", device="cpu", max_side=112,
                  max_new_tokens=8)
    assert all((tiny_models / f).is_file() for f in op.weight_files())
    op.setup()
    cap = op.net
    tok = cap.tokenizer
    target = json.dumps({"scene_class": "speak", "scene_prob": 0.5, "caption_dense": "A woman talks.",
                         "caption_summary": "She talks.", "caption_spans": [{"unit": 0, "text": "talks"}],
                         "tags": {"emotion": ["neutral", "bliss"]}}, separators=(",", ":"))
    want = tok(target, add_special_tokens=False)["input_ids"]
    real_generate = cap.generate
    seen = []

    def generate(req, note=None, **kw):
        seen.append((req.extra["clip_id"], len(req.frames), None if req.audio is None else len(req.audio), note))
        if req.extra["clip_id"] != "good":
            return real_generate(req, note, max_new_tokens=3)      # random bytes: no JSON, twice
        n_in = cap.build_inputs(req, note)["input_ids"].shape[1]
        return real_generate(req, note, max_new_tokens=len(want),
                             prefix_allowed_tokens_fn=lambda b, ids: [want[min(len(ids) - n_in, len(want) - 1)]])

    cap.generate = generate
    rows = [{"clip_id": "good", "start_s": 0.0, "end_s": 2.0}, {"clip_id": "bad", "start_s": 2.0, "end_s": 4.0}]
    good, bad = op.process_rows([_item(media, r, 112) for r in rows])
    assert seen[0] == ("good", 4, 32000, None)                     # 2 s: 4 frames at 2 fps, 2 s at 16 kHz
    assert [s[0] for s in seen[1:]] == ["bad", "bad"] and seen[2][3] == "no JSON object in the output"
    assert good["scene_class"] == "speak" and good["scene_prob_source"] == "tokens"
    assert 0 < good["scene_prob"] < 0.01            # 5 byte tokens of a random 270-token model, not the stated 0.5
    assert good["caption_spans"] == [{"start_s": 0.0, "end_s": 2.0, "text": "talks"}]   # one fixed window
    assert good["tags"]["emotion"] == ["neutral"] and good["tags_dropped"] == ["emotion:bliss"]
    assert good["behaviour_captions"] is None and good["listener_captions"] is None
    assert good["caption_backend"] == "transformers:qwen2_5_omni_thinker:tiny-omni:model.safetensors"
    assert good["caption_attempts"] == 1
    assert isinstance(bad, OperatorError)
    assert str(bad).startswith("OmniOutputError: malformed Omni output twice: no JSON object")


def test_local_backend_missing_weights(tmp_path):
    from operators.nets import MissingWeights
    with pytest.raises(MissingWeights, match=str(tmp_path / "qwen-omni/Qwen2.5-Omni-3B/config.json")):
        Captions(model_dir=str(tmp_path)).setup()


# ---- end to end: workflows/captions.yaml through the Runner, http backend --------------------------
def test_captions_workflow_runs_against_a_local_server(server, tmp_path, media):
    from curation.runner import Runner
    from curation.store import Store
    from curation.workflow import load
    from operators import REGISTRY
    doc = yaml.safe_load((ROOT / "workflows" / "captions.yaml").read_text())
    step = next(s for s in doc["steps"] if s["name"] == "captions")
    step["params"].update(backend="http", endpoint=server.url, timeout_s=10.0, max_side=224, retries=1)
    wf = load(yaml.safe_dump(doc, sort_keys=False), registry={**REGISTRY, **REG_EXTRA})
    st = Store(str(tmp_path / "store"))
    Runner(wf, st, executor="local").run([str(media / "vr_face1.mp4"), str(media / "pf_single_face.mp4")])
    videos = {v["video_id"]: Path(v["uri"]).name for v in st.query("videos", columns=["video_id", "uri"]).to_pylist()}
    clips = st.query("clips").to_pylist()
    assert clips and all(c["error"] is None for c in clips)
    by_file: dict[str, list[dict]] = {}
    for c in clips:
        by_file.setdefault(videos[c["video_id"]], []).append(c)
    assert set(by_file) == {"vr_face1.mp4", "pf_single_face.mp4"}
    assert len(server.bodies) == len(clips)            # one request per clip, none retried
    for name, cs in by_file.items():
        for c in cs:
            # the class the server read off the clip's real audio: vr_face1 talks, pf_single_face is silent
            assert c["scene_class"] == ("speak" if name == "vr_face1.mp4" else "silence")
            assert c["caption_backend"].startswith("openai-http:") and c["caption_attempts"] == 1
            assert sorted(c["tags"]) == sorted(TAG_KEYS) and c["tags"]["camera_motion"] == ["static"]
            spans = c["caption_spans"]     # fixed 3 s windows covering the clip, in video seconds
            assert spans[0]["start_s"] == pytest.approx(c["start_s"], abs=1e-3)
            assert spans[-1]["end_s"] == pytest.approx(c["end_s"], abs=1e-3)
            assert len(spans) == int(np.ceil(c["duration_s"] / 3.0 - 1e-6))
