"""``curation distill``: a streaming-distillation stage of the bundled DiT (models/distill/,
docs/distillation.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from curation.cli.common import console
from curation.cli.train import parse_sets


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_cmd(
        stage: str = typer.Option(..., "--stage", help="ode, dmd-off, dmd-on or refiner."),
        config: str = typer.Option(..., "--config", "-c", help="The config the teacher was trained with "
                                   "(its distill section)."),
        teacher: str = typer.Option(..., "--teacher", help="The trained DiT's checkpoint (DIR/checkpoint)."),
        out: str = typer.Option(..., "--out", "-o", help="Run directory: metrics.jsonl, checkpoint/, "
                                "trajectories.pt."),
        steps: int = typer.Option(..., "--steps", min=1, help="Train (or resume) up to this many steps."),
        init: Optional[str] = typer.Option(None, "--init", help="The previous stage's checkpoint (dmd-off: "
                                           "ode's, dmd-on: dmd-off's, refiner: dmd-on's backbone)."),
        store: Optional[str] = typer.Option(None, "--store", "-s", help="Store whose windows condition the "
                                            "teacher's trajectories (data.source: store)."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray Train workers (FSDP2)."),
        sets: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE."),
    ):
        """Run (or resume) one distillation stage; writes OUT/metrics.jsonl and OUT/checkpoint."""
        from models.config import load_config
        from models.distill.run import distill
        from models.distill.spec import STAGES
        if stage not in STAGES:
            raise typer.BadParameter(f"--stage is one of {', '.join(STAGES)}, got {stage!r}")
        cfg = load_config(config, parse_sets(sets))
        last = distill(stage, cfg, out, steps, teacher, store=store, init=init, workers=workers, progress=True)
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        tail = [r["loss"] for r in rows[-10:]]
        console().print(f"{stage}: {last.get('step', steps)} steps, loss {rows[0]['loss']:.4f} at step 1, "
                        f"mean of the last {len(tail)} {sum(tail) / max(1, len(tail)):.4f}; checkpoint "
                        f"{Path(out) / 'checkpoint'}, metrics {Path(out) / 'metrics.jsonl'}")
