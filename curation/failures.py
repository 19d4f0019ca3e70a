"""Why a step failed, in one line, and whether the next run repeats it: the one place that decides a
row's (or a video's) error.

A failure has a *kind*. The video's own fault (a corrupt file, no face, an operator raising on this
input) is final: the next run does not repeat it until the operator's version or parameters change
(or ``--from``). A failure that is not the video's fault is retried: the next run runs that
(video, step) again, and the steps downstream of it wait for it.

=========  =======  ====================================================================
kind       retried  when
=========  =======  ====================================================================
video      no       the operator raised on this video or row (corrupt or unsupported
                    input, nothing to measure, a bug that the next version fixes)
setup      yes      the step could not set up: a model file that does not load, a missing
                    library or service (the run stops and exits non-zero)
crash      yes      the worker process died twice on this video (a native crash, the OOM
                    killer, a lost node)
memory     yes      out of memory (MemoryError, Ray's OOM killer)
store      yes      the store could not be read or written (disk full, network)
=========  =======  ====================================================================

Errors are one line of at most :data:`MAX_CHARS` characters without source locations of native
code (``/path/x.rs:12``, ``/onnxruntime_src/.../model.cc:180``); the exception's type is named
unless it is one of ours whose message is meant for people (MediaError, OperatorError).
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass

MAX_CHARS = 300
CRASHED = "worker crashed while processing this video"

# kind -> (retried by the next run, what it means); the table in docs/running.md is this one
POLICY: dict[str, tuple[bool, str]] = {
    "video": (False, "the operator failed on this video or row: the video's own fault"),
    "setup": (True, "the step could not set up (a model file, a library, a service)"),
    "crash": (True, "the worker process died on this video twice (native crash, OOM killer)"),
    "memory": (True, "out of memory"),
    "store": (True, "the store could not be read or written (disk full, network)"),
}
_STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}
_CRASH_TYPES = ("WorkerCrashedError", "RayActorError", "ActorDiedError", "NodeDiedError",
                "ActorUnavailableError", "LocalRayletDiedError")


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str

    @property
    def retry(self) -> bool:
        return POLICY[self.kind][0]


def retried(kind: str) -> bool:
    return POLICY[kind][0]


def kind_of(e: BaseException) -> str:
    """The kind of an exception an operator (or the worker around it) raised."""
    from curation.store import StoreError
    name = type(e).__name__
    if isinstance(e, MemoryError) or name in ("OutOfMemoryError", "OutOfMemory"):
        return "memory"
    if name in _CRASH_TYPES:
        return "crash"
    if isinstance(e, StoreError) or (isinstance(e, OSError) and e.errno in _STORE_ERRNOS) \
            or "no space left on device" in str(e).lower():
        return "store"
    return "video"


def of(e: BaseException, prefix: str = "") -> Failure:
    """The failure for an exception: its kind and its one-line message (``prefix`` first)."""
    return Failure(kind_of(e), one_line(f"{prefix}{describe(e)}"))


def describe(e: BaseException) -> str:
    """An exception as a person reads it: its type, unless its message is meant for people."""
    from curation.media import MediaError
    from curation.operator import OperatorError
    text = str(e).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if isinstance(e, (MediaError, OperatorError)) and line:
        return line
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


_NATIVE_SOURCE = re.compile(
    r",?\s*(?:at\s+)?/?(?:[\w.\-]+/)+[\w.\-]+\.(?:rs|cc|cpp|cxx|c|h|hpp)(?::\d+)*:?")


def one_line(error: BaseException | str, limit: int = MAX_CHARS) -> str:
    """An error as one readable line: its first non-empty line, without source locations of native
    code and internal row-id columns, white space folded, at most ``limit`` characters.

    Bounded in the length of the error: only the first ``4 * limit`` characters are looked at (the
    patterns backtrack over a long run of word characters, and a 1 MB identifier in a filter made
    Lance's error 1 MB long)."""
    text = str(error).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    line = line[: 4 * limit]
    line = _NATIVE_SOURCE.sub("", line)
    line = re.sub(r", _row\w+", "", line)
    line = re.sub(r"\s+", " ", line).strip(" ,")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def of_lost_worker(e: BaseException) -> Failure:
    """A worker call that raised instead of returning: its process died (crash, OOM killer, lost
    node), or the worker itself failed outside an operator (e.g. writing its outputs)."""
    name = type(e).__name__
    if name in ("OutOfMemoryError", "OutOfMemory"):
        return Failure("memory", "worker killed for lack of memory while processing this video")
    if name in _CRASH_TYPES:
        return Failure("crash", CRASHED)
    return of(e)


# ---- stopping a run early ------------------------------------------------------------------------
class RunStopped(Exception):
    """The run stopped before it was done. What had finished is committed (``committed``: per
    stage, (label, videos committed, videos planned)); the next run of the same command resumes."""
    exit_code = 1
    prefix = "error"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.committed: list[tuple[str, int, int]] = []

    def __str__(self) -> str:
        done = ", ".join(f"{label} {n}/{total}" for label, n, total in self.committed if total)
        return (f"{self.reason}; committed (videos per step): {done or 'nothing'}; re-run the same "
                f"command to resume")


class SetupFailed(RunStopped):
    """A step could not set up (a model file that does not load, a missing service): no video can
    succeed in it, so the run stops; the step's videos run again on the next run."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (never caught as an
    ordinary Exception by code that records a row's error)."""


class Interrupted(RunStopped):
    prefix = "interrupted"

    @classmethod
    def of(cls, e: KeyboardInterrupt) -> "Interrupted":
        # Ray's ray.wait turns any exception a signal handler raises into a KeyboardInterrupt:
        # the signal that came is remembered by the handlers
        term = isinstance(e, Terminated) or _last_signal[0] == "SIGTERM"
        _last_signal[0] = None
        out = cls(f"stopped by {'SIGTERM' if term else 'SIGINT (Ctrl-C)'}")
        out.exit_code = 143 if term else 130
        return out


_last_signal: list = [None]


def _on_sigterm(signum, frame):
    _last_signal[0] = "SIGTERM"
    raise Terminated()


def _on_sigint(signum, frame):
    _last_signal[0] = "SIGINT"
    raise KeyboardInterrupt()


def catch_sigterm() -> None:
    """SIGTERM stops a run as Ctrl-C does (``Terminated``, exit 143); main thread only."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)


def sigterm_caught() -> bool:
    import signal
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


# ---- a row's error --------------------------------------------------------------------------------
def row_marks(step: str, keys: list[dict], rows: list[dict], outcomes: list[str | None]) -> list[dict]:
    """The error marks one step puts on its input rows (key + ``error`` + ``error_stage``): the one
    place that decides a row's error. ``outcomes[i]``: the row's error (one line), or None when the
    step succeeded on it. A failed row gets its error with ``error_stage`` = the step; a row that
    succeeded and whose error came from this step has it cleared (a re-run that now succeeds); a
    row whose error came from another step keeps it."""
    out = []
    for key, row, error in zip(keys, rows, outcomes):
        if error is not None:
            out.append({**key, "error": one_line(error), "error_stage": step})
        elif row.get("error_stage") == step:
            out.append({**key, "error": None, "error_stage": None})
    return out
