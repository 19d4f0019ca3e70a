"""Quality operator on real clips and on copies of vr_face1 changed in one known way with ffmpeg
(blurred, darkened, letterboxed, colour-cast, subtitled, frozen) or in the decoded frames (a flash,
pillarbox bars, text inside a bar)."""
from __future__ import annotations

import math
import subprocess

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curation.media import Frames
from operators.quality import Quality
from conftest import frames_of, which_ffmpeg

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SECONDS = 4.0  # the copies keep the first 4 s of vr_face1 (8 samples at 2 fps)
ENCODE = ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p"]


def _subtitle(text: str, y: str) -> str:
    return (f"drawtext=fontfile={FONT}:text='{text}':fontcolor=white:fontsize=h/20:borderw=2:"
            f"bordercolor=black:x=(w-text_w)/2:y={y}")


FILTERS = {
    "blurred": "boxblur=10",
    "dark": "eq=brightness=-0.5",
    "letterbox": "pad=iw:ih/0.7:0:(oh-ih)/2:black",  # bars of 15 % of the new height, top and bottom
    "cast": "colorbalance=rs=0.5:rm=0.5:rh=0.5",    # push red up
    "subtitled": _subtitle("So this is what I was saying yesterday", "h*0.82") + ","
                 + _subtitle("about the new project at work", "h*0.89"),
}


@pytest.fixture(scope="module")
def copies(tmp_path_factory, media) -> dict:
    """vr_face1 and its changed copies, each as the (video, row, frames) a run would pass."""
    ffmpeg = which_ffmpeg()
    d = tmp_path_factory.mktemp("quality")
    src = media / "vr_face1.mp4"
    paths = {"original": src}
    for name, vf in FILTERS.items():
        out = d / f"{name}.mp4"
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-t", str(SECONDS), "-i", str(src),
                        "-vf", vf, *ENCODE, str(out)], check=True)
        paths[name] = out
    # a still image shown as video: one frame of vr_face1 looped for 3 s
    png = d / "frame.png"
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-ss", "2", "-i", str(src), "-frames:v", "1",
                    str(png)], check=True)
    paths["still"] = d / "still.mp4"
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-loop", "1", "-framerate", "25", "-i",
                    str(png), "-t", "3", *ENCODE, str(paths["still"])], check=True)
    return {name: clip(path, 0.0, SECONDS) for name, path in paths.items()}


def clip(path, start_s: float = 0.0, end_s: float = 1e9):
    frames = frames_of(path, start_s, end_s, fps=2.0).sample(2.0, 480)
    h, w = frames.images.shape[1:3]
    video = {"video_id": path.stem, "width": w, "height": h, "fps": frames.fps,
             "duration_s": float(frames.times[-1]) + 0.5}
    row = {"clip_id": f"{path.stem}:0:0", "start_s": start_s, "end_s": end_s}
    return video, row, frames


def score(video, row, frames) -> dict:
    return Quality().process_row(video, row, frames)


@pytest.fixture(scope="module")
def scores(copies) -> dict:
    return {name: score(*args) for name, args in copies.items()}


def with_images(frames: Frames, images: np.ndarray) -> Frames:
    return Frames(images=np.ascontiguousarray(images), times=frames.times, fps=frames.fps,
                  indices=frames.indices)


# ---- the contract ---------------------------------------------------------------------------------
def test_declares_a_clip_frame_annotator():
    assert Quality.name == "quality"
    assert Quality.input_table == Quality.output_table == "clips"
    assert Quality.frames.fps == 2.0 and Quality.frames.max_side == 480
    assert isinstance(Quality.writes, pa.Schema)
    Quality(dark_luma=40.0)  # params are settable by name


def test_returns_exactly_the_declared_columns_and_builds_a_table(scores, copies):
    d = scores["original"]
    assert list(d) == Quality.writes.names
    table = pa.Table.from_pylist([d], schema=Quality.writes)
    assert table.num_rows == 1
    n = len(copies["original"][2])
    assert len(d["quality_frame_times_s"]) == len(d["sharpness_per_frame"]) == n
    assert d["quality_frame_times_s"] == pytest.approx(list(copies["original"][2].times), abs=1e-3)
    for k, v in d.items():
        assert v is not None, k
        assert not (isinstance(v, float) and not math.isfinite(v)), k


