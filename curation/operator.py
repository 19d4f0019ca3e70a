"""The Operator contract, and how a group of operators runs over one video (no Ray in here).

An operator is a small class. It declares:

- ``name`` (the key used in workflows, equal to its file name in ``operators/``) and ``version``
  (bump it when its output changes: resume re-runs rows done by another version);
- ``input_table``: the rows it is given, per video (``videos``, ``shots`` or ``clips``);
- ``output_table``: where its output goes. Equal to ``input_table``: it *annotates* each input row
  with the columns of ``writes`` (one output dict per input row). Different: it *emits* new rows of
  ``output_table`` (e.g. shots from a video) that replace that video's rows there;
- ``reads``: the columns it needs, as ``table.column``; the workflow loader checks that an upstream
  step writes each of them;
- ``writes``: an Arrow schema of its output columns (checked on every batch);
- ``params``: parameter names and defaults (the workflow may set only these);
- ``resources``: cpus / gpus / memory per worker;
- ``frames``: a :class:`~curation.media.FrameSpec` when it consumes decoded frames. Frame operators
  implement ``process_row(video, row, frames)``; adjacent frame steps share one decode of each span;
- ``needs_model``: True when ``setup()`` loads weights from the model directory (actor pool, loaded
  once per worker);
- ``inline``: True for operators that only compute over metadata (no media, microseconds per
  video): the driver runs them itself, since shipping them to Ray costs more than the work.

Added for model-backed and person-centric steps:

- ``params`` values may be :class:`Param` (type, choices, help); plain values are Params whose type
  is the default's. Values are checked when the workflow loads (exit 2 naming step and parameter).
- ``weights``: files the operator loads, relative to the model directory (``--models``); override
  :meth:`weight_files` when they depend on parameters. ``curation run`` checks them all before the
  first step runs.
- ``reads`` may name columns of other tables of the same video (``tracks.face_boxes``): the worker
  hands the operator that video's rows of each such table in ``video["tables"][table]``.
- ``input_filter``: SQL predicate selecting the input rows the operator gets (e.g. person clips);
  ``emit_scope``: for emitting operators, the rows of ``output_table`` they own (their rows replace
  the video's rows matching it, so two operators can emit into one table).
- Emitting frame operators return a list of rows from ``process_row``.
- ``batch_size``: videos per worker call (a step may override it, with ``workers`` for its own pool
  size); :meth:`process_rows` may run a network over the frames of several rows/videos at once.
- ``artifact_dir(video_id)``: where an operator may write files (audio stems) under the store.

Frame memory (a worker's batch, long shots):

- A frame stage decodes rows in groups of at most ``budget_bytes`` decoded bytes
  (:data:`FRAME_BUDGET_BYTES`, 1 GiB; ``run_stage(..., budget_bytes=)``): rows are decoded until
  the next one would take the group over the budget, then every step's ``process_rows`` runs on the
  group (so a network still batches across the group's rows and videos), the frames are freed and
  the next group is decoded. A batch that fits is one group, as before; a single row larger than
  the budget is a group of its own. Results, per-row errors, seconds and output order do not depend
  on the grouping (seconds: each call's time shared by its rows, as in one call over the batch).
- Long spans stream. A frame operator may implement :meth:`Operator.stream` (``stream(video, row,
  times)`` returning a sink with ``add(frames)`` and ``finish()``; :class:`FrameSink`). A row whose
  frames span :data:`CHUNK_S` seconds (10 s; ``run_stage(..., chunk_s=)``) or more is then decoded
  once, in consecutive chunks of at most that many seconds (:meth:`VideoDecoder.chunks`), and every
  streaming step of the fused group gets each chunk's frames at its own FrameSpec in lockstep;
  ``finish()`` returns what ``process_row`` would for the whole span. Each step's frames are on the
  grid of the whole span (the same frames ``process_row`` would get); ``times`` lists them before
  decoding. Steps without ``stream`` (or whose ``stream`` returns None) get the whole span, put
  together from the same chunks, through ``process_rows``; shorter rows go to every step whole.
  Memory of a streamed row: one chunk plus what the sinks keep (people: the tracker's lag of about
  ``max_gap_s + min_track_s`` seconds of frames; references: a few candidate frames). If the decode
  has to start again on another path (:class:`curation.media.ChunksRestart`), the sinks are made
  anew and the row is streamed again from its start. People (shots -> tracks) and references
  (tracks) stream; other frame operators run on clips (at most 10 s) and take the whole span.
- Steps share decoded frames (a view at a spec two steps have in common, or the frames themselves
  when nothing is to be thinned or resized): operators must not write into ``frames.images``.
- decord goes on decoding the rest of a video into memory while the steps work (gigabytes within
  seconds): the video's decoder is paused (:meth:`VideoDecoder.pause`) before a group runs with it
  still open, and after each chunk it reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from curation import failures
from curation.media import ChunksRestart, FrameSpec, Frames, MediaError, VideoDecoder, local_path

FRAME_BUDGET_BYTES = 1 << 30   # decoded bytes of rows a frame stage holds before its steps run on them
CHUNK_S = 10.0                 # seconds of frames per chunk for the steps that stream long rows


@dataclass(frozen=True)
class Param:
    """A typed operator parameter: default, type (inferred from the default when not given),
    allowed choices and a help line. Checked when the workflow loads."""
    default: Any
    type: type | tuple | None = None
    choices: tuple | None = None
    help: str = ""

    def kind(self):
        if self.type is not None:
            return self.type
        if isinstance(self.default, bool):
            return bool
        if isinstance(self.default, (int, float)):
            return (int, float)   # a float default takes an int value, an int default a float
        if self.default is None:
            return None
        return type(self.default)

    def check(self, op: str, name: str, value: Any) -> Any:
        kind = self.kind()
        if kind is not None and value is not None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            if not ok:
                want = " or ".join(k.__name__ for k in kinds)
                raise OperatorError(f"operator {op!r}: parameter {name!r} must be {want}, "
                                    f"got {value!r} ({type(value).__name__})")
        if self.choices is not None and value not in self.choices:
            raise OperatorError(f"operator {op!r}: parameter {name!r} must be one of "
                                f"{', '.join(map(str, self.choices))}; got {value!r}")
        return value


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int | None = None
    custom: tuple[tuple[str, float], ...] = ()   # Ray custom resources, e.g. (("accelerator", 1),)

    def with_overrides(self, overrides: dict | None) -> "Resources":
        if not overrides:
            return self
        custom = overrides.get("custom")
        return Resources(num_cpus=float(overrides.get("num_cpus", self.num_cpus)),
                         num_gpus=float(overrides.get("num_gpus", self.num_gpus)),
                         memory_mb=overrides.get("memory_mb", self.memory_mb),
                         custom=tuple(sorted((str(k), float(v)) for k, v in custom.items()))
                         if isinstance(custom, dict) else self.custom)


class OperatorError(RuntimeError):
    pass


class Operator:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""          # one line: what it computes (`curation schema --operators`)
    version: ClassVar[str] = "1"
    input_table: ClassVar[str] = "videos"
    output_table: ClassVar[str] = "videos"
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[pa.Schema] = pa.schema([])
    params: ClassVar[dict[str, Any]] = {}
    resources: ClassVar[Resources] = Resources()
    frames: ClassVar[FrameSpec | None] = None
    needs_model: ClassVar[bool] = False
    inline: ClassVar[bool] = False
    weights: ClassVar[tuple[str, ...]] = ()
    input_filter: ClassVar[str | None] = None
    emit_scope: ClassVar[str | None] = None
    batch_size: ClassVar[int] = 1

    def __init__(self, model_dir: str | None = None, **params):
        specs = self.param_specs()
        unknown = sorted(set(params) - set(specs))
        if unknown:
            raise OperatorError(f"operator {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(specs)) or 'none'}")
        for name, value in params.items():
            specs[name].check(self.name, name, value)
        self.p = {**{k: v.default for k, v in specs.items()}, **params}
        self.model_dir = model_dir
        self.artifact_root: str | None = None   # set by the worker: <store>/artifacts

    @classmethod
    def param_specs(cls) -> dict[str, Param]:
        return {k: v if isinstance(v, Param) else Param(v) for k, v in cls.params.items()}

    @property
    def emits(self) -> bool:
        return self.output_table != self.input_table

    def weight_files(self) -> list[str]:
        """Model files this operator loads with its parameters, relative to the model directory."""
        return list(self.weights)

    def other_tables(self) -> dict[str, list[str]]:
        """Tables other than the input table and ``videos`` whose columns this operator reads."""
        out: dict[str, list[str]] = {}
        for ref in self.reads:
            table, _, column = ref.partition(".")
            if table not in (self.input_table, "videos"):
                out.setdefault(table, []).append(column)
        return out

    def artifact_dir(self, video_id: str) -> str:
        """A directory (or object-store prefix) under the store for this operator's files of one
        video (audio stems, crops); rows keep their URIs."""
        if not self.artifact_root:
            raise OperatorError(f"operator {self.name!r}: no store to write files to")
        return f"{self.artifact_root}/{self.name}/{video_id}"

    def setup(self) -> None:
        """Load models once per worker (override when ``needs_model``)."""

    def teardown(self) -> None:
        """Release what ``setup()`` holds (native graphs, sessions, files) when the worker ends."""

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        """Non-frame operators: all input rows of one video at once."""
        raise NotImplementedError

    def process_row(self, video: dict, row: dict, frames: Frames) -> dict | list[dict]:
        """Frame operators: one input row with its decoded frames at ``self.frames`` (annotating
        operators return one dict; emitting operators a list of new rows). An operator that only
        implements :meth:`process_rows` gets this for free (one item; its exception raised)."""
        if type(self).process_rows is Operator.process_rows:
            raise NotImplementedError(f"operator {self.name!r} implements neither process_row "
                                      f"nor process_rows")
        out = self.process_rows([(video, row, frames)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def stream(self, video: dict, row: dict, times: np.ndarray) -> "FrameSink | None":
        """Frame operators that can take a long row's span chunk by chunk: return a sink for this
        row (None: take the whole span, as without this method). ``times``: the times of all the
        frames the sink will get, in order, at ``self.frames`` (the whole span's sampling grid,
        known before they are decoded; a truncated stream may end early). The worker then calls
        ``sink.add(frames)`` with consecutive, non-empty chunks of those frames and ``sink.finish()``,
        which returns what :meth:`process_row` returns for the whole span. An exception from
        ``stream``, ``add`` or ``finish`` is that row's error."""
        return None

    def process_rows(self, items: list[tuple[dict, dict, Frames]]) -> list:
        """Frame operators, several rows (of one or more videos) at once: override to batch a
        network over them. Returns, per item, what process_row returns or the Exception raised
        (by default :meth:`process_row` on each item)."""
        out = []
        for video, row, frames in items:
            try:
                out.append(self.process_row(video, row, frames))
            except Exception as e:  # noqa: BLE001 - that row's error
                out.append(e)
        return out

    def params_hash(self) -> str:
        blob = json.dumps({"op": self.name, "version": self.version, "params": self.p},
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


class FrameSink(Protocol):
    """What :meth:`Operator.stream` returns: takes one row's frames in chunks."""

    def add(self, frames: Frames) -> None: ...

    def finish(self) -> dict | list[dict]: ...


@dataclass
class StepResult:
    """What one step produced for one video."""
    step: str
    video_id: str
    rows: pa.Table | None = None      # the output rows (annotations keyed, or emitted rows)
    error: str | None = None          # a failure of the whole video for this step
    seconds: float = 0.0
    marks: list[dict] | None = None   # input rows whose error this step sets or clears (key + error)
    kind: str | None = None           # the failure's kind (curation.failures.POLICY), None when ok

    @property
    def retry(self) -> bool:
        """The next run repeats this (video, step): it failed for a reason not the video's own."""
        return self.kind is not None and failures.retried(self.kind)

    @classmethod
    def failure(cls, step: str, video_id: str, f: "failures.Failure", seconds: float = 0.0) -> "StepResult":
        """The whole video failed this step."""
        return cls(step, video_id, error=f.message, kind=f.kind, seconds=seconds)


def one_line(e: BaseException) -> str:
    return failures.of(e).message


# A row missing a declared column fails instead of writing null: set in tests (tests/conftest.py
# sets CURATION_STRICT_COLUMNS=1, which Ray workers and subprocesses inherit)
STRICT_COLUMNS = os.environ.get("CURATION_STRICT_COLUMNS") == "1"


def _to_table(op: Operator, out: list[dict], keys: list[dict]) -> pa.Table:
    """The values of ``out`` (one dict per row, errors left out) as a table of the declared schema,
    with the keys of annotated rows. A column that is not declared fails the step; a declared one a
    row leaves out is null (with :data:`STRICT_COLUMNS`: fails, so a test sees it)."""
    declared = set(op.writes.names)
    key_names = set(keys[0]) if keys else set()
    for d in out:
        extra = set(d) - declared - key_names - {"error", "error_stage"}
        if extra:
            raise OperatorError(f"operator {op.name!r} returned undeclared column(s) "
                                f"{', '.join(sorted(extra))}")
        if STRICT_COLUMNS and d and not d.get("error") and declared - set(d):
            raise OperatorError(f"operator {op.name!r} did not return column(s) "
                                f"{', '.join(sorted(declared - set(d)))}")
    body = pa.Table.from_pylist([{n: d.get(n) for n in op.writes.names} for d in out],
                                schema=op.writes)
    if keys:
        key_table = pa.Table.from_pylist(keys)
        for name in key_table.column_names:
            if name not in body.column_names:
                body = body.append_column(name, key_table[name])
    return body


def _outcome(d) -> str | None:
    """A row's error from what the operator returned for it (None: the row succeeded)."""
    return d.get("error") if isinstance(d, dict) else None


def key_of(row: dict, key: tuple[str, ...]) -> dict:
    return {k: row[k] for k in key}


def run_steps_on_video(steps: list[tuple[str, Operator]], video: dict, rows: list[dict],
                       keys: tuple[str, ...]) -> list[StepResult]:
    """Run one step (any operator) or a fused group of frame steps over one video."""
    return run_stage(steps, [(video, rows)], keys)[0]


def run_stage(steps: list[tuple[str, Operator]], work: list[tuple[dict, list[dict]]],
              keys: tuple[str, ...], budget_bytes: int | None = None,
              chunk_s: float | None = None) -> list[list[StepResult]]:
    """Run one step or a fused group of frame steps over a batch of videos; ``work`` holds each
    video's row and its rows of the steps' input table, ``keys`` that table's key columns.
    ``budget_bytes`` / ``chunk_s``: frame steps' memory budget and chunk length (default
    :data:`FRAME_BUDGET_BYTES`, :data:`CHUNK_S`; see the module docstring).

    Returns, per video, one StepResult per step. Errors never escape: a failure of a whole video is
    ``StepResult.error``; a failure on one row (frame operators) is that row's ``error``.
    """
    if len(steps) == 1 and steps[0][1].frames is None:
        return [[_run_plain(steps[0], video, rows, keys)] for video, rows in work]
    return _run_frame_group(steps, work, keys,
                            FRAME_BUDGET_BYTES if budget_bytes is None else int(budget_bytes),
                            CHUNK_S if chunk_s is None else float(chunk_s))


def _run_plain(step_op, video, rows, keys) -> StepResult:
    step, op = step_op
    t0 = time.perf_counter()
    try:
        out = op.process(video, rows)
        if not op.emits and len(out) != len(rows):
            raise OperatorError(f"operator {op.name!r} returned {len(out)} rows for "
                                f"{len(rows)} input rows")
        key_rows = [key_of(r, keys) for r in rows]
        if op.emits:   # new rows; the input rows succeeded
            table, outcomes = _to_table(op, out, []), [None] * len(rows)
        else:
            table, outcomes = _to_table(op, out, key_rows), [_outcome(d) for d in out]
        return StepResult(step, video["video_id"], rows=table, seconds=time.perf_counter() - t0,
                          marks=failures.row_marks(step, key_rows, rows, outcomes))
    except Exception as e:  # noqa: BLE001 - recorded on the row, never fatal for the run
        return StepResult.failure(step, video["video_id"], failures.of(e), time.perf_counter() - t0)


def _streams(op: Operator) -> bool:
    """True when the operator overrides :meth:`Operator.stream`."""
    return type(op).stream is not Operator.stream


def _run_frame_group(steps, work, keys, budget: int, chunk_s: float) -> list[list[StepResult]]:
    """Decode each row's span once for all the steps and hand each step its own view of the frames,
    in groups of rows of at most ``budget`` decoded bytes: a step's process_rows sees the rows of
    every video of a group at once (all the batch when it fits). Rows longer than ``chunk_s`` go
    to the steps that stream chunk by chunk (see the module docstring)."""
    spec = FrameSpec.union([op.frames for _, op in steps])
    n = len(steps)
    videos = [{"error": None, "decode_s": 0.0, "step_s": [0.0] * n} for _ in work]
    got: list[dict] = [{} for _ in steps]   # per step: (video, row) -> output or Exception
    errs: dict = {}                          # (video, row) -> the row's decode error
    group: list[tuple] = []                  # decoded rows not yet run: (vi, ri, video, row, frames, done)
    held = 0
    open_decoder: list = [None]              # the decoder of the video being read (see _decoded)

    def run_group():
        nonlocal held
        if open_decoder[0] is not None:      # no decoding ahead while the steps run
            open_decoder[0].pause()
        for si, (step, op) in enumerate(steps):
            todo = [g for g in group if si not in g[5] and not videos[g[0]]["error"]]
            items = [(video, row, frames.sample(op.frames.fps, op.frames.max_side))
                     for _, _, video, row, frames, _ in todo]
            t = time.perf_counter()
            outs = op.process_rows(items) if items else []
            step_s = time.perf_counter() - t
            del items
            for g, out in zip(todo, outs):
                got[si][(g[0], g[1])] = out
            mine: dict[int, int] = {}
            for g in todo:
                mine[g[0]] = mine.get(g[0], 0) + 1
            for vi, k in mine.items():
                videos[vi]["step_s"][si] += step_s * k / len(todo)
        group.clear()
        held = 0

    for kind, value in _decoded(steps, work, spec, chunk_s, videos, got, errs, open_decoder):
        if kind == "plan":       # about to decode this many bytes: run what is held first if needed
            if group and held + value > budget:
                run_group()
        else:
            group.append(value)
            held += value[4].nbytes()
            if held >= budget:
                run_group()
    run_group()
    return _results(steps, work, keys, videos, got, errs)


def _decoded(steps, work, spec: FrameSpec, chunk_s: float, videos: list[dict], got: list[dict],
             errs: dict, open_decoder: list):
    """Per video, per row: ``("plan", bytes)`` before a row is decoded whole, then ``("row", (vi,
    ri, video, row, frames, done))``; a row longer than ``chunk_s`` that a step streams is streamed
    here (:func:`_stream_row`) and comes as a row only for the steps that take the whole span.
    Decode errors of a row go to ``errs``; a video that cannot be decoded at all gets its error in
    ``videos``. ``open_decoder[0]``: the decoder of the video being read, while it is open."""
    streaming = any(_streams(op) for _, op in steps)
    for vi, (video, rows) in enumerate(work):
        pv = videos[vi]
        t = time.perf_counter()
        try:
            with local_path(video["uri"]) as path:
                decoder = VideoDecoder(path, rotation=video.get("rotation") or 0, max_side=spec.max_side,
                                       display_size=(video.get("width"), video.get("height")))
                open_decoder[0] = decoder
                pv["decode_s"] += time.perf_counter() - t
                for ri, row in enumerate(rows):
                    start = row.get("start_s", 0.0) or 0.0
                    end = row.get("end_s") or video.get("duration_s") or 1e9
                    idx = decoder.positions(start, end)
                    if streaming and len(idx) and \
                            decoder.times[idx[-1]] - decoder.times[idx[0]] >= chunk_s - 1e-9:
                        yield "plan", sum(decoder.nbytes(idx, op.frames) for _, op in steps
                                          if not _streams(op))
                        frames, done = _stream_row(steps, video, row, vi, ri, decoder, (start, end),
                                                   spec, chunk_s, pv, got, errs)
                        if frames is not None:
                            yield "row", (vi, ri, video, row, frames, done)
                        continue
                    yield "plan", decoder.nbytes(idx, spec)
                    t = time.perf_counter()
                    try:
                        frames = decoder.span(start, end, spec)
                        if not len(frames):
                            errs[(vi, ri)] = f"no frames decoded between {start:.2f}s and {end:.2f}s"
                    except MediaError as e:
                        frames, errs[(vi, ri)] = None, one_line(e)
                    pv["decode_s"] += time.perf_counter() - t
                    if (vi, ri) not in errs:
                        yield "row", (vi, ri, video, row, frames, frozenset())
                    del frames
        except Exception as e:  # noqa: BLE001 - the video could not be opened or decoded
            pv["error"] = failures.of(e)
        finally:
            open_decoder[0] = decoder = None


def _stream_row(steps, video, row, vi, ri, decoder, span, spec, chunk_s, pv, got, errs):
    """One decode of a long row in chunks, fed in lockstep to every step that streams (their
    outputs go to ``got``); the steps that do not get the whole span, put together from the same
    chunks: returns (those frames or None, the steps that streamed)."""
    views = True
    for _attempt in range(3):
        t = time.perf_counter()
        try:
            chunks = decoder.chunks(*span, spec, chunk_s=chunk_s, views=views)
        except MediaError as e:
            errs[(vi, ri)] = one_line(e)
            return None, frozenset()
        pv["decode_s"] += time.perf_counter() - t
        sinks, whole = _sinks(steps, video, row, chunks, pv)
        try:
            _feed(steps, chunks, sinks, whole, pv)
        except ChunksRestart:   # the decode starts again on another path (sinks made anew)
            views = False
            continue
        except MediaError as e:
            errs[(vi, ri)] = one_line(e)
            return None, frozenset()
        finally:
            chunks.close()
        for si, sink in sinks.items():
            got[si][(vi, ri)] = _finished(sink, pv, si)
        if not whole:
            return None, frozenset(sinks)
        if any(g is None for g in whole.values()):
            errs[(vi, ri)] = f"no frames decoded between {span[0]:.2f}s and {span[1]:.2f}s"
            return None, frozenset()
        frames = [_gathered(g) for g in whole.values()]
        return Frames(images=frames[0].images, times=frames[0].times, fps=frames[0].fps,
                      indices=frames[0].indices, scale=frames[0].scale,
                      views=dict(zip(whole, frames))), frozenset(sinks)
    raise MediaError("the chunked decode had to start again too often")


def _sinks(steps, video, row, chunks, pv) -> tuple[dict, dict]:
    """The sink of each step that streams this row (or the exception its ``stream`` raised), and
    the views the other steps need whole (key -> None, filled by :func:`_feed`)."""
    sinks: dict[int, Any] = {}
    whole: dict[tuple, Any] = {}
    for si, (_, op) in enumerate(steps):
        key = (op.frames.fps, op.frames.max_side)
        if _streams(op):
            t = time.perf_counter()
            try:
                sink = op.stream(video, row, chunks.times[key])
            except Exception as e:  # noqa: BLE001 - that row's error
                sink = e
            pv["step_s"][si] += time.perf_counter() - t
            if sink is not None:
                sinks[si] = sink
                continue
        whole.setdefault(key, None)
    return sinks, whole


def _feed(steps, chunks, sinks: dict, whole: dict, pv) -> None:
    """Every chunk to every sink at its step's view (a sink that raised is that row's error for
    that step), and into the whole-span views."""
    for chunk in _timed(chunks, pv):
        if not whole and all(isinstance(s, BaseException) for s in sinks.values()):
            break   # every streaming step failed on this row: nothing left to decode for
        for si, sink in sinks.items():
            op = steps[si][1]
            view = chunk.sample(op.frames.fps, op.frames.max_side)
            if isinstance(sink, BaseException) or not len(view):
                continue
            t = time.perf_counter()
            try:
                sink.add(view)
            except Exception as e:  # noqa: BLE001 - that row's error for this step
                sinks[si] = e
            pv["step_s"][si] += time.perf_counter() - t
        for key in whole:
            whole[key] = _gather(whole[key], chunk.sample(*key), len(chunks.times[key]))
        chunk = view = None   # not held while the next chunk decodes


def _finished(sink, pv, si: int):
    """What a sink returns for the whole row (or the exception it raised, or raised before)."""
    if isinstance(sink, BaseException):
        return sink
    t = time.perf_counter()
    try:
        return sink.finish()
    except Exception as e:  # noqa: BLE001
        return e
    finally:
        pv["step_s"][si] += time.perf_counter() - t


def _timed(chunks, pv):
    """The chunks, the time spent decoding each added to the video's decode seconds."""
    it = iter(chunks)
    while True:
        t = time.perf_counter()
        chunk = next(it, None)
        pv["decode_s"] += time.perf_counter() - t
        if chunk is None:
            return
        yield chunk
        chunk = None


def _gather(acc, view: Frames, total: int):
    """Copy a chunk's view into the whole span's arrays (allocated at the first chunk: ``total``
    frames planned). ``acc``: None or (images, times, indices, filled, view)."""
    if acc is None:
        acc = (np.empty((total, *view.images.shape[1:]), np.uint8), np.empty(total),
               np.empty(total, np.int64), 0, view)
    images, times, indices, at, first = acc
    m = len(view)
    images[at:at + m], times[at:at + m] = view.images, view.times
    indices[at:at + m] = view.indices
    return images, times, indices, at + m, first if len(first) else view


def _gathered(acc) -> Frames:
    images, times, indices, at, first = acc
    return Frames(images=images[:at], times=times[:at], fps=first.fps, indices=indices[:at],
                  scale=first.scale)


def _results(steps, work, keys, videos, got, errs) -> list[list[StepResult]]:
    """Per video, per step: its StepResult from the rows' outputs and errors."""
    results: list[list[StepResult]] = [[] for _ in work]
    for si, (step, op) in enumerate(steps):
        for vi, (video, rows) in enumerate(work):
            pv = videos[vi]
            if pv["error"]:
                results[vi].append(StepResult.failure(step, video["video_id"], pv["error"]))
                continue
            outs = [errs.get((vi, ri), got[si].get((vi, ri))) for ri in range(len(rows))]
            results[vi].append(_step_result(step, op, video, rows, keys, outs,
                                            pv["decode_s"] / len(steps) + pv["step_s"][si]))
    return results


def _step_result(step, op, video, rows, keys, outs, seconds) -> StepResult:
    """One step's result for one video of a frame stage, from each row's output: a dict (or a list
    of new rows for an emitting operator), an Exception, or a decode error (str)."""
    outcomes, values, emitted = [], [], []
    kind = None      # a row failure not the video's fault makes the next run repeat this step
    for d in outs:
        if isinstance(d, BaseException):
            f = failures.of(d)
            kind = f.kind if f.retry else kind
            d = f.message
        elif op.emits and not isinstance(d, (list, str)):
            d = f"operator {op.name!r} must return a list of rows"
        if isinstance(d, str):
            outcomes.append(d)
            values.append({})
        elif op.emits:
            outcomes.append(None)
            emitted.extend(d)
        else:
            outcomes.append(_outcome(d))
            values.append(d)
    try:
        key_rows = [key_of(r, keys) for r in rows]
        table = _to_table(op, emitted, []) if op.emits else _to_table(op, values, key_rows)
        return StepResult(step, video["video_id"], table, seconds=seconds, kind=kind,
                          marks=failures.row_marks(step, key_rows, rows, outcomes))
    except Exception as e:  # noqa: BLE001
        return StepResult.failure(step, video["video_id"], failures.of(e), seconds)
