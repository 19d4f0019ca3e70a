"""A learned sync head on the frozen LR-ASD / Light-ASD encoders, measured by leave-one-clip-out
cross-validation (tried for issue 12 item 3; NOT shipped: it does not generalise across speakers on
the shared clips, docs/av-labels.md).

What it does, SyncNet-style and self-supervised on the shared talking clips' own audio (taken to be
in sync):
- per 25-fps frame of each talking clip's largest face track (``sync_shifts.talking_track``): the
  visual-encoder output of the ASD crop (128-d; the encoder sees +-9 frames of the lip crop) and the
  audio-encoder output of the MFCC (128-d), of one or more checkpoints (``lr_ava``, ``lr_talkset``,
  ``light_ava``, ``light_talkset``, joined with ``+``), standardised, stacked over ``window`` frames
  (optionally as frame-to-frame differences: onset emphasis);
- a head: two linear maps to ``dim`` dimensions and a scaled cosine, s(i, k) = t cos(P v_i, Q a_{i+k});
- trained (full batch, AdamW, fixed epochs and seed: deterministic) with a softmax cross-entropy over
  the shifts k in -15..+15 of every speech frame (``voice_segments`` of Silero VAD), k = 0 the
  positive, the 30 other shifts of the same audio the negatives;
- scored like the `sync` step: the audio moved by s in -10..+10 frames (exact in embedding space: the
  audio encoder is convolutional, a whole-frame shift moves its output by whole frames), the mean
  log-softmax over the speech frames per candidate k, the best k; NULL at the edge (|k| >= 14) or
  when it stands under 2 sd above chance (operators.nets.syncnet.chance_sd, the step's own test).
- LEAVE-ONE-CLIP-OUT: each clip's row is scored by a head trained without any clip of that video
  (dj_video4's two spans go together). The in-sample row (head trained on every clip) is printed
  too, for contrast: it is no estimate of anything.
- a positive control: synthetic clips whose audio features are a shared linear function of the
  visual ones (plus noise): the same code recovers every shift there (``synthetic_clips``).

    .venv/bin/python bench/sync_head_cv.py --media ../shared/media --models ../shared/models \
        [--configs lr_ava:1:4,lr_ava:3:4] [--cache /tmp/sync_head_feats]

A config is ``checkpoints:window:dim[:diff][:all]`` (``all``: every face frame, not only speech). Prints, per config, the in-sample and the cross-
validated shift table (recovered minus applied offset per clip and shift, `·` where it gave none) and
the count within +-1 frame; the untrained comparison (the LR / Light AVA network's own logit as the
score, :func:`backend_rows`); then the nested cross-validation (the config chosen per held-out clip by
an inner leave-one-clip-out on the other videos; ``--nested-only`` prints only that). CPU at load
5-8: ~2 min of feature extraction (people, crops, four encoders; ``--cache`` keeps them), ~40 s per
config, ~5 min for the nested selection. Measured tables: docs/av-labels.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MARGIN = 40          # audio frames kept either side of the track (shifts up to 10 + 15, rolls)
VSHIFT = 15
SHIFTS = tuple(range(-10, 11))
CHECKPOINTS = ("lr_ava", "lr_talkset", "light_ava", "light_talkset")
TRAIN_ONLY = (("dj_video4.mp4", 0.1, 13.0),)   # more speech of dj_video4's woman: training, never scored alone


# ---- features ----------------------------------------------------------------------------------
def clip_features(path: Path, start: float, end: float, models: str, nets: dict, vad) -> dict:
    """Per-frame encoder outputs of the largest face track of ``path`` between ``start`` and ``end``:
    ``v_<ckpt>`` (T, 128), ``a_<ckpt>`` (T + 2 MARGIN, 128) (audio frame j = video frame j - MARGIN),
    ``speech`` (T,) bool."""
    import torch
    from sync_shifts import talking_track

    from curation.media import VideoDecoder, load_audio
    from operators.asd import face_span
    from operators.nets.asd import asd_crops
    from operators.nets.mfcc import mfcc
    from operators.speaker_states import speech_share
    video, row = talking_track(path, start, end, models)
    video["voice_segments"] = vad.segments(load_audio(str(path)))
    frames = VideoDecoder(str(path), max_side=None).span(start, end, 25.0)
    _, seg, boxes, pcm = face_span(video, row, frames, 0.2, "sync head features", margin=MARGIN)
    crops = asd_crops(frames.images[seg], boxes)
    out = {"speech": speech_share(frames.times[seg], video["voice_segments"]) >= 0.5}
    feats = mfcc(pcm)
    with torch.inference_mode():
        for key, net in nets.items():
            out[f"v_{key}"] = net.visual_embedding(crops).numpy()
            out[f"a_{key}"] = net.audio_embedding(feats).numpy()[: len(crops) + 2 * MARGIN]
    return out


def shared_features(media: Path, models: str, cache: Path | None) -> tuple[dict, dict]:
    """{clip name: features} of every talking clip of sync_shifts.TALKING and the training-only
    spans, and {clip name: video} (the cross-validation groups)."""
    from sync_shifts import TALKING

    from operators.nets.asd import ActiveSpeakerNet
    from operators.nets.vad import SileroVAD
    nets = vad = None
    feats, groups = {}, {}
    for name, start, end in TALKING + TRAIN_ONLY:
        key = f"{Path(name).stem}@{start:g}"
        groups[key] = Path(name).stem
        f = cache / f"{key}.npz" if cache else None
        if f is not None and f.exists():
            feats[key] = dict(np.load(f))
            continue
        if nets is None:
            nets = {k: ActiveSpeakerNet(models, *k.split("_")) for k in CHECKPOINTS}
            vad = SileroVAD()
        feats[key] = clip_features(media / name, start, end, models, nets, vad)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, **feats[key])
    return feats, groups


# ---- the head ----------------------------------------------------------------------------------
def stack(x: np.ndarray, window: int, diff: bool) -> np.ndarray:
    """(N, D) -> (N, window D): each frame with its neighbours (edge frames repeated); ``diff``
    uses frame-to-frame changes instead of levels."""
    if diff:
        x = np.diff(x, axis=0, prepend=x[:1])
    h = window // 2
    xp = np.pad(x, ((h, h), (0, 0)), mode="edge")
    return np.concatenate([xp[j: j + len(x)] for j in range(window)], axis=1)


class Config:
    def __init__(self, text: str):
        parts = text.split(":")
        self.text, self.ckpts = text, parts[0].split("+")
        self.window, self.dim = int(parts[1]), int(parts[2])
        self.diff = "diff" in parts[3:]             # frame-to-frame changes (onset emphasis)
        self.all_frames = "all" in parts[3:]        # every face frame, not only the speech frames
        self.epochs, self.weight_decay, self.lr, self.seed = 100, 1e-2, 3e-3, 0

    def raw(self, f: dict, side: str) -> np.ndarray:
        return np.concatenate([f[f"{side}_{c}"] for c in self.ckpts], axis=1)


def frames_used(f: dict, cfg: Config) -> np.ndarray:
    return np.ones(len(f["speech"]), bool) if cfg.all_frames else f["speech"]


def prepared(f: dict, cfg: Config, norm):
    """(V (T, Dw), A (T + 2 MARGIN, Dw)) standardised by ``norm`` and stacked."""
    import torch
    (mv, sv), (ma, sa) = norm
    v = stack((cfg.raw(f, "v") - mv) / sv, cfg.window, cfg.diff)
    a = stack((cfg.raw(f, "a") - ma) / sa, cfg.window, cfg.diff)
    return torch.tensor(v, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)


def pair_index(t: int, n_audio: int, shift: int = 0) -> np.ndarray:
    """(T, 2 VSHIFT + 1) audio row of frame i at candidate k, the audio moved by ``shift`` frames
    (positive = later: the sound of frame i at i + shift)."""
    idx = np.arange(t)[:, None] + MARGIN - shift + np.arange(-VSHIFT, VSHIFT + 1)[None]
    return np.clip(idx, 0, n_audio - 1)


def make_head(din: int, dim: int):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.pv, self.pa = nn.Linear(din, dim), nn.Linear(din, dim)
            self.scale = nn.Parameter(torch.tensor(10.0))

        def forward(self, v, a):           # (n, din), (n, K, din) -> (n, K)
            pv = nn.functional.normalize(self.pv(v), dim=-1)
            pa = nn.functional.normalize(self.pa(a), dim=-1)
            return self.scale * (pa @ pv[:, :, None])[..., 0]
    return Head()


def train(feats: dict, cfg: Config):
    """(head, norm) trained on ``feats`` (clip -> features): in-sync k = 0 against the other shifts."""
    import torch
    torch.manual_seed(cfg.seed)
    allv = np.concatenate([cfg.raw(f, "v") for f in feats.values()])
    alla = np.concatenate([cfg.raw(f, "a") for f in feats.values()])
    norm = ((allv.mean(0), allv.std(0) + 1e-6), (alla.mean(0), alla.std(0) + 1e-6))
    vs, as_ = [], []
    for f in feats.values():
        v, a = prepared(f, cfg, norm)
        rows = np.where(frames_used(f, cfg))[0]
        vs.append(v[rows])
        as_.append(a[torch.from_numpy(pair_index(len(v), len(a))[rows])])
    v, a = torch.cat(vs), torch.cat(as_)
    head = make_head(v.shape[1], cfg.dim)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    target = torch.full((len(v),), VSHIFT)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(v, a), target)
        loss.backward()
        opt.step()
    return head.eval(), norm


def curve(head, v, a, speech: np.ndarray, shift: int = 0) -> np.ndarray:
    """(2 VSHIFT + 1,) mean log-softmax over the speech frames per candidate offset."""
    import torch
    a = torch.as_tensor(np.ascontiguousarray(a))
    with torch.no_grad():
        s = torch.log_softmax(head(v, a[torch.from_numpy(pair_index(len(v), len(a), shift))]), dim=1)
    return s.numpy()[speech].mean(axis=0)


def judge(head, v, a, speech, shift: int, min_sd: float = 2.0):
    """(offset or None, chance sd) as the `sync` step judges: edge and chance tests."""
    from operators.nets.syncnet import chance_sd
    c = curve(head, v, a, speech, shift)
    k = int(np.argmax(c)) - VSHIFT
    sd = chance_sd(lambda aa: -curve(head, v, aa, speech, shift), a.numpy())
    if abs(k) >= VSHIFT - 1 or not np.isfinite(sd) or sd < min_sd:
        return None, sd
    return k, sd


def score(head, norm, f: dict, cfg: Config, shifts=SHIFTS):
    """[(recovered - applied or None, chance sd)] per shift of one clip."""
    v, a = prepared(f, cfg, norm)
    out = []
    for s in shifts:
        k, sd = judge(head, v, a, frames_used(f, cfg), s)
        out.append((None if k is None else k - s, sd))
    return out


def loco(feats: dict, groups: dict, cfg: Config, scored, shifts=SHIFTS) -> dict:
    """{clip: score row} with each clip's head trained without any clip of its group."""
    rows = {}
    for key in scored:
        head, norm = train({k: f for k, f in feats.items() if groups[k] != groups[key]}, cfg)
        rows[key] = score(head, norm, feats[key], cfg, shifts)
    return rows


