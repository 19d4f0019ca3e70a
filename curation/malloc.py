"""glibc's malloc tuned for processes that decode video: freed memory is kept for reuse instead of
going back to the kernel.

By default glibc serves allocations from 128 kB up (its threshold rises with what is freed, to 32 MB at
most) with fresh ``mmap`` memory and returns the top of its heap to the kernel once 2x that threshold
is free there. A video decode allocates and frees a frame-sized buffer (0.3-3 MB) per frame, and a
loader a window-sized one per window, so the same memory went back to the kernel and came again:
each time a page fault and a zeroed page per 4 kB (2 MB on huge pages) touched. On the 2-core
machine of docs/performance.md, that zeroing was 15-30 % of a window decode's CPU samples
(``clear_page_erms`` in ``perf``). :func:`tune` keeps allocations under 32 MB on the heap and up to
256 MB of free heap before trimming: the cost is that much more resident memory held per process.

Set ``CURATION_MALLOC_TUNING=0`` to leave malloc alone (or ``GLIBC_TUNABLES`` to choose yourself:
then this does nothing)."""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # mallopt(3) parameters
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20

_state: bool | None = None


def tune() -> bool:
    """Apply the settings once per process (glibc only); True when they are in force."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> bool:
    if (not sys.platform.startswith("linux") or os.environ.get("CURATION_MALLOC_TUNING", "1") == "0"
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):      # not glibc (musl, macOS)
        return False
