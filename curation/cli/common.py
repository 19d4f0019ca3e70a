"""Helpers shared by the command modules: the result console, and errors and warnings as one line."""
from __future__ import annotations

import sys

from rich.console import Console

MAX_LINE = 300  # characters of an error or warning line (longer ones end with an ellipsis)
# Exceptions whose message is meant for the user as it is; others are prefixed with their type.
_PROGRAMMING = (KeyError, IndexError, TypeError, AttributeError, AssertionError, NameError,
                ZeroDivisionError, UnboundLocalError, NotImplementedError)


def console() -> Console:
    """Rich console for results; when stdout is not a terminal, 120 columns instead of rich's 80."""
    return Console(width=None if sys.stdout.isatty() else 120)


def error_line(e: BaseException | str, limit: int = MAX_LINE) -> str:
    """One readable line for an error: its first non-empty line, without Rust source locations,
    at most ``limit`` characters; the exception type is named for programming errors."""
    from curation.store import one_line
    if isinstance(e, _PROGRAMMING) or (isinstance(e, BaseException) and not str(e).strip()):
        text = f"{type(e).__name__}: {one_line(e, limit)}" if str(e).strip() else type(e).__name__
        return one_line(text, limit)
    return one_line(e, limit)


def fail(message: str) -> None:
    """Print ``error: MESSAGE`` (one line) to stderr."""
    print(f"error: {error_line(message, MAX_LINE - 7)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print ``warning: MESSAGE`` (one line) to stderr."""
    print(f"warning: {error_line(message, MAX_LINE - 9)}", file=sys.stderr, flush=True)
