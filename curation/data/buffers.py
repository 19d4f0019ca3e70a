"""Batch tensors written once: in a DataLoader worker they live in shared memory (as torch's
``default_collate`` allocates them), so handing a batch to the main process copies nothing; in the
main process they are ordinary tensors. The stream decodes a step's frames straight into one."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import get_worker_info


def empty(shape: tuple, dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` and numpy ``dtype`` (shared memory in a DataLoader worker)."""
    if get_worker_info() is None or not int(np.prod(shape)):
        # numpy's allocation: large arrays get transparent huge pages (madvise), which a fresh batch
        # faults in 512 times faster than torch.empty's 4 kB pages
        return torch.from_numpy(np.empty(shape, dtype))
    tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return torch.empty(0, dtype=tdtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def frames_of(windows) -> torch.Tensor | None:
    """The (B, T_max, H, W, 3) uint8 frames tensor of a step's windows (one frame size: a token
    bucket's), or None when they differ in frame size."""
    if not windows or len({(w.height, w.width) for w in windows}) != 1 or not windows[0].height:
        return None
    return empty((len(windows), max(w.frames for w in windows), windows[0].height, windows[0].width, 3),
                 np.uint8)


def starts_row(images: np.ndarray, row: np.ndarray) -> bool:
    """True when ``images`` is the first len(images) frames of ``row`` (decoded in place)."""
    return (images.dtype == row.dtype and images.shape[1:] == row.shape[1:] and len(images) <= len(row)
            and images.__array_interface__["data"][0] == row.__array_interface__["data"][0])
