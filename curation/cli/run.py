"""``curation run``: run a workflow over input videos into a store."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from curation.cli.common import console, warn

SHOW_FAILED = 5   # failed videos named in the summary


class InvalidWorkflow(Exception):
    exit_code = 2


class NoVideos(Exception):
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
        engine: str = typer.Option("auto", "--engine", help="With Ray: scheduler (the driver streams "
                                   "calls to tasks and actors) or raydata (a Ray Data pipeline); "
                                   "auto: the default (docs/engine.md)."),
    ):
        """Run WORKFLOW over the inputs; exit 0 when the run completed, even if some rows failed."""
        from curation import failures
        failures.catch_sigterm()   # SIGTERM stops the run as Ctrl-C does (exit 143)
        try:
            _run_cmd(workflow, inputs, store, models, workers, from_step, local, flush_every, wait,
                     engine)
        except KeyboardInterrupt as e:   # outside the stream (start, ingest, upkeep): no half-write
            raise failures.Interrupted.of(e) from None


def _run_cmd(workflow, inputs, store, models, workers, from_step, local, flush_every, wait, engine):
    from curation.runner import new_run_id
    from curation.store import Store
    from curation.runner import ENGINES
    if engine not in ("auto", *ENGINES):
        raise InvalidWorkflow(f"--engine must be auto, {', '.join(ENGINES)}; got {engine!r}")
    wf, uris = _prechecks(workflow, inputs, models, from_step)
    progress_console = Console(stderr=True)
    st = Store(store)
    run_id = new_run_id()
    # One run writes a store at a time: the lease says who (host, pid, run, since); a second run
    # exits with that line, or waits for it with --wait. A killed holder's lease is taken over.
    lease = st.lease(run_id).acquire(wait=wait, on_wait=lambda msg: print(msg, file=sys.stderr,
                                                                           flush=True))
    try:
        with _native_logs(st, run_id, local):
            summary = _run(wf, st, inputs, uris, models, workers, flush_every, local, from_step,
                           run_id, progress_console, lease.fence, engine)
    finally:
        lease.release()
    _print_summary(wf, st, store, summary, workers)


def _prechecks(workflow: str, inputs: list[str], models: str | None, from_step: str | None):
    """Everything that can be refused before the store is touched (exit 2, no store directory
    made): the workflow, --from, every model file, and inputs with no video file at all."""
    from curation.ingest import resolve_inputs
    from curation.workflow import WorkflowError, check_weights, load
    try:
        wf = load(_workflow_path(workflow))
    except WorkflowError as e:
        raise InvalidWorkflow(f"invalid workflow: {e}") from None
    if from_step and from_step not in wf.by_name:
        raise InvalidWorkflow(f"--from: no step {from_step!r}; steps: {', '.join(wf.by_name)}")
    check_weights(wf, models)
    problems: list[tuple[str, str]] = []
    uris = resolve_inputs(inputs, problems)
    missing = {p if "://" in p else os.path.abspath(p) for p, what in problems if what == "not found"}
    if not [u for u in uris if u not in missing]:
        listed = "; ".join(f"{p}: {what}" for p, what in problems)
        raise NoVideos(f"no video files to process ({listed or 'no inputs'})")
    for p, what in problems:
        warn(f"input {p}: {what}" + ("; the other inputs are processed and it counts as failed"
                                     if what == "not found" else ""))
    return wf, uris


@contextlib.contextmanager
def _native_logs(st, run_id: str, local: bool):
    """With --local, native libraries (MediaPipe's glog/absl, TFLite) write their log lines straight
    to file descriptor 2 of this process: they go to ``<store>/_logs/<run>.log`` (a temporary file
    for an object store) while this command's own messages and progress bars still reach the
    terminal. With Ray they stay in the workers' logs."""
    if not local:
        yield
        return
    import tempfile
    if st.is_local:
        log_dir = Path(st.uri.removeprefix("file://")) / "_logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{run_id}.log"
    else:
        path = Path(tempfile.gettempdir()) / f"curation-{run_id}.log"
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    old_stderr = sys.stderr
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    sys.stderr = terminal
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stderr
        terminal.close()


def _run(wf, st, inputs, uris, models, workers, flush_every, local, from_step, run_id,
         progress_console, fence, engine):
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
                      executor="local" if local else "ray", progress=on_progress, fence=fence,
                      engine=engine).run(inputs, from_step=from_step, run_id=run_id, uris=uris)


