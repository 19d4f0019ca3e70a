"""Training runs: one process, or Ray Train's ``TorchTrainer`` with FSDP2 over N workers. This is the
only module of models/ that imports torch.distributed and Ray Train; the distillation stages
(models/distill/) run through :func:`launch` and :class:`Dist` too.

A run (``train(config, out, steps, store)``) writes ``out/metrics.jsonl`` (one JSON object per step:
step, loss averaged over ranks, lr, grad_norm, seconds, skipped samples, the task's own numbers) and
``out/checkpoint`` (models/checkpoint.py) every ``train.checkpoint_every`` steps and at the end. If
``out/checkpoint`` exists the run resumes from it: weights, optimizer, EMA, LR schedule, RNG states and
each rank's data-source ``state_dict``; metrics lines after the checkpoint's step are dropped, so a
killed run that is started again ends exactly where an uninterrupted one does (tested bit for bit).

Randomness: model initialisation from ``seed``; every random number of step s on rank r (noise, t,
CFG dropout, first-latent drop) from a generator seeded with (seed, s, r), so no step depends on how
many steps ran in the same process.

Multi-worker: FSDP2 (``fully_shard`` on each DiT block, then the whole model; gloo on the CPU, NCCL on
GPUs) inside Ray Train's worker group; checkpoints are gathered to full state dicts (rank 0 writes).
Ray Train's ``FailureConfig(max_failures)`` restarts a crashed worker group, which resumes from the
last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from models.checkpoint import find_checkpoint, load_part, load_state, save_checkpoint
from models.config import Config, load_config
from models.data import Batches, open_source
from models.ema import EMA

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def seed_for(seed: int, step: int, rank: int) -> int:
    """The seed of step ``step`` on rank ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


class Dist:
    """The process group as a training loop sees it (world 1: no process group, nothing sharded)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model, units) -> torch.nn.Module:
        if self.world > 1:
            from torch.distributed.fsdp import fully_shard
            for unit in units:
                fully_shard(unit)
            fully_shard(model)
        return model

    def model_state(self, model) -> dict:
        return get_model_state_dict(model, options=FULL)

    def load_model(self, model, state: dict) -> None:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def optim_state(self, model, opt) -> dict:
        return get_optimizer_state_dict(model, opt, options=FULL)

    def load_optim(self, model, opt, state: dict) -> None:
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))

    def ema_state(self, ema: EMA) -> dict:
        return {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu() for n, t in ema.shadow.items()}

    def load_ema(self, ema: EMA, state: dict, updates: int) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor
        for n, t in ema.shadow.items():
            full = state[n].to(t.device).float()
            ema.shadow[n] = (distribute_tensor(full, t.device_mesh, t.placements)
                             if isinstance(t, DTensor) else full.clone())
        ema.updates = updates

    def mean(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0]) / self.world

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @contextlib.contextmanager
    def gathered(self, *models):
        """Whole parameters inside (FSDP2 unshard / reshard), for calls that bypass a model's root
        forward (a chunk-by-chunk rollout)."""
        sharded = [m for m in models if self.world > 1 and hasattr(m, "unshard")]
        for m in sharded:
            m.unshard()
        try:
            yield
        finally:
            for m in sharded:
                m.reshard()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def lr_lambda(warmup: int, schedule: str, total: int):
    """Linear warm-up over ``warmup`` steps, then constant or a cosine decay to 0 at step ``total``
    (the run's --steps: resuming with another --steps changes the decay)."""
    import math

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / max(1, warmup))
        if schedule == "cosine" and step >= warmup:
            w *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return w
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown train.schedule {schedule!r} (constant, cosine)")
    return f


