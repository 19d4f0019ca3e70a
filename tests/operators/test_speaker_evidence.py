"""The active-speaker evidence of the labels, on synthetic rows whose truth is set by hand: the
voice-ownership gate of speaker_states (a face whose score does not depend on the voice's timing is
not the speaker, however high its logit), rerank's one-speaker-at-a-time rule by sync gain, and the
sync step's reasons for giving no offset."""
from __future__ import annotations

import numpy as np
import pytest

from operators.nets.syncnet import chance_sd
from operators.rerank import Rerank
from operators.speaker_states import SpeakerStates, window_mean
from operators.sync import Sync

N = 100   # 4 s at 25 fps


def _row(logit: float, gain, clip="v:0:0:t0", track="v:0:t0"):
    times = (np.arange(N) * 0.04).tolist()
    gain = np.broadcast_to(np.asarray(gain, float), (N,))
    return {"clip_id": clip, "track_id": track, "shot_index": 0, "clip_index": 0, "frame_times": times,
            "asd_logits": [logit] * N, "asd_prob": [0.9] * N, "asd_sync_gain": gain.tolist()}


def _video(tracks):
    rng = np.random.default_rng(0)
    rows = [{"track_id": t, "frame_times_s": (np.arange(N) * 0.04).tolist(),
             "mouth_open": (0.05 + 0.2 * rng.random(N)).tolist()} for t in tracks]   # lips moving
    return {"voice_segments": [{"start_s": 0.0, "end_s": 4.0}], "tables": {"tracks": rows}}


def test_a_talking_face_whose_score_ignores_the_voice_is_not_the_speaker():
    video = _video(["v:0:t0"])
    owner = SpeakerStates().process(video, [_row(2.0, 1.0)])[0]
    dubbed = SpeakerStates().process(video, [_row(2.0, 0.0)])[0]    # same logit, no sync gain
    assert owner["frame_states_raw"].count("speak") >= N - 2     # (the first frame is half speech)
    assert dubbed["frame_states_raw"].count("speak") == 0
    assert dubbed["frame_states_raw"].count("discard") > N / 2          # lips move, not with the voice
    # rows without a sync gain (TalkSet weights, older runs) keep the network's own probability
    old = {**_row(2.0, 0.0), "asd_sync_gain": None}
    assert SpeakerStates().process(video, [old])[0]["frame_states_raw"].count("speak") >= N - 2


def test_the_face_that_follows_the_voice_keeps_speak():
    video = _video(["v:0:t0", "v:0:t1"])
    a = _row(2.0, 1.2, "v:0:0:t0", "v:0:t0")
    b = _row(2.5, 0.5, "v:0:0:t1", "v:0:t1")    # higher logit, weaker sync gain: talks, but not this voice
    for r in (a, b):
        r.update(SpeakerStates().process(video, [r])[0])
    ra, rb = Rerank().process(video, [a, b])
    assert ra["frame_states"].count("speak") >= N - 2 and rb["frame_states"].count("speak") == 0
    # both follow the voice as well: overlapping speech, discarded
    c = _row(2.0, 1.2, "v:0:0:t1", "v:0:t1")
    c.update(SpeakerStates().process(video, [c])[0])
    ra, rc = Rerank().process(video, [a, c])
    assert set(ra["frame_discard_reasons"]) == {"overlap"} == set(rc["frame_discard_reasons"])


def test_window_mean_ignores_gaps_and_short_rows():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    np.testing.assert_allclose(window_mean(x, 3), [1.5, 1.5, 3.0, 4.5, 4.5])
    np.testing.assert_allclose(window_mean(x, 25), [3.0] * 5)       # window longer than the row


def test_chance_sd_tells_a_real_offset_from_noise():
    rng = np.random.default_rng(0)
    sig = rng.normal(size=150)
    lagged = np.roll(sig, 3) + 0.3 * rng.normal(size=150)

    def curve(a, v=sig):
        return np.array([-np.corrcoef(v[20:-20], np.roll(a, -k)[20:-20])[0, 1] for k in range(-15, 16)])
    assert chance_sd(curve, lagged) > 4
    noise = [chance_sd(curve, rng.normal(size=150)) for _ in range(20)]
    assert np.mean(np.array(noise) > 2) <= 0.1, noise                   # chance rarely looks like sync
    assert np.isnan(chance_sd(curve, lagged[:80]))                   # too short for 6 searches


@pytest.mark.parametrize("offset, chance, speech, expected", [
    (2, 3.0, 4.0, None),
    (2, 3.0, 1.0, "too little speech with the face in view (1.0 s < 2 s)"),
    (15, 3.0, 4.0, "best offset at the edge of the search range (+15 of +-15 frames)"),
    (-14, 3.0, 4.0, "best offset at the edge of the search range (-14 of +-15 frames)"),
    (2, 1.2, 4.0, "no clear best offset (+2 frames stands 1.2 sd above chance, needs 2)"),
])
def test_sync_gives_no_offset_with_a_reason(offset, chance, speech, expected):
    got, reason = Sync()._judge(offset, chance, speech, 15)
    assert reason == expected and (got is None) == (expected is not None)
