"""Candidate clips cut from shots."""
from __future__ import annotations

import pytest

from operators.clips import Clips, split_span


def test_split_span_bounds():
    assert split_span(0, 0.5, 1.0, 10.0) == []                        # too short
    assert split_span(0, 6, 1.0, 10.0) == [(0, 6)]
    parts = split_span(0, 22.4, 1.0, 10.0)                            # three clips of 7.47 s
    assert len(parts) == 3 and all(b - a == pytest.approx(22.4 / 3) for a, b in parts)
    assert parts[0][0] == 0 and parts[-1][1] == pytest.approx(22.4)


def test_clips_from_hamilton_shots():
    shots = [{"shot_index": i, "start_s": a, "end_s": b}
             for i, (a, b) in enumerate([(0, 0.67), (0.67, 2.74), (2.74, 7.04), (7.04, 9.18)])]
    video = {"video_id": "h", "width": 640, "height": 360, "fps": 29.97}
    out = Clips(min_duration_s=1.0, max_duration_s=10.0, trim_s=0.1).process(video, shots)
    assert [c["clip_id"] for c in out] == ["h:1:0", "h:2:0", "h:3:0"]  # the 0.67 s shot gives none
    assert out[0]["start_s"] == pytest.approx(0.77) and out[0]["end_s"] == pytest.approx(2.64)
    assert all(c["duration_s"] >= 1.0 for c in out)
    assert {(c["width"], c["height"], c["fps"]) for c in out} == {(640, 360, 29.97)}
