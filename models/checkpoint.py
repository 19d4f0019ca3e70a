"""Checkpoint directories: written completely under ``NAME.tmp`` and swapped in with renames, so a run
killed at any moment leaves the previous or the new checkpoint, never a partial one.

A training checkpoint holds ``model.pt`` (full state dict), ``ema.pt``, ``optimizer.pt`` (full,
parameter names as keys), ``rng.pt`` (per rank: Python, NumPy and torch generator states) and
``state.json`` (step, config, the data source's ``state_dict`` per rank, metrics of the last step).
Distillation checkpoints add their own parts (fake score, its optimizer) the same way.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def save_checkpoint(path: str | Path, parts: dict, state: dict) -> None:
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, obj in parts.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory if a complete one exists (restores ``NAME.old`` when a kill fell
    between the two renames of :func:`save_checkpoint`)."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / "state.json").exists() and (old / "state.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        old.rename(path)
    return path if (path / "state.json").exists() else None


def load_state(path: str | Path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())


def load_part(path: str | Path, name: str):
    f = Path(path) / f"{name}.pt"
    if not f.exists():
        raise FileNotFoundError(f"checkpoint part missing: {f}")
    return torch.load(f, map_location="cpu", weights_only=False)


def load_weights(path: str | Path, which: str = "ema") -> dict:
    """A model state dict from a checkpoint directory: ``ema`` (default) or ``model`` weights."""
    if not (Path(path) / "state.json").exists():
        raise FileNotFoundError(f"no checkpoint at {path} (state.json missing)")
    return load_part(path, which)
