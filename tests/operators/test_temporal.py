"""The temporal operator on real clips and on copies of them edited with ffmpeg (a removed chunk,
duplicated frames, a freeze, a synthetic pan / tilt / zoom / shake, fades, a dissolve, a still).

Each derived clip states what a person would see, and the asserts check exactly that. Derived clips
are written at 320 px or less to keep the tests fast (the operator looks at 160 px anyway)."""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import frames_of, which_ffmpeg
from curation.media import Frames
from operators.temporal import CAMERA_LABELS, Temporal

OP = Temporal()


def run(path: Path, frames: Frames | None = None) -> dict:
    frames = frames if frames is not None else frames_of(path, max_side=160)
    return OP.process_row({"video_id": path.stem}, {"clip_id": path.stem}, frames)


@pytest.fixture(scope="module")
def derive(tmp_path_factory, media):
    """derive(name, source, *ffmpeg_output_args): a copy of a real clip made with ffmpeg, once."""
    exe = which_ffmpeg()
    out_dir = tmp_path_factory.mktemp("temporal")
    made: dict[str, Path] = {}

    def make(name: str, source: str, *args: str, inputs: tuple[str, ...] = ()) -> Path:
        if name not in made:
            out = out_dir / f"{name}.mp4"
            cmd = [exe, "-nostdin", "-v", "error", "-y", "-i", str(media / source)]
            for extra in inputs:
                cmd += ["-i", str(media / extra)]
            subprocess.run(cmd + list(args) + ["-an", str(out)], check=True)
            made[name] = out
        return made[name]

    return make


@pytest.fixture(scope="module")
def face1(media) -> dict:
    return run(media / "vr_face1.mp4")


# ---- contract ------------------------------------------------------------------------------------
def test_output_matches_declared_schema(face1):
    assert list(face1) == OP.writes.names
    table = pa.Table.from_pylist([face1], schema=OP.writes)   # raises on a type mismatch
    assert table.num_rows == 1
    assert face1["camera_motion"] in CAMERA_LABELS
    for name, value in face1.items():
        assert value is not None, name
        if isinstance(value, float):
            assert math.isfinite(value), name


@pytest.mark.parametrize("n", [1, 2, 3])
def test_very_short_spans_give_none_not_nan(media, n):
    full = frames_of(media / "vr_face1.mp4", max_side=160)
    out = run(media / "vr_face1.mp4", Frames(full.images[:n], full.times[:n], full.fps))
    assert list(out) == OP.writes.names
    pa.Table.from_pylist([out], schema=OP.writes)
    for value in out.values():
        assert not (isinstance(value, float) and math.isnan(value))
    if n == 1:
        assert all(v is None for v in out.values())
    if n == 2:  # one pair: a difference exists, but a jump cannot be told from motion
        assert out["duplicate_frame_ratio"] == 0.0 and out["jump_count"] is None
    if n == 3:
        assert out["jump_count"] == 0


# ---- jumps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", ["vr_face1.mp4", "vr_face3.mp4", "lp_d3.mp4"])
def test_talking_and_grimacing_make_no_jumps_and_static_camera(media, face1, clip):
    # vr_face3 blinks (one-frame spikes in the difference), lp_d3 grimaces and turns her head
    out = face1 if clip == "vr_face1.mp4" else run(media / clip)
    assert out["jump_count"] == 0 and out["jump_times_s"] == []
    assert out["transition_count"] == 0
    assert out["camera_motion"] == "static"


def test_removed_second_is_one_jump_at_two_seconds(derive):
    # vr_face1 without 2 s..3 s; the later frames keep their time minus 1 s (variable frame rate kept)
    cut = derive("face1_cut", "vr_face1.mp4", "-vf",
                 "select='not(between(t,2,3))',setpts='if(gte(T,3),PTS-1/TB,PTS)',scale=320:-2",
                 "-fps_mode", "passthrough")
    out = run(cut)
    assert out["jump_count"] == 1
    assert abs(out["jump_times_s"][0] - 2.0) < 0.07


def test_removed_second_of_constant_rate_clip(derive):
    # vr_face2 is 25 fps constant: renumbering the frames puts the cut exactly at 2.0 s
    cut = derive("face2_cut", "vr_face2.mp4",
                 "-vf", "select='not(between(t,2,3))',setpts=N/FRAME_RATE/TB,scale=320:-2")
    out = run(cut)
    assert out["jump_count"] == 1
    assert abs(out["jump_times_s"][0] - 2.0) < 0.05


