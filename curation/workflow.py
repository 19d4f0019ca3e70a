"""YAML workflows: load, validate the DAG, and plan it into stages.

A workflow names its steps (``op``, ``params``, ``after``, ``resources``) and the ``filters`` that make
the funnel (named SQL keep-predicates over ``clips``, applied in order; scores are stored, decisions
live here and in queries)::

    name: demo
    steps:
      - {name: probe, op: probe}
      - {name: shots, op: shots, after: [probe], params: {detector: content}}
    filters:
      - {name: long_enough, where: "duration_s >= 2"}

Loading checks: known keys, known operators and parameters, ``after`` naming real steps, no cycles,
and that every column a step reads is written by a step upstream of it (or by ingest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from curation.operator import Operator, OperatorError, Resources
from curation.sql import validate_where

# Columns present before any step runs (written by ingest).
INGEST_COLUMNS = {"videos": {"video_id", "uri", "size_bytes", "schema_version", "run_id"}}
STEP_KEYS = {"name", "op", "params", "after", "resources", "description", "batch_size", "workers"}
TOP_KEYS = {"name", "description", "steps", "filters"}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory_mb", "custom"}


class WorkflowError(ValueError):
    exit_code = 2


class MissingWeightsError(WorkflowError):
    """A step's declared model file is not in the model directory (checked before any step runs)."""


@dataclass
class Step:
    name: str
    op: str
    params: dict = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    resources: dict = field(default_factory=dict)
    op_cls: type[Operator] | None = None
    batch_size: int | None = None   # videos per worker call (default: the operator's)
    workers: int | None = None      # this step's own pool size (default: --workers)

    def make(self, model_dir: str | None = None) -> Operator:
        return self.op_cls(model_dir=model_dir, **self.params)

    def videos_per_call(self) -> int:
        return int(self.batch_size or self.op_cls.batch_size or 1)

    def resource_request(self) -> Resources:
        return self.op_cls.resources.with_overrides(self.resources)


@dataclass
class Filter:
    name: str
    where: str


@dataclass
class Workflow:
    name: str
    steps: list[Step]
    filters: list[Filter]
    text: str = ""
    description: str = ""

    @property
    def by_name(self) -> dict[str, Step]:
        return {s.name: s for s in self.steps}

    def descendants(self, name: str) -> set[str]:
        out, frontier = set(), [name]
        while frontier:
            cur = frontier.pop()
            for s in self.steps:
                if cur in s.after and s.name not in out:
                    out.add(s.name)
                    frontier.append(s.name)
        return out

    def ancestors(self, name: str) -> set[str]:
        out, frontier = set(), list(self.by_name[name].after)
        while frontier:
            cur = frontier.pop()
            if cur not in out:
                out.add(cur)
                frontier.extend(self.by_name[cur].after)
        return out

    def stages(self) -> list[list[Step]]:
        """Steps in dependency order, grouped: adjacent frame steps over the same table with no
        dependency between them form one stage and share one decode of each video."""
        order = _topo_order(self.steps)
        stages: list[list[Step]] = []
        for step in order:
            cls = step.op_cls
            last = stages[-1] if stages else None
            # fuse frame steps over the same rows, but never a GPU (or model) step with a step of
            # another kind: a GPU must not wait for a neighbour's CPU work
            if (last and cls.frames is not None and all(s.op_cls.frames is not None for s in last)
                    and all(s.op_cls.input_table == cls.input_table for s in last)
                    and all(s.op_cls.input_filter == cls.input_filter for s in last)
                    and all(_kind(s) == _kind(step) for s in last)
                    and not any(s.name in self.ancestors(step.name) for s in last)):
                last.append(step)
            else:
                stages.append([step])
        return stages


def _kind(step: Step) -> tuple:
    r = step.resource_request()
    return (r.num_gpus > 0, step.op_cls.needs_model)


def check_weights(wf: Workflow, model_dir: str | None) -> None:
    """Raise MissingWeightsError naming every step and model file that is missing or does not look
    loadable (empty, truncated, not its format: :mod:`curation.weights`), before any step runs."""
    bad = weight_problems(wf, model_dir)
    if bad:
        listed = "; ".join(f"step {s!r} needs {p}" + ("" if what == "missing" else f" ({what})")
                           for s, p, what in bad)
        head = ("missing model file(s)" if all(w == "missing" for *_, w in bad)
                else "model file(s) missing or not loadable")
        raise MissingWeightsError(f"{head}: {listed}")


