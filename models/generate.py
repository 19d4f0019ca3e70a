"""Sampling from a trained checkpoint: audio (+ an optional listen track) and a reference image ->
video frames, written as an mp4 with the audio (``curation generate``).

The reference image is resized to the training frame size and used twice, as in training: as a
reference token set (kind ``global``) and, when ``first_frame`` is set, as the clean first latent frame
(image-to-video). Speak / listen branches can be muted. Frames: the longest 1 + r*k that fits the
audio at the config's fps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.audio import SR, group_frames, role_features
from models.avatar import Avatar
from models.checkpoint import load_state, load_weights
from models.config import Config
from models.data import to_unit
from models.flow import Guidance, sample
from models.tasks import FlowTask


class Generator:
    def __init__(self, checkpoint: str | Path, which: str = "ema", device: str = "cpu"):
        state = load_state(checkpoint)
        if state.get("task") != "flow":
            raise ValueError(f"{checkpoint} is a {state.get('task')!r} checkpoint, not a DiT (task flow)")
        self.cfg = Config.from_dict(state["config"])
        self.task = FlowTask(self.cfg)
        self.avatar = Avatar(self.task.dit_cfg, self.cfg.text)
        self.avatar.load_state_dict(load_weights(checkpoint, which))
        self.avatar.eval().to(device)
        self.vae = self.task.vae.to(device)
        self.device = device

    def frame_size(self) -> tuple[int, int]:
        d = self.cfg.data
        return tuple(d.size) if d.size else (d.image, d.image)

    def n_frames(self, n_samples: int) -> int:
        r = self.vae.temporal
        t = int(n_samples / SR * self.cfg.data.fps)
        if t < 1 + r:
            raise ValueError(f"audio of {n_samples / SR:.2f} s is shorter than {1 + r} frames")
        return 1 + r * ((t - 1) // r)

    def conditions(self, speak: np.ndarray, listen: np.ndarray | None, n: int, features: dict | None):
        """Audio features grouped per latent frame (1, T', r, G, D) for the speak and listen tracks."""
        listen = np.zeros_like(speak) if listen is None else listen[: len(speak)]
        sample = {"fps": self.cfg.data.fps, "speak_audio": speak, "listen_audio": listen,
                  "audio": speak + listen[: len(speak)], **(features or {})}
        feats = role_features(sample, self.task.spec.audio_features, n)
        return [group_frames(torch.from_numpy(f)[None], self.vae.temporal).to(self.device) for f in feats]

    @torch.no_grad()
    def latents(self, speak: list, listen: list, references: list, texts: list, seed: int = 0,
                steps: int | None = None, first_frame: bool = True, mute: tuple = (),
                features: list | None = None) -> torch.Tensor:
        """Latents (B, C, T', h, w) for B requests at once (the same number of frames: the shortest
        audio's); references are uint8 (H, W, 3) at the training frame size."""
        n = min(self.n_frames(len(a)) for a in speak)
        conds = [self.conditions(s, l, n, f) for s, l, f in zip(speak, listen, features or [None] * len(speak))]
        sp, li = torch.cat([c[0] for c in conds]), torch.cat([c[1] for c in conds])
        ref = torch.stack([to_unit(r) for r in references])[:, :, None].to(self.device)   # (B, 3, 1, H, W)
        ref_lat = self.vae.encode(ref)                                                   # (B, C, 1, h, w)
        b = len(speak)
        on = lambda branch: torch.full((b,), 0.0 if branch in mute else 1.0, device=self.device)
        zeros = torch.zeros(b, 1, dtype=torch.long)
        refs = self.avatar.references(ref_lat[:, None], zeros, zeros, torch.ones(b, 1, dtype=torch.bool),
                                      sp.shape[1])
        g = self.cfg.generate
        guide = Guidance(self.avatar, list(texts), sp, li, refs, g.text_scale, g.audio_scale, on("speak"),
                         on("listen"))
        shape = (b, ref_lat.shape[1], sp.shape[1], *ref_lat.shape[-2:])
        gen = torch.Generator().manual_seed(seed)
        return sample(guide, shape, steps or g.steps, gen, g.shift, ref_lat if first_frame else None)

    def fit_reference(self, image: np.ndarray) -> np.ndarray:
        h, w = self.frame_size()
        if image.shape[:2] == (h, w):
            return image
        import cv2
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)

    def videos(self, speak: list, listen: list, references: list, texts: list, **kw) -> np.ndarray:
        """uint8 frames (B, T, H, W, 3) for B requests."""
        refs = [self.fit_reference(r) for r in references]
        x = self.vae.decode(self.latents(speak, listen, refs, texts, **kw))
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()

    def video(self, speak, listen, reference, text: str = "", **kw) -> np.ndarray:
        """uint8 frames (T, H, W, 3) of one request."""
        return self.videos([speak], [listen], [reference], [text], **kw)[0]


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None) -> None:
    """H.264 (yuv420p) video with AAC audio at 16 kHz (PyAV); odd frame sizes are padded by one pixel."""
    import av
    from fractions import Fraction
    t, h, w = frames.shape[:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        streams = [vs]
        if audio is not None:
            aus = out.add_stream("aac", rate=SR)
            aus.layout = "mono"
            streams.append(aus)
        for f in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(vs.encode())
        if audio is not None:
            a = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
            a.sample_rate = SR
            out.mux(aus.encode(a))
            out.mux(aus.encode())
