"""Clip-level emotion from frame-level facial emotion probabilities (LongCat-Video-Avatar 1.5 §2.4).

Pure functions on arrays, no models:

- :func:`clip_scores`: per class, the mean of the top-N frame confidences (N = 10 or 20 in the paper;
  a parameter here). A clip with fewer than N scored frames uses all of them. Frames without a face
  (rows of NaN) are left out.
- :func:`clip_emotion`: the dominant class of those scores with the paper's "neutral bias correction"
  (if neutral is the top-1 class, the second class and its score are registered instead) and its
  "confidence thresholding" (the clip counts as emotional only when the final dominant class scores
  strictly more than 0.7).
- :func:`taxonomy_tag`: the six-category emotion taxonomy of LongCat §2.4, which a captioning model
  (Qwen-Omni) assigns; when several categories apply the paper's priority 6 > 5 > 4 > 2 > 1 > 3 picks
  one; 0 is the paper's null label (hard exclusions: synthetic content, more than two subjects,
  identity switches, small subjects).
- :func:`refine_taxonomy`: the paper's follow-up rule: clips tagged 5 or 6 that show no significant
  emotional peak in the frame-level scores are re-classified as non-emotional (0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

TOP_N = 10                 # LongCat §2.4: N = 10 or 20
EMOTIONAL_THRESHOLD = 0.7  # LongCat §2.4: keep only where the final dominant class scores s > 0.7

# LongCat §2.4 emotion taxonomy, numbered in the paper's order.
TAXONOMY = {
    0: "none",                     # null label (hard exclusion rules)
    1: "high_arousal",             # high-intensity, large-amplitude, clear dominant emotion
    2: "context_reaction",         # context-/plot-driven reaction ("reaction before expression")
    3: "spontaneous_speech",       # low-arousal emotional leakage in daily conversation
    4: "nonverbal_dominant",       # conveyed by face, gaze or posture rather than speech
    5: "regulation_suppression",   # masked emotion with brief micro-expression flashes
    6: "temporal_dynamics",        # emotion evolving through clear stages or turning points
}
TAXONOMY_PRIORITY = (6, 5, 4, 2, 1, 3)  # LongCat §2.4: 6 > 5 > 4 > 2 > 1 > 3


def clip_scores(frame_probs: np.ndarray, top_n: int = TOP_N) -> np.ndarray:
    """(T, C) frame probabilities -> (C,) per-class mean of the ``top_n`` highest frame values.

    Rows with any NaN (no face on that frame) are ignored; fewer valid rows than ``top_n`` -> all
    of them; no valid row -> all NaN."""
    p = np.asarray(frame_probs, np.float64)
    if p.ndim != 2:
        raise ValueError(f"frame_probs must be (T, C), got shape {p.shape}")
    if top_n < 1:
        raise ValueError("top_n must be >= 1")
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return np.full(p.shape[1], np.nan)
    k = min(top_n, len(p))
    top = np.sort(p, axis=0)[-k:]
    return top.mean(axis=0)


@dataclass
class ClipEmotion:
    label: str | None          # final dominant class (after neutral correction); None: no scored frame
    score: float               # its clip score (NaN when label is None)
    emotional: bool            # score > threshold
    top1: str | None           # the top-1 class before the neutral correction
    neutral_corrected: bool    # neutral was top-1, so the second class was taken
    n_frames: int              # frames that had probabilities
    scores: dict[str, float] = field(default_factory=dict)  # per-class clip scores


def clip_emotion(frame_probs: np.ndarray, classes: Sequence[str], top_n: int = TOP_N,
                 threshold: float = EMOTIONAL_THRESHOLD, neutral: str = "neutral") -> ClipEmotion:
    """Clip emotion of (T, C) frame probabilities whose columns are ``classes`` (LongCat §2.4)."""
    p = np.asarray(frame_probs, np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"frame_probs must be (T, {len(classes)}), got shape {p.shape}")
    scores = clip_scores(p, top_n)
    n = int(np.all(np.isfinite(p), axis=1).sum())
    if n == 0:
        return ClipEmotion(None, float("nan"), False, None, False, 0,
                           {c: float("nan") for c in classes})
    order = np.argsort(-scores, kind="stable")
    top1 = classes[order[0]]
    corrected = top1 == neutral and len(classes) > 1
    best = order[1] if corrected else order[0]
    score = float(scores[best])
    return ClipEmotion(label=classes[best], score=score, emotional=score > threshold, top1=top1,
                       neutral_corrected=corrected, n_frames=n,
                       scores={c: float(s) for c, s in zip(classes, scores)})


def _category(c: int | str) -> int:
    if isinstance(c, str):
        names = {v: k for k, v in TAXONOMY.items()}
        if c.strip().isdigit():
            c = int(c)
        elif c.strip().lower() in names:
            return names[c.strip().lower()]
        else:
            raise ValueError(f"unknown emotion category {c!r}; expected one of {list(TAXONOMY.values())}")
    if int(c) not in TAXONOMY:
        raise ValueError(f"unknown emotion category {c!r}; expected 0-6")
    return int(c)


def taxonomy_tag(categories: Iterable[int | str]) -> int:
    """The one category (1-6) a clip gets when a model says several apply, by the priority
    6 > 5 > 4 > 2 > 1 > 3; 0 when none applies or a null label (0) was given (hard exclusion wins)."""
    cats = {_category(c) for c in categories}
    if not cats or 0 in cats:
        return 0
    return next(c for c in TAXONOMY_PRIORITY if c in cats)


def refine_taxonomy(tag: int | str, emotional: bool) -> int:
    """LongCat §2.4: a clip tagged 5 or 6 without a significant emotional peak in the frame-level
    scores (``emotional`` from :func:`clip_emotion`) is re-classified as non-emotional (0)."""
    tag = _category(tag)
    return 0 if tag in (5, 6) and not emotional else tag
