"""curation: turn human-centric video into training data for audio-driven avatar models."""
import os as _os

# numpy's OpenBLAS starts a thread per core at import that busy-waits after every BLAS call
# (``blas_thread_server``: about 3 % of a conversation run's CPU for no work on 2 cores, while our
# BLAS calls are small); a stage's parallelism is its worker's CPUs, not BLAS's. Set before numpy
# is imported; the user's own setting wins (docs/performance.md#threads-and-memory).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
