"""The Ray Train path: a TorchTrainer's workers each stream their share; put together, the global
batches are those of one local stream, and a restart on another world size from a state continues
them."""
from __future__ import annotations

import json
import sys

import pytest

import synthetic as syn

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _loop(config):
    import hashlib
    import os

    import ray.train

    from curation.data.ray_train import stream_for_worker
    stream = stream_for_worker(config["store"], **config["stream"])
    if config.get("state"):
        stream.load_state_dict(config["state"])
    out = []
    for batch in stream.iter_steps():
        h = hashlib.sha256(b"".join(s["frames"].tobytes() + s["audio"].tobytes() for s in batch))
        out.append([batch[0]["step"], [(s["clip_id"], s["start_s"]) for s in batch], h.hexdigest()])
    path = os.path.join(config["out"], f"rank{stream.rank}_of{stream.world_size}.json")
    with open(path, "w") as f:
        json.dump(out, f)
    ray.train.report({"steps": len(out)})


def test_torch_trainer_workers_share_the_global_batches(tmp_path, ray_session):
    from ray import cloudpickle

    from curation.data import ClipStream
    from curation.data.ray_train import fit
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Train workers cannot import tests/
    uri, _ = syn.build_store(tmp_path / "s", [("a", "ok", 100), ("b", "ok", 75), ("c", "ok", 60)])
    kw = {"window_s": 1.0, "seed": 1, "epochs": 1, "batch_windows": 2, "divisible_by": 2}
    local = [[(s["clip_id"], s["start_s"]) for s in b] for b in ClipStream(uri, **kw).iter_steps()]
    out = tmp_path / "out"
    out.mkdir()
    fit(_loop, uri, kw, num_workers=2, config={"out": str(out)}, storage_path=str(tmp_path / "ray"))
    ranks = [json.loads((out / f"rank{r}_of2.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(local)
    merged = [[tuple(x) for x in ranks[0][i][1] + ranks[1][i][1]] for i in range(len(local))]
    assert merged == [[tuple(x) for x in b] for b in local]