def _print_summary(wf, st, store: str, summary, workers: int) -> None:
    from curation.store import sql_quote
    out = console()
    run = sql_quote(summary.run_id)
    failed_ingest = st.count("videos", f"error_stage = 'ingest' AND run_id = {run}")
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
    failed = _failed_videos(st, summary.run_id)
    if failed:
        shown = ", ".join(f"{name} ({what})" for name, what in failed[:SHOW_FAILED])
        more = f" and {len(failed) - SHOW_FAILED} more" if len(failed) > SHOW_FAILED else ""
        out.print(f"failed videos ({len(failed)}): {shown}{more}", markup=False, highlight=False,
                  soft_wrap=True)
        out.print(f"all of them: curation query --store {store} --table status --where "
                  f"\"run_id = {run} AND ok = false\" --columns video_id,step,error", markup=False, soft_wrap=True)
    if failed_ingest:
        out.print(f"{failed_ingest} input(s) failed at ingest: curation query --store {store} "
                  f"--table videos --where \"error_stage = 'ingest'\" --columns uri,error",
                  markup=False, soft_wrap=True)
    if summary.max_calls_in_flight:
        out.print(f"worker calls in flight: {summary.calls_in_flight:.1f} on average, "
                  f"{summary.max_calls_in_flight} at most (--workers {workers})")
    stats = save_engine_stats(st, summary)
    if stats:
        out.print(f"Ray Data stats: {stats}", markup=False, soft_wrap=True)
    out.print(f"store: {store}   (curation stats --store {store})", markup=False)


def save_engine_stats(st, summary) -> Path | None:
    """Write the Ray Data engine's execution stats (its operators) to
    ``<store>/_logs/<run_id>-ray-data-stats.txt`` of a local store and return the path; None when
    there are none (the scheduler) or the store is remote."""
    if not summary.engine_stats or not st.is_local:
        return None
    path = Path(st.uri.removeprefix("file://")) / "_logs" / f"{summary.run_id}-ray-data-stats.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary.engine_stats)
    return path


def _failed_videos(st, run_id: str) -> list[tuple[str, str]]:
    """(file name, "step: error") of the videos this run failed (whole-video failures, ingest
    failures first), in the order of their files' names."""
    from curation.store import sql_quote
    run = sql_quote(run_id)
    out: dict[str, str] = {}
    names = {}
    for r in st.query("videos", where=f"run_id = {run} AND error_stage = 'ingest'",
                      columns=["video_id", "uri", "error"]).to_pylist():
        out[r["video_id"]] = f"ingest: {r['error']}"
        names[r["video_id"]] = r["uri"]
    if st.exists("status"):
        for r in st.query("status", where=f"run_id = {run} AND ok = false",
                          columns=["video_id", "step", "error"]).to_pylist():
            out.setdefault(r["video_id"], f"{r['step']}: {r['error']}")
    need = [v for v in out if v not in names]
    for r in st.of_videos("videos", need, ["video_id", "uri"]).to_pylist():
        names[r["video_id"]] = r["uri"]
    rows = [(os.path.basename(names.get(v) or v), what[:100]) for v, what in out.items()]
    return sorted(rows)


def _workflow_path(name: str) -> str:
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return str(p)
    here = Path(__file__).resolve().parents[2] / "workflows" / f"{name}.yaml"
    return str(here) if here.exists() else str(p)
