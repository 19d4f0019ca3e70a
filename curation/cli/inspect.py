"""``curation query``, ``curation stats``, ``curation show``: read the store."""
from __future__ import annotations

import csv
import json
import sys
from typing import Optional

import typer
from rich.console import Console

from curation.cli.common import console, warn
from rich.table import Table

FORMATS = ("table", "jsonl", "csv")


def register(app: typer.Typer) -> None:
    @app.command("query")
    def query_cmd(
        store: str = typer.Option(..., "--store", "-s"),
        table: str = typer.Option("clips", "--table", "-t", help="videos, shots, clips, tracks, status, runs"),
        where: Optional[str] = typer.Option(None, "--where", help="SQL predicate, e.g. \"speech_ratio > 0.5\""),
        columns: Optional[str] = typer.Option(None, "--columns", "-c", help="Comma-separated columns."),
        limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0),
        fmt: str = typer.Option("table", "--format", "-f", help="table, jsonl or csv"),
    ):
        """Print the rows of TABLE that match WHERE."""
        from curation.sql import validate_where
        from curation.store import Store
        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
        if where is not None:
            where = validate_where(where)  # the whole predicate, before touching the store
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        t = Store(store).query(table, where=where, columns=cols, limit=limit)
        rows = t.to_pylist()
        if fmt == "jsonl":
            for r in rows:
                sys.stdout.write(json.dumps(r, default=_json_default) + "\n")
        elif fmt == "csv":
            w = csv.writer(sys.stdout)
            w.writerow(t.column_names)
            for r in rows:
                w.writerow([_cell(r[c], 10_000) for c in t.column_names])
        else:
            view = Table(show_lines=False)
            for c in t.column_names:
                view.add_column(c, overflow="fold")
            for r in rows:
                view.add_row(*[_cell(r[c]) for c in t.column_names])
            console().print(view)
            Console(stderr=True).print(f"{len(rows)} row(s)")

    @app.command("stats")
    def stats_cmd(store: str = typer.Option(..., "--store", "-s")):
        """Rows per table, errors by stage, and the funnel of the latest run's workflow filters."""
        from curation.stats import compute
        s = compute(store)
        con = console()
        t = Table(title=f"store {store}")
        t.add_column("table")
        t.add_column("rows", justify="right")
        t.add_column("with error", justify="right")
        t.add_column("version", justify="right")
        for name, info in s["tables"].items():
            t.add_row(name, str(info["rows"]), str(info.get("errors", "")), str(info["version"]))
        con.print(t)
        if s["errors"]:
            e = Table(title="errors by stage")
            for c in ("table", "stage", "rows", "example"):
                e.add_column(c)
            for row in s["errors"]:
                e.add_row(row["table"], row["stage"], str(row["rows"]), row["example"])
            con.print(e)
        else:
            con.print("no errors")
        if s.get("funnel"):
            f = Table(title=f"clip funnel (workflow {s['workflow']!r}, run {s['run_id']})")
            f.add_column("stage", no_wrap=True, min_width=17)
            f.add_column("where", no_wrap=True, overflow="ellipsis", max_width=48)
            for c in ("removed", "remaining", "kept %"):
                f.add_column(c, justify="right", no_wrap=True, min_width=len(c))
            total = s["funnel"][0]["remaining"] or 1
            for row in s["funnel"]:
                f.add_row(row["stage"], row["where"],
                          "" if row["removed"] is None else str(row["removed"]),
                          "" if row["remaining"] is None else str(row["remaining"]),
                          "" if row["remaining"] is None else f"{100 * row['remaining'] / total:.1f}",
                          )
            con.print(f)
            for row in s["funnel"]:
                if row.get("note"):
                    con.print(f"  {row['stage']}: {row['note']}")
            for w in s.get("warnings") or []:
                con.print(f"[yellow]warning:[/yellow] {w}", highlight=False)

    @app.command("show")
    def show_cmd(store: str = typer.Option(..., "--store", "-s"),
                 id: str = typer.Argument(..., help="A clip_id, video_id (or a unique prefix) or track_id.")):
        """Every field of one clip, video or track, readable."""
        from curation.stats import find_row
        from curation.store import StoreError
        table, row, extra = find_row(store, id)
        con = console()
        t = Table(title=f"{table} {row.get(_key(table))}", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value", overflow="fold")
        for k, v in row.items():
            t.add_row(k, _cell(v, 2000))
        con.print(t)
        if table == "clips" and row.get("frame_states"):
            try:
                _print_states(con, store, row)
            except StoreError as e:   # a store without the people tables: the fields say it all
                warn(f"no state strip: {e}")
        for title, rows in extra.items():
            if rows:
                sub = Table(title=title)
                for c in rows[0]:
                    sub.add_column(c)
                for r in rows:
                    sub.add_row(*[_cell(v) for v in r.values()])
                con.print(sub)


    @app.command("schema")
    def schema_cmd(table: Optional[str] = typer.Argument(None, help="One table (default: all)."),
                   markdown: bool = typer.Option(False, "--markdown", help="Markdown tables."),
                   operators: bool = typer.Option(False, "--operators", help="The operators "
                                                  "instead: rows in -> out, what each computes.")):
        """The columns of each table, their types and the operator that writes them."""
        from curation.stats import operator_rows, schema_rows
        if operators:
            _print_operators(operator_rows(), markdown)
            return
        rows = schema_rows(table)
        if markdown:
            current = None
            for r in rows:
                if r["table"] != current:
                    current = r["table"]
                    print(f"\n## {current}\n\n| column | type | written by |\n|---|---|---|")
                print(f"| {r['column']} | {r['type']} | {r['writer']} |")
            return
        view = Table()
        for c in ("table", "column", "type", "written by"):
            view.add_column(c)
        for r in rows:
            view.add_row(r["table"], r["column"], r["type"], r["writer"])
        console().print(view)


def _print_operators(rows: list[dict], markdown: bool) -> None:
    if markdown:
        print("| op | rows in -> out | what it computes |\n|---|---|---|")
        for r in rows:
            print(f"| {r['op']} | {r['rows']} | {r['summary']} |")
        return
    view = Table()
    for c in ("op", "rows in -> out", "what it computes"):
        view.add_column(c)
    for r in rows:
        view.add_row(r["op"], r["rows"], r["summary"])
    console().print(view)


def _print_states(con, store: str, clip: dict) -> None:
    """The per-frame state strip of the clip's track and of the other tracks of its span."""
    from curation.audit.sample import _people_of
    from curation.store import Store
    from curation.timeline import summary_line, text_strip
    _, strips = _people_of(Store(store), clip)
    con.print(f"states per {0.2:.1f} s (S speak, L listen, I idle, D discard), "
              f"{clip['start_s']:.2f}-{clip['end_s']:.2f} s:")
    for label, times, states in strips:
        strip, ruler = text_strip(times, states, clip["start_s"], clip["end_s"])
        con.print(f"  {label:<20} {strip}", markup=False, highlight=False)
        con.print(f"  {'':<20} {ruler}", markup=False, highlight=False)
    con.print(f"  {summary_line(clip)}", markup=False, highlight=False)


def _key(table: str) -> str:
    return {"videos": "video_id", "clips": "clip_id", "tracks": "track_id"}.get(table, "video_id")


def _json_default(v):
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    return str(v)


def _cell(v, width: int = 80) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, default=_json_default)
        if isinstance(v, list) and len(text) > width:
            return f"[{len(v)} items] " + text[: width - 20] + "…"
        return text if len(text) <= width else text[: width - 1] + "…"
    return str(v)
