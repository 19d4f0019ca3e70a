"""The OpenAI-compatible Omni client (operators/nets/omni_http.py) against a local HTTP server.

The server (started here, 127.0.0.1, a free port) answers each request by the mode written in the
clip's ASR text: a valid completion with token log-probabilities, a garbage body, a sleep past the
client's timeout, a dropped connection, a drop then a valid answer, a malformed caption, HTTP 400.
Frames and audio are real: the first 4 s of vr_face1.mp4 at 2 fps and its 16 kHz audio.
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
import socket
import time
import wave

import cv2
import numpy as np
import pytest

from conftest import FakeOpenAI, frames_of
from operators.nets.omni import FRAME_FPS, OmniRequest, sample_frames
from operators.nets.omni_http import OmniHTTPClient, build_messages

SLEEP_S = 0.3        # every answer takes this long, so requests overlap
TIMEOUT_S = 1.0      # the client's per-request deadline; "timeout" mode sleeps 3 s


def _caption_json(ok: bool = True) -> str:
    return json.dumps({
        "scene_class": "speak" if ok else "dancing", "scene_prob": 0.9,
        "caption_dense": "A woman with dark hair talks to the camera in a room.",
        "caption_summary": "A woman talks to the camera.",
        "caption_spans": [{"unit": 0, "text": "She greets the viewer."}],
        "tags": {"emotion": ["neutral"], "shot_size": ["close_up"], "camera_motion": ["static"]},
    })


def _answer(text, content, mode, hit):
    if mode == "drop" or (mode == "flaky" and hit == 1):
        return FakeOpenAI.DROP
    if mode == "http400":
        return FakeOpenAI.HTTP400
    if mode == "garbage":
        return FakeOpenAI.GARBAGE
    return _caption_json(ok=mode != "badcaption")


@pytest.fixture()
def server(fake_openai):
    return fake_openai(_answer, sleep_s=SLEEP_S, logprob=-0.1)


@pytest.fixture(scope="module")
def clip(media):
    from curation.media import load_audio
    fr = frames_of(media / "vr_face1.mp4", 0.0, 4.0, max_side=320)
    frames = sample_frames(fr.images, fr.times, FRAME_FPS, start_s=0.0, end_s=4.0)
    return frames, load_audio(str(media / "vr_face1.mp4"), 16000, 0.0, 4.0)


def _req(clip, mode: str) -> OmniRequest:
    frames, audio = clip
    return OmniRequest(frames=frames, audio=audio, sentences=[{"start_s": 0.3, "end_s": 2.0, "text": f"MODE:{mode}"}])


def _client(url, **kw) -> OmniHTTPClient:
    args = dict(model="Qwen/Qwen2.5-Omni-7B", max_in_flight=3, timeout_s=TIMEOUT_S, retries=1, backoff_s=0.05,
                max_side=160)
    args.update(kw)
    return OmniHTTPClient(url, **args)


def test_message_format(clip, server):
    frames, audio = clip
    rec = _client(server.url).caption(_req(clip, "ok"))
    body = server.last_body["ok"]
    assert body["model"] == "Qwen/Qwen2.5-Omni-7B" and body["logprobs"] is True and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    parts = user["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 8 + ["input_audio", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert max(img.shape[:2]) == 160 and img.shape[2] == 3
    assert parts[8]["input_audio"]["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(parts[8]["input_audio"]["data"]))) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
        assert w.getnframes() == len(audio) == 64000
    assert "8 frames sampled at 2 frames per second" in parts[9]["text"]
    assert 'unit 0: 0.30-2.00 s, speech: "MODE:ok"' in parts[9]["text"]
    # scene_prob from the returned token log-probs: 3-character tokens at -0.1 each over "speak"
    content = _caption_json()
    a = content.index('"speak"') + 1
    n = (a + 4) // 3 - a // 3 + 1
    assert rec["scene_prob_source"] == "tokens" and rec["scene_prob"] == pytest.approx(math.exp(-0.1 * n))
    assert rec["caption_spans"] == [{"start_s": 0.3, "end_s": 2.0, "text": "She greets the viewer."}]
    assert rec["tags"]["camera_motion"] == ["static"] and rec["attempts"] == 1
    # no audio: no input_audio part
    msgs = build_messages(OmniRequest(frames=frames[:2], audio=None), max_side=64)
    assert [p["type"] for p in msgs[1]["content"]] == ["image_url", "image_url", "text"]


def test_per_item_errors_retries_and_in_flight_limit(clip, server):
    modes = ["ok", "garbage", "timeout", "drop", "ok2", "flaky", "badcaption", "http400", "ok3"]
    client = _client(server.url)
    t0 = time.monotonic()
    results = client.caption_many([_req(clip, m) for m in modes])
    elapsed = time.monotonic() - t0
    by = {m: r for m, r in zip(modes, results)}
    assert [r.index for r in results] == list(range(len(modes)))
    for m in ("ok", "ok2", "ok3", "flaky"):
        assert by[m].error is None and by[m].record["scene_class"] == "speak", (m, by[m].error)
    assert server.hits["flaky"] == 2                              # dropped once, answered on the retry
    assert re.fullmatch(r"TransportError: unparseable response body \(\d+ bytes\) \(2 attempts\)", by["garbage"].error)
    assert by["timeout"].error == "TransportError: timed out after 1 s (2 attempts)"
    assert by["drop"].error.startswith("TransportError: connection failed: RemoteDisconnected")
    assert by["badcaption"].error.startswith("OmniOutputError: malformed Omni output twice: scene_class 'dancing'")
    assert server.hits["badcaption"] == 2                         # one retry with the reason in the prompt
    assert "previous answer could not be used" in server.last_body["badcaption"]["messages"][1]["content"][-1]["text"]
    assert by["http400"].error.startswith("TransportError: HTTP 400") and server.hits["http400"] == 1
    assert all(r.record is None for r in results if r.error) and all("\n" not in (r.error or "") for r in results)
    assert 2 <= server.max_in_flight <= 3
    # 3 in flight: the two timeout attempts (2 x 1 s) bound the run; sequentially it would take > 6 s
    assert by["timeout"].seconds < 2 * TIMEOUT_S + 1.0
    assert elapsed < 5.0


def test_unreachable_endpoint_fails_fast(clip):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                     # nothing listens there now
    t0 = time.monotonic()
    [r] = _client(f"http://127.0.0.1:{port}/v1").caption_many([_req(clip, "ok")])
    assert r.record is None and r.error.startswith("TransportError: connection failed: ConnectionRefusedError")
    assert time.monotonic() - t0 < 2.0


def test_bad_base_url():
    with pytest.raises(ValueError, match="not an http"):
        OmniHTTPClient("localhost:8000", model="m")