class Run:
    """One rank's training run of a task (models/tasks.py)."""

    def __init__(self, args: dict, ctx: Dist):
        from models.tasks import make_task
        self.args, self.ctx = args, ctx
        self.cfg = cfg = Config.from_dict(args["config"])
        self.out = Path(args["out"])
        torch.set_num_threads(max(1, cfg.train.threads))
        self.device = torch.device(cfg.train.device)
        self.task = make_task(cfg).to(self.device)
        torch.manual_seed(cfg.seed)
        model = self.task.build().to(self.device)
        self.model = ctx.wrap(model, self.task.shard_units(model))
        self.ema = EMA(self.model, cfg.train.ema_decay)
        t = cfg.train
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                     weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(t.warmup, t.schedule,
                                                                             int(args["steps"])))
        self.source = open_source(cfg.data, args.get("store"), cfg.seed, ctx.rank, ctx.world,
                                  t.batch_size)
        self.batches = Batches(self.source, self.task.spec, t.batch_size, warn=self.warn,
                               cache=cfg.data.cache)
        self.step = 0

    def warn(self, message: str) -> None:
        print(f"warning: rank {self.ctx.rank}: {message}", file=sys.stderr, flush=True)

    def restore(self) -> bool:
        ck = find_checkpoint(self.out / "checkpoint")
        if ck is None:
            return False
        state = load_state(ck)
        self.ctx.load_model(self.model, load_part(ck, "model"))
        self.ctx.load_optim(self.model, self.opt, load_part(ck, "optimizer"))
        self.ctx.load_ema(self.ema, load_part(ck, "ema"), state["ema_updates"])
        self.sched.load_state_dict(state["scheduler"])
        data = state["data"]
        if len(data) != self.ctx.world:
            self.warn(f"checkpoint written by {len(data)} ranks, resuming on {self.ctx.world}: the data "
                      "source's state of rank 0 is used")
        self.source.load_state_dict(data[self.ctx.rank] if len(data) == self.ctx.world else data[0])
        self.batches.skipped = state["skipped"][min(self.ctx.rank, len(state["skipped"]) - 1)]
        rngs = load_part(ck, "rng")
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == self.ctx.world else rngs[0])
        self.step = int(state["step"])
        return True

    def save(self, last: dict) -> None:
        ctx = self.ctx
        parts = {"model": ctx.model_state(self.model), "ema": ctx.ema_state(self.ema),
                 "optimizer": ctx.optim_state(self.model, self.opt)}
        data, rngs = ctx.gather(self.source.state_dict()), ctx.gather(rng_state())
        skipped = ctx.gather(self.batches.skipped)
        if ctx.main:
            parts["rng"] = rngs
            state = {"step": self.step, "config": self.cfg.to_dict(), "data": data, "skipped": skipped,
                     "scheduler": self.sched.state_dict(), "ema_updates": self.ema.updates,
                     "world": ctx.world, "task": self.cfg.task, "last": last}
            save_checkpoint(self.out / "checkpoint", parts, state)
        ctx.barrier()

    def one_step(self) -> dict:
        t0 = time.perf_counter()
        batch = self.batches.next()
        batch = move(batch, self.device)
        gen = torch.Generator().manual_seed(seed_for(self.cfg.seed, self.step + 1, self.ctx.rank))
        with autocast(self.cfg.train):
            loss, extra = self.task.loss(self.model, batch, gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        return {"step": self.step, "loss": self.ctx.mean(float(loss.detach())), "lr": self.sched.get_last_lr()[0],
                "grad_norm": float(gn), "seconds": round(time.perf_counter() - t0, 4),
                "skipped": self.batches.skipped, **extra}


def move(batch, device):
    if device.type == "cpu":
        return batch
    for k, v in vars(batch).items():
        if isinstance(v, torch.Tensor):
            setattr(batch, k, v.to(device, non_blocking=True))
    return batch


def autocast(spec):
    if spec.precision == "bf16" and spec.device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps <= ``step`` (a resumed run rewrites the steps after it)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train_loop(args: dict, ctx: Dist, on_step=None) -> dict:
    """Run (or resume) a training task to ``args['steps']`` steps on this rank."""
    return run_loop(Run(args, ctx), args, ctx, on_step)


def run_loop(run, args: dict, ctx: Dist, on_step=None) -> dict:
    """The loop every run shares (training tasks, distillation stages): resume from
    ``out/checkpoint``, step to ``args['steps']``, one metrics line per step, checkpoints every
    ``train.checkpoint_every`` steps and at the end; returns the last metrics record. ``run`` has
    ``out``, ``cfg``, ``step``, ``restore()``, ``one_step()`` and ``save(last)``."""
    resumed = run.restore()
    metrics = run.out / "metrics.jsonl"
    if ctx.main:
        run.out.mkdir(parents=True, exist_ok=True)
        trim_metrics(metrics, run.step)
    ctx.barrier()
    every, steps, last = run.cfg.train.checkpoint_every, int(args["steps"]), {}
    if on_step:
        on_step(run.step, {"resumed": resumed})
    while run.step < steps:
        last = run.one_step()
        if ctx.main:
            with metrics.open("a") as f:
                f.write(json.dumps(last) + "\n")
        if run.step % every == 0 or run.step == steps:
            run.save(last)
        if on_step:
            on_step(run.step, last)
        if args.get("fail_at_step") == run.step and not (run.out / "failed_once").exists():
            (run.out / "failed_once").touch()      # tests: a worker process dies here, once
            os._exit(1)
    return last


# ---------------------------------------------------------------- launching


def init_ray() -> None:
    import ray
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False, ignore_reinit_error=True)
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address, **kwargs) if address else ray.init(num_cpus=max(2, os.cpu_count() or 1), **kwargs)


