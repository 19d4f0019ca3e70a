"""The learned-sync-head experiment of bench/sync_head_cv.py (not shipped: docs/av-labels.md) is able
to learn sync when the audio-visual relation is shared across clips, and says it cannot tell when the
audio is another clip's: its negative result on the shared clips is about the data (six speakers),
not a broken training or scoring loop."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sync_head_cv  # noqa: E402  (bench/ is no package)


@pytest.fixture
def one_thread():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_head_recovers_shifts_when_the_relation_is_shared_and_refuses_foreign_audio(one_thread):
    shifts = (-10, 0, 7)
    feats, groups = sync_head_cv.synthetic_clips(n_clips=3, frames=150)
    cfg = sync_head_cv.Config("x:1:4")
    rows = sync_head_cv.loco(feats, groups, cfg, list(feats), shifts)   # each clip scored without it
    assert [e for cells in rows.values() for e, _ in cells] == [0] * 9, rows
    assert min(sd for cells in rows.values() for _, sd in cells) > 5, rows
    head, norm = sync_head_cv.train({k: feats[k] for k in ("c0", "c1")}, cfg)
    dubbed = {**feats["c2"], "a_x": feats["c0"]["a_x"]}                   # c0's audio under c2's face
    cells = sync_head_cv.score(head, norm, dubbed, cfg, shifts)
    assert all(e is None for e, _ in cells), cells
