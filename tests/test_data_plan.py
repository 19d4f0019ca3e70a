"""The epoch plan alone (no decode): every window once per epoch, the rest padding, on generated
window lists with several frame sizes and lengths, several seeds and batch divisors."""
from __future__ import annotations

import numpy as np
import pytest

from curation.data.plan import cut_windows, epoch_plan, rank_share


def clips(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (48, 80), (80, 48)]
    return [{"clip_id": f"c{i:03d}", "video_id": f"v{i}", "start_s": 0.0, "end_s": float(rng.uniform(1, 9)),
             "height": sizes[i % 3][0], "width": sizes[i % 3][1]} for i in range(n)]


@pytest.mark.parametrize("divisible_by", [1, 2, 3, 6, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_window_once_per_epoch_and_padding_only_fills_the_last_batch_of_a_frame_size(seed, divisible_by):
    windows = cut_windows(clips(40 + seed, seed), (1.0, 3.0), 25.0)
    for epoch in range(2):
        plan = epoch_plan(windows, seed, epoch, batch_tokens=64 * 64 * 75 * 8, divisible_by=divisible_by)
        real, last_of_size = [], {}
        for step, batch in enumerate(plan.batches):
            pads = plan.pads.get(step, set())
            assert len(batch) % divisible_by == 0 and len(pads) < divisible_by
            assert len({(windows[i].height, windows[i].width) for i in batch}) == 1   # one frame size
            # a pad slot repeats a window no longer than the batch's real ones: no extra length padding
            longest = max(windows[i].frames for k, i in enumerate(batch) if k not in pads)
            assert all(windows[batch[k]].frames <= longest for k in pads)
            real += [i for k, i in enumerate(batch) if k not in pads]
            last_of_size[(windows[batch[0]].height, windows[batch[0]].width)] = step
        assert sorted(real) == list(range(len(windows)))          # every window exactly once
        assert set(plan.pads) <= set(last_of_size.values())       # padding: a frame size's last batch
        assert all(sorted(p) == list(range(len(plan.batches[s]) - len(p), len(plan.batches[s])))
                   for s, p in plan.pads.items())                  # at the end of it
        if divisible_by == 1:
            assert not plan.pads
        # every rank of every world size dividing the batches gets the same number of windows a step
        for world in [w for w in (1, 2, 3, 4, 6, 8) if divisible_by % w == 0]:
            assert all(len({len(rank_share(b, r, world)) for r in range(world)}) == 1 for b in plan.batches)
    again = epoch_plan(windows, seed, 1, batch_tokens=64 * 64 * 75 * 8, divisible_by=divisible_by)
    assert again.batches == plan.batches and again.pads == plan.pads   # a pure function
