"""The per-frame waste issue 15's third pass removed (docs/performance.md#threads-and-memory): the
same pixels and numbers as before, without the copies, threads and collector passes."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np

from curation.media import VideoDecoder, crop_boxes


def _padded_crops(images, boxes, size, scale, expand, pad_value):
    """crop_boxes as it was: the whole image padded (cv2.copyMakeBorder), then cut and resized."""
    import cv2
    out = np.full((len(images), size, size, images.shape[3]), pad_value, np.uint8)
    H, W = images.shape[1:3]
    for i, (im, box) in enumerate(zip(images, boxes)):
        if not np.all(np.isfinite(box)):
            continue
        cx, cy = (box[0] + box[2]) / 2 * scale, (box[1] + box[3]) / 2 * scale
        hw, hh = (box[2] - box[0]) / 2 * scale * expand, (box[3] - box[1]) / 2 * scale * expand
        x1, y1, x2, y2 = int(round(cx - hw)), int(round(cy - hh)), int(round(cx + hw)), int(round(cy + hh))
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        pad = max(0, -x1, -y1, x2 - W, y2 - H)
        src = cv2.copyMakeBorder(im, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=[pad_value] * 3)
        patch = src[y1 + pad:y2 + pad, x1 + pad:x2 + pad]
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA
                            if patch.shape[1] > size else cv2.INTER_LINEAR)
    return out


def test_crops_leaving_the_image_are_padded_as_before():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 90, 120, 3), dtype=np.uint8)
    boxes = rng.uniform(-150, 250, (60, 4))
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(1, 160, (60, 2))   # inside, across edges, all outside
    boxes[5] = np.nan
    boxes[6] = [-80, -60, -10, -5]                                # wholly above-left of the image
    for scale, expand, pad_value in ((1.0, 1.0, 0), (0.7, 1.3, 127)):
        new = crop_boxes(images, boxes, 64, scale=scale, expand=expand, pad_value=pad_value)
        old = _padded_crops(images, boxes, 64, scale, expand, pad_value)
        assert np.array_equal(new, old)
    assert (new[6] == 127).all() and (new[5] == 127).all()


def test_small_decord_batches_read_the_same_frames(media):
    d = VideoDecoder(str(media / "vr_face2.mp4"), max_side=480)
    idx = d.positions(0.0, 3.0)
    assert len(idx) > 40
    small = d._read(idx, batch=8)
    whole = VideoDecoder(str(media / "vr_face2.mp4"), max_side=480)._read(idx, batch=len(idx))
    assert small.shape == whole.shape and np.array_equal(small, whole)


def test_numpy_blas_runs_on_the_calling_thread():
    """numpy's OpenBLAS starts no threads of its own once curation is imported first (a thread per
    core busy-waiting after every call); the user's own OPENBLAS_NUM_THREADS still wins."""
    code = "import curation, numpy, os; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 2


def test_worker_set_up_freezes_the_collected_objects(tmp_path):
    from curation.store import Store
    from curation.worker import StageWorker
    from operators.probe import Probe
    Store(str(tmp_path / "s"))
    gc.unfreeze()
    try:
        StageWorker([("probe", Probe, {})], None, "videos", str(tmp_path / "s"), None, "run")
        assert gc.get_freeze_count() > 10_000   # modules, classes, the operators' set-up
    finally:
        gc.unfreeze()


def test_numpy_asks_for_no_huge_pages():
    """numpy's madvise(MADV_HUGEPAGE) of big arrays is off once curation is imported first (the
    user's own NUMPY_MADVISE_HUGEPAGE still wins)."""
    code = ("import curation, numpy; "
            "print(numpy._core.multiarray._set_madvise_hugepage(False))")   # returns the setting it replaces
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
    env["NUMPY_MADVISE_HUGEPAGE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]
