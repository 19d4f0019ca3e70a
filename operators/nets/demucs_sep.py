"""Demucs (Hybrid Transformer Demucs, "htdemucs") vocal separation, the second separation backend.

Weights come from the model directory only (no hub; ``HF_HUB_OFFLINE=1`` is set before demucs is
imported so a stray hub lookup fails at once instead of retrying for ~23 s, STACK.md):

- a single serialized model ``.th`` (demucs' own package format: klass, args, kwargs, state), loaded
  with ``demucs.states.load_model(path)``. Default ``separation/demucs/955717e8-8726e21a.th``: the
  file the ``htdemucs`` bag names (demucs 4.1.0 ``remote/htdemucs.yaml`` -> signature ``955717e8``,
  ``remote/files.txt`` -> ``955717e8-8726e21a.th``).
- or a bag ``.yaml`` (e.g. ``separation/demucs/htdemucs_ft.yaml``) with its ``<sig>-<hash>.th`` files
  beside it, loaded with ``demucs.pretrained.get_model(name, repo=dir)`` (demucs' LocalRepo, which
  checks the hash in the file name).

A missing file raises :class:`operators.nets.MissingWeights` naming it.

Output, as :class:`operators.nets.spleeter.Spleeter`: ``separate(wav, sr) -> (vocals, rest)`` at the
input rate and shape, where ``rest`` = the sum of the other stems (drums, bass, other, ...). The model
runs at ``model.samplerate`` (44.1 kHz for htdemucs) with ``model.audio_channels`` (2) channels; other
rates are resampled with ``scipy.signal.resample_poly``. Inference follows demucs' ``separate``
defaults except ``shifts``: ``apply_model(split=True, overlap=0.25)`` on the mix normalised by its
mean/std (demucs/separate.py and demucs/api.py do the same), ``shifts=0`` by default (deterministic;
demucs' CLI uses 1 random shift, worth ~0.2 dB SDR per its docstring, for double the time).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from operators.nets import weight_path
from operators.nets.spleeter import _fit, resample

WEIGHTS = "separation/demucs/955717e8-8726e21a.th"


def load_demucs(path: str | Path):
    """A demucs model (or bag) from a local ``.th`` package or a bag ``.yaml``; eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    if path.suffix == ".yaml":
        from demucs.pretrained import get_model
        model = get_model(path.stem, repo=path.parent)
    else:
        from demucs.states import load_model
        model = load_model(str(path))
    return model.eval()


class Demucs:
    """Demucs vocals / rest separation; same interface as ``Spleeter``."""

    def __init__(self, model_dir: str | Path | None = None, weights: str = WEIGHTS, model=None,
                 threads: int | None = None, shifts: int = 0, overlap: float = 0.25,
                 device: str = "cpu") -> None:
        """Load ``model_dir/weights``; or wrap an already built ``model`` (tests, callers with a model)."""
        if threads:
            torch.set_num_threads(threads)
        if model is None:
            path = weight_path(model_dir, weights)
            for sib in _bag_members(path):           # a bag names its member files: check them too
                weight_path(path.parent, sib)
            model = load_demucs(path)
            self.weights = path
        else:
            self.weights = None
        self.model = model.eval()
        self.sources = list(model.sources)
        if "vocals" not in self.sources:
            raise ValueError(f"demucs model has no vocals stem: {self.sources}")
        self.samplerate = int(model.samplerate)
        self.channels = int(model.audio_channels)
        self.shifts, self.overlap, self.device = shifts, overlap, device

    @torch.inference_mode()
    def separate_native(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, model channels] at the model rate -> (vocals, rest), each [N, channels] float32."""
        from demucs.apply import apply_model
        mix = torch.from_numpy(np.ascontiguousarray(x.T, np.float32))
        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8          # demucs/separate.py normalisation
        est = apply_model(self.model, ((mix - mean) / std)[None], shifts=self.shifts, split=True,
                          overlap=self.overlap, device=self.device)[0] * std + mean
        v = self.sources.index("vocals")
        vocals = est[v]
        rest = est.sum(0) - vocals
        return vocals.T.numpy().copy(), rest.T.numpy().copy()

    def separate(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Waveform [N] or [N, C] at ``sample_rate`` -> (vocals, rest), same rate and shape."""
        x = np.asarray(wav, np.float32)
        mono = x.ndim == 1
        x2 = x[:, None] if mono else x
        if x2.shape[1] < self.channels:
            x2 = np.repeat(x2[:, :1], self.channels, axis=1)
        elif x2.shape[1] > self.channels:
            x2 = x2[:, :self.channels]
        v, r = self.separate_native(resample(x2, sample_rate, self.samplerate))
        v, r = resample(v, self.samplerate, sample_rate), resample(r, self.samplerate, sample_rate)
        v, r = _fit(v, x.shape[0]), _fit(r, x.shape[0])
        if mono:
            return v.mean(1), r.mean(1)
        if x.shape[1] == 1:
            return v.mean(1, keepdims=True), r.mean(1, keepdims=True)
        return v, r                                         # more channels than the model: its first ones


def _bag_members(path: Path) -> list[str]:
    """File names of the models a bag .yaml lists (resolved against the .th files beside it)."""
    if path.suffix != ".yaml":
        return []
    import yaml
    sigs = yaml.safe_load(path.read_text()).get("models", [])
    files = {p.stem.split("-", 1)[0]: p.name for p in path.parent.glob("*.th")}
    return [files.get(s, f"{s}.th") for s in sigs]
