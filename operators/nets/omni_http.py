"""Qwen-Omni captioning through an OpenAI-compatible chat-completions endpoint (vLLM serving Qwen-Omni).

Same prompt, parser, validation and one-retry-on-malformed-output rule as the local backend
(``operators.nets.omni``); only the transport differs, so captioning scales out to a GPU cluster
without changing the operator.

Request (OpenAI chat-completions format, as vLLM documents it for multimodal models): a system
message (``omni.SYSTEM_PROMPT``) and one user message whose content is the clip's frames as
``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`` parts in time order
(JPEG, longest side ``max_side``), the audio as ``{"type": "input_audio", "input_audio": {"data":
<base64 WAV, 16-bit mono 16 kHz>, "format": "wav"}}`` and the instruction text
(``omni.build_instruction``, which states the frame rate). ``temperature`` 0 and ``logprobs: true``:
the returned token log-probabilities give ``scene_prob`` the same way as locally; without them the
model's stated value is used. The vLLM server must allow that many images per prompt
(``--limit-mm-per-prompt``).

Transport: at most ``max_in_flight`` requests at once (a thread pool; the standard library's
http.client), a per-request deadline of ``timeout_s`` (connect, send and every read share it),
``retries`` further attempts with exponential back-off (``backoff_s`` * 2^k, capped at
``backoff_max_s``, with up to 25 % jitter) on connection errors, dropped connections, timeouts,
HTTP 429 / 5xx and unparseable response bodies; other HTTP 4xx fail at once. ``caption_many`` returns
one result per request, in order; an item that fails carries a one-line error and never fails the
others.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import random
import socket
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence
from urllib.parse import urlsplit

import cv2
import numpy as np

from operators.nets.omni import (AUDIO_SR, SYSTEM_PROMPT, CaptionResult, OmniRequest, build_instruction,
                                 caption_with_retry, error_line)


class TransportError(RuntimeError):
    """A request failed after its retries (or at once, for a non-retryable HTTP status)."""


class _Retryable(Exception):
    pass


def jpeg_data_url(frame: np.ndarray, max_side: int = 448, quality: int = 85) -> str:
    """An RGB uint8 frame as a ``data:image/jpeg;base64,`` URL, resized so its longest side <= max_side."""
    h, w = frame.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def wav_base64(audio: np.ndarray, sample_rate: int = AUDIO_SR) -> str:
    """Mono float audio in [-1, 1] as base64 of a 16-bit PCM WAV file."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    bio = io.BytesIO()
    with wave.open(bio, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return base64.b64encode(bio.getvalue()).decode("ascii")


def build_messages(req: OmniRequest, retry_note: str | None = None, max_side: int = 448,
                   jpeg_quality: int = 85) -> list[dict]:
    """The chat messages of one request: system prompt; user: frames, audio, instruction."""
    content: list[dict] = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f, max_side, jpeg_quality)}}
                           for f in req.frames]
    if req.has_audio:
        content.append({"type": "input_audio", "input_audio": {"data": wav_base64(req.audio), "format": "wav"}})
    content.append({"type": "text", "text": build_instruction(req, retry_note)})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


class OmniHTTPClient:
    """Captions clips through ``{base_url}/chat/completions`` (base_url like ``http://host:8000/v1``)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_in_flight: int = 8,
                 timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 max_tokens: int = 1024, max_side: int = 448, jpeg_quality: int = 85, logprobs: bool = True):
        u = urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.path = (u.path or "") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.max_in_flight = max(1, int(max_in_flight))
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.max_tokens, self.max_side, self.jpeg_quality = max_tokens, max_side, jpeg_quality
        self.logprobs = logprobs
        self.backend = f"openai-http:{model}@{u.scheme}://{u.netloc}{u.path}"

    # -- one request ------------------------------------------------------------------------------
    def build_body(self, req: OmniRequest, retry_note: str | None = None) -> dict:
        body = {"model": self.model, "messages": build_messages(req, retry_note, self.max_side, self.jpeg_quality),
                "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.logprobs:
            body["logprobs"] = True
        return body

    def _post_once(self, payload: bytes) -> dict:
        deadline = time.monotonic() + self.timeout_s
        conn_cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request("POST", self.path, body=payload, headers=headers)
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            resp = conn.getresponse()
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Retryable(f"timed out after {self.timeout_s:g} s")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection failed: {type(e).__name__}: {e}".strip().rstrip(":")) from None
        finally:
            conn.close()
        if resp.status == 429 or resp.status >= 500:
            raise _Retryable(f"HTTP {resp.status}")
        if resp.status >= 400:
            raise TransportError(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}".splitlines()[0])
        try:
            out = json.loads(data)
            out["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"unparseable response body ({len(data)} bytes)") from None
        return out

    def post(self, body: dict) -> dict:
        """POST with retries and back-off; returns the decoded completion or raises TransportError."""
        payload = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (1 + 0.25 * random.random()))
            try:
                return self._post_once(payload)
            except _Retryable as e:
                last = str(e)
        raise TransportError(f"{last} ({self.retries + 1} attempts)")

    def generate(self, req: OmniRequest, retry_note: str | None = None
                 ) -> tuple[str, list[tuple[str, float]] | None]:
        """One completion: the answer text and its tokens as (text, log-probability) when returned."""
        choice = self.post(self.build_body(req, retry_note))["choices"][0]
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            text = json.dumps(text)
        lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        tokens = None
        if lp:
            try:
                tokens = [(str(t["token"]), float(t["logprob"])) for t in lp]
            except (KeyError, TypeError, ValueError):
                tokens = None
        return text, tokens

    def caption(self, req: OmniRequest) -> dict:
        """The validated caption record; OmniOutputError after two malformed answers, TransportError
        when the endpoint cannot be reached after the retries."""
        return caption_with_retry(self.generate, req)

    # -- many requests ----------------------------------------------------------------------------
    def caption_many(self, reqs: Sequence[OmniRequest]) -> list[CaptionResult]:
        """Caption all requests with at most ``max_in_flight`` in flight; results in input order."""
        def one(i: int, req: OmniRequest) -> CaptionResult:
            t0 = time.monotonic()
            try:
                rec = self.caption(req)
                return CaptionResult(i, rec, None, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - one item's failure is recorded, never raised
                return CaptionResult(i, None, error_line(e), time.monotonic() - t0)

        if not reqs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(reqs))) as pool:
            return list(pool.map(one, range(len(reqs)), reqs))
