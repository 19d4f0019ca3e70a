"""The audit page (``curation audit``) served for real (uvicorn on 127.0.0.1) and looked at in a real
headless browser: Debian's chromium through chromium-driver, driven by selenium (one browser for the
session; ``make test`` installs both).

Two stores: the conversation workflow's store of the shared clips (built once per session in
conftest.py, shared with test_conversation.py): the grid, a filter, the funnel tabs, a clip page
playing with its boxes and state cursor checked against the stored rows; and a small synthetic store
whose video file is named ``<img src=x onerror=alert(1)>.mp4`` (a copy of pf_single_face.mp4), for
escaping, what is served, the API's errors and the store staying untouched.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pytest

from typer.testing import CliRunner

from curation.cli import app
from curation.cli.common import error_line
from curation.media import probe
from curation.store import Store

CURATION = str(Path(sys.executable).parent / "curation")
HOSTILE = "<img src=x onerror=alert(1)>.mp4"
HOSTILE_WORKFLOW = """
name: hostile
steps:
  - {name: probe, op: probe}
filters:
  - {name: long_enough, where: "duration_s >= 1.0"}
  - {name: sharp, where: "sharpness >= 20 AND abs(jump_count) <= 0"}
  - {name: ghost, where: "nosuch_score > 1"}
