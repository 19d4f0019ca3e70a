"""The face crops of a track are made once per decoded span for the fused asd + sync stage."""
from __future__ import annotations

import numpy as np

import operators.nets.asd as asd_net
from curation.media import Frames
from operators.asd import track_crops


def test_crops_made_once_per_span_and_boxes(monkeypatch):
    calls = []
    real = asd_net.asd_crops
    monkeypatch.setattr(asd_net, "asd_crops", lambda images, boxes: calls.append(len(images)) or real(images, boxes))
    rng = np.random.default_rng(0)
    frames = Frames(images=rng.integers(0, 256, (20, 64, 80, 3)).astype(np.uint8),
                    times=np.arange(20) / 25.0, fps=25.0)
    boxes = np.tile([10.0, 10.0, 40.0, 40.0], (15, 1))
    first = track_crops(frames, slice(2, 17), boxes)          # asd
    again = track_crops(frames, slice(2, 17), boxes.copy())   # sync, same span and boxes: reused
    assert again is first and calls == [15] and first.shape == (15, 112, 112)
    np.testing.assert_array_equal(first, real(frames.images[2:17], boxes))
    other = track_crops(frames, slice(2, 17), boxes + 5)      # another track's boxes: its own crops
    assert other is not first and calls == [15, 15]
    fresh = Frames(images=frames.images, times=frames.times, fps=25.0)   # another span decoded: anew
    track_crops(fresh, slice(2, 17), boxes)
    assert calls == [15, 15, 15]