def weight_problems(wf: Workflow, model_dir: str | None) -> list[tuple[str, str, str]]:
    """(step, path, problem) of every model file a step declares that is missing from
    ``model_dir`` or does not look loadable."""
    from curation import weights
    files = [(step.name, rel) for step in wf.steps for rel in step.make(model_dir).weight_files()]
    return [(s, f"{p} (no --models given)" if what == "no --models given" else p,
             "missing" if what in ("missing", "no --models given") else what)
            for s, p, what in weights.problems(files, model_dir)]


def _topo_order(steps: list[Step]) -> list[Step]:
    """Kahn's algorithm; among ready steps prefer frame steps next to frame steps (for fusion),
    then the order of the file."""
    by_name = {s.name: s for s in steps}
    indeg = {s.name: len(s.after) for s in steps}
    ready = [s.name for s in steps if indeg[s.name] == 0]
    order: list[Step] = []
    while ready:
        prev_frames = bool(order) and order[-1].op_cls.frames is not None
        ready.sort(key=lambda n: (not (prev_frames and by_name[n].op_cls.frames is not None),
                                  [s.name for s in steps].index(n)))
        name = ready.pop(0)
        order.append(by_name[name])
        for s in steps:
            if name in s.after:
                indeg[s.name] -= 1
                if indeg[s.name] == 0:
                    ready.append(s.name)
    if len(order) != len(steps):
        raise WorkflowError(f"cycle between steps: {_find_cycle(steps)}")
    return order


def _find_cycle(steps: list[Step]) -> str:
    by_name = {s.name: s for s in steps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in by_name[n].after:
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for s in steps:
        if s.name not in state:
            cyc = visit(s.name)
            if cyc:
                return " -> ".join(reversed(cyc))
    return "?"


def load(path_or_text: str | Path, registry: dict[str, type[Operator]] | None = None) -> Workflow:
    """A workflow from a YAML file or text, checked (see the module docstring)."""
    if registry is None:
        from operators import REGISTRY as registry
    doc, text, source, stem = _read(path_or_text)
    steps: list[Step] = []
    for i, raw in enumerate(doc["steps"]):
        steps.append(_step(raw, i, source, {s.name for s in steps}, registry))
    names = {s.name for s in steps}
    for s in steps:
        for a in s.after:
            if a not in names:
                raise WorkflowError(f"step {s.name!r}: 'after' names unknown step {a!r}")
    wf = Workflow(name=str(doc.get("name") or stem), steps=steps, filters=_filters(doc, source),
                  text=text, description=str(doc.get("description") or ""))
    _topo_order(steps)  # raises on a cycle
    _check_inputs(wf)
    _check_filters(wf)
    return wf


def _read(path_or_text: str | Path) -> tuple[dict, str, str, str]:
    """(the YAML document, its text, where it came from, a default name)."""
    p = Path(path_or_text)
    if "\n" not in str(path_or_text) and p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise WorkflowError(f"workflow file not found: {p}")
        text, source = p.read_text(), str(p)
    else:
        text, source = str(path_or_text), "<text>"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WorkflowError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise WorkflowError(f"{source}: a workflow is a mapping with 'name' and 'steps'")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise WorkflowError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(TOP_KEYS))}")
    if not doc.get("steps"):
        raise WorkflowError(f"{source}: no steps")
    return doc, text, source, p.stem