@pytest.mark.parametrize("clip", ["vr_face3.mp4", "lp_d3.mp4", "st_WDA_KatieHill_000.mp4"])
def test_removed_half_second_is_one_jump(derive, clip):
    # 3.0 s..3.5 s removed, later frames moved 0.5 s earlier: the first frame after the gap is the
    # old frame just after 3.5 s, now at ~3.0 s (plus one frame: t = 3.0 itself is removed too)
    cut = derive(f"{clip}_cut05", clip, "-vf",
                 "select='not(between(t,3,3.5))',setpts='if(gte(T,3.5),PTS-0.5/TB,PTS)',"
                 "scale=256:-2", "-fps_mode", "passthrough")
    out = run(cut)
    assert out["jump_count"] == 1
    assert 3.0 <= out["jump_times_s"][0] <= 3.05


# ---- duplicates and freezes ----------------------------------------------------------------------
def test_every_frame_twice_is_half_duplicates(media, derive):
    original = run(media / "vr_face2.mp4")          # 25 fps, every frame distinct
    doubled = run(derive("face2_x2", "vr_face2.mp4", "-vf", "fps=50,scale=320:-2"))  # each frame twice
    assert original["duplicate_frame_ratio"] < 0.02
    assert abs(doubled["duplicate_frame_ratio"] - 0.5) < 0.03
    assert doubled["jump_count"] == 0
    assert doubled["longest_freeze_s"] < 0.05       # one extra frame of 20 ms at a time


def test_constant_rate_padding_is_counted(derive, face1):
    # vr_face1 is variable rate (135 frames in 6.1 s). Written at a constant 30 fps it is padded to
    # 184 frames: 49 inserted copies, so 49 more duplicate pairs than the same clip written with its
    # own timestamps (same size and encoder)
    kept = derive("face1_vfr", "vr_face1.mp4", "-vf", "scale=320:-2", "-fps_mode", "passthrough")
    padded = derive("face1_cfr30", "vr_face1.mp4", "-vf", "scale=320:-2", "-r", "30")
    frames_kept, frames_padded = frames_of(kept, max_side=160), frames_of(padded, max_side=160)
    assert (len(frames_kept), len(frames_padded)) == (135, 184)
    dup_kept = run(kept, frames_kept)["duplicate_frame_ratio"] * 134
    dup_padded = run(padded, frames_padded)["duplicate_frame_ratio"] * 183
    assert abs(dup_padded - dup_kept - 49) <= 3
    # the original has a few near-identical consecutive frames (the speaker holds still)
    assert face1["duplicate_frame_ratio"] < 0.15


def test_one_second_freeze(derive):
    # frame 50 of vr_face2 (2.0 s) shown 25 more times (25 fps): the picture stands still for 1 s
    frozen = derive("face2_freeze", "vr_face2.mp4", "-vf",
                    "loop=loop=25:size=1:start=50,setpts=N/FRAME_RATE/TB,scale=320:-2")
    out = run(frozen)
    assert abs(out["longest_freeze_s"] - 1.0) < 0.1
    assert abs(out["duplicate_frame_ratio"] - 25 / 149) < 0.02
    assert out["jump_count"] == 0


# ---- transitions ---------------------------------------------------------------------------------
def test_fade_to_black_and_fade_in_are_transitions(derive, face1):
    fade_out = run(derive("face1_fadeout", "vr_face1.mp4", "-vf", "fade=t=out:st=3:d=1,scale=320:-2"))
    fade_in = run(derive("face1_fadein", "vr_face1.mp4", "-vf", "fade=t=in:st=0:d=1,scale=320:-2"))
    assert face1["transition_count"] == 0
    assert fade_out["transition_count"] == 1 and fade_out["jump_count"] == 0
    assert fade_in["transition_count"] == 1 and fade_in["jump_count"] == 0
    assert fade_out["longest_freeze_s"] > 1.5       # black from 4 s to the end (6.1 s)


