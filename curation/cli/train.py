"""``curation train`` and ``curation generate``: the bundled avatar DiT (models/, docs/model.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from curation.cli.common import console


def parse_sets(sets: list[str] | None) -> dict:
    """``--set train.lr=1e-4`` -> {"train.lr": 0.0001} (values parsed as YAML)."""
    import yaml
    out = {}
    for item in sets or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("generate")(generate_cmd)


def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Training config (models/configs/*.yaml)."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory: metrics.jsonl, checkpoint/."),
    steps: int = typer.Option(..., "--steps", min=1, help="Train (or resume) up to this many steps."),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Store to train on (data.source: store)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray Train workers (FSDP2); "
                                          "default: the config's train.workers."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE "
                                             "(dotted key, YAML value); repeatable."),
    max_failures: int = typer.Option(0, "--max-failures", min=0, help="Ray Train restarts of a "
                                     "crashed worker group (each resumes from the last checkpoint)."),
):
    """Train the avatar DiT (or the toy VAE) by a config; resumes from OUT/checkpoint if present."""
    from models.config import load_config
    from models.train import train
    cfg = load_config(config, parse_sets(sets))
    last = train(cfg, out, steps, store=store, workers=workers, progress=True, max_failures=max_failures)
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tail = [r["loss"] for r in lines[-10:]]
    console().print(f"trained {last.get('step', steps)} steps ({cfg.task}): loss {lines[0]['loss']:.4f} "
                    f"at step 1, mean of the last {len(tail)} {sum(tail) / max(1, len(tail)):.4f}; "
                    f"checkpoint {Path(out) / 'checkpoint'}, metrics {Path(out) / 'metrics.jsonl'}")

def generate_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A DiT checkpoint directory (DIR/checkpoint)."),
    audio: str = typer.Option(..., "--audio", help="Speech to speak (any file with an audio stream)."),
    reference: str = typer.Option(..., "--reference", help="Reference image of the person."),
    out: str = typer.Option(..., "--out", "-o", help="Output mp4 (video + the audio)."),
    listen_audio: Optional[str] = typer.Option(None, "--listen-audio", help="What the person hears."),
    text: str = typer.Option("", "--text", help="Text condition."),
    seed: int = typer.Option(0, "--seed"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps (default: config)."),
    mute: Optional[List[str]] = typer.Option(None, "--mute", help="Mute an audio branch: speak or listen."),
    weights: str = typer.Option("ema", "--weights", help="ema or model weights."),
    first_frame: bool = typer.Option(True, "--first-frame/--no-first-frame",
                                     help="Use the reference as the clean first frame."),
    stream: bool = typer.Option(False, "--stream", help="Roll a distilled causal student (a `curation "
                                "distill` checkpoint) forward chunk by chunk; reports frames per second."),
    refiner: Optional[str] = typer.Option(None, "--refiner", help="With --stream: the one-step refiner's "
                                          "checkpoint (stage refiner)."),
):
    """Generate a video of the reference person speaking AUDIO, written with the audio as an mp4."""
    import time

    import numpy as np
    from PIL import Image

    from curation.media import load_audio
    from models.generate import Generator, write_mp4
    bad = sorted(set(mute or []) - {"speak", "listen"})
    if bad:
        raise typer.BadParameter(f"--mute takes speak or listen, got {', '.join(bad)}")
    speak = load_audio(audio, 16000)
    listen = load_audio(listen_audio, 16000) if listen_audio else None
    ref = np.asarray(Image.open(reference).convert("RGB"))
    if stream:
        from models.distill.generate import StreamGenerator
        gen = StreamGenerator(checkpoint, refiner=refiner, which=weights)
    else:
        gen = Generator(checkpoint, weights)
    t0 = time.perf_counter()
    if stream:
        frames = gen.stream([speak], [listen], [ref], [text], seed=seed)[0][0]
    else:
        frames = gen.video(speak, listen, ref, text=text, seed=seed, steps=steps, first_frame=first_frame,
                           mute=tuple(mute or ()))
    took = time.perf_counter() - t0
    fps = gen.cfg.data.fps
    mix = speak[: int(round(len(frames) / fps * 16000))]
    write_mp4(out, frames, fps, mix)
    console().print(f"{out}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps "
                    f"({len(frames) / fps:.2f} s) in {took:.2f} s ({len(frames) / took:.1f} frames/s"
                    f"{', streamed chunk by chunk' if stream else ''})")