def launch(loop, args: dict, workers: int, device: str = "cpu", threads: int = 1, max_failures: int = 0):
    """Run ``loop(args, Dist)`` in this process (workers <= 1) or on a Ray Train worker group of
    ``workers`` (FSDP2 over gloo on the CPU, NCCL on GPUs); blocks until it ends."""
    if workers <= 1:
        return loop(args, Dist())
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    init_ray()
    gpu = device == "cuda"
    trainer = TorchTrainer(
        lambda a: loop(a, _ray_dist()), train_loop_config=args,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=(
            {"GPU": 1, "CPU": threads} if gpu else {"CPU": threads})),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(storage_path=str(Path(args["out"]).resolve() / "ray"), name="train",
                             failure_config=FailureConfig(max_failures=max_failures)))
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed on the Ray worker group: {result.error}")
    return None


def _ray_dist() -> Dist:
    import ray.train
    c = ray.train.get_context()
    return Dist(c.get_world_rank(), c.get_world_size())


def train(config, out: str | Path, steps: int, store: str | None = None, workers: int | None = None,
          overrides: dict | None = None, progress: bool = False, fail_at_step: int | None = None,
          max_failures: int = 0) -> dict:
    """Train (or resume) a config to ``steps`` steps into ``out``; returns the last metrics record."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    workers = cfg.train.workers if workers is None else workers
    args = {"config": cfg.to_dict(), "out": str(out), "steps": int(steps), "store": store,
            "fail_at_step": fail_at_step}
    Path(out).mkdir(parents=True, exist_ok=True)
    with Progress(Path(out) / "metrics.jsonl", steps, enabled=progress) as bar:
        if workers <= 1:
            return train_loop(args, Dist(), on_step=bar.update)
        launch(train_loop, args, workers, cfg.train.device, cfg.train.threads, max_failures)
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


class Progress:
    """A progress bar on stderr: fed by the loop in one process, or by polling metrics.jsonl while a
    Ray worker group trains."""

    def __init__(self, metrics: Path, total: int, enabled: bool = True):
        self.metrics, self.total, self.enabled = metrics, total, enabled
        self._stop, self._thread, self._bar = threading.Event(), None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bar = Bar(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True))
            self._task = self._bar.add_task("train", total=self.total, loss="-")
            self._bar.start()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def update(self, step: int, record: dict) -> None:
        if self._bar is not None and "loss" in record:
            self._bar.update(self._task, completed=step, loss=f"{record['loss']:.4f}")

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            try:
                lines = self.metrics.read_text().splitlines()
            except OSError:
                continue
            if lines:
                self.update(*(lambda r: (r["step"], r))(json.loads(lines[-1])))

    def __exit__(self, *exc):
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
