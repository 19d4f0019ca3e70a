"""curation/tracks.py: one nearest-frame rule, one meaning of "the face at time t"."""
from __future__ import annotations

import numpy as np

from curation import tracks


def test_nearest_takes_the_earlier_sample_on_a_tie_and_none_beyond_the_gap():
    src = [0.0, 0.04, 0.08, 0.2]
    j = tracks.nearest(src, [0.0, 0.02, 0.03, 0.06, 0.1, 0.14, 0.19, 0.3, -0.01])
    #                     exact  tie->0  near 1  tie->1  near 2  gap   near 3 gap   before
    assert j.tolist() == [0, 0, 1, 1, 2, -1, 3, -1, 0]
    assert tracks.nearest(src, [0.5], max_gap_s=np.inf).tolist() == [3]
    assert tracks.nearest([], [0.1]).tolist() == [-1]
    assert tracks.nearest(src, 0.04).tolist() == [1]          # a scalar time


def test_the_face_at_time_t_skips_frames_without_a_face():
    track = {"track_id": "v:0:t0", "frame_times_s": [0.0, 0.04, 0.08, 0.12],
             "face_boxes": [[0, 0, 10, 10], None, [2, 2, 12, 12], [np.nan] * 4]}
    boxes = tracks.face_boxes_at(track, [0.0, 0.04, 0.05, 0.12, 0.2], max_gap_s=0.05)
    assert boxes[0].tolist() == [0, 0, 10, 10]
    assert boxes[1].tolist() == [0, 0, 10, 10]     # 0.04 has no face: the tie goes to the earlier
    assert boxes[2].tolist() == [2, 2, 12, 12]     # 0.05: the nearest frame with a face is 0.08
    assert boxes[3].tolist() == [2, 2, 12, 12]     # 0.12 has no face, 0.08 is within the gap
    assert np.isnan(boxes[4]).all()                # 0.2: nothing within 0.05 s
    assert np.isnan(tracks.face_boxes_at(None, [0.0])).all()


def test_values_at_uses_the_nearest_sample_with_a_value():
    v = tracks.values_at([0.0, 0.04, 0.05, 0.1], [0.0, 0.04, 0.08], [1.0, None, 3.0], max_gap_s=0.045)
    # 0.04 has no value: 0.0 and 0.08 are as near (the earlier wins); 0.05 is nearer 0.08
    assert v.tolist() == [1.0, 1.0, 3.0, 3.0]
    assert np.isnan(tracks.values_at([0.5], [0.0], [1.0])[0])


def test_track_of_finds_the_clip_track():
    video = {"tables": {"tracks": [{"track_id": "a"}, {"track_id": "b"}]}}
    assert tracks.track_of(video, {"track_id": "b"}) == {"track_id": "b"}
    assert tracks.track_of(video, {"track_id": "c"}) is None


def test_has_face_and_span():
    track = {"face_boxes": [[0, 0, 1, 1], None, [np.nan, 0, 1, 1], [1, 1, 2]]}
    assert tracks.has_face(track).tolist() == [True, False, False, False]
    assert tracks.in_span([0.0, 0.96, 1.0, 1.04], 0.96, 1.04).tolist() == [False, True, True, False]
