"""The worker side of a run: one stage over a batch of video ids.

A :class:`StageWorker` reads its inputs from the store itself (the videos' rows, their rows of the
stage's input table, the rows of other tables its operators read), runs the operators
(:func:`curation.operator.run_stage`) and writes what is large itself: rows an operator emits as
uncommitted Lance fragments of their table, large annotations as Arrow files under
``<store>/_staging/<run>``. Only small results travel back inline; the committer
(:mod:`curation.commit`) makes them visible. It is used as a Ray actor (operators set up once per
actor), inside a Ray task (kept per worker process: :func:`task`), or in-process; :meth:`close`
calls every operator's ``teardown()`` when the worker ends.
"""
from __future__ import annotations

import atexit
import gc
import io
import pickle
import uuid
from pathlib import Path

import pyarrow as pa

from curation import failures
from curation.operator import StepResult, key_of, run_stage
from curation.store import Store
from schemas import KEYS

INLINE_BYTES = 256 * 1024   # results larger than this are written to the store by the worker


class StageWorker:
    def __init__(self, specs: list[tuple[str, type, dict]], model_dir: str | None, table: str,
                 store_uri: str, storage_options: dict | None, run_id: str,
                 scope: str | None = None):
        self.store = Store(store_uri, storage_options)
        self.scope = scope   # the input rows made upstream of the stage (see stages.Stage.scope)
        self.table = table
        self.keys = KEYS[table]
        self.run_id = run_id
        self.setup_error: failures.Failure | None = None
        self.steps = []
        for name, cls, params in specs:
            op = cls(model_dir=model_dir, **params)
            op.artifact_root = f"{self.store.uri}/artifacts"
            self.steps.append((name, op))
        for name, op in self.steps:
            try:
                op.setup()
            except Exception as e:  # noqa: BLE001 - every video of the stage gets this error
                self.setup_error = setup_failure(name, op, e)
                break
        self.names = [spec[0] for spec in specs]
        # the objects of the imports and models made so far (hundreds of thousands) out of the
        # cyclic collector's generations: its full collections stop walking them on every pass
        gc.freeze()

    def __call__(self, video_ids: list[str]) -> list[tuple[str, list[StepResult]]]:
        if self.setup_error:
            return self._failed(video_ids, self.setup_error)
        try:
            work = self._load(video_ids)
        except Exception as e:  # noqa: BLE001 - the store could not be read: these videos fail
            return self._failed(video_ids, failures.Failure(
                "store", failures.one_line(f"cannot read inputs: {failures.describe(e)}")))
        results = run_stage(self.steps, [(video, rows) for _, video, rows in work], self.keys)
        return [(vid, [self._finish(r, rows) for r in per_step])
                for (vid, _, rows), per_step in zip(work, results)]

    def close(self) -> None:
        """The worker ends: every operator's ``teardown()`` (an error there is only logged)."""
        for name, op in self.steps:
            try:
                op.teardown()
            except Exception as e:  # noqa: BLE001
                import logging
                logging.getLogger(__name__).warning("teardown of step %s: %s", name,
                                                    failures.one_line(e))
        self.steps = []

    def _failed(self, video_ids: list[str], f: failures.Failure):
        return [(vid, [StepResult.failure(n, vid, f) for n in self.names]) for vid in video_ids]

    # ---- inputs
    def _readable(self, table: str) -> list[str]:
        return [f.name for f in self.store.schema(table)
                if not (f.metadata and f.metadata.get(b"lance-encoding:blob"))
                and not pa.types.is_large_binary(f.type)
                and not isinstance(f.type, pa.ExtensionType)]   # blobs (lance.blob.v2)

    def _rows_of(self, table: str, video_ids: list[str], columns: list[str] | None = None,
                 where: str | None = None) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {v: [] for v in video_ids}
        for r in self.store.of_videos(table, video_ids, columns, where).to_pylist():
            out[r["video_id"]].append(r)
        return out

    def _related(self, video_ids: list[str]) -> dict[str, dict[str, list[dict]]]:
        """Rows of the other tables the operators read (``reads`` of another table), per video."""
        others: dict[str, list[str]] = {}
        for _, op in self.steps:
            for t, cols in op.other_tables().items():
                others.setdefault(t, list(dict.fromkeys([*KEYS.get(t, ()), "video_id"])))
                others[t] += [c for c in cols if c not in others[t]]
        related = {}
        for t, cols in others.items():
            have = set(self.store.schema(t).names) if self.store.exists(t) else set()
            related[t] = self._rows_of(t, video_ids, [c for c in cols if c in have] or None) \
                if have else {v: [] for v in video_ids}
        return related

    def _load(self, video_ids: list[str]) -> list[tuple[str, dict, list[dict]]]:
        videos = self._rows_of("videos", video_ids, self._readable("videos"))
        first = self.steps[0][1]
        where = " AND ".join(f"({f})" for f in (first.input_filter, self.scope) if f) or None
        if self.table == "videos":
            inputs = videos
        elif self.store.exists(self.table):
            inputs = self._rows_of(self.table, video_ids, self._readable(self.table), where)
        else:
            inputs = {v: [] for v in video_ids}
        related = self._related(video_ids)
        work = []
        for vid in video_ids:
            if not videos[vid]:
                continue
            video = dict(videos[vid][0])
            if related:
                video["tables"] = {t: related[t][vid] for t in related}
            rows = [video] if self.table == "videos" else inputs[vid]
            if self.table != "videos" and "clip_index" in (rows[0] if rows else {}):
                rows.sort(key=lambda r: (r.get("shot_index") or 0, r.get("clip_index") or 0))
            work.append((vid, video, rows))
        return work

    # ---- outputs
    def _finish(self, r: StepResult, rows: list[dict]) -> StepResult:
        if r.error:   # the whole video failed this step: its input rows say so
            r.marks = failures.row_marks(r.step, [key_of(row, self.keys) for row in rows], rows,
                                         [r.error] * len(rows))
        if r.rows is not None:
            if r.rows.num_rows:
                r.rows = r.rows.append_column("run_id", pa.array([self.run_id] * r.rows.num_rows,
                                                                  pa.string()))
            r.rows = self._stage(r, dict(self.steps)[r.step])
        return r

    def _stage(self, r: StepResult, op):
        """Small results travel inline (Arrow IPC bytes). Large ones are written by the worker:
        rows an operator emits as uncommitted Lance fragments of their table (the committer commits
        the fragments' metadata), annotations (and emitted rows the table cannot take yet: a new
        column, no table) as an Arrow file under the store's staging prefix."""
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, r.rows.schema) as w:
            w.write_table(r.rows)
        data = sink.getvalue()
        if len(data) <= INLINE_BYTES:
            return data
        if op.emits:
            fragments = self.store.write_fragments(op.output_table, r.rows)
            if fragments is not None:
                return {"fragments": fragments, "rows": r.rows.num_rows}
        uri = f"{self.store.uri}/_staging/{self.run_id}/{r.step}/{r.video_id}-{uuid.uuid4().hex[:8]}.arrow"
        fs, path = fs_of(uri)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return {"staged": uri, "rows": r.rows.num_rows}