"""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000")


# ---- fixtures: servers and the browser -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """The app over a store, served by uvicorn in a thread of the test process."""

    def __init__(self, store_uri: str):
        import uvicorn

        from curation.audit.app import build_app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_app(store_uri), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the audit app did not start"
            time.sleep(0.05)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """A raw request: the path goes out exactly as written (no client-side normalising)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        out = r.status, dict(r.getheaders()), r.read()
        c.close()
        return out

    def json(self, path: str) -> tuple[int, dict]:
        status, _, body = self.get(path)
        return status, json.loads(body)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(exe):
            pytest.fail(f"{exe} not found: `make test` installs Debian's chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"   # no Selenium-Manager download (offline)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="audit-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url: str) -> None:
    """Load a page and wait until its script says it has drawn (``body[data-ready]``)."""
    driver.get(url)
    deadline = time.time() + 30
    while driver.execute_script("return document.body && document.body.dataset.ready") != "1":
        assert time.time() < deadline, f"page did not finish loading: {url}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, media):
    """A synthetic store over one real file named like an HTML tag: two shot clips (one kept, one
    too short), a clip with an annotation error, the latest run's workflow with two filters, and a
    `windows` table with only some of the contract's columns. A file next to the video that the
    store does not reference must never be served."""
    d = tmp_path_factory.mktemp("hostile")
    video = d / "videos" / HOSTILE
    video.parent.mkdir()
    shutil.copyfile(media / "pf_single_face.mp4", video)
    (video.parent / "secret.txt").write_text("not referenced by the store\n")
    st = Store(str(d / "store"))
    p = probe(str(video))
    st.upsert("videos", [{"video_id": "v1", "uri": str(video), **{k: p[k] for k in (
        "duration_s", "fps", "width", "height", "rotation", "video_codec", "audio_codec", "has_audio",
        "container")}}])
    base = {"video_id": "v1", "shot_index": 0, "clip_kind": "shot", "width": p["width"],
            "height": p["height"], "fps": p["fps"], "jump_count": 0, "error": None, "error_stage": None}
    st.upsert("clips", pa.Table.from_pylist([
        {**base, "clip_id": "v1:0:0", "clip_index": 0, "start_s": 0.1, "end_s": 2.3, "duration_s": 2.2,
         "sharpness": 40.0},
        {**base, "clip_id": "v1:0:1", "clip_index": 1, "start_s": 0.5, "end_s": 1.0, "duration_s": 0.5,
         "sharpness": 60.0},
        {**base, "clip_id": "v1:0:2", "clip_index": 2, "start_s": 1.0, "end_s": 2.0, "duration_s": 1.0,
         "sharpness": None, "error": f"quality: cannot read {HOSTILE}", "error_stage": "quality"}]))
    st.upsert("runs", [{"run_id": "r1", "workflow": "hostile", "workflow_yaml": HOSTILE_WORKFLOW,
                        "inputs": [str(video)], "status": "completed"}])
    import lance   # the validator's table (CONTRACTS.md), some columns only: read defensively
    lance.write_dataset(pa.Table.from_pylist([
        {"clip_id": "v1:0:0", "start_s": 0.1, "end_s": 1.1, "profile": "p", "kept": True, "reason": None},
        {"clip_id": "v1:0:0", "start_s": 1.1, "end_s": 2.1, "profile": "p", "kept": False,
         "reason": "sync_confidence 0.4 < 1.0 <script>alert(2)</script>"}]), str(d / "store" / "windows.lance"))
    site = Site(str(d / "store"))
    yield site, st, d
    site.close()


@pytest.fixture(scope="module")
def conv_site(conversation_store):
    st, _, clips, d = conversation_store
    site = Site(str(d / "store"))
    yield site, st, clips
    site.close()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- the synthetic store: API, safety ----------------------------------------------------------------
def test_api_clips_answers_json_rows_and_the_query_errors(hostile):
    site, st, _ = hostile
    status, data = site.json("/api/clips?" + urllib.parse.urlencode({"where": "duration_s > 0.8", "limit": 1}))
    assert status == 200 and data["total"] == 2 and len(data["rows"]) == 1
    assert data["rows"][0]["clip_id"] in ("v1:0:0", "v1:0:2") and data["rows"][0]["video_name"] == HOSTILE
    status, data = site.json("/api/clips?sort=sharpness&desc=1&limit=5")   # sorted in the store, nulls last
    assert [r["clip_id"] for r in data["rows"]] == ["v1:0:1", "v1:0:0", "v1:0:2"]
    assert {r["clip_id"]: r["fate"] for r in data["rows"]} == {
        "v1:0:0": "kept", "v1:0:1": "long_enough", "v1:0:2": "annotation errors"}
    # the same one-line errors as `curation query --where`
    for where in ("duration_s > 1 AN sharpness > 2", "nosuch_column > 1"):
        status, data = site.json("/api/clips?" + urllib.parse.urlencode({"where": where}))
        cli = CliRunner().invoke(app, ["query", "--store", st.uri, "--where", where])
        assert status == 400 and cli.exit_code != 0
        assert error_line(cli.exception) == data["error"]      # what `curation query` prints after "error: "


def test_funnel_tabs_partition_the_clips_as_stats_counts_them(hostile):
    site, st, _ = hostile
    from curation.stats import compute
    funnel = {r["stage"]: r for r in compute(st.uri)["funnel"]}
    status, f = site.json("/api/funnel")
    assert f["tabs"] == ["all", "kept", "annotation errors", "long_enough", "sharp"]
    seen = []
    for tab in f["tabs"][1:]:
        _, data = site.json("/api/clips?" + urllib.parse.urlencode({"tab": tab}))
        seen += [r["clip_id"] for r in data["rows"]]
        if tab != "kept":
            assert data["total"] == funnel[tab]["removed"]
            assert all(r["fate"] == tab for r in data["rows"])
    assert sorted(seen) == ["v1:0:0", "v1:0:1", "v1:0:2"]     # every clip in exactly one tab
    _, clip = site.json("/api/clip/" + urllib.parse.quote("v1:0:1"))
    assert clip["fate"] == "long_enough"
    why = {v["stage"]: v for v in clip["verdicts"]}
    assert why["long_enough"]["passed"] is False
    assert why["long_enough"]["parts"] == [{"sql": "duration_s >= 1.0", "expr": "duration_s", "op": ">=",
                                             "threshold": 1.0, "threshold_sql": "1.0", "value": 0.5, "ok": False}]
    assert [p["value"] for p in why["sharp"]["parts"]] == [60.0, 0]    # abs(jump_count), by Lance
    assert not why["ghost"]["applied"] and "nosuch_score" in why["ghost"]["note"]   # as stats: not applied
    assert funnel["ghost"]["remaining"] is None


def test_only_files_the_store_references_are_served(hostile):
    site, _, d = hostile
    video = d / "videos" / HOSTILE
    status, headers, body = site.get("/media/video/v1", {"Range": "bytes=0-99"})
    assert status == 206 and body == video.read_bytes()[:100]     # ranges: the player can seek
    status, _, body = site.get("/thumb/" + urllib.parse.quote("v1:0:0"))
    assert status == 200 and body[:2] == b"\xff\xd8"                 # a JPEG of the clip's frame
    attempts = ["/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/",
                "/static/%2e%2e/app.py", "/static/app.py", "/media/video/..%2fsecret.txt",
                "/media/video/v1/../../secret.txt", "/media/video/" + urllib.parse.quote(str(video), safe=""),
                "/media/video/nosuch", "/media/audio/v1%3A0%3A0/speaker", "/media/audio/v1:0:0/..%2f..%2fsecret.txt",
                "/media/ref/..%2f..%2fsecret.txt", "/media/clip/nosuch", "/thumb/..%2fsecret.txt",
                "/videos/secret.txt", "/" + urllib.parse.quote(str(video.parent / "secret.txt")),
                "/clip/../../etc/passwd", "/api/clip/..%2fsecret.txt", "/%2e%2e/%2e%2e/etc/passwd"]
    for path in attempts:
        status, _, body = site.get(path)
        assert status == 404, path
        assert b"not referenced" not in body and b"root:" not in body and b"import" not in body, path
    status, _, _ = site.get("/", {"Host": "attacker.example"})       # DNS rebinding: refused
    assert status == 400


def test_the_store_is_never_written(hostile):
    site, st, d = hostile
    before = _snapshot(d / "store")
    for path in ("/", "/funnel", "/clip/v1%3A0%3A0", "/api/clips?sort=duration_s", "/api/clips?tab=kept",
                 "/api/funnel", "/api/histograms", "/api/clip/v1%3A0%3A0", "/api/waveform/v1%3A0%3A0",
                 "/thumb/v1%3A0%3A1", "/media/clip/v1%3A0%3A0", "/media/video/v1"):
        assert site.get(path)[0] == 200, path
    assert _snapshot(d / "store") == before


def test_a_hostile_file_name_renders_as_text(hostile, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    site, _, _ = hostile
    open_page(browser, site.url + "/")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".card .vname")]
    assert len(names) == 3 and all(n.startswith(HOSTILE) for n in names)
    assert browser.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    dropped = browser.find_element(By.CSS_SELECTOR, ".card[data-clip-id='v1:0:1'] .fate").text
    assert dropped == "dropped by long_enough"
    open_page(browser, site.url + "/clip/v1%3A0%3A0")
    assert browser.find_element(By.ID, "video-name").text == HOSTILE
    reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#windows tr[data-kept='false'] td")]
    assert "sync_confidence 0.4 < 1.0 <script>alert(2)</script>" in reasons   # the validator's verdict
    assert "columns not in this store: failed_check, checks, run_id" in browser.find_element(By.ID, "windows").text
    assert browser.find_elements(By.CSS_SELECTOR, "img[src='x'], #windows script") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text


