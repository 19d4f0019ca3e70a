"""Network wrappers used by the operators: each module loads one network from the model directory
(``--models``) and predicts on numpy inputs. No Ray, no store, no workflow code here, so one network
can serve several operators and each wrapper is tested on its own.

Every wrapper names the files it loads relative to the model directory (``WEIGHTS``), and loading
fails with :class:`MissingWeights` naming the full path it looked for when one is absent.
"""
from __future__ import annotations

from pathlib import Path


class MissingWeights(FileNotFoundError):
    """A model file the network needs is not in the model directory."""


def weight_path(model_dir: str | Path | None, relative: str) -> Path:
    """The path of ``relative`` under ``model_dir``; raises MissingWeights naming it when absent."""
    if not model_dir:
        raise MissingWeights(f"no model directory given (--models); need {relative}")
    path = Path(model_dir) / relative
    if not path.is_file():
        raise MissingWeights(f"missing model file {path}")
    return path
