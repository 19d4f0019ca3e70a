"""Streaming distillation of the mouth teacher (the session's trained toy DiT): the four stages in
order, the streamed few-step student still follows held-out audio, exact DMD resume, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from curation.cli import app
from models.config import load_config
from models.data import MouthSource, mouth_area
from models.distill.generate import StreamGenerator
from models.distill.run import distill

ROOT = Path(__file__).resolve().parents[2]
MOUTH = ROOT / "models" / "configs" / "mouth.yaml"


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def falls(values: list[float], n: int) -> bool:
    return float(np.mean(values[-n:])) < float(np.mean(values[:n]))


def streamed_r(checkpoint, refiner=None) -> float:
    held = MouthSource(seed=12345)
    s = [held.sample(i) for i in range(4)]
    frames, info = StreamGenerator(checkpoint, refiner=refiner).stream(
        [x["speak_audio"] for x in s], [x["listen_audio"] for x in s], [x["references"][0] for x in s],
        [x["text"] for x in s], seed=0)
    area = np.concatenate([mouth_area(f)[1:] for f in frames])
    env = np.concatenate([x["envelope"][1:frames.shape[1]] for x in s])
    assert info["frames"] == 25 and info["fps"] > 0
    return float(np.corrcoef(area, env)[0, 1])


@pytest.mark.slow
def test_the_stages_in_order_give_a_few_step_causal_student_that_follows_the_audio(mouth_teacher, tmp_path):
    """ode -> dmd-off -> dmd-on -> refiner on the mouth teacher: the ODE regression loss falls, every
    DMD stage's fake score fits the student's samples (its loss falls), and the 2-step causal student
    streamed chunk by chunk (alone and with the 1-step refiner) keeps r > 0.9 with held-out audio."""
    teacher = str(mouth_teacher / "checkpoint")
    cfg = load_config(MOUTH)
    distill("ode", cfg, tmp_path / "ode", 40, teacher)
    ode = [r["loss"] for r in rows(tmp_path / "ode")]
    assert np.mean(ode[-10:]) < 0.5 * np.mean(ode[:10]), ode
    prev = tmp_path / "ode" / "checkpoint"
    for stage in ("dmd-off", "dmd-on", "refiner"):
        distill(stage, cfg, tmp_path / stage, 20, teacher, init=str(prev))
        fake = [r["fake_loss"] for r in rows(tmp_path / stage)]
        assert falls(fake, 5), (stage, fake)
        assert (tmp_path / stage / "trajectories.pt").exists() is False     # the ODE stage's pool is reused
        if stage != "refiner":
            prev = tmp_path / stage / "checkpoint"
    r_backbone = streamed_r(prev)
    r_refined = streamed_r(prev, tmp_path / "refiner" / "checkpoint")
    print(f"streamed 2-step student r = {r_backbone:.3f}, with the refiner r = {r_refined:.3f}")
    assert r_backbone > 0.9 and r_refined > 0.9


def test_a_dmd_stage_resumes_exactly(tiny_teacher, tmp_path):
    """dmd-on 4 steps == 2 steps, a new run from the checkpoint, 2 more: student, its EMA and
    optimizer, the fake score and its optimizer, bit for bit; the same losses."""
    teacher = tiny_teacher
    cfg = load_config(MOUTH, {"train.batch_size": 2, "train.checkpoint_every": 2,
                              "distill.trajectories": 2, "distill.fake_ratio": 2})
    distill("dmd-on", cfg, tmp_path / "a", 4, teacher, init=teacher)
    distill("dmd-on", cfg, tmp_path / "b", 2, teacher, init=teacher)
    distill("dmd-on", cfg, tmp_path / "b", 4, teacher, init=teacher)
    from models.checkpoint import load_part
    for part in ("model", "ema", "fake"):
        a, b = load_part(tmp_path / "a" / "checkpoint", part), load_part(tmp_path / "b" / "checkpoint", part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
    for part in ("optimizer", "fake_optimizer"):
        a, b = load_part(tmp_path / "a" / "checkpoint", part), load_part(tmp_path / "b" / "checkpoint", part)
        assert all(torch.equal(v, b["state"][k][n]) for k, st in a["state"].items() for n, v in st.items()), part
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(rows(tmp_path / "a")) == strip(rows(tmp_path / "b"))


def test_cli_distill_ode_and_generate_stream(tiny_teacher, tmp_path):
    from PIL import Image

    from models.generate import write_mp4
    out = tmp_path / "ode"
    res = CliRunner().invoke(app, ["distill", "--stage", "ode", "--config", str(MOUTH), "--teacher",
                                   tiny_teacher, "--steps", "2", "--out", str(out),
                                   "--set", "train.batch_size=2", "--set", "distill.trajectories=2"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in rows(out)] == [1, 2] and (out / "checkpoint" / "model.pt").exists()
    s = MouthSource(seed=7).sample(0)
    wav, png, mp4 = tmp_path / "speech.mp4", tmp_path / "ref.png", tmp_path / "stream.mp4"
    write_mp4(wav, s["frames"], 25.0, s["speak_audio"])
    Image.fromarray(s["references"][0]).save(png)
    res = CliRunner().invoke(app, ["generate", "--stream", "--checkpoint", str(out / "checkpoint"),
                                   "--audio", str(wav), "--reference", str(png), "--out", str(mp4)])
    assert res.exit_code == 0, res.output
    assert "25 frames 16x16" in res.output and "streamed chunk by chunk" in res.output and mp4.exists()
    bad = CliRunner().invoke(app, ["distill", "--stage", "dmd-on", "--config", str(MOUTH), "--teacher",
                                   tiny_teacher, "--steps", "1", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "give --init" in str(bad.exception)