def test_dissolve_is_a_transition_not_a_jump(derive):
    # vr_face1 dissolves into vr_face2 over 1 s from 2.5 s
    graph = ("[0:v]fps=25,scale=256:256,setsar=1,settb=AVTB[a];"
             "[1:v]fps=25,scale=256:256,setsar=1,settb=AVTB[b];"
             "[a][b]xfade=transition=fade:duration=1:offset=2.5")
    out = run(derive("dissolve", "vr_face1.mp4", "-filter_complex", graph,
                     inputs=("vr_face2.mp4",)))
    assert out["transition_count"] == 1
    assert out["jump_count"] == 0


# ---- motion --------------------------------------------------------------------------------------
def test_grimacing_moves_more_than_its_still_frame(media, derive, tmp_path):
    moving = run(media / "lp_d3.mp4")
    png = tmp_path / "d3.png"
    subprocess.run([which_ffmpeg(), "-nostdin", "-v", "error", "-y", "-i", str(media / "lp_d3.mp4"),
                    "-frames:v", "1", str(png)], check=True)
    still_path = tmp_path / "d3_still.mp4"
    subprocess.run([which_ffmpeg(), "-nostdin", "-v", "error", "-y", "-loop", "1", "-i", str(png),
                    "-t", "3", "-r", "30", "-pix_fmt", "yuv420p", str(still_path)], check=True)
    still = run(still_path)
    assert moving["motion_intensity"] > 0.02
    assert still["motion_intensity"] < 0.001
    assert moving["motion_p90"] >= moving["motion_intensity"]
    assert still["duplicate_frame_ratio"] == 1.0
    assert still["longest_freeze_s"] > 2.9
    assert still["jump_count"] == 0 and still["camera_motion"] == "static"


# ---- camera --------------------------------------------------------------------------------------
PAN_SPEED = 40 / (350 * math.sqrt(2))   # 40 px/s of the 350-px crop, in frame diagonals per second


@pytest.mark.parametrize("x, sign", [("t*40", 1), ("iw/2-t*40", -1)])
def test_synthetic_pan(derive, x, sign):
    # a half-size window sliding right (x grows: the camera pans right, the face moves left) or left
    clip = derive(f"pan{sign}", "vr_face1.mp4", "-vf", f"crop=iw/2:ih/2:x='{x}':y=ih/4")
    out = run(clip)
    assert out["camera_motion"] == "pan"
    assert sign * out["camera_pan_speed"] == pytest.approx(PAN_SPEED, rel=0.25)
    assert abs(out["camera_tilt_speed"]) < 0.2 * PAN_SPEED


def test_synthetic_tilt(derive):
    # the window slides down: the camera tilts down, the face moves up
    out = run(derive("tilt", "vr_face1.mp4", "-vf", "crop=iw/2:ih/2:x=iw/4:y='t*40'"))
    assert out["camera_motion"] == "tilt"
    assert out["camera_tilt_speed"] == pytest.approx(PAN_SPEED, rel=0.25)


def test_synthetic_zoom_in(derive):
    # zoompan: magnification 1 + 0.004 per frame at 30 fps, i.e. d(ln z)/dt from 0.12 down to 0.08
    clip = derive("zoom", "vr_face1.mp4", "-vf",
                  "zoompan=z='1+0.004*on':d=1:x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
                  ":s=320x320:fps=30")
    out = run(clip)
    assert out["camera_motion"] == "zoom"
    assert 0.07 < out["camera_zoom_rate"] < 0.13
    assert abs(out["camera_pan_speed"]) < 0.01 and abs(out["camera_tilt_speed"]) < 0.01


def test_synthetic_shake(derive, face1):
    # a 3/4-size window jittering by up to +-25 px in x and y several times a second
    clip = derive("shake", "vr_face1.mp4", "-vf",
                  "crop=iw*3/4:ih*3/4:x='iw/8+15*sin(t*23)+10*sin(t*37)'"
                  ":y='ih/8+12*sin(t*29)+8*sin(t*41)'")
    out = run(clip)
    assert out["camera_motion"] == "shake"
    assert out["camera_shake"] > 10 * face1["camera_shake"]
    assert face1["camera_shake"] < 0.01


