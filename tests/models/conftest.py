"""A toy avatar DiT trained once per session on the synthetic mouth task (models/configs/mouth.yaml),
shared by the learning test and the distillation tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MOUTH_STEPS = 400


@pytest.fixture(scope="session")
def mouth_teacher(tmp_path_factory) -> Path:
    """The run directory of a mouth-task DiT trained for MOUTH_STEPS steps (its checkpoint and metrics)."""
    from models.config import load_config
    from models.train import train
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mouth_teacher")
    train(load_config(ROOT / "models" / "configs" / "mouth.yaml"), out, MOUTH_STEPS)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A mouth-config DiT checkpoint after 2 steps (for tests that need a teacher, not a good one)."""
    from models.config import load_config
    from models.train import train
    out = tmp_path_factory.mktemp("tiny_teacher")
    train(load_config(ROOT / "models" / "configs" / "mouth.yaml", {"train.batch_size": 2, "data.pool": 4}),
          out, 2)
    return str(out / "checkpoint")
