"""The Ray Train path: a ClipStream per Train worker, with the rank and world size of the Train
context, and a TorchTrainer around a training function (CPU here; ``use_gpu`` on a cluster).

    def train_loop(config):
        stream = stream_for_worker(config["store"], **config["stream"])
        if config.get("state"): stream.load_state_dict(config["state"])
        for batch in make_loader(stream, num_workers=2): ...
            ray.train.report({...}, checkpoint=...)   # save stream.state_dict() with the model

    result = fit(train_loop, "s3://bucket/store", {"window_s": 2.0, "seed": 0, "profile": ...},
                 num_workers=8, use_gpu=True)

The stream's plan does not depend on the world size, so a job restarted on another number of workers
from a saved ``state_dict`` continues with the same global batches (tests/test_data_ray.py).
"""
from __future__ import annotations

from curation.data.stream import ClipStream


def stream_for_worker(store: str, **kw) -> ClipStream:
    """This Train worker's stream (rank = the worker's world rank)."""
    import ray.train
    ctx = ray.train.get_context()
    return ClipStream(store, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), **kw)


def fit(train_loop, store: str, stream_kwargs: dict, num_workers: int = 2, use_gpu: bool = False,
        state: dict | None = None, storage_path: str | None = None, config: dict | None = None):
    """Run ``train_loop(config)`` on ``num_workers`` Ray Train workers (TorchTrainer: torch.distributed
    is set up, gloo on CPUs, nccl on GPUs); ``config`` gets ``store``, ``stream`` and ``state``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config={**(config or {}), "store": store, "stream": stream_kwargs, "state": state},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage_path))
    return trainer.fit()