# ---- sharpness --------------------------------------------------------------------------------------
def test_blurred_copy_scores_much_lower_blur(scores):
    orig, blurred = scores["original"]["sharpness"], scores["blurred"]["sharpness"]
    assert blurred < orig / 3, (orig, blurred)
    assert max(scores["blurred"]["sharpness_per_frame"]) < min(scores["original"]["sharpness_per_frame"])


def test_blur_is_measured_at_a_reference_scale(media):
    # the same clip decoded at 700 px (native) and at 480 px: similar scores at the 360 px reference
    big = score(*clip_at(media / "vr_face1.mp4", 720))["sharpness"]
    small = score(*clip_at(media / "vr_face1.mp4", 480))["sharpness"]
    assert abs(big - small) / big < 0.2, (big, small)


def clip_at(path, max_side: int):
    video, row, _ = clip(path, 0.0, SECONDS)
    return video, row, frames_of(path, 0.0, SECONDS, fps=2.0, max_side=max_side)


def test_burned_in_text_does_not_count_as_sharpness(scores):
    # crisp subtitle outlines would otherwise multiply the Laplacian variance many times over
    orig, subtitled = scores["original"]["sharpness"], scores["subtitled"]["sharpness"]
    assert abs(subtitled - orig) / orig < 0.3, (orig, subtitled)


# ---- exposure ---------------------------------------------------------------------------------------
def test_darkened_copy_is_underexposed(scores):
    orig, dark = scores["original"], scores["dark"]
    assert orig["underexposed_ratio"] == 0.0 and dark["underexposed_ratio"] == 1.0
    assert dark["brightness_mean"] < orig["brightness_mean"] / 3
    assert dark["black_pixel_ratio"] > orig["black_pixel_ratio"] + 0.3
    assert orig["overexposed_ratio"] == dark["overexposed_ratio"] == 0.0
    # the clipped-black suit at the bottom is picture, not a letterbox bar (no straight edge)
    assert all(dark[f"border_{s}"] < 0.02 for s in ("top", "bottom", "left", "right")), dark


def test_brightened_frames_are_overexposed(copies):
    video, row, frames = copies["original"]
    bright = with_images(frames, np.clip(frames.images.astype(np.int16) + 120, 0, 255).astype(np.uint8))
    d = score(video, row, bright)
    assert d["overexposed_ratio"] == 1.0 and d["white_pixel_ratio"] > 0.3
    assert score(*copies["original"])["white_pixel_ratio"] < 0.01


def test_dark_stage_is_dark_but_has_no_bars(media):
    d = score(*clip(media / "fr_short_hamilton_clip.mp4"))
    assert d["underexposed_ratio"] > 0.5 and d["brightness_mean"] < 50
    assert all(d[f"border_{s}"] < 0.02 for s in ("top", "bottom", "left", "right")), d


# ---- bars -------------------------------------------------------------------------------------------
def test_letterboxed_copy_has_top_and_bottom_bars(scores):
    orig, boxed = scores["original"], scores["letterbox"]
    assert boxed["border_top"] == pytest.approx(0.15, abs=0.03)
    assert boxed["border_bottom"] == pytest.approx(0.15, abs=0.03)
    assert boxed["border_left"] < 0.01 and boxed["border_right"] < 0.01
    assert all(orig[f"border_{s}"] < 0.01 for s in ("top", "bottom", "left", "right"))
    # the picture is measured inside the bars: same brightness, no black pixels from the bars
    assert boxed["brightness_mean"] == pytest.approx(orig["brightness_mean"], abs=3)
    assert boxed["black_pixel_ratio"] < 0.01


def test_pillarboxed_frames_have_left_and_right_bars(copies):
    video, row, frames = copies["original"]
    pad = frames.images.shape[2] // 4  # 1/6 of the new width on each side
    d = score(video, row, with_images(frames, np.pad(frames.images, ((0, 0), (0, 0), (pad, pad), (0, 0)))))
    assert d["border_left"] == pytest.approx(1 / 6, abs=0.02)
    assert d["border_right"] == pytest.approx(1 / 6, abs=0.02)
    assert d["border_top"] < 0.01 and d["border_bottom"] < 0.01


def test_real_clip_with_a_bottom_bar(media):
    # lp_d0 has a black strip along its bottom edge (about 5 % of the height)
    d = score(*clip(media / "lp_d0.mp4"))
    assert 0.03 < d["border_bottom"] < 0.08, d["border_bottom"]
    assert d["border_top"] < 0.01


