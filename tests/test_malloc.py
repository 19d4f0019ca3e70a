"""curation.malloc: glibc keeps freed memory for reuse in decoding processes (see its docstring)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

CODE = "from curation import malloc; print(malloc.tune(), malloc.tune())"


def _run(**env) -> str:
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}).stdout.strip()


def test_tuned_once_on_glibc_and_left_alone_when_asked():
    glibc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    assert _run() == ("True True" if glibc else "False False")
    assert _run(CURATION_MALLOC_TUNING="0") == "False False"
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576") == "False False"
