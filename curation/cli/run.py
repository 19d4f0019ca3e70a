"""``curation run``: run a workflow over input videos into a store."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from curation.cli.common import console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class InvalidWorkflow(Exception):
    exit_code = 2


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        workflow: str = typer.Argument(..., help="Workflow YAML file, or a name under workflows/."),
        inputs: List[str] = typer.Option(..., "--input", "-i", help="Video file or directory (repeat)."),
        store: str = typer.Option(..., "--store", "-s", help="Store directory or s3:// prefix."),
        models: Optional[str] = typer.Option(None, "--models", help="Model directory for model-backed "
                                             "operators."),
        workers: int = typer.Option(2, "--workers", "-w", min=1, help="Parallel workers per step."),
        from_step: Optional[str] = typer.Option(None, "--from", help="Re-run this step and every "
                                                "step downstream of it for all inputs."),
        local: bool = typer.Option(False, "--local", help="Run in this process, without Ray."),
        flush_every: int = typer.Option(16, "--flush-every", min=1, help="Write results to the store "
                                        "every N video results (at most once a second, at least "
                                        "every 15 s)."),
        wait: bool = typer.Option(False, "--wait", help="If another run holds the store, wait for it "
                                  "to finish instead of exiting (exit 3)."),
    ):
        """Run WORKFLOW over the inputs; exit 0 when the run completed, even if some rows failed."""
        from curation.runner import new_run_id
        from curation.store import Store, sql_quote
        from curation.workflow import WorkflowError, load

        try:
            wf = load(_workflow_path(workflow))
        except WorkflowError as e:
            raise InvalidWorkflow(f"invalid workflow: {e}") from None
        if from_step and from_step not in wf.by_name:
            raise InvalidWorkflow(f"--from: no step {from_step!r}; steps: {', '.join(wf.by_name)}")
        progress_console = Console(stderr=True)
        st = Store(store)
        run_id = new_run_id()
        # One run writes a store at a time: the lease says who (host, pid, run, since); a second run
        # exits with that line, or waits for it with --wait. A killed holder's lease is taken over.
        lease = st.lease(run_id).acquire(wait=wait, on_wait=lambda msg: print(msg, file=sys.stderr,
                                                                               flush=True))
        try:
            summary = _run(wf, st, inputs, models, workers, flush_every, local, from_step, run_id,
                           progress_console)
        finally:
            lease.release()
        out = console()
        failed_ingest = st.count("videos", f"error_stage = 'ingest' AND run_id = {sql_quote(run_id)}")
        table = Table(title=f"run {summary.run_id}: {wf.name}, {summary.videos} videos, "
                            f"{summary.seconds:.1f} s")
        for col in ("step", "op", "done", "skipped", "rows out", "failed videos", "failed rows", "s"):
            table.add_column(col, justify="left" if col in ("step", "op") else "right",
                             no_wrap=col in ("step", "op"))
        table.add_row("ingest", "", str(summary.videos - failed_ingest), "", "", str(failed_ingest), "", "")
        for s in summary.steps:
            table.add_row(s.step, s.op, str(s.done), str(s.skipped), str(s.rows), str(s.failed_videos),
                          str(s.failed_rows), f"{s.seconds:.1f}")
        out.print(table)
        if failed_ingest:
            out.print(f"{failed_ingest} input(s) failed at ingest: curation query --store {store} "
                      f"--table videos --where \"error_stage = 'ingest'\" --columns uri,error")
        if summary.max_calls_in_flight:
            out.print(f"worker calls in flight: {summary.calls_in_flight:.1f} on average, "
                      f"{summary.max_calls_in_flight} at most (--workers {workers})")
        out.print(f"store: {store}   (curation stats --store {store})")


def _run(wf, st, inputs, models, workers, flush_every, local, from_step, run_id, progress_console):
    from curation.runner import Runner
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=progress_console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=max(total, 1))
                if total == 0:
                    progress.update(tasks[step], completed=1, description=f"{step} (up to date)")
                    return
            progress.update(tasks[step], completed=done, total=max(total, 1))

        return Runner(wf, st, model_dir=models, workers=workers, flush_every=flush_every,
                      executor="local" if local else "ray",
                      progress=on_progress).run(inputs, from_step=from_step, run_id=run_id)


def _workflow_path(name: str) -> str:
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return str(p)
    here = Path(__file__).resolve().parents[2] / "workflows" / f"{name}.yaml"
    return str(here) if here.exists() else str(p)