def inner_right(feats: dict, groups: dict, cfg: Config) -> int:
    """How many clips of ``feats`` a head trained without their group puts within +-1 of the true
    offset (the best k of the in-sync audio, no chance test): the inner score of :func:`nested`."""
    right = 0
    for key, f in feats.items():
        head, norm = train({k: g for k, g in feats.items() if groups[k] != groups[key]}, cfg)
        v, a = prepared(f, cfg, norm)
        right += abs(int(np.argmax(curve(head, v, a, frames_used(f, cfg)))) - VSHIFT) <= 1
    return right


def nested(feats: dict, groups: dict, cfgs: list, scored, shifts=SHIFTS) -> tuple[dict, dict]:
    """Nested leave-one-clip-out: for each scored clip, the config is chosen by the inner cross-
    validation on the other videos' clips alone (:func:`inner_right`, first best in ``cfgs`` order),
    then a head of that config trained on them scores the clip. ({clip: score row}, {clip: config})."""
    rows, chosen = {}, {}
    for key in scored:
        rest = {k: f for k, f in feats.items() if groups[k] != groups[key]}
        best = max(cfgs, key=lambda c: inner_right(rest, groups, c))
        head, norm = train(rest, best)
        rows[key], chosen[key] = score(head, norm, feats[key], best, shifts), best.text
    return rows, chosen


