"""Shared fixtures: the real media and model directories beside the repository, and a Ray session."""
from __future__ import annotations

import os
import shutil
import subprocess
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