def setup_failure(step: str, op, e: BaseException) -> failures.Failure:
    """A step's setup() failed: one line naming the model file when one can be named (a deeper
    check of each file than the run's pre-check, e.g. every zip member's CRC; else the files the
    message names; else all of the step's files)."""
    from curation import weights
    files = op.weight_files() if op.model_dir else []
    bad = [f"{rel}: {what}" for rel in files
           if (what := weights.problem(Path(op.model_dir) / rel, deep=True))]
    named = [rel for rel in files if Path(rel).name in str(e)]
    where = "; ".join(bad) or ", ".join(named) or ", ".join(files)
    text = f"setup of step {step!r} failed" + (f" (model files {where})" if where else "")
    return failures.Failure("setup", failures.one_line(f"{text}: {failures.describe(e)}"))


def fs_of(uri: str):
    """(pyarrow file system, path) of a local path or object-store uri."""
    import pyarrow.fs as pafs
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri.removeprefix("file://")


def unstage(rows) -> pa.Table | None:
    """A worker's result rows as a table (None for fragments the worker wrote: the committer
    passes their metadata)."""
    if rows is None or isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, dict):
        if "fragments" in rows:
            return None
        fs, path = fs_of(rows["staged"])
        with fs.open_input_stream(path) as f:
            return pa.ipc.open_stream(f.read()).read_all()
    return pa.ipc.open_stream(rows).read_all()


# ---- stateless stages in Ray tasks: one StageWorker per worker process and stage ------------------
_TASK_WORKERS: dict[bytes, StageWorker] = {}
KEEP_TASK_WORKERS = 8


def task(args: tuple, vids: list[str]):
    """A stateless stage's call. Ray reuses worker processes, so the StageWorker (its operators,
    set up once) is kept per process for the same stage of the same run; the oldest of more than
    :data:`KEEP_TASK_WORKERS` is closed, the others when the process exits."""
    specs, *rest = args
    key = pickle.dumps(([(n, c.__module__, c.__qualname__, p) for n, c, p in specs], rest))
    worker = _TASK_WORKERS.get(key)
    if worker is None:
        while len(_TASK_WORKERS) >= KEEP_TASK_WORKERS:
            _TASK_WORKERS.pop(next(iter(_TASK_WORKERS))).close()
        worker = _TASK_WORKERS[key] = StageWorker(*args)
    return worker(vids)


@atexit.register
def _close_task_workers() -> None:
    while _TASK_WORKERS:
        _TASK_WORKERS.popitem()[1].close()
