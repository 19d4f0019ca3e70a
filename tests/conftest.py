"""Shared fixtures: the real media and model directories beside the repository, and a Ray session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("CURATION_MEDIA", ROOT.parent / "shared" / "media"))
MODELS = Path(os.environ.get("CURATION_MODELS", ROOT.parent / "shared" / "models"))


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


# Composites of shared talking clips whose truth is how they were built (docs/av-labels.md): two
# faces side by side (360 x 360 each, 5 s) or one, and whose voice is heard. "owner": the face whose
# own voice it is, per half of the clip (left / right / none).
_V = "fps=25,scale=360:360,setsar=1"
COMPOSITES = {
    # vr_face3 talks with her voice, Katie Hill beside her mouths her own words without sound
    "mouthing": (["st_WDA_KatieHill_000.mp4", "vr_face3.mp4"],
                 f"[0:v]{_V}[a];[1:v]{_V}[b];[a][b]hstack[v]", "1:a", ("right", "right")),
    # the same two talking all the time; the first half of the audio is Katie's, the second vr_face3's
    "alternating": (["st_WDA_KatieHill_000.mp4", "vr_face3.mp4"],
                    f"[0:v]{_V}[a];[1:v]{_V}[b];[a][b]hstack[v];[0:a]aresample=44100,atrim=0:2.5,"
                    "asetpts=PTS-STARTPTS[x];[1:a]aresample=44100,atrim=2.5:5,asetpts=PTS-STARTPTS[y];"
                    "[x][y]concat=n=2:v=0:a=1[au]", "[au]", ("left", "right")),
    # vr_face3 talking, the sound replaced by silence
    "silence": (["vr_face3.mp4"], f"[0:v]{_V}[v];anullsrc=r=44100:cl=mono,atrim=0:5[au]", "[au]", (None, None)),
    # vr_face3 talking, Katie Hill's voice instead of hers (a dub / voice-over)
    "other_voice": (["vr_face3.mp4", "st_WDA_KatieHill_000.mp4"], f"[0:v]{_V}[v]", "1:a", (None, None)),
}


def _composite(media, out, inputs, graph, audio):
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for name in inputs:
        cmd += ["-i", str(media / name)]
    cmd += ["-filter_complex", graph, "-map", "[v]", "-map", audio, "-t", "5", "-c:v", "libx264",
            "-preset", "veryfast", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True)
    return out


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
    import yaml
    d = tmp_path_factory.mktemp("composites")
    comps = [_composite(media, d / f"composite_{k}.mp4", *v[:3]) for k, v in COMPOSITES.items()]
    wf = yaml.safe_load((ROOT / "workflows" / "conversation.yaml").read_text())
    wf["steps"] = [s for s in wf["steps"] if s["name"] in LABEL_STEPS]
    assert {s["name"] for s in wf["steps"]} == set(LABEL_STEPS)
    (d / "conversation_labels.yaml").write_text(yaml.safe_dump(wf, sort_keys=False))
    return _conversation_run(d, [media / "vr_face2.mp4", *comps], models, d / "conversation_labels.yaml")


LABEL_STEPS = ("probe", "shots", "audio", "clips", "people", "shot_people", "person_clips", "separation",
               "asd", "sync", "speaker_states", "rerank")


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


@pytest.fixture(scope="session")
def ray_session():
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()  # before pytest's summary, so Ray's exit messages do not follow it


def frames_of(path: Path, start_s: float = 0.0, end_s: float = 1e9, fps=None, max_side=480,
              rotation: int = 0):
    """Decode a span of a real clip the way a run does (for operator unit tests)."""
    from curation.media import VideoDecoder
    return VideoDecoder(str(path), rotation=rotation, max_side=max_side).span(start_s, end_s, fps)


def which_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if not exe:
        pytest.fail("ffmpeg not on PATH (make test installs it)")
    return exe


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