def test_subtitles_inside_a_bar_keep_the_bar_and_count_as_text(copies, scores):
    video, row, frames = copies["letterbox"]
    images = frames.images.copy()
    h = images.shape[1]
    for im in images[::2]:  # a subtitle in the bottom bar on every other sample
        cv2.putText(im, "subtitle in the black bar", (20, int(h * 0.95)), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2)
    d = score(video, row, with_images(frames, images))
    assert d["border_bottom"] == pytest.approx(0.15, abs=0.03)
    assert d["text_coverage"] > 0.005 and scores["letterbox"]["text_coverage"] == 0.0


def test_black_frames_have_no_bars_to_measure(copies):
    video, row, frames = copies["original"]
    d = score(video, row, with_images(frames, np.zeros_like(frames.images)))
    assert d["black_pixel_ratio"] == 1.0 and d["brightness_mean"] == 0.0
    assert all(d[f"border_{s}"] is None for s in ("top", "bottom", "left", "right"))
    assert d["cast_hue"] is None and d["colour_cast"] == 0.0
    pa.Table.from_pylist([d], schema=Quality.writes)


# ---- text -------------------------------------------------------------------------------------------
def test_subtitled_copy_has_text(scores):
    orig, sub = scores["original"], scores["subtitled"]
    assert orig["text_coverage"] < 0.01 and orig["text_boxes_max"] == 0
    assert sub["text_coverage"] > 0.05, sub["text_coverage"]  # two lines of about 0.07 each
    assert sub["text_boxes_max"] >= 2


def test_real_clips_with_and_without_text(media):
    # dj_video1 (a cartoon) has a logo and burned-in Chinese subtitles; the talking heads have none
    assert score(*clip(media / "dj_video1.mp4", 0, 6))["text_coverage"] > 0.02
    for name in ("vr_face2.mp4", "vr_face3.mp4"):
        d = score(*clip(media / name))
        assert d["text_coverage"] < 0.01, (name, d["text_coverage"])


# ---- colour -----------------------------------------------------------------------------------------
def test_colour_cast_copy(scores):
    orig, cast = scores["original"], scores["cast"]
    assert cast["colour_cast"] > orig["colour_cast"] + 15, (orig["colour_cast"], cast["colour_cast"])
    # the cast is red: hue within 60 degrees of Lab's +a axis
    assert min(cast["cast_hue"], 360 - cast["cast_hue"]) < 60, cast["cast_hue"]


# ---- time -------------------------------------------------------------------------------------------
def test_still_image_video(scores):
    orig, still = scores["original"], scores["still"]
    assert still["still_score"] > 0.99 and still["frame_diff_mean"] < 0.3
    assert orig["still_score"] < still["still_score"] - 0.03
    assert orig["frame_diff_mean"] > 1.0


def test_flash_counts_a_spike_but_not_a_cut(copies):
    video, row, frames = copies["original"]
    assert score(video, row, frames)["flash_count"] == 0
    flash = frames.images.astype(np.int16)
    flash[3] += 100  # one sample much brighter, the next one back to normal
    assert score(video, row, with_images(frames, np.clip(flash, 0, 255).astype(np.uint8)))["flash_count"] == 1
    cut = frames.images.astype(np.int16)
    cut[3:] += 100  # brighter from sample 3 on: a cut, not a flash
    assert score(video, row, with_images(frames, np.clip(cut, 0, 255).astype(np.uint8)))["flash_count"] == 0


# ---- edge cases -------------------------------------------------------------------------------------
def test_single_frame(copies):
    video, row, frames = copies["original"]
    one = Frames(images=frames.images[:1], times=frames.times[:1], fps=frames.fps)
    d = score(video, row, one)
    assert d["still_score"] is None and d["frame_diff_mean"] is None
    assert d["sharpness"] > 0 and len(d["sharpness_per_frame"]) == 1
    assert d["flash_count"] == 0
    for k, v in d.items():
        assert not (isinstance(v, float) and not math.isfinite(v)), k
    pa.Table.from_pylist([d], schema=Quality.writes)


def test_tiny_frames(copies):
    video, row, frames = copies["original"]
    tiny = np.stack([cv2.resize(im, (6, 4), interpolation=cv2.INTER_AREA) for im in frames.images])
    d = score(video, row, with_images(frames, tiny))
    for k, v in d.items():
        assert v is not None, k
        assert not (isinstance(v, float) and not math.isfinite(v)), k
    assert d["brightness_mean"] == pytest.approx(score(*copies["original"])["brightness_mean"], abs=5)
    pa.Table.from_pylist([d], schema=Quality.writes)
