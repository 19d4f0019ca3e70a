"""The toy DiT learns the audio conditioning, not just a falling loss: on synthetic mouth videos (a white
mouth whose height follows the speak audio's loudness, models/data.py) the mouths it generates for
held-out audio follow that audio."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.data import MouthSource, mouth_area
from models.generate import Generator


def generated_areas(checkpoint, mute=()):
    """Mouth area per generated frame and the true loudness envelope, for 4 held-out clips (another
    seed than training's), frame 0 (the reference) left out."""
    held = MouthSource(seed=12345)
    samples = [held.sample(i) for i in range(4)]
    frames = Generator(checkpoint).videos([s["speak_audio"] for s in samples],
                                          [s["listen_audio"] for s in samples],
                                          [s["references"][0] for s in samples], [s["text"] for s in samples],
                                          seed=0, mute=mute)
    area = np.concatenate([mouth_area(f)[1:] for f in frames])
    env = np.concatenate([s["envelope"][1:len(f)] for s, f in zip(samples, frames)])
    return area, env


@pytest.mark.slow
def test_generated_mouths_follow_held_out_audio(mouth_teacher):
    rows = [json.loads(x) for x in (mouth_teacher / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in rows[:20]]), np.mean([r["loss"] for r in rows[-20:]])
    assert last < 0.1 * first, (first, last)
    area, env = generated_areas(mouth_teacher / "checkpoint")
    r = np.corrcoef(area, env)[0, 1]
    print(f"mouth area vs held-out loudness: r = {r:.3f} over {len(area)} frames; loss {first:.3f} -> {last:.3f}")
    assert r > 0.9
    # with the speak branch muted the mouth no longer follows the audio
    area_muted, _ = generated_areas(mouth_teacher / "checkpoint", mute=("speak",))
    assert abs(np.corrcoef(area_muted, env)[0, 1]) < 0.5
