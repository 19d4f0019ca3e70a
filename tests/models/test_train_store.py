"""Training on windows of a store built from the shared clips (the session's conversation store:
vr_face1, lp_d3, lp_d0, dj_video4's tail) through curation.data.ClipStream."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import load_state
from models.config import load_config
from models.train import train

ROOT = Path(__file__).resolve().parents[2]


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loss_falls_on_store_windows_and_the_same_seed_gives_the_same_losses_bit_for_bit(
        conversation_store, tmp_path):
    store = conversation_store[0].uri
    cfg = load_config(ROOT / "models" / "configs" / "toy.yaml", {"train.checkpoint_every": 10})
    train(cfg, tmp_path / "a", 30, store=store)
    a = losses(tmp_path / "a")
    assert np.mean(a[-5:]) < 0.8 * np.mean(a[:5]), a
    train(cfg, tmp_path / "b", 10, store=store)           # the same seed, stopped at 10 ...
    train(cfg, tmp_path / "b", 30, store=store)           # ... and resumed: the ClipStream state too
    assert losses(tmp_path / "b") == a
    state = load_state(tmp_path / "b" / "checkpoint")
    assert state["data"][0]["step"] > 0 and state["data"] == load_state(tmp_path / "a" / "checkpoint")["data"]
    # the store's Whisper features (the audio_features step, tiny.en: 5 groups x 384) as the audio input
    whisper = load_config(ROOT / "models" / "configs" / "toy.yaml", {"audio": {"features": "whisper"}})
    last = train(whisper, tmp_path / "w", 3, store=store)
    assert last["step"] == 3 and np.isfinite(last["loss"])
    assert load_state(tmp_path / "w" / "checkpoint")["config"]["audio"]["features"] == "whisper"
