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
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curation.media import FrameSpec, Frames, MediaError, VideoDecoder, local_path


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int | None = None

    def with_overrides(self, overrides: dict | None) -> "Resources":
        if not overrides:
            return self
        return Resources(num_cpus=float(overrides.get("num_cpus", self.num_cpus)),
                         num_gpus=float(overrides.get("num_gpus", self.num_gpus)),
                         memory_mb=overrides.get("memory_mb", self.memory_mb))


class OperatorError(RuntimeError):
    pass


class Operator:
    name: ClassVar[str] = ""
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

    def __init__(self, model_dir: str | None = None, **params):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise OperatorError(f"operator {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(self.params)) or 'none'}")
        self.p = {**self.params, **params}
        self.model_dir = model_dir

    @property
    def emits(self) -> bool:
        return self.output_table != self.input_table

    def setup(self) -> None:
        """Load models once per worker (override when ``needs_model``)."""

    def process(self, video: dict, rows: list[dict]) -> list[dict]:
        """Non-frame operators: all input rows of one video at once."""
        raise NotImplementedError

    def process_row(self, video: dict, row: dict, frames: Frames) -> dict:
        """Frame operators: one input row with its decoded frames at ``self.frames``."""
        raise NotImplementedError

    def params_hash(self) -> str:
        blob = json.dumps({"op": self.name, "version": self.version, "params": self.p},
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class StepResult:
    """What one step produced for one video."""
    step: str
    video_id: str
    rows: pa.Table | None = None      # the output rows (annotations keyed, or emitted rows)
    error: str | None = None          # a failure of the whole video for this step
    seconds: float = 0.0
    marks: list[dict] | None = None   # input rows whose error this step sets or clears (key + error)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, (MediaError, OperatorError)) else f"{type(e).__name__}: {msg}"


def _to_table(op: Operator, out: list[dict], keys: list[dict]) -> tuple[pa.Table, list[dict]]:
    """Check ``out`` against the declared schema; return the table of values (with the keys of
    annotated rows) and the error marks (rows that set or clear their ``error``), kept apart so
    that writing one step's values never touches an error another step recorded."""
    declared = set(op.writes.names)
    key_names = set(keys[0]) if keys else set()
    marks = []
    for i, d in enumerate(out):
        extra = set(d) - declared - key_names - {"error", "error_stage"}
        if extra:
            raise OperatorError(f"operator {op.name!r} returned undeclared column(s) "
                                f"{', '.join(sorted(extra))}")
        if "error" in d and keys:
            marks.append({**keys[i], "error": d["error"], "error_stage": d.get("error_stage")})
    body = pa.Table.from_pylist([{n: d.get(n) for n in op.writes.names} for d in out],
                                schema=op.writes)
    if keys:
        key_table = pa.Table.from_pylist(keys)
        for name in key_table.column_names:
            if name not in body.column_names:
                body = body.append_column(name, key_table[name])
    return body, marks


def key_of(row: dict, key: tuple[str, ...]) -> dict:
    return {k: row[k] for k in key}


def run_steps_on_video(steps: list[tuple[str, Operator]], video: dict, rows: list[dict],
                       keys: tuple[str, ...]) -> list[StepResult]:
    """Run one step (any operator) or a fused group of frame steps over one video.

    ``rows`` are the video's rows of the steps' input table; ``keys`` that table's key columns.
    Errors never escape: a failure of the whole video is returned as ``StepResult.error``, a failure
    on one row (frame operators) as that row's ``error``.
    """
    if len(steps) == 1 and steps[0][1].frames is None:
        step, op = steps[0]
        t0 = time.perf_counter()
        try:
            out = op.process(video, rows)
            if op.emits:
                table, marks = _to_table(op, out, [])
            else:
                if len(out) != len(rows):
                    raise OperatorError(f"operator {op.name!r} returned {len(out)} rows for "
                                        f"{len(rows)} input rows")
                out = [{**d, "error": None, "error_stage": None} if r.get("error_stage") == step else d
                       for d, r in zip(out, rows)]
                table, marks = _to_table(op, out, [key_of(r, keys) for r in rows])
            return [StepResult(step, video["video_id"], rows=table,
                               seconds=time.perf_counter() - t0, marks=marks)]
        except Exception as e:  # noqa: BLE001 - recorded on the row, never fatal for the run
            return [StepResult(step, video["video_id"], error=one_line(e),
                               seconds=time.perf_counter() - t0)]
    return _run_frame_group(steps, video, rows, keys)


def _run_frame_group(steps, video, rows, keys) -> list[StepResult]:
    spec = FrameSpec.union([op.frames for _, op in steps])
    outs: dict[str, list[dict]] = {step: [] for step, _ in steps}
    secs: dict[str, float] = {step: 0.0 for step, _ in steps}
    t0 = time.perf_counter()
    try:
        with local_path(video["uri"]) as path:
            decoder = VideoDecoder(path, rotation=video.get("rotation") or 0, max_side=spec.max_side,
                                   display_size=(video.get("width"), video.get("height")))
            decode_s = time.perf_counter() - t0
            for row in rows:
                start = row.get("start_s", 0.0) or 0.0
                end = row.get("end_s") or video.get("duration_s") or 1e9
                t = time.perf_counter()
                try:
                    frames = decoder.span(start, end, spec.fps)
                    err = None if len(frames) else f"no frames decoded between {start:.2f}s and {end:.2f}s"
                except MediaError as e:
                    frames, err = None, one_line(e)
                decode_s += time.perf_counter() - t
                for step, op in steps:
                    t = time.perf_counter()
                    if err:
                        outs[step].append({"error": err, "error_stage": step})
                        continue
                    try:
                        view = frames.sample(op.frames.fps, op.frames.max_side)
                        d = op.process_row(video, row, view)
                        if row.get("error_stage") == step:  # a re-run that now succeeds clears it
                            d = {**d, "error": None, "error_stage": None}
                        outs[step].append(d)
                    except Exception as e:  # noqa: BLE001
                        outs[step].append({"error": one_line(e), "error_stage": step})
                    secs[step] += time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - the video could not be opened for decoding
        return [StepResult(step, video["video_id"], error=one_line(e)) for step, _ in steps]
    results = []
    key_rows = [key_of(r, keys) for r in rows]
    for step, op in steps:
        # decode time is shared: each step is charged its share
        seconds = secs[step] + decode_s / len(steps)
        try:
            table, marks = _to_table(op, outs[step], key_rows)
            results.append(StepResult(step, video["video_id"], table, seconds=seconds, marks=marks))
        except Exception as e:  # noqa: BLE001
            results.append(StepResult(step, video["video_id"], error=one_line(e), seconds=seconds))
    return results

