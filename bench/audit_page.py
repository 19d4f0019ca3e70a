"""How fast the audit page answers on a 100-clip and a 100,000-clip store (issue 19: "a 100k-clip
store opens as fast as a 100-clip one"), and the README's screenshots.

Timing: two synthetic stores with the same columns (the clips step's, quality, speech and person
columns, seeded uniform values; 10 clips per video; the latest run's workflow is demo.yaml, so the
funnel has its 8 filters), written as one table each and indexed as a run's end leaves them
(``Store.maintain``). The app is served by uvicorn on 127.0.0.1 in this process and asked over HTTP
what the grid asks when it opens (the first page of 48, the total, the video names, each row's fate),
then sorted by a score, with a filter, a funnel tab, a later page; and the funnel, the histograms and
a clip page's data; and the grid page in headless chromium, from navigation until its cards are
drawn. Each time is the median of ``--repeat`` requests after one warm-up.

Run: ``.venv/bin/python bench/audit_page.py [--sizes 100,100000] [--repeat 5]``.
Screenshots: ``.venv/bin/python bench/audit_page.py --screenshots STORE --clip CLIP_ID [--at S] --out docs/images``
(headless chromium; the grid, a clip page paused at the clip's middle, the funnel).
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = [  # (what the grid or a page does, URL)
    ("grid opens (page 1 of 48, total, names, fates)", "/api/clips?limit=48"),
    ("sorted by sharpness, descending", "/api/clips?limit=48&sort=sharpness&desc=1"),
    ("filter speech_ratio > 0.5 AND sharpness > 30", "/api/clips?limit=48&" + urllib.parse.urlencode(
        {"where": "speech_ratio > 0.5 AND sharpness > 30"})),
    ("tab: dropped by speech", "/api/clips?limit=48&tab=speech"),
    ("page 3, sorted by duration", "/api/clips?limit=48&offset=96&sort=duration_s"),
    ("funnel counts", "/api/funnel"),
    ("histograms of the filtered scores", "/api/histograms"),
    ("a clip page's data", "/api/clip/{clip}"),
]


def clips_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    vids = np.arange(n) // 10
    start = rng.uniform(0, 50, n)
    dur = rng.uniform(1, 10, n)
    u = lambda: rng.uniform(0, 1, n).astype(np.float32)  # noqa: E731
    return pa.table({
        "clip_id": [f"v{v:06d}:0:{i % 10}" for i, v in enumerate(vids)],
        "video_id": [f"v{v:06d}" for v in vids], "shot_index": np.zeros(n, np.int32),
        "clip_index": (np.arange(n) % 10).astype(np.int32),
        "clip_kind": np.where(rng.uniform(0, 1, n) < 0.5, "person", "shot"),
        "start_s": start, "end_s": start + dur, "duration_s": dur, "width": np.full(n, 1280, np.int32),
        "height": np.full(n, 720, np.int32), "fps": np.full(n, 25.0), "error": pa.nulls(n, pa.string()),
        "error_stage": pa.nulls(n, pa.string()), "speech_ratio": rng.uniform(0, 1, n),
        "sharpness": rng.uniform(5, 120, n).astype(np.float32), "underexposed_ratio": u() * 0.2,
        "overexposed_ratio": u() * 0.2, "border_top": u() * 0.02, "border_bottom": u() * 0.02,
        "border_left": u() * 0.02, "border_right": u() * 0.02, "text_coverage": u() * 0.03,
        "still_score": u(), "jump_count": rng.integers(0, 2, n).astype(np.int32),
        "motion_intensity": rng.uniform(0, 0.2, n), "speak_ratio": u(), "listen_ratio": u(),
        "discard_ratio": u() * 0.3, "sync_confidence": u() * 3, "role": np.where(u() < 0.5, "speaker", "listener"),
    })


def build(path: str, n: int) -> None:
    from curation.store import Store
    st = Store(path)
    st.upsert("clips", clips_table(n))
    vids = sorted({f"v{v:06d}" for v in range(max(1, n // 10))})
    st.upsert("videos", [{"video_id": v, "uri": f"/nonexistent/{v}.mp4"} for v in vids])
    st.upsert("runs", [{"run_id": "bench", "workflow": "demo", "status": "completed",
                        "workflow_yaml": (ROOT / "workflows" / "demo.yaml").read_text()}])
    for table in ("clips", "videos", "runs"):
        st.maintain(table)


def serve(store: str):
    import uvicorn

    from curation.audit.app import build_app
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(store), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def timed(port: int, url: str, repeat: int) -> float:
    out = []
    for i in range(repeat + 1):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        t = time.perf_counter()
        c.request("GET", url)
        r = c.getresponse()
        r.read()
        dt = time.perf_counter() - t
        assert r.status == 200, (url, r.status)
        c.close()
        if i:
            out.append(dt)
    return statistics.median(out)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"   # Debian's; Selenium-Manager cannot download offline
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp()}")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def page_load(driver, url: str, repeat: int) -> float:
    """Seconds from navigation to the page's script having drawn its rows (body[data-ready])."""
    out = []
    for i in range(repeat + 1):
        t = time.perf_counter()
        driver.get(url)
        while driver.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.005)
        if i:
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def bench(sizes: list[int], repeat: int) -> None:
    results = {}
    driver = browser()
    for n in sizes:
        d = tempfile.mkdtemp(prefix=f"audit-bench-{n}-")
        t = time.perf_counter()
        build(d + "/store", n)
        print(f"{n} clips: store written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        server, port = serve(d + "/store")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.request("GET", "/api/clips?limit=1")
        assert json.loads(c.getresponse().read())["total"] == n
        results[n] = [timed(port, url.format(clip=urllib.parse.quote("v000000:0:3")), repeat) for _, url in REQUESTS]
        results[n].append(page_load(driver, f"http://127.0.0.1:{port}/", repeat))
        server.should_exit = True
    driver.quit()
    head = " | ".join(f"{n:,} clips, ms" for n in sizes)
    print(f"| request | {head} | ratio |\n|---|" + "---|" * len(sizes) + "---|")
    for k, (what, _) in enumerate(REQUESTS + [("grid page in chromium, navigation to cards drawn", "")]):
        ms = [results[n][k] * 1000 for n in sizes]
        print(f"| {what} | " + " | ".join(f"{m:.0f}" for m in ms) + f" | {ms[-1] / ms[0]:.1f} |")


def screenshots(store: str, clip: str, out: str, at: float | None = None) -> None:
    """PNGs of the grid, a clip page paused at AT seconds (default: the middle of CLIP), the funnel."""
    from PIL import Image
    server, port = serve(store)
    driver = browser()
    base = f"http://127.0.0.1:{port}"
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, url, height in (("audit_grid", "/", 900), ("audit_clip", "/clip/" + urllib.parse.quote(clip), 1120),
                              ("audit_funnel", "/funnel", 900)):
        driver.get(base + url)
        while driver.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.1)
        if name == "audit_clip":
            driver.set_script_timeout(30)
            driver.execute_async_script(
                "const [t, done] = arguments, v = document.getElementById('video');"
                "v.pause(); v.addEventListener('seeked', () => setTimeout(done, 700), {once: true});"
                "v.currentTime = t - Number(v.dataset.offset);", at if at is not None else _middle(store, clip))
        time.sleep(1.0)
        driver.set_window_size(1280, height)
        png = Path(out) / f"{name}.png"
        driver.save_screenshot(str(png))
        img = Image.open(png).convert("RGB")
        img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS).quantize(256).save(png, optimize=True)
        print(png, png.stat().st_size, "bytes")
    driver.quit()
    server.should_exit = True


def _middle(store: str, clip: str) -> float:
    from curation.store import Store, sql_quote
    c = Store(store).query("clips", where=f"clip_id = {sql_quote(clip)}", columns=["start_s", "end_s"]).to_pylist()[0]
    return (c["start_s"] + c["end_s"]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--screenshots", metavar="STORE")
    ap.add_argument("--clip")
    ap.add_argument("--at", type=float, help="video seconds the clip page is paused at")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    a = ap.parse_args()
    if a.screenshots:
        screenshots(a.screenshots, a.clip, a.out, a.at)
    else:
        bench([int(x) for x in a.sizes.split(",")], a.repeat)


if __name__ == "__main__":
    main()
