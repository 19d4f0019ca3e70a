"""curation: turn human-centric video into training data for audio-driven avatar models."""
import os as _os

# Set before numpy is imported; the user's own settings win (docs/performance.md#threads-and-memory).
# numpy's OpenBLAS starts a thread per core at import that busy-waits after every BLAS call
# (``blas_thread_server``: about 3 % of a conversation run's CPU for no work on 2 cores, while our
# BLAS calls are small); a stage's parallelism is its worker's CPUs, not BLAS's.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# numpy asks for transparent huge pages for every array of 4 MB and more; frames and batches are
# made and freed by the hundred, and each first touch of a huge page zeroes 2 MB in the kernel:
# a conversation run's system time halved without it (docs/performance.md#threads-and-memory).
_os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

__version__ = "0.1.0"
