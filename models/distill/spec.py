"""The ``distill`` section of a config (docs/distillation.md)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from models.distill.causal import CausalSpec

STAGES = ("ode", "dmd-off", "dmd-on", "refiner")


@dataclass
class DistillSpec:
    causal: dict = field(default_factory=lambda: {"chunk": 3, "first_chunk": 1, "sink": 1, "window": 2,
                                                  "cap": 21})
    steps: list = field(default_factory=lambda: [1.0, 0.5])   # the backbone's few-step schedule T0 > T1
    refiner_t: float = 0.25            # T2: the refiner's input noise level (one step)
    teacher_steps: int = 8             # Euler steps of the teacher's ODE trajectories
    ode_teacher: str = "causal"        # causal: the teacher's weights rolled out chunk by chunk | bidirectional
    trajectories: int = 32             # size of the ODE trajectory dataset
    history: str = "noisy"             # what a rollout caches: noisy (the chunk's last step) | clean (x0 at t=0)
    fake_ratio: int = 5                # fake-score updates per generator update (DMD2's two time-scale rule)
    lr: float = 1e-4                   # the student's (generator's) learning rate
    fake_lr: float = 1e-4
    reg_weight: float = 0.25           # off-policy DMD / refiner: latent MSE to the teacher's clean target
    text_scale: float = 1.0            # the real score's (and the ODE teacher's) guidance
    audio_scale: float = 2.0
    dmd_t: list = field(default_factory=lambda: [0.02, 0.98])  # t range of the DMD score evaluation
    ema_decay: float = 0.99

    def causal_spec(self) -> CausalSpec:
        spec = CausalSpec(**self.causal)
        spec.check()
        return spec

    def grid(self) -> list[float]:
        """The teacher's Euler grid: teacher_steps uniform steps from 1 to 0 plus every t the student
        needs (its schedule and the refiner's t), so the trajectory passes through them exactly."""
        pts = {round(1 - i / self.teacher_steps, 6) for i in range(self.teacher_steps + 1)}
        pts |= {float(t) for t in self.steps} | {float(self.refiner_t), 0.0, 1.0}
        return sorted(pts, reverse=True)

    def record_at(self) -> list[float]:
        return sorted({float(t) for t in self.steps} | {float(self.refiner_t), 0.0}, reverse=True)


def distill_spec(d: dict | None) -> DistillSpec:
    d = dict(d or {})
    known = {f.name for f in fields(DistillSpec)}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"unknown key(s) in distill: {', '.join(bad)} (known: {', '.join(sorted(known))})")
    spec = DistillSpec(**d)
    if spec.ode_teacher not in ("causal", "bidirectional") or spec.history not in ("noisy", "clean"):
        raise ValueError("distill.ode_teacher is causal or bidirectional; distill.history noisy or clean")
    if list(spec.steps) != sorted(spec.steps, reverse=True) or not 0 < spec.steps[-1] <= spec.steps[0] <= 1:
        raise ValueError(f"distill.steps must decrease within (0, 1], got {spec.steps}")
    spec.causal_spec()
    return spec
