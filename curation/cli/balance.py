"""``curation balance``: select a speak/listen-balanced subset of person clips (curation/balance.py)."""
from __future__ import annotations

from typing import Optional

import typer

from curation.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command("balance")
    def balance_cmd(
        store: str = typer.Option(..., "--store", "-s", help="Store directory or s3:// prefix."),
        tag: str = typer.Option(..., "--tag", help="Name of the subset to write (replaces an earlier one)."),
        target_listen: float = typer.Option(0.5, "--target-listen", min=0.0, max=1.0,
                                            help="Share of listener samples in the subset."),
        where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over the person clips."),
        expressive_share: float = typer.Option(0.5, "--expressive-share", help="Least share of "
                                               "expressive clips among listener samples (neutral "
                                               "listener clips are down-sampled to it)."),
        max_repeat: int = typer.Option(3, "--max-repeat", min=1, help="Most repeats of one rare "
                                       "expressive clip."),
        seed: int = typer.Option(0, "--seed", help="Random seed of the down-sampling."),
    ):
        """Write subset TAG of the store's person clips with the target speak/listen mix: dominant
        neutral listener clips down-sampled, rare expressive ones repeated (rows of table `subsets`)."""
        from curation.balance import balance
        from curation.store import Store
        stats = balance(Store(store), tag, target_listen, where=where, expressive_share=expressive_share,
                        max_repeat=max_repeat, seed=seed)
        out = console()
        out.print(f"subset {tag!r}: {stats['selected_clips']} clips, {stats['samples']} samples, "
                  f"listen share {stats['listen_share']:.3f} (target {target_listen}); "
                  f"from {stats['clips']} person clips: {stats['speaker_clips']} speaker, "
                  f"{stats['listener_clips']} listener ({stats['expressive_listener_clips']} expressive), "
                  f"{stats['idle_skipped']} idle skipped; neutral listener share "
                  f"{stats['neutral_listener_share_before']:.2f} -> {stats['neutral_listener_share_after']:.2f}")
