"""Speak/listen balancing of person clips into a tagged subset (LPM 1.0 §2.3, StreamAvatar §4.1;
SPEC item 14).

Inputs: person clips (``clip_kind = 'person'``) with the conversation stage's ``speak_ratio`` and
``listen_ratio`` (operators/rerank.py: shares of the clip's frames in each state) and the emotion
stage's ``emotion_label`` / ``emotional`` (operators/emotion.py).

Per clip, its listening ratio ``listen_share = listen_ratio / (speak_ratio + listen_ratio)``; the clip
is a *listener* clip when listen_ratio > speak_ratio, a *speaker* clip when speak_ratio >= listen_ratio
(and > 0), and left out (idle) when both are 0 or missing.

Selection (:func:`plan`), in samples (a clip repeated r times counts r times):

1. Listener clips (LPM §2.3: raw listener data is > 70 % neutral; "down-sample dominant neutral
   categories and up-sample rare but training-critical behaviors"):
   - expressive ones (``emotional``) are repeated by the rarity of their ``emotion_label``:
     r = round(count of the most common expressive label / count of theirs), 1 <= r <= ``max_repeat``;
   - neutral ones (not emotional) are down-sampled at random to at most ``1 - expressive_share`` of the
     listener samples (all are kept when there is no expressive listener clip).
2. The speak/listen mix: the listener share of the samples is brought to ``target_listen`` by
   down-sampling only (never by repeating clips for the mix): too many listener samples -> neutral
   listener clips are dropped first, then expressive samples are drawn at random (keeping their
   rarity weights in proportion); too many speaker samples -> speaker clips are drawn at random.
   The result is the largest selection with that mix.

Random choices use ``numpy.random.default_rng(seed)`` over the clips sorted by ``clip_id``, so a run
is reproducible. The selection is written as rows of the ``subsets`` table (``SUBSETS``, key
``(subset, clip_id)``): the subset name, the clip, its repeat count and why; not copies of the clips.
Rows of a subset name replace that subset's earlier rows. ``clips_version`` records the version of
the clips table the selection was made from.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from schemas import SUBSETS  # noqa: E402 - the table: subset, clip_id, repeat, mode, ...

SUBSETS_KEY = ("subset", "clip_id")
COLUMNS = ("clip_id", "video_id", "speak_ratio", "listen_ratio", "emotion_label", "emotional")
PERSON = "clip_kind = 'person'"
EXPRESSIVE_SHARE = 0.5   # our default: expressive listener samples >= neutral ones (LPM gives no number)
MAX_REPEAT = 3           # our default cap on up-sampling one clip


class BalanceError(ValueError):
    """The clips cannot give the asked selection (one line, for the CLI)."""
    exit_code = 2


@dataclass
class Plan:
    repeats: dict[str, int]                       # clip_id -> repeat count (selected clips only)
    mode: dict[str, str]                          # clip_id -> speak | listen (all usable clips)
    stats: dict = field(default_factory=dict)


def listen_share(speak_ratio, listen_ratio) -> float | None:
    """The clip's listening ratio among its speak+listen frames; None when it has neither."""
    s, ls = float(speak_ratio or 0.0), float(listen_ratio or 0.0)
    if not (math.isfinite(s) and math.isfinite(ls)) or s + ls <= 0:
        return None
    return ls / (s + ls)


def _draw(rng, items: list, k: int) -> list:
    """``k`` of ``items`` at random without replacement (all when k >= len)."""
    if k >= len(items):
        return list(items)
    idx = rng.choice(len(items), size=max(k, 0), replace=False)
    return [items[i] for i in sorted(idx)]