def _warped(frames: Frames, vx: float = 0.0, vy: float = 0.0, zoom: float = 0.0,
            frac: float = 0.6, side: int = 160) -> Frames:
    """A camera move with sub-pixel steps over a static-camera clip: a window of ``frac`` x the
    frame, moving at (vx, vy) window diagonals per second and shrinking at ``zoom`` log-scale per
    second (zooming in), bilinear, at ``side`` px."""
    import cv2
    import numpy as np
    h, w = frames.images.shape[1:3]
    ww, wh = w * frac, h * frac
    diag = math.hypot(ww, wh)
    ow, oh = (side, int(round(side * wh / ww))) if ww >= wh else (int(round(side * ww / wh)), side)
    mid = frames.times[-1] / 2
    out = []
    for im, t in zip(frames.images, frames.times):
        k = ww * math.exp(-zoom * t) / ow            # source pixels per output pixel
        cx, cy = w / 2 + vx * diag * (t - mid), h / 2 + vy * diag * (t - mid)
        m = np.array([[k, 0, cx - k * ow / 2], [0, k, cy - k * oh / 2]])
        out.append(cv2.warpAffine(im, m, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT))
    return Frames(np.stack(out), frames.times, frames.fps)


@pytest.fixture(scope="module")
def face3_full(media) -> Frames:
    return frames_of(media / "vr_face3.mp4", max_side=None)


@pytest.mark.parametrize("vx, vy, zoom, frac, label", [
    (0.0, 0.0, 0.0, 0.6, "static"), (0.035, 0.0, 0.0, 0.6, "pan"), (-0.09, 0.0, 0.0, 0.6, "pan"),
    (0.0, 0.07, 0.0, 0.6, "tilt"), (0.0, 0.0, 0.1, 0.8, "zoom"), (0.0, 0.0, -0.08, 0.6, "zoom"),
    (0.04, -0.04, 0.0, 0.6, "complex")])
def test_smooth_camera_moves(face3_full, vx, vy, zoom, frac, label):
    # sub-pixel moves read within 0.006 diagonals/s (and 0.01 log-scale/s) of the truth. The zoom
    # in stops at 0.8 x e^-0.5 of the frame: from 0.6, the face fills the border band after ~2 s
    # and the points follow the talking head instead of the camera (shake, in both versions)
    out = run(Path("face3_warped"), _warped(face3_full, vx, vy, zoom, frac))
    assert out["camera_motion"] == label
    assert out["camera_pan_speed"] == pytest.approx(vx, abs=0.006)
    assert out["camera_tilt_speed"] == pytest.approx(vy, abs=0.006)
    assert out["camera_zoom_rate"] == pytest.approx(zoom, abs=0.01)


def test_camera_does_not_depend_on_threads(face3_full):
    # points are carried inside fixed one-second chains, which the threads share out
    frames = _warped(face3_full, 0.03, 0.01)
    one, two = Temporal(), Temporal()
    one.threads, two.threads = 1, 2
    assert (one.process_row({}, {}, frames) == two.process_row({}, {}, frames))


# ---- building blocks -----------------------------------------------------------------------------
def test_frame_differences_equal_the_plain_numpy_ones():
    # the cv2 / integer fast paths give the float results of the straightforward formulas
    import numpy as np
    from operators.temporal import blend_residuals, pair_differences
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 90, 160)).astype(np.uint8)
    gray[10:20] = gray[10]                            # duplicates
    gray[20:30] = np.linspace(gray[20], gray[29], 10).astype(np.uint8)   # a blend
    d = np.abs(np.diff(gray.astype(np.int16), axis=0))
    mean, changed = pair_differences(gray, 3.0)
    assert np.array_equal(mean, d.mean(axis=(1, 2)))
    assert np.array_equal(changed, (d > 3.0).mean(axis=(1, 2)))
    for times in (np.arange(40) / 30, np.sort(rng.uniform(0, 2, 40))):    # even, uneven
        res, half = blend_residuals(gray, times)
        g = gray.astype(np.float32)
        a, b, c = g[:-2], g[1:-1], g[2:]
        w = np.clip((times[1:-1] - times[:-2]) / (times[2:] - times[:-2]), 0, 1).astype(np.float32)
        assert np.allclose(res, np.abs(b - (a + w[:, None, None] * (c - a))).mean(axis=(1, 2)),
                           rtol=0, atol=1e-3)
        assert np.array_equal(half, 0.5 * np.abs(c - a).mean(axis=(1, 2)))