def _step(raw, i: int, source: str, seen: set[str], registry: dict) -> Step:
    """One step of the YAML, its keys, operator, resources, sizes and parameters checked."""
    if not isinstance(raw, dict) or "op" not in raw:
        raise WorkflowError(f"{source}: step {i + 1} needs an 'op'")
    name, op = str(raw.get("name", raw["op"])), str(raw["op"])
    bad = set(raw) - STEP_KEYS
    if bad:
        raise WorkflowError(f"step {name!r}: unknown key(s) {', '.join(sorted(bad))}; "
                            f"allowed: {', '.join(sorted(STEP_KEYS))}")
    if name in seen:
        raise WorkflowError(f"step {name!r} appears twice")
    if op not in registry:
        raise WorkflowError(f"step {name!r}: unknown operator {op!r}; known operators: "
                            f"{', '.join(sorted(registry))}")
    after = raw.get("after") or []
    res = raw.get("resources") or {}
    if set(res) - RESOURCE_KEYS:
        raise WorkflowError(f"step {name!r}: unknown resource(s) "
                            f"{', '.join(sorted(set(res) - RESOURCE_KEYS))}; "
                            f"allowed: {', '.join(sorted(RESOURCE_KEYS))}")
    for key in ("batch_size", "workers"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool)
                           or raw[key] < 1):
            raise WorkflowError(f"step {name!r}: {key} must be a positive integer, "
                                f"got {raw[key]!r}")
    if not isinstance(raw.get("params") or {}, dict):
        raise WorkflowError(f"step {name!r}: params must be a mapping")
    step = Step(name=name, op=op, params=dict(raw.get("params") or {}),
                after=[after] if isinstance(after, str) else list(after), resources=dict(res),
                op_cls=registry[op], batch_size=raw.get("batch_size"), workers=raw.get("workers"))
    try:
        step.make()  # checks the parameter names; loads no model (setup() is not called)
    except OperatorError as e:
        raise WorkflowError(f"step {name!r}: {e}") from None
    return step


def _filters(doc: dict, source: str) -> list[Filter]:
    filters = []
    for i, f in enumerate(doc.get("filters") or []):
        if not isinstance(f, dict) or not f.get("where"):
            raise WorkflowError(f"{source}: filter {i + 1} needs 'name' and 'where'")
        fname = str(f.get("name", f"filter_{i + 1}"))
        try:
            validate_where(str(f["where"]))
        except ValueError as e:
            raise WorkflowError(f"filter {fname!r}: {e}") from None
        filters.append(Filter(name=fname, where=str(f["where"])))
    return filters


def _check_filters(wf: Workflow) -> None:
    """Every column a filter reads is a column of ``clips`` this workflow writes (or a base column):
    a filter over a misspelt or absent column would only show as "not applied" in the funnel."""
    from curation.sql import columns_of
    from schemas import TABLES
    have = set(TABLES["clips"].names)
    for s in wf.steps:
        if s.op_cls.output_table == "clips":
            have.update(s.op_cls.writes.names)
    for f in wf.filters:
        unknown = sorted(columns_of(f.where) - have)
        if unknown:
            raise WorkflowError(f"filter {f.name!r} reads {', '.join(unknown)}, which is not a "
                                f"column of clips that this workflow writes; see `curation "
                                f"schema clips`")


def _check_inputs(wf: Workflow) -> None:
    """Every column a step reads and every table it takes rows from is made upstream of it."""
    from schemas import KEYS
    for step in wf.steps:
        cls = step.op_cls
        available: dict[str, set[str]] = {t: set(c) for t, c in INGEST_COLUMNS.items()}
        tables = {"videos"}
        for a in wf.ancestors(step.name):
            up = wf.by_name[a].op_cls
            available.setdefault(up.output_table, set()).update(up.writes.names)
            available[up.output_table].update(KEYS.get(up.output_table, ()))
            tables.add(up.output_table)
        if cls.input_table not in tables:
            raise WorkflowError(f"step {step.name!r} ({cls.name}) takes rows of {cls.input_table!r}, "
                                f"but no step upstream of it makes them; add one to its 'after'")
        for ref in cls.reads:
            table, _, column = ref.partition(".")
            if column not in available.get(table, set()):
                raise WorkflowError(f"step {step.name!r} ({cls.name}) reads {ref}, which no step "
                                    f"upstream of it writes; add the step that writes it to 'after'")
        if cls.frames is not None or cls.input_table != "videos":
            for needed in ("duration_s", "fps"):
                if needed not in available.get("videos", set()):
                    raise WorkflowError(f"step {step.name!r} needs the probe upstream of it "
                                        f"(videos.{needed})")
