"""Helpers shared by the command modules."""
from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    """Rich console for results; when stdout is not a terminal, 120 columns instead of rich's 80."""
    return Console(width=None if sys.stdout.isatty() else 120)
