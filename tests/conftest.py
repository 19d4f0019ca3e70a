"""Shared fixtures: the real media and model directories beside the repository, and a Ray session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# an operator that forgets a declared column fails its test instead of writing null
# (curation.operator.STRICT_COLUMNS; inherited by Ray workers and the CLI in subprocesses)
os.environ["CURATION_STRICT_COLUMNS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("CURATION_MEDIA", ROOT.parent / "shared" / "media")).resolve()   # absolute: tests link to it
MODELS = Path(os.environ.get("CURATION_MODELS", ROOT.parent / "shared" / "models")).resolve()


@pytest.fixture(scope="session")
def media() -> Path:
    if not (MEDIA / "vr_face1.mp4").exists():
        pytest.fail(f"test media not found at {MEDIA} (set CURATION_MEDIA)")
    return MEDIA


@pytest.fixture(scope="session")
def models() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, media) -> dict[str, Path]:
    """A zero-byte file, a text file named .mp4, a truncated copy of a real clip, an audio-only file."""
    d = tmp_path_factory.mktemp("bad")
    zero = d / "zero_bytes.mp4"
    zero.write_bytes(b"")
    text = d / "not_a_video.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    truncated = d / "truncated_dj_video4.mp4"
    data = (media / "dj_video4.mp4").read_bytes()  # moov at the start: probes fine, data cut off
    truncated.write_bytes(data[: len(data) * 2 // 5])
    audio_only = d / "audio_only.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(media / "vr_face1.mp4"), "-vn",
                    "-c:a", "copy", str(audio_only)], check=True)
    return {"zero": zero, "text": text, "truncated": truncated, "audio_only": audio_only}


# Composites of shared talking clips whose truth is how they were built (docs/av-labels.md), from
# bench/composites.py (which builds them for both pairs): pair p2 (Katie Hill | vr_face3). "owner": the
# face whose own voice it is, per half of the clip (left / right / none).
sys.path.insert(0, str(ROOT))
from bench.composites import LABEL_STEPS, build as _composite, composites as _composites  # noqa: E402

_P2 = _composites("st_WDA_KatieHill_000.mp4", "vr_face3.mp4")
COMPOSITES = {
    "mouthing": _P2["mouthing_right"],      # vr_face3 talks, Katie Hill beside her mouths without sound
    "alternating": _P2["alternating"],      # both talk; the first half of the audio is Katie's, then vr_face3's
    "silence": _P2["silence"],              # vr_face3 talking, the sound replaced by silence
    "other_voice": _P2["dub_right"],        # vr_face3 talking with Katie Hill's voice (a dub / voice-over)
}


@pytest.fixture(scope="session")
def conversation_store(tmp_path_factory, media, models):
    """The conversation workflow run once per session (minutes of CPU) on vr_face1 (one woman
    talking), lp_d3 (grimaces, no speech), lp_d0 (no audio stream) and dj_video4 from 13 s (the
    woman in front talks, the one behind combs her hair), by the command a user runs, in a process
    of its own (in-process, without Ray: the step order is fixed). Shared by test_conversation.py
    and test_audit.py. Returns (store, run summary, person clips by file name, directory)."""
    d = tmp_path_factory.mktemp("conv")
    dj = d / "dj_video4_tail.mp4"      # 13-22.4 s: the talking part, both women in frame
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", "13", "-i", str(media / "dj_video4.mp4"),
                    "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(dj)], check=True)
    return _conversation_run(d, [media / "vr_face1.mp4", media / "lp_d3.mp4", media / "lp_d0.mp4", dj], models)


@pytest.fixture(scope="session")
def composite_store(tmp_path_factory, media, models):
    """The conversation workflow's label steps (LABEL_STEPS: conversation.yaml's steps, params and
    filters up to rerank) on vr_face2 and the COMPOSITES (who speaks is known by how they were
    built), as conversation_store runs it. The steps after the labels (audio variants, Whisper,
    transcripts) are tested on conversation_store and change nothing the composite tests read."""
    d = tmp_path_factory.mktemp("composites")
    comps = [_composite(media, d / f"composite_{k}.mp4", *v[:3]) for k, v in COMPOSITES.items()]
    return _conversation_run(d, [media / "vr_face2.mp4", *comps], models, labels_workflow(d))


def labels_workflow(d: Path) -> Path:
    """conversation.yaml cut to its label steps (LABEL_STEPS: steps, params and filters up to
    rerank), written into ``d``."""
    import yaml
    wf = yaml.safe_load((ROOT / "workflows" / "conversation.yaml").read_text())
    wf["steps"] = [s for s in wf["steps"] if s["name"] in LABEL_STEPS]
    assert {s["name"] for s in wf["steps"]} == set(LABEL_STEPS)
    (d / "conversation_labels.yaml").write_text(yaml.safe_dump(wf, sort_keys=False))
    return d / "conversation_labels.yaml"


def _conversation_run(d: Path, files: list[Path], models, workflow: Path = ROOT / "workflows" / "conversation.yaml"):
    from curation.store import Store
    st = Store(str(d / "store"))
    cmd = [str(Path(sys.executable).parent / "curation"), "run", str(workflow),
           "--store", str(d / "store"), "--models", str(models), "--local"]
    run = subprocess.run(cmd + [x for f in files for x in ("--input", str(f))], capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    names = {v["video_id"]: Path(v["uri"]).name for v in st.query("videos").to_pylist()}
    clips: dict[str, list[dict]] = {}
    for c in st.query("clips", where="clip_kind = 'person'").to_pylist():
        clips.setdefault(names[c["video_id"]], []).append(c)
    return st, run.stdout, clips, d


@pytest.fixture(scope="module")
def ray_session():
    """A fresh local Ray per test module (about 5 s each): one module's Ray Train groups, Ray Data
    pipelines and killed workers cannot leave the next module a cluster that schedules nothing (a
    whole-suite run hung in test_run's first run: tasks never scheduled and the GCS read of the
    cluster's CPUs never answered, after the model, Ray Data and reliability modules had shared
    one session; not reproduced with any two of them)."""
    import ray
    if ray.is_initialized():    # started by a run of an earlier module (curation.executors.init_ray)
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()  # before pytest's summary, so Ray's exit messages do not follow it


def frames_of(path: Path, start_s: float = 0.0, end_s: float = 1e9, fps=None, max_side=480,
              rotation: int = 0):
    """Decode a span of a real clip the way a run does (for operator unit tests)."""
    from curation.media import VideoDecoder
    return VideoDecoder(str(path), rotation=rotation, max_side=max_side).span(start_s, end_s, fps)


def largest_faces(images, models: Path, scale: float = 1.0):
    """(N, 4) the largest face per frame from MediaPipe's BlazeFace (short range), x1 y1 x2 y2 in
    display pixels (image pixels / ``scale``), NaN where none: a face track independent of `people`
    for tests of the face operators."""
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import BaseOptions, vision
    opts = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(models / "mediapipe/face_detection_short_range.tflite")),
        min_detection_confidence=0.5)
    boxes = np.full((len(images), 4), np.nan)
    with vision.FaceDetector.create_from_options(opts) as det:
        for i, im in enumerate(images):
            res = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
            if res.detections:
                b = max(res.detections, key=lambda d: d.bounding_box.width).bounding_box
                boxes[i] = np.array([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height]) / scale
    return boxes


def which_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if not exe:
        pytest.fail("ffmpeg not on PATH (make test installs it)")
    return exe


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> list[Path]:
    """Eight distinct 1 s 160x120 H.264 videos (made once per session)."""
    d = tmp_path_factory.mktemp("tiny")
    out = []
    for i in range(8):
        f = d / f"tiny{i}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=160x120:rate=25,hue=h={40 * i}", "-t", "1", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(f)], check=True)
        out.append(f)
    return out


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """``curation.cli.main`` in this process (the installed command's code path, no start-up cost):
    ``cli("query", "--store", ...)`` returns its exit code, stdout and stderr."""
    import sys

    def call(*args) -> CliResult:
        from curation.cli import main
        capsys.readouterr()
        old = sys.argv
        sys.argv = ["curation", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.argv = old
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)
    return call


# ---- one local OpenAI-compatible endpoint (Qwen-Omni over vLLM stands in) -------------------------
class FakeOpenAI:
    """A local ``/v1/chat/completions`` endpoint on 127.0.0.1 (a free port): ``url``.

    The last text part of a request may carry ``MODE:<name>`` (default ``ok``). Every answer takes
    ``sleep_s`` (so requests overlap); ``timeout`` takes 3 s. ``answer(text, content, mode, hit)``
    (``hit``: the how-manieth request of that mode) returns the completion's text, or one of
    ``DROP`` (the connection closes, no status line), ``GARBAGE`` (HTTP 200, not JSON), ``HTTP400``;
    ``NO_LOGPROBS`` in ``no_logprobs`` modes leaves the token log-probabilities out (an endpoint
    without them). Records ``hits`` per mode, every request ``bodies`` (and ``last_body`` per mode)
    and the largest number of requests in flight."""
    DROP, GARBAGE, HTTP400 = "<drop>", "<garbage>", "<http400>"

    def __init__(self, answer, sleep_s: float = 0.3, logprob: float = -0.01,
                 no_logprobs: tuple[str, ...] = ()):
        import threading
        from http.server import ThreadingHTTPServer
        self.answer, self.sleep_s, self.logprob, self.no_logprobs = answer, sleep_s, logprob, no_logprobs
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.hits: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.last_body: dict[str, dict] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, handler, body: dict) -> None:
        import json
        import re
        content = body["messages"][1]["content"]
        text = content[-1]["text"]
        m = re.search(r"MODE:(\w+)", text)
        mode = m.group(1) if m else "ok"
        with self.lock:
            self.hits[mode] = hit = self.hits.get(mode, 0) + 1
            self.bodies.append(body)
            self.last_body[mode] = body
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not handler.wait(3.0 if mode == "timeout" else self.sleep_s):
                return   # the client closed the connection (its timeout): no longer in flight
            out = self.answer(text, content, mode, hit)
            if out == self.DROP:
                handler.drop()
            elif out in (self.GARBAGE, self.HTTP400):
                handler.send(*((200, b"<html>502 upstream \x00\xff garbage") if out == self.GARBAGE
                               else (400, b'{"error": "bad request"}')))
            else:
                choice = {"index": 0, "message": {"role": "assistant", "content": out},
                          "finish_reason": "stop"}
                if mode not in self.no_logprobs:
                    toks = [out[i:i + 3] for i in range(0, len(out), 3)]
                    choice["logprobs"] = {"content": [{"token": t, "logprob": self.logprob}
                                                      for t in toks]}
                handler.send(200, json.dumps({"choices": [choice]}).encode())
        except OSError:
            pass   # the client gave up (timeout): nothing to answer
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: FakeOpenAI):
    import json
    import select
    import socket
    import time
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            server.respond(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def wait(self, seconds) -> bool:
            """Sleep; False as soon as the client has closed its end."""
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if select.select([self.connection], [], [], 0.02)[0] and \
                        not self.connection.recv(1, socket.MSG_PEEK):
                    return False
            return True

        def drop(self):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)   # no status line: a dropped connection

        def send(self, code: int, data: bytes):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    return Handler


@pytest.fixture
def fake_openai():
    """``fake_openai(answer, **kw)`` starts a :class:`FakeOpenAI` (closed after the test)."""
    servers: list[FakeOpenAI] = []

    def start(answer, **kw) -> FakeOpenAI:
        servers.append(FakeOpenAI(answer, **kw))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


# ---- the bundled model (tests/models/) -----------------------------------------------------------
# Here, not in tests/models/conftest.py: a second conftest module would shadow this one for the tests
# that import helpers from it.
MOUTH_STEPS = 400


@pytest.fixture(scope="session")
def mouth_teacher(tmp_path_factory) -> Path:
    """The run directory of a toy avatar DiT trained MOUTH_STEPS steps on the synthetic mouth task
    (models/configs/mouth.yaml): shared by the learning test and the distillation tests."""
    import torch

    from models.config import load_config
    from models.train import train
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mouth_teacher")
    train(load_config(ROOT / "models" / "configs" / "mouth.yaml"), out, MOUTH_STEPS)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A mouth-config DiT checkpoint after 2 steps (for tests that need a teacher, not a good one)."""
    from models.config import load_config
    from models.train import train
    out = tmp_path_factory.mktemp("tiny_teacher")
    train(load_config(ROOT / "models" / "configs" / "mouth.yaml", {"train.batch_size": 2, "data.pool": 4}),
          out, 2)
    return str(out / "checkpoint")
