"""``curation validate`` (window verdicts and their funnel) and ``curation windows`` (contact sheets of
sampled windows with their verdicts)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from curation.cli.common import console, warn


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate_cmd(
        store: str = typer.Option(..., "--store", "-s"),
        profile: str = typer.Option(..., "--profile", "-p", help="workflows/validate/NAME.yaml"),
        where: Optional[str] = typer.Option(None, "--where", help="Also restrict the clips (SQL)."),
        fmt: str = typer.Option("table", "--format", "-f", help="table or json"),
        workers: int = typer.Option(1, "--workers", min=1, help="Processes (videos spread over them)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N windows."),
    ):
        """Check every window of the profile's selection; write each verdict to the `windows` table;
        print how many windows each check removed (the funnel)."""
        from curation.sql import validate_where
        from curation.validate.offline import validate_store
        if fmt not in ("table", "json"):
            raise typer.BadParameter("--format must be table or json")
        if where is not None:
            where = validate_where(where)
        res = validate_store(store, profile, where=where, workers=workers, limit=limit)
        if res["missing_columns"]:
            warn(f"profile {res['profile']}: the store has no {', '.join(res['missing_columns'])} "
                 "(their checks see nulls)")
        if fmt == "json":
            print(json.dumps(res))
            return
        _print_funnel(res)

    @app.command("windows")
    def windows_cmd(
        store: str = typer.Option(..., "--store", "-s"),
        profile: str = typer.Option(..., "--profile", "-p", help="Its verdicts (run `validate` first)."),
        out: str = typer.Option(..., "--out", "-o", help="Output directory."),
        n: int = typer.Option(6, "-n", min=1, help="Windows to draw (kept and dropped alike)."),
        kept: Optional[bool] = typer.Option(None, "--kept/--dropped", help="Only kept / only dropped."),
        seed: int = typer.Option(0, "--seed"),
        frames: int = typer.Option(8, "--frames", min=2, max=32, help="Frames per sheet."),
    ):
        """Contact sheets of sampled windows with their verdicts (what the trainer will see)."""
        from curation.validate.sheets import window_sheets
        written = window_sheets(store, profile, out, n=n, kept=kept, seed=seed, n_frames=frames)
        for w in written:
            console().print(f"{w['clip_id']} @ {w['start_s']:.2f} s  "
                            f"{'kept' if w['kept'] else 'dropped: ' + (w['reason'] or '')}  {w['png']}",
                            markup=False, highlight=False)


def _print_funnel(res: dict) -> None:
    con = console()
    t = Table(title=f"window funnel: profile {res['profile']} ({res['candidates']} windows, "
                    f"{res['seconds']} s)")
    for c in ("check", "removed", "remaining", "kept %", "example"):
        t.add_column(c, justify="right" if c in ("removed", "remaining", "kept %") else "left",
                     overflow="fold")
    total = res["candidates"] or 1
    t.add_row("candidates", "", str(res["candidates"]), "100.0", "")
    for row in res["funnel"]:
        t.add_row(row["check"], str(row["removed"]), str(row["remaining"]),
                  f"{100 * row['remaining'] / total:.1f}", res["examples"].get(row["check"], ""))
    con.print(t)
    con.print(f"kept {res['kept']} of {res['candidates']} windows; verdicts in table `windows` "
              f"(run {res['run_id']}); `curation show --store S CLIP_ID` lists a clip's windows")