def test_the_command_serves_on_loopback_and_prints_its_url(hostile):
    _, st, _ = hostile
    port = _free_port()
    proc = subprocess.Popen([CURATION, "audit", "--store", st.uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/api/clips?" + urllib.parse.urlencode({"where": "clip_kind = 'shot'", "limit": 2}))
        r = c.getresponse()
        rows = json.loads(r.read())["rows"]
        assert r.status == 200 and len(rows) == 2 and all("clip_id" in x for x in rows)
        busy = CliRunner().invoke(app, ["audit", "--store", st.uri, "--port", str(port)])   # port taken
        assert busy.exit_code != 0 and error_line(busy.exception).startswith(f"cannot listen on 127.0.0.1:{port}: ")
        assert _listening(port) == ["0100007F"]       # 127.0.0.1 only (/proc/net/tcp, hex)
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> list[str]:
    rows = [ln.split() for ln in open("/proc/net/tcp").read().splitlines()[1:]]
    rows += [ln.split() for ln in open("/proc/net/tcp6").read().splitlines()[1:]]
    return [r[1].split(":")[0] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A"]


# ---- the conversation store of the shared clips: the pages in the browser ----------------------------
def _cards(driver) -> list[dict]:
    from selenium.webdriver.common.by import By
    return [{"id": c.get_attribute("data-clip-id"), "fate": c.get_attribute("data-fate"),
             "fate_text": c.find_element(By.CSS_SELECTOR, ".fate").text}
            for c in driver.find_elements(By.CSS_SELECTOR, ".card")]


@pytest.mark.slow
def test_the_grid_loads_and_a_filter_narrows_it(conv_site, browser):
    from selenium.webdriver.common.by import By
    site, st, _ = conv_site
    open_page(browser, site.url + "/")
    every = sorted(st.query("clips", columns=["clip_id"])["clip_id"].to_pylist())
    assert sorted(c["id"] for c in _cards(browser)) == every and len(every) == 11
    deadline = time.time() + 30       # thumbnails: a frame of each clip, decoded from its video
    while not browser.execute_script(
            "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"):
        assert time.time() < deadline, "thumbnails did not load"
        time.sleep(0.1)
    where = "clip_kind = 'person' AND speak_ratio > 0.3"
    box = browser.find_element(By.ID, "where")
    box.send_keys(where)
    browser.find_element(By.ID, "apply").click()
    deadline = time.time() + 30
    while "where=" not in browser.current_url or browser.execute_script("return document.body.dataset.ready") != "1":
        assert time.time() < deadline
        time.sleep(0.05)
    want = sorted(st.query("clips", where=where, columns=["clip_id"])["clip_id"].to_pylist())
    assert sorted(c["id"] for c in _cards(browser)) == want and 0 < len(want) < len(every)
    open_page(browser, site.url + "/?" + urllib.parse.urlencode({"where": "speak_ratio > 0.3 AN role = 'x'"}))
    assert browser.find_element(By.ID, "error").text.startswith(
        "invalid filter \"speak_ratio > 0.3 AN role = 'x'\": unexpected 'AN'")
    assert _cards(browser) == []


@pytest.mark.slow
def test_the_dropped_tab_lists_a_clip_with_the_filter_that_removed_it(conv_site, browser):
    from selenium.webdriver.common.by import By
    site, st, clips = conv_site
    from curation.stats import compute
    removed = {r["stage"]: r["removed"] for r in compute(st.uri)["funnel"]}
    shot_clips = st.query("clips", where="clip_kind = 'shot'", columns=["clip_id"])["clip_id"].to_pylist()
    open_page(browser, site.url + "/?tab=person")       # the conversation workflow's first filter
    cards = _cards(browser)
    assert sorted(c["id"] for c in cards) == sorted(shot_clips) and len(cards) == removed["person"] == 5
    assert {(c["fate"], c["fate_text"]) for c in cards} == {("person", "dropped by person")}
    open_page(browser, site.url + "/?" + urllib.parse.urlencode({"tab": "annotation errors"}))
    [lp_d0] = clips["lp_d0.mp4"]                        # no audio stream: an error row
    assert [c["id"] for c in _cards(browser)] == [lp_d0["clip_id"]]
    # the clip page says why: the stage, the clip's value and the threshold
    [short] = [c for c in clips["dj_video4_tail.mp4"] if c["duration_s"] < 2.0]   # a 1.2 s track piece
    open_page(browser, site.url + "/clip/" + urllib.parse.quote(short["clip_id"]))
    assert browser.find_element(By.ID, "fate").get_attribute("data-fate") == "duration"
    row = browser.find_element(By.CSS_SELECTOR, "#why tr[data-stage='duration']")
    assert "removed here" in row.text and row.get_attribute("class") == "fail"
    assert f"duration_s = {short['duration_s']:.3g} (needs >= 2.0)" in row.text.replace("\n", " ")
    # a kept clip: every stage passes, the sync stage too (sync unknown = kept, docs/av-labels.md)
    [vr] = clips["vr_face1.mp4"]
    open_page(browser, site.url + "/clip/" + urllib.parse.quote(vr["clip_id"]))
    assert browser.find_element(By.ID, "fate").get_attribute("data-fate") == "kept"
    passed = browser.find_element(By.CSS_SELECTOR, "#why tr[data-stage='duration']")
    assert passed.get_attribute("class") == "pass" and "duration_s = 5.9 (needs >= 2.0)" in passed.text
    assert browser.find_element(By.CSS_SELECTOR, "#why tr[data-stage='in_sync']").get_attribute("class") == "pass"
    assert "no validator windows" in browser.find_element(By.ID, "windows").text   # no table: said so
    assert browser.find_element(By.ID, "show").text.endswith(f" {vr['clip_id']}")   # as `curation show` takes it


SEEK = """
const [t, done] = arguments, v = document.getElementById('video');
v.pause();
v.addEventListener('seeked', () => setTimeout(() => done(window.__probe()), 250), {once: true});
v.currentTime = t - Number(v.dataset.offset);
"""
PROBE = """
window.__probe = () => {
  const v = document.getElementById('video'), vb = v.getBoundingClientRect();
  const rects = [...document.querySelectorAll('#overlay rect')].map(r => {
    const b = r.getBoundingClientRect();
    return {kind: r.dataset.kind, track: r.dataset.track, mine: r.classList.contains('mine'),
            frame_t: Number(r.dataset.frameT), x: +r.getAttribute('x'), y: +r.getAttribute('y'),
            w: +r.getAttribute('width'), h: +r.getAttribute('height'),
            screen: [b.left - vb.left, b.top - vb.top, b.width, b.height]};
  });
  const rows = [...document.querySelectorAll('.row[data-clip-id]')].map(row => ({
    clip_id: row.dataset.clipId, now: row.querySelector('.now').dataset.state,
    cursor: +row.querySelector('line.cursor').getAttribute('x1'),
    segments: [...row.querySelectorAll('rect')].map(r => ({x: +r.getAttribute('x'), w: +r.getAttribute('width'),
                                                          state: r.dataset.state}))}));
  return {t: Number(document.getElementById('overlay').dataset.t), current: v.currentTime,
          video: [vb.width, vb.height], rects, rows};
};
"""


def _nearest(times, t, tol):
    import numpy as np
    k = int(np.argmin(np.abs(np.asarray(times) - t)))
    return k if abs(times[k] - t) <= tol else None


@pytest.mark.slow
def test_a_clip_page_plays_and_draws_the_stored_boxes_and_states(conv_site, browser):
    import numpy as np
    site, st, clips = conv_site
    clip = max(clips["dj_video4_tail.mp4"], key=lambda c: c["speak_ratio"] or 0)   # the woman in front
    video = st.query("videos", where=f"video_id = '{clip['video_id']}'").to_pylist()[0]
    tracks = st.query("tracks", where=f"video_id = '{clip['video_id']}'").to_pylist()
    assert len(tracks) >= 2                               # both women: two tracks drawn
    open_page(browser, site.url + "/clip/" + urllib.parse.quote(clip["clip_id"]))
    browser.execute_script(PROBE)
    played = browser.execute_async_script("""
        const done = arguments[0], v = document.getElementById('video'), t0 = v.currentTime;
        const drawn = new Set();
        const poll = setInterval(() => {
          drawn.add(document.getElementById('overlay').dataset.t);
          if (v.currentTime > t0 + 1.0) { clearInterval(poll); v.pause(); done([t0, v.currentTime, drawn.size]); }
        }, 20);
        v.play().catch(e => { clearInterval(poll); done([t0, -1, String(e)]); });""")
    assert played[1] > played[0] + 1.0 and played[2] >= 5, played   # it plays, boxes follow the frames
    mine = next(t for t in tracks if t["track_id"] == clip["track_id"])
    times = np.asarray(mine["frame_times_s"])
    others = [t for t in tracks if t["track_id"] != clip["track_id"]]
    ok = [k for k, t in enumerate(times) if clip["start_s"] + 0.5 < t < clip["end_s"] - 0.3
          and mine["face_boxes"][k] is not None and np.all(np.isfinite(mine["face_boxes"][k]))]
    both = [k for k in ok if any(_nearest(o["frame_times_s"], times[k], 0.02) is not None for o in others)]
    assert both, "no frame with both women in it"
    for k, people in ((ok[len(ok) // 2], 1), (both[len(both) // 2], 2)):
        t = float(times[k]) + 0.002                        # just after a stored frame's time
        got = browser.execute_async_script(SEEK, t)
        assert abs(got["t"] - times[k]) < 0.5 / video["fps"], (got["t"], times[k])   # that frame is shown
        want = []
        for tr in tracks:
            i = _nearest(tr["frame_times_s"], got["t"], 0.1)
            for kind in ("person", "face"):
                b = None if i is None else tr[f"{kind}_boxes"][i]
                if b is not None and np.all(np.isfinite(b)):
                    want.append((kind, tr["track_id"], tr["track_id"] == clip["track_id"], tr["frame_times_s"][i], *b))
        drawn = [(r["kind"], r["track"], r["mine"], r["frame_t"], r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"])
                 for r in got["rects"]]
        assert len(drawn) == len(want) and len({d[1] for d in drawn}) >= people, (drawn, want)
        for d, w in zip(sorted(drawn), sorted(want)):
            assert d[:3] == w[:3] and abs(d[3] - w[3]) < 1e-6 and np.allclose(d[4:], w[4:], atol=1e-3), (d, w)
        scale = got["video"][0] / video["width"]          # drawn where the person is on screen
        for r in got["rects"]:
            assert np.allclose(r["screen"], [r["x"] * scale, r["y"] * scale, r["w"] * scale, r["h"] * scale], atol=1.5)
        # the timeline cursor of each track sits on the state stored for that frame
        for row in got["rows"]:
            tl = st.query("clips", where=f"clip_id = '{row['clip_id']}'",
                          columns=["frame_times", "frame_states", "start_s", "end_s"]).to_pylist()[0]
            i = _nearest(tl["frame_times"], got["t"], 0.03)
            assert abs(row["cursor"] - 1000 * (got["t"] - clip["start_s"]) / (clip["end_s"] - clip["start_s"])) < 0.01
            under = [s["state"] for s in row["segments"] if s["x"] <= row["cursor"] <= s["x"] + s["w"]]
            if i is None:                                  # this track has no frame here
                continue
            assert under and under[-1] == tl["frame_states"][i] == row["now"], (row["clip_id"], under, row["now"])
    own = next(r for r in got["rows"] if r["clip_id"] == clip["clip_id"])
    assert own["segments"] and {s["state"] for s in own["segments"]} <= {"speak", "listen", "idle", "discard"}


@pytest.mark.slow
def test_the_funnel_page_draws_the_chart_and_each_threshold(conv_site, browser):
    from selenium.webdriver.common.by import By
    site, st, _ = conv_site
    from curation.stats import compute
    funnel = compute(st.uri)["funnel"]
    open_page(browser, site.url + "/funnel")
    bars = {b.get_attribute("data-stage"): int(b.get_attribute("data-remaining"))
            for b in browser.find_elements(By.CSS_SELECTOR, "rect.remaining")}
    assert bars == {r["stage"]: r["remaining"] for r in funnel}
    hists = browser.find_elements(By.CSS_SELECTOR, ".hist svg")
    assert sorted((h.get_attribute("data-expr"), float(h.get_attribute("data-threshold"))) for h in hists) == sorted([
        ("duration_s", 2.0), ("discard_ratio", 0.35)])      # in_sync (sync_ok IS NOT FALSE) has no threshold
    for h in hists:
        assert len(h.find_elements(By.CSS_SELECTOR, "line.threshold")) == 1


@pytest.mark.slow
def test_role_audio_switches_where_the_store_has_them(conv_site, browser):
    from selenium.webdriver.common.by import By
    site, st, clips = conv_site
    [vr] = clips["vr_face1.mp4"]
    open_page(browser, site.url + "/clip/" + urllib.parse.quote(vr["clip_id"]))
    assert all(browser.find_element(By.ID, f"audio-{m}").is_enabled() for m in ("mix", "speaker", "listener"))
    browser.find_element(By.ID, "audio-speaker").click()
    src, muted = browser.execute_script(
        "return [document.getElementById('role-audio').src, document.getElementById('video').muted]")
    assert muted and src.endswith("/media/audio/" + urllib.parse.quote(vr["clip_id"]) + "/speaker")
    status, headers, body = site.get(urllib.parse.urlparse(src).path)
    assert status == 200 and body == Path(vr["speaker_audio_uri"]).read_bytes()   # the stored WAV itself
    [lp_d0] = clips["lp_d0.mp4"]                       # no audio stream: no switches, no waveform
    open_page(browser, site.url + "/clip/" + urllib.parse.quote(lp_d0["clip_id"]))
    assert not browser.find_element(By.ID, "audio-speaker").is_enabled()
    assert not browser.find_element(By.ID, "audio-mix").is_enabled()
    assert "no audio" in browser.find_element(By.ID, "wave").text
    assert browser.find_element(By.ID, "fate").get_attribute("data-fate") == "annotation errors"
    assert browser.find_element(By.ID, "error").text == ""


def test_a_video_the_browser_cannot_play_is_re_encoded_for_the_page(tmp_path, media, browser):
    """pf_face_noface.mov is HEVC: the page gets the clip's span as H.264 (made once, in the server's
    temporary directory, not the store) and plays it, its timeline shifted to the clip's start."""
    src = media / "pf_face_noface.mov"
    p = probe(str(src))
    st = Store(str(tmp_path / "store"))
    st.upsert("videos", [{"video_id": "hevc", "uri": str(src), **{k: p[k] for k in (
        "duration_s", "fps", "width", "height", "rotation", "video_codec", "audio_codec", "has_audio")}}])
    st.upsert("clips", [{"clip_id": "hevc:0:0", "video_id": "hevc", "shot_index": 0, "clip_index": 0,
                         "clip_kind": "shot", "start_s": 0.5, "end_s": 1.7, "duration_s": 1.2}])
    assert p["video_codec"] == "hevc"
    site = Site(st.uri)
    try:
        _, data = site.json("/api/clip/hevc%3A0%3A0")
        assert data["media"] == {"src": "/media/clip/hevc%3A0%3A0", "offset": 0.5, "transcoded": True}
        status, _, body = site.get(data["media"]["src"])
        (tmp_path / "served.mp4").write_bytes(body)
        served = probe(str(tmp_path / "served.mp4"))
        assert status == 200 and served["video_codec"] == "h264" and served["duration_s"] == pytest.approx(1.2, abs=0.05)
        open_page(browser, site.url + "/clip/hevc%3A0%3A0")
        deadline = time.time() + 60
        while not browser.execute_script("const v = document.getElementById('video');"
                                         "return v.readyState >= 2 && v.videoWidth > 0"):
            assert time.time() < deadline, "the re-encoded clip did not load"
            time.sleep(0.1)
        played = browser.execute_async_script("""
            const done = arguments[0], v = document.getElementById('video');
            v.muted = true;
            v.play().then(() => setTimeout(() => { v.pause(); done([v.videoWidth, v.currentTime]); }, 500),
                          e => done([0, String(e)]));""")
        assert played[0] == p["width"] and played[1] > 0.2, played     # it plays
        assert not any(f.name.endswith(".mp4") for f in (tmp_path / "store").rglob("*"))
    finally:
        site.close()