def backend_rows(feats: dict, scored, models: str, ckpt: str = "lr_ava", shifts=SHIFTS) -> dict:
    """The untrained comparison: the ASD network's own fusion back end as the sync score (its class-1
    logit, one pass over the whole track, mean over the speech frames, per candidate shift), judged
    as above. No training, so nothing to cross-validate. The back end sees the same inputs at
    (shift, k) as at (0, k - shift), so one curve over k in -25..+25 per audio (true and rolled)
    serves every shift."""
    import torch

    from operators.nets.asd import ActiveSpeakerNet
    net = ActiveSpeakerNet(models, *ckpt.split("_"))
    reach = VSHIFT + max(abs(s) for s in shifts)
    rows = {}
    for key in scored:
        f = feats[key]
        v = torch.from_numpy(f[f"v_{ckpt}"]).float()
        t, sp = len(v), f["speech"]

        def wide(a: np.ndarray) -> np.ndarray:      # (2 reach + 1,) mean logit at k in -reach..reach
            a = torch.from_numpy(np.ascontiguousarray(a)).float()
            idx = np.clip(np.arange(t)[None] + MARGIN + np.arange(-reach, reach + 1)[:, None], 0, len(a) - 1)
            with torch.inference_mode():
                lg = net.net.logits(a[torch.from_numpy(idx)], v[None].expand(len(idx), -1, -1))[..., 1]
            return lg.numpy()[:, sp].mean(axis=1)
        a = f[f"a_{ckpt}"]
        rolls = list(range(30, len(a) - 30 + 1, VSHIFT))
        true = wide(a)
        null = [wide(np.roll(x, r, axis=0)) for x in (a, a[::-1]) for r in rolls]
        cells = []
        for s in shifts:
            cut = slice(reach - VSHIFT - s, reach + VSHIFT - s + 1)
            c, n = true[cut], np.array([x[cut].max() for x in null])
            k = int(np.argmax(c)) - VSHIFT
            sd = float((c.max() - n.mean()) / max(n.std(), 1e-9))
            cells.append((None if abs(k) >= VSHIFT - 1 or sd < 2.0 else k - s, sd))
        rows[key] = cells
    return rows


