"""A distillation stage as a run (``curation distill --stage ode|dmd-off|dmd-on|refiner``): the same loop,
checkpoints, metrics and launch (one process or Ray Train + FSDP2) as training (models/train.py).

Models: the teacher (the flow-matching checkpoint's EMA weights, frozen: the real score and the ODE
teacher), the student (initialised from the teacher for ``ode``, else from ``--init``: the previous
stage's checkpoint), the fake score (a trainable copy of the teacher, DMD stages), and for the
refiner the frozen backbone (``--init``: the on-policy DMD checkpoint) whose rollouts it refines.
A checkpoint holds the student, its EMA and optimizer, the fake score and its optimizer, the RNG
states and the step: a killed DMD stage resumes exactly.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from models.avatar import Avatar
from models.checkpoint import find_checkpoint, load_part, load_state, load_weights, save_checkpoint
from models.config import Config
from models.data import Batches, open_source
from models.distill.causal import CausalStudent
from models.distill.pool import build_pool, load_or_build, pick
from models.distill.spec import STAGES, distill_spec
from models.distill.stages import Scores, chunk_times, masked_mse, ode_loss, renoise, student_x0
from models.distill.stream import Branches, fewstep_chunk, rollout
from models.ema import EMA
from models.tasks import FlowTask
from models.train import Dist, rng_state, seed_for, set_rng_state


def frozen(avatar: Avatar) -> Avatar:
    return avatar.eval().requires_grad_(False)


class DistillRun:
    def __init__(self, args: dict, ctx: Dist):
        self.args, self.ctx, self.stage = args, ctx, args["stage"]
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r} ({', '.join(STAGES)})")
        self.cfg = cfg = Config.from_dict(args["config"])
        self.spec = distill_spec(cfg.distill)
        self.out = Path(args["out"])
        torch.set_num_threads(max(1, cfg.train.threads))
        self.task = FlowTask(cfg)
        self.teacher = frozen(self.load(args["teacher"], "teacher"))
        init = args.get("init")
        if self.stage != "ode" and not init:
            raise ValueError(f"stage {self.stage} starts from the previous stage's checkpoint: give --init")
        torch.manual_seed(cfg.seed)
        student = self.load(init, "init") if init else self.load(args["teacher"], "teacher")
        self.student = ctx.wrap(student.train(), list(student.dit.blocks))
        self.backbone = frozen(self.load(init, "init")) if self.stage == "refiner" else None
        self.fake = None
        if self.stage != "ode":
            fake = self.load(args["teacher"], "teacher").train()
            self.fake = ctx.wrap(fake, list(fake.dit.blocks))
            self.fake_opt = torch.optim.AdamW(self.fake.parameters(), lr=self.spec.fake_lr, betas=(0.0, 0.99))
        self.ema = EMA(self.student, self.spec.ema_decay)
        betas = (0.0, 0.99) if self.stage != "ode" else (0.9, 0.99)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=self.spec.lr, betas=betas)
        self.scores = Scores(self.teacher, self.fake, self.spec)
        self.causal = self.spec.causal_spec()
        self.pool = self.trajectory_pool(init)
        self.step = 0

    def load(self, checkpoint: str, what: str) -> Avatar:
        state = load_state(checkpoint)
        if Config.from_dict(state["config"]).dit_config(self.task.vae) != self.task.dit_cfg:
            raise ValueError(f"the {what} checkpoint {checkpoint} has another model config than this one")
        avatar = Avatar(self.task.dit_cfg, self.cfg.text)
        avatar.load_state_dict(load_weights(checkpoint, "ema"))
        return avatar

    def trajectory_pool(self, init: str | None) -> dict:
        """This run's trajectories.pt, else the one an earlier stage of the chain (--init, its
        --init, ...) built, else a new one."""
        here = self.out / "trajectories.pt"
        earlier = find_pool(init)
        if not here.exists() and earlier is not None:
            return torch.load(earlier, map_location="cpu", weights_only=False)
        self.out.mkdir(parents=True, exist_ok=True)

        def make():
            source = open_source(self.cfg.data, self.args.get("store"), self.cfg.seed, 0, 1,
                                 self.cfg.train.batch_size)
            batches = Batches(source, self.task.spec, self.cfg.train.batch_size, warn=self.warn)
            return build_pool(self.teacher, self.task.vae, batches, self.spec.trajectories, self.spec,
                              self.cfg.seed)
        return load_or_build(here, make)

    def warn(self, message: str) -> None:
        print(f"warning: rank {self.ctx.rank}: {message}", file=sys.stderr, flush=True)

    # ---- checkpoints

    def save(self, last: dict) -> None:
        ctx = self.ctx
        parts = {"model": ctx.model_state(self.student), "ema": ctx.ema_state(self.ema),
                 "optimizer": ctx.optim_state(self.student, self.opt)}
        if self.fake is not None:
            parts.update(fake=ctx.model_state(self.fake), fake_optimizer=ctx.optim_state(self.fake, self.fake_opt))
        rngs = ctx.gather(rng_state())
        if ctx.main:
            parts["rng"] = rngs
            state = {"step": self.step, "config": self.cfg.to_dict(), "task": "flow", "stage": self.stage,
                     "teacher": self.args["teacher"], "init": self.args.get("init"), "world": ctx.world,
                     "ema_updates": self.ema.updates, "last": last, "data": []}
            save_checkpoint(self.out / "checkpoint", parts, state)
        ctx.barrier()

    def restore(self) -> bool:
        ck = find_checkpoint(self.out / "checkpoint")
        if ck is None:
            return False
        state = load_state(ck)
        self.ctx.load_model(self.student, load_part(ck, "model"))
        self.ctx.load_optim(self.student, self.opt, load_part(ck, "optimizer"))
        self.ctx.load_ema(self.ema, load_part(ck, "ema"), state["ema_updates"])
        if self.fake is not None:
            self.ctx.load_model(self.fake, load_part(ck, "fake"))
            self.ctx.load_optim(self.fake, self.fake_opt, load_part(ck, "fake_optimizer"))
        rngs = load_part(ck, "rng")
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == self.ctx.world else rngs[0])
        self.step = int(state["step"])
        return True

    # ---- steps

    def one_step(self) -> dict:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed_for(self.cfg.seed, self.step + 1, self.ctx.rank))
        idx = torch.randint(len(self.pool["texts"]), (self.cfg.train.batch_size,), generator=gen)
        p = pick(self.pool, idx)
        rec = self.ode_step(p, gen) if self.stage == "ode" else self.dmd_step(p, gen)
        self.ema.update(self.student)
        self.step += 1
        return {"step": self.step, **{k: self.ctx.mean(v) if k == "loss" else v for k, v in rec.items()},
                "seconds": round(time.perf_counter() - t0, 4)}

    def update(self, opt, model, loss) -> float:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
        opt.step()
        return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)

    def ode_step(self, p: dict, gen) -> dict:
        loss, _ = ode_loss(self.student, p, self.spec, gen)
        gn = self.update(self.opt, self.student, loss)
        return {"loss": float(loss.detach()), "grad_norm": gn}

    def generator_sample(self, p: dict, gen):
        """(x0 of the student with gradient, the teacher's clean target or None) for this stage."""
        b, _, t_lat = p["shape"][:3]
        if self.stage == "dmd-off":
            t = chunk_times(b, t_lat, self.spec, list(self.spec.steps), gen)
            x_t = renoise(p["x"][0.0], t, gen)
            return student_x0(self.student, x_t, t, p, self.causal), p["x"][0.0], t
        model = self.backbone if self.stage == "refiner" else self.student
        with self.ctx.gathered(model):
            x_bar = self.own_rollout(model, p, gen)
        if self.stage == "dmd-on":
            t = chunk_times(b, t_lat, self.spec, list(self.spec.steps), gen)
            return student_x0(self.student, renoise(x_bar, t, gen), t, p, self.causal), None, t
        t = torch.full((b, t_lat), float(self.spec.refiner_t))
        t[:, 0] = 0.0
        return student_x0(self.student, renoise(x_bar, t, gen), t, p, self.causal), p["x"][0.0], t

    @torch.no_grad()
    def own_rollout(self, model: Avatar, p: dict, gen):
        student = CausalStudent(model, self.causal)
        refs = student.references(p["ref_lat"], p["ref_types"], p["ref_subs"], p["ref_valid"]) \
            if p["ref_lat"].shape[1] else None
        cond = model.conditions(p["texts"], p["speak"], p["listen"])
        branches = Branches(student, [cond], [1.0], refs, p["shape"][0])
        fn = lambda x, c, s: (*fewstep_chunk(branches, x, c, s, list(self.spec.steps), gen, self.spec.history), None)
        x0, _ = rollout(branches, p["shape"], gen, fn, first=p["first"])
        return x0

    def dmd_step(self, p: dict, gen) -> dict:
        x0_g, target, t = self.generator_sample(p, gen)
        fake_losses = []
        for _ in range(self.spec.fake_ratio):
            fl = self.scores.fake_loss(x0_g, p, gen)
            self.update(self.fake_opt, self.fake, fl)
            fake_losses.append(float(fl.detach()))
        with self.ctx.gathered(self.fake):
            dmd, gap = self.scores.dmd_loss(x0_g, p, gen)
        reg = masked_mse(x0_g, target, t) if target is not None else torch.zeros(())
        loss = dmd + self.spec.reg_weight * reg
        gn = self.update(self.opt, self.student, loss)
        return {"loss": float(loss.detach()), "dmd": float(dmd.detach()), "reg": float(reg.detach()),
                "score_gap": gap, "fake_loss": sum(fake_losses) / len(fake_losses), "grad_norm": gn}


def find_pool(init: str | None) -> Path | None:
    """The trajectories.pt beside ``init`` or beside the checkpoints it was itself started from."""
    seen = set()
    while init and init not in seen:
        seen.add(init)
        pool = Path(init).parent / "trajectories.pt"
        if pool.exists():
            return pool
        if not find_checkpoint(init):
            return None
        init = load_state(init).get("init")
    return None


def distill_loop(args: dict, ctx: Dist, on_step=None) -> dict:
    from models.train import run_loop
    return run_loop(DistillRun(args, ctx), args, ctx, on_step)


def distill(stage: str, config, out, steps: int, teacher: str, store: str | None = None,
            init: str | None = None, workers: int | None = None, overrides: dict | None = None,
            progress: bool = False) -> dict:
    """Run (or resume) a distillation stage to ``steps`` steps into ``out``; the last metrics record."""
    import json

    from models.config import load_config
    from models.train import Progress, launch
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if not find_checkpoint(teacher):
        raise FileNotFoundError(f"no teacher checkpoint at {teacher}")
    workers = cfg.train.workers if workers is None else workers
    args = {"config": cfg.to_dict(), "out": str(out), "steps": int(steps), "store": store, "stage": stage,
            "teacher": str(teacher), "init": str(init) if init else None}
    Path(out).mkdir(parents=True, exist_ok=True)
    with Progress(Path(out) / "metrics.jsonl", steps, enabled=progress) as bar:
        if workers <= 1:
            return distill_loop(args, Dist(), on_step=bar.update)
        launch(distill_loop, args, workers, cfg.train.device, cfg.train.threads)
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}