def plan(rows: list[dict], target_listen: float, expressive_share: float = EXPRESSIVE_SHARE,
         max_repeat: int = MAX_REPEAT, seed: int = 0) -> Plan:
    """The balanced selection of person clip ``rows`` (dicts with :data:`COLUMNS`); see the module doc."""
    if not 0.0 <= target_listen <= 1.0:
        raise BalanceError(f"--target-listen must be within 0 and 1, got {target_listen}")
    if not 0.0 < expressive_share < 1.0:
        raise BalanceError(f"--expressive-share must be within 0 and 1 (exclusive), got {expressive_share}")
    if max_repeat < 1:
        raise BalanceError(f"--max-repeat must be >= 1, got {max_repeat}")
    rng = np.random.default_rng(seed)
    rows = sorted(rows, key=lambda r: r["clip_id"])
    mode: dict[str, str] = {}
    speakers, expressive, neutral = [], [], []
    for r in rows:
        share = listen_share(r.get("speak_ratio"), r.get("listen_ratio"))
        if share is None:
            continue
        if share > 0.5:
            mode[r["clip_id"]] = "listen"
            (expressive if r.get("emotional") else neutral).append(r)
        else:
            mode[r["clip_id"]] = "speak"
            speakers.append(r["clip_id"])
    # 1. listeners: rare expressive labels up, neutral down
    counts = Counter(r.get("emotion_label") for r in expressive)
    top = max(counts.values()) if counts else 0
    exp_rep = {r["clip_id"]: int(min(max_repeat, max(1, round(top / counts[r.get("emotion_label")]))))
               for r in expressive}
    e_samples = sum(exp_rep.values())
    neutral_ids = [r["clip_id"] for r in neutral]
    keep_n = len(neutral_ids) if not expressive else \
        min(len(neutral_ids), int(math.floor(e_samples * (1 - expressive_share) / expressive_share + 1e-9)))
    kept_neutral = _draw(rng, neutral_ids, keep_n)
    listen_samples = e_samples + len(kept_neutral)
    # 2. the speak/listen mix, by down-sampling
    chosen_speakers = speakers
    if target_listen > 0 and listen_samples == 0:
        raise BalanceError(f"no listener clips among the {len(rows)} clips: cannot reach "
                           f"--target-listen {target_listen}")
    if target_listen < 1 and not speakers:
        raise BalanceError(f"no speaker clips among the {len(rows)} clips: cannot reach "
                           f"--target-listen {target_listen}")
    total = listen_samples + len(speakers)
    if listen_samples > target_listen * total + 1e-9:        # too many listener samples
        want = int(math.floor(len(speakers) * target_listen / (1 - target_listen) + 1e-9)) \
            if target_listen < 1 else listen_samples
        drop = listen_samples - want
        if drop <= len(kept_neutral):
            kept_neutral = _draw(rng, kept_neutral, len(kept_neutral) - drop)
        else:
            kept_neutral = []
            slots = [cid for cid in sorted(exp_rep) for _ in range(exp_rep[cid])]
            exp_rep = dict(Counter(_draw(rng, slots, want)))
    elif listen_samples < target_listen * total - 1e-9:      # too many speaker samples
        want = int(math.floor(listen_samples * (1 - target_listen) / target_listen + 1e-9))
        chosen_speakers = _draw(rng, speakers, want)
    repeats = {cid: 1 for cid in chosen_speakers}
    repeats.update({cid: 1 for cid in kept_neutral})
    repeats.update({cid: r for cid, r in exp_rep.items() if r > 0})
    n_listen = sum(r for cid, r in repeats.items() if mode[cid] == "listen")
    n_all = sum(repeats.values())
    stats = {
        "clips": len(rows), "idle_skipped": len(rows) - len(mode),
        "speaker_clips": len(speakers), "listener_clips": len(expressive) + len(neutral),
        "expressive_listener_clips": len(expressive), "neutral_listener_clips": len(neutral),
        "selected_clips": len(repeats), "samples": n_all,
        "listen_share": n_listen / n_all if n_all else float("nan"),
        "neutral_listener_share_before": len(neutral) / max(1, len(expressive) + len(neutral)),
        "neutral_listener_share_after": len(kept_neutral) / n_listen if n_listen else float("nan"),
    }
    return Plan(repeats=repeats, mode=mode, stats=stats)


def balance(store, tag: str, target_listen: float, where: str | None = None,
            expressive_share: float = EXPRESSIVE_SHARE, max_repeat: int = MAX_REPEAT,
            seed: int = 0) -> dict:
    """Select from ``store``'s person clips (and ``where``) and write subset ``tag``; returns the stats."""
    from curation.sql import validate_where
    from curation.store import sql_quote
    if not tag or not tag.strip():
        raise BalanceError("--tag must name the subset")
    if not store.exists("clips"):
        raise BalanceError(f"no clips table in {store.uri}")
    have = set(store.schema("clips").names)
    missing = [c for c in COLUMNS if c not in have]
    if missing:
        raise BalanceError(f"clips have no column(s) {', '.join(missing)}: run the conversation "
                           f"(speak_ratio, listen_ratio) and emotion (emotion_label, emotional) steps first")
    flt = PERSON if where is None else f"({PERSON}) AND ({validate_where(where)})"
    clips_version = store.dataset("clips").version
    rows = store.query("clips", where=flt, columns=list(COLUMNS)).to_pylist()
    if not rows:
        raise BalanceError(f"no person clips match {flt}")
    params = {"target_listen": target_listen, "where": where, "expressive_share": expressive_share,
              "max_repeat": max_repeat, "seed": seed}
    p = plan(rows, target_listen, expressive_share, max_repeat, seed)
    now = datetime.now(timezone.utc)
    by_id = {r["clip_id"]: r for r in rows}
    out = [{"subset": tag, "clip_id": cid, "video_id": by_id[cid].get("video_id"), "repeat": rep,
            "mode": p.mode[cid], "listen_share": listen_share(by_id[cid].get("speak_ratio"),
                                                                 by_id[cid].get("listen_ratio")),
            "emotion_label": by_id[cid].get("emotion_label"), "emotional": by_id[cid].get("emotional"),
            "clips_version": clips_version, "params": json.dumps(params, sort_keys=True), "created_at": now}
           for cid, rep in sorted(p.repeats.items())]
    store.replace("subsets", f"subset = {sql_quote(tag)}", pa.Table.from_pylist(out, schema=SUBSETS))
    return {**p.stats, "subset": tag, "clips_version": clips_version}