def synthetic_clips(n_clips: int = 6, frames: int = 250, seed: int = 0, shared: bool = True) -> tuple[dict, dict]:
    """Clips whose audio features are one linear function (shared by every clip when ``shared``,
    else each clip its own) of a smooth latent that also drives the visual features, plus noise."""
    from scipy.ndimage import gaussian_filter1d
    rng = np.random.default_rng(seed)
    wv, wa = rng.normal(size=(8, 128)), rng.normal(size=(8, 128))
    feats = {}
    for c in range(n_clips):
        z = gaussian_filter1d(rng.normal(size=(frames + 2 * MARGIN, 8)), 1.5, axis=0) * 3   # ~0.1 s changes
        wa_c = wa if shared else rng.normal(size=(8, 128))
        feats[f"c{c}"] = {"v_x": z[MARGIN: MARGIN + frames] @ wv + rng.normal(size=(frames, 128)),
                          "a_x": z @ wa_c + rng.normal(size=(frames + 2 * MARGIN, 128)),
                          "speech": np.ones(frames, bool)}
    return feats, {k: k for k in feats}


# ---- report ------------------------------------------------------------------------------------
def print_table(title: str, rows: dict, shifts=SHIFTS) -> tuple[int, int]:
    print(f"\n{title}\n\n| clip | " + " | ".join(f"{s:+d}" for s in shifts) + " | chance sd at 0 |")
    print("|---|" + "---|" * (len(shifts) + 1))
    for key, cells in rows.items():
        sd0 = cells[shifts.index(0)][1] if 0 in shifts else float("nan")
        print(f"| {key.split('@')[0]} | " + " | ".join("·" if e is None else f"{e:+d}" for e, _ in cells)
              + f" | {sd0:.1f} |")
    errs = [e for cells in rows.values() for e, _ in cells]
    right = sum(e is not None and abs(e) <= 1 for e in errs)
    answered = sum(e is not None for e in errs)
    print(f"\nwithin +-1 frame: {right} of {len(errs)} cases; answered {answered}, wrong {answered - right}")
    return right, len(errs)


def main() -> None:
    import torch
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--configs", default="lr_ava:1:4,lr_ava:3:4,lr_ava:1:8,lr_ava:1:4:diff,"
                                         "light_ava:1:4,lr_talkset:1:4,lr_ava+light_ava:1:4")
    ap.add_argument("--shifts", default=",".join(str(s) for s in SHIFTS))
    ap.add_argument("--cache", default="")
    ap.add_argument("--nested-only", action="store_true", help="only the nested cross-validation")
    args = ap.parse_args()
    shifts = tuple(int(s) for s in args.shifts.split(","))
    syn, sgroups = synthetic_clips()
    print_table("positive control (synthetic, lr: x:1:4), leave-one-clip-out",
                loco(syn, sgroups, Config("x:1:4"), list(syn), shifts), shifts)
    feats, groups = shared_features(Path(args.media), args.models, Path(args.cache) if args.cache else None)
    scored = [k for k in feats if not any(k == f"{Path(n).stem}@{s:g}" for n, s, _ in TRAIN_ONLY)]
    for text in [] if args.nested_only else args.configs.split(","):
        cfg = Config(text)
        head, norm = train(feats, cfg)
        print_table(f"{text}: IN-SAMPLE (trained on every clip; no estimate)",
                    {k: score(head, norm, feats[k], cfg, (0,)) for k in scored}, (0,))
        print_table(f"{text}: leave-one-clip-out", loco(feats, groups, cfg, scored, shifts), shifts)
    for ckpt in ("lr_ava", "light_ava"):
        print_table(f"untrained: the {ckpt} network's own logit as the sync score",
                    backend_rows(feats, scored, args.models, ckpt, shifts), shifts)
    cfgs = [Config(t) for t in args.configs.split(",")]
    rows, chosen = nested(feats, groups, cfgs, scored, shifts)
    print_table("config chosen by inner leave-one-clip-out (nested), then leave-one-clip-out", rows, shifts)
    print("configs chosen: " + ", ".join(f"{k.split('@')[0]} {c}" for k, c in chosen.items()))


if __name__ == "__main__":
    main()
