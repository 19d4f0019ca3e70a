"""``curation sample``: sample clips for an audit: contact sheet, the clip as mp4, its metadata."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from curation.cli.common import console, warn


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample_cmd(
        store: str = typer.Option(..., "--store", "-s"),
        where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over clips."),
        n: int = typer.Option(4, "-n", min=1, help="How many clips."),
        out: str = typer.Option(..., "--out", "-o", help="Output directory."),
        seed: int = typer.Option(0, "--seed", help="Random seed for the sample."),
        frames: int = typer.Option(8, "--frames", min=1, max=64, help="Frames on each contact sheet."),
    ):
        """For each sampled clip write CLIP.png (contact sheet), CLIP.mp4 and CLIP.json into OUT."""
        from curation.audit.sample import sample_clips
        from curation.sql import validate_where
        if where is not None:
            where = validate_where(where)
        written = sample_clips(store, where=where, n=n, out_dir=out, seed=seed, n_frames=frames,
                               on_skip=lambda cid, why: warn(f"skipped clip {cid}: {why}"))
        con = console()
        for w in written:
            con.print(f"{w['clip_id']}: {w['png']}  {w['mp4']}  {w['json']}")
            if w.get("warning"):
                warn(f"{w['clip_id']}: {w['warning']}")
        Console(stderr=True).print(f"{len(written)} clip(s) written to {out}")
