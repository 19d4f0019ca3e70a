"""Per-frame state timelines of person clips, as text (``curation show``) and as a picture under a
contact sheet (``curation sample``).

A strip has one cell per ``cell_s`` seconds holding the most frequent state of the frames in it:
``S`` speak, ``L`` listen, ``I`` idle, ``D`` discard, ``.`` no frame.
"""
from __future__ import annotations

from collections import Counter

LETTER = {"speak": "S", "listen": "L", "idle": "I", "discard": "D"}
COLOUR = {"speak": (220, 60, 50), "listen": (50, 110, 220), "idle": (170, 170, 170),
          "discard": (30, 30, 30), None: (255, 255, 255)}


def cells(times: list[float], states: list[str], start_s: float, end_s: float,
          cell_s: float) -> list[str | None]:
    """The majority state of each ``cell_s`` cell from ``start_s`` to ``end_s`` (None: no frame)."""
    n = max(1, int(round((end_s - start_s) / cell_s)))
    bins: list[Counter] = [Counter() for _ in range(n)]
    for t, s in zip(times, states):
        k = int((t - start_s) / cell_s)
        if 0 <= k < n and s:
            bins[k][s] += 1
    return [b.most_common(1)[0][0] if b else None for b in bins]


def text_strip(times: list[float], states: list[str], start_s: float, end_s: float,
               cell_s: float = 0.2) -> list[str]:
    """Two lines: the strip (letters separated by spaces) and a ruler with whole seconds."""
    cs = cells(times, states, start_s, end_s, cell_s)
    strip = " ".join(LETTER.get(c, ".") if c else "." for c in cs)
    ruler = [" "] * len(strip)
    for k in range(len(cs)):
        t = start_s + k * cell_s
        if abs(t - round(t)) < cell_s / 2 - 1e-9 or k == 0:
            label = f"{t:.0f}s" if k else f"{t:.1f}s"
            pos = 2 * k
            if all(ruler[p] == " " for p in range(max(0, pos - 1), min(len(ruler), pos + len(label) + 1))):
                for i, ch in enumerate(label):
                    if pos + i < len(ruler):
                        ruler[pos + i] = ch
    return [strip, "".join(ruler).rstrip()]


def summary_line(clip: dict) -> str:
    ratios = ", ".join(f"{k} {clip.get(k + '_ratio') or 0:.0%}" for k in ("speak", "listen", "idle", "discard"))
    return f"role {clip.get('role') or '?'}: {ratios}"


def draw_strips(sheet, rows: list[tuple[str, list[float], list[str]]], start_s: float, end_s: float,
                height: int = 18):
    """A new image: ``sheet`` (PIL) with one coloured bar per (label, times, states) row under it."""
    from PIL import Image, ImageDraw
    w = sheet.width
    legend_h = 16
    out = Image.new("RGB", (w, sheet.height + legend_h + height * len(rows) + 4), "white")
    out.paste(sheet, (0, 0))
    d = ImageDraw.Draw(out)
    y = sheet.height + 2
    x0 = 120
    x = 4
    for state in ("speak", "listen", "idle", "discard"):
        d.rectangle([x, y + 3, x + 10, y + 13], fill=COLOUR[state])
        d.text((x + 14, y + 2), state, fill=(0, 0, 0))
        x += 70
    y += legend_h
    for label, times, states in rows:
        cs = cells(times, states, start_s, end_s, max((end_s - start_s) / max(1, w - x0 - 4), 0.1))
        d.text((4, y + 3), label[:18], fill=(0, 0, 0))
        span = (w - x0 - 4) / max(1, len(cs))
        for k, c in enumerate(cs):
            d.rectangle([x0 + k * span, y + 2, x0 + (k + 1) * span, y + height - 2], fill=COLOUR[c])
        y += height
    return out
