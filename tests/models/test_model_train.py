"""Training runs: exact resume (in process, after a SIGKILL, under a 2-worker Ray TorchTrainer with
FSDP2), the CLI (train, generate), and the toy VAE as a task."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from curation.cli import app
from models.checkpoint import load_part, load_state
from models.config import load_config
from models.train import train

ROOT = Path(__file__).resolve().parents[2]
MOUTH = ROOT / "models" / "configs" / "mouth.yaml"
SMALL = {"train.batch_size": 2, "train.checkpoint_every": 4, "data.pool": 16, "data.cache": 16}


def same_checkpoint(a: Path, b: Path) -> None:
    """torch.equal on every weight, EMA weight and optimizer tensor; equal step and data state."""
    for part in ("model", "ema"):
        x, y = load_part(a, part), load_part(b, part)
        assert x.keys() == y.keys()
        bad = [k for k in x if not torch.equal(x[k], y[k])]
        assert not bad, f"{part} differs in {bad[:3]}"
    x, y = load_part(a, "optimizer"), load_part(b, "optimizer")
    plain = lambda groups: [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]
    assert x["state"].keys() == y["state"].keys() and plain(x["param_groups"]) == plain(y["param_groups"])
    for k, st in x["state"].items():
        for name, v in st.items():
            assert torch.equal(v, y["state"][k][name]), f"optimizer {name} of {k} differs"
    sa, sb = load_state(a), load_state(b)
    assert (sa["step"], sa["data"], sa["ema_updates"]) == (sb["step"], sb["data"], sb["ema_updates"])


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_in_process_is_exact_and_the_same_seed_gives_the_same_losses(tmp_path):
    cfg = load_config(MOUTH, SMALL)
    train(cfg, tmp_path / "a", 8)
    train(cfg, tmp_path / "b", 5)                      # stops with a checkpoint at step 5
    assert load_state(tmp_path / "b" / "checkpoint")["step"] == 5
    train(cfg, tmp_path / "b", 8)                      # a new run object resumes from it
    same_checkpoint(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, 9))
    other = load_config(MOUTH, {**SMALL, "seed": 1})
    train(other, tmp_path / "c", 3)
    assert losses(tmp_path / "c") != losses(tmp_path / "a")[:3]


@pytest.mark.slow
def test_a_killed_run_resumes_where_an_uninterrupted_one_ends(tmp_path):
    """SIGKILL a `curation train` process between checkpoints, start the same command again: weights,
    optimizer, EMA and every logged loss equal those of an uninterrupted run."""
    sets = [f"--set={k}={v}" for k, v in SMALL.items()]
    cmd = [sys.executable, "-c", "from curation.cli import main; main()", "train", "--config", str(MOUTH),
           "--steps", "20", "--out", str(tmp_path / "killed"), *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 13:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_state(tmp_path / "killed" / "checkpoint")["step"] in (12, 16)
    cfg = load_config(MOUTH, SMALL)
    train(cfg, tmp_path / "killed", 20)
    train(cfg, tmp_path / "whole", 20)
    same_checkpoint(tmp_path / "whole" / "checkpoint", tmp_path / "killed" / "checkpoint")
    assert losses(tmp_path / "whole") == losses(tmp_path / "killed")


def test_cli_train_writes_metrics_and_checkpoint_and_generate_writes_an_mp4_with_audio(tmp_path):
    import av

    from models.data import MouthSource
    from models.generate import write_mp4
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--config", str(MOUTH), "--steps", "3", "--out", str(run),
                                   "--set", "train.batch_size=2", "--set", "data.pool=0"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert (run / "checkpoint" / "model.pt").exists() and load_state(run / "checkpoint")["step"] == 3
    s = MouthSource(seed=7).sample(0)
    wav, png = tmp_path / "speech.mp4", tmp_path / "ref.png"
    write_mp4(wav, s["frames"], 25.0, s["speak_audio"])
    from PIL import Image
    Image.fromarray(s["references"][0]).save(png)
    out = tmp_path / "gen.mp4"
    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(run / "checkpoint"), "--audio", str(wav),
                                   "--reference", str(png), "--out", str(out), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "25 frames 16x16" in res.output
    with av.open(str(out)) as f:
        kinds = sorted(st.type for st in f.streams)
        n = sum(1 for _ in f.decode(video=0))
    assert kinds == ["audio", "video"] and n == 25
    bad = CliRunner().invoke(app, ["train", "--config", str(MOUTH), "--steps", "1", "--out", str(tmp_path / "x"),
                                   "--set", "train.bogus=1"])
    assert bad.exit_code != 0 and "unknown key(s) in train: bogus" in str(bad.exception)


def test_the_toy_causal_vae_trains_as_a_task_and_the_dit_trains_on_its_latents(tmp_path):
    vae_cfg = ROOT / "models" / "configs" / "vae_toy.yaml"
    last = train(load_config(vae_cfg, {"train.batch_size": 2}), tmp_path / "vae", 3)
    assert last["step"] == 3 and "mse" in last
    over = {**SMALL, "vae": {"kind": "causal", "latent_channels": 4, "width": 16,
                             "checkpoint": str(tmp_path / "vae" / "checkpoint")}}
    last = train(load_config(MOUTH, over), tmp_path / "dit", 2)
    assert last["step"] == 2 and np.isfinite(last["loss"])
    with pytest.raises(ValueError, match="vae.kind causal needs vae.checkpoint"):
        train(load_config(MOUTH, {**SMALL, "vae": {"kind": "causal"}}), tmp_path / "bad", 1)


def _rank(rank: int, args: dict, port: int) -> None:
    """One rank of a plain torch.distributed (gloo) run of the same loop: the uninterrupted reference."""
    import torch.distributed as dist

    from models.train import Dist, train_loop
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        train_loop(args, Dist(rank, 2))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ray
def test_resume_under_a_two_worker_ray_torchtrainer_with_fsdp2(tmp_path, ray_session):
    """A 2-worker Ray TorchTrainer run (FSDP2 over gloo) whose rank-0 worker process dies after step 6
    (Ray restarts the group, which resumes from the step-4 checkpoint and replays steps 5 and 6) ends
    bit for bit where an uninterrupted 8-step 2-rank run of the same loop ends (started with
    torch.multiprocessing: one Ray fit less)."""
    import socket

    import torch.multiprocessing as mp
    cfg = load_config(MOUTH, SMALL)                                  # a checkpoint every 4 steps
    train(cfg, tmp_path / "crashed", 8, workers=2, fail_at_step=6, max_failures=1)
    assert (tmp_path / "crashed" / "failed_once").exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = {"config": cfg.to_dict(), "out": str(tmp_path / "whole"), "steps": 8, "store": None}
    mp.spawn(_rank, args=(args, port), nprocs=2, join=True)
    state = load_state(tmp_path / "crashed" / "checkpoint")
    assert state["world"] == 2 and len(state["data"]) == 2 and state["step"] == 8
    same_checkpoint(tmp_path / "whole" / "checkpoint", tmp_path / "crashed" / "checkpoint")
    assert losses(tmp_path / "whole") == losses(tmp_path / "crashed")
