"use strict";
// The clip page: the clip playing with its audio, person and face boxes of every track of the shot
// drawn at the presented frame (the clip's own track in green), one state timeline per track with a
// cursor following playback, the waveform with voice spans and sentence units, role-audio switches,
// and why the clip was kept or dropped.

const clipId = decodeURIComponent(location.pathname.split("/").pop());
const video = document.getElementById("video");
const overlay = document.getElementById("overlay");
const roleAudio = document.getElementById("role-audio");
let D = null;            // the clip's data (/api/clip/ID)
let span = [0, 1];       // clip start and end, video seconds
let audioMode = "mix";

const X = t => 1000 * (t - span[0]) / Math.max(1e-6, span[1] - span[0]);
const videoTime = () => D.media.offset + video.currentTime;

function nearest(times, t, tol) {
  let lo = 0, hi = times.length - 1;
  if (hi < 0) return -1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (times[mid] < t) lo = mid + 1; else hi = mid; }
  let best = lo;
  if (lo > 0 && Math.abs(times[lo - 1] - t) <= Math.abs(times[lo] - t)) best = lo - 1;
  return Math.abs(times[best] - t) <= tol ? best : -1;
}

const validBox = b => Array.isArray(b) && b.length === 4 && b.every(v => typeof v === "number" && isFinite(v));
const shortTrack = id => (id || "").split(":").pop();

function drawBoxes(t) {
  clear(overlay);
  overlay.dataset.t = t.toFixed(4);
  for (const tr of D.tracks) {
    const i = nearest(tr.frame_times_s, t, 0.1);   // as the contact sheets of `curation sample`
    if (i < 0) continue;
    for (const kind of ["person", "face"]) {
      const b = tr[kind + "_boxes"][i];
      if (!validBox(b)) continue;
      overlay.appendChild(svgEl("rect", {
        x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1],
        class: kind + (tr.mine ? " mine" : ""), "data-kind": kind, "data-track": tr.track_id,
        "data-frame-t": tr.frame_times_s[i]}));
      if (kind === "person")
        overlay.appendChild(svgEl("text", {x: b[0] + 4, y: b[1] + 16, text: shortTrack(tr.track_id)}));
    }
  }
}

function moveCursors(t) {
  for (const line of document.querySelectorAll("line.cursor")) {
    line.setAttribute("x1", X(t)); line.setAttribute("x2", X(t));
  }
  for (const row of document.querySelectorAll(".row[data-clip-id]")) {
    const tl = D.timelines.find(r => r.clip_id === row.dataset.clipId);
    const i = nearest(tl.frame_times, t, frameStep(tl.frame_times));
    const now = row.querySelector(".now");
    now.textContent = i < 0 ? "–" : tl.frame_states[i];
    now.dataset.state = i < 0 ? "" : tl.frame_states[i];
  }
  document.getElementById("clock").textContent = `t = ${t.toFixed(2)} s`;
}

function update(t) {
  if (!D) return;
  drawBoxes(t);
  moveCursors(t);
  if (audioMode !== "mix") syncRoleAudio(false);
  if (t >= span[1] && !video.paused) video.pause();
}

function frameStep(times) {
  if (times.length < 2) return 0.04;
  const d = [];
  for (let i = 1; i < Math.min(times.length, 50); i++) d.push(times[i] - times[i - 1]);
  d.sort((a, b) => a - b);
  return d[d.length >> 1];
}

function seekFromClick(ev) {
  const box = ev.currentTarget.getBoundingClientRect();
  const t = span[0] + (ev.clientX - box.left) / box.width * (span[1] - span[0]);
  video.currentTime = Math.max(0, t - D.media.offset);
}

function timelineRow(tl) {
  const svg = svgEl("svg", {viewBox: "0 0 1000 10", preserveAspectRatio: "none"});
  const times = tl.frame_times, states = tl.frame_states, half = frameStep(times) / 2;
  for (let a = 0; a < states.length;) {
    let b = a;
    while (b + 1 < states.length && states[b + 1] === states[a]) b++;
    const t0 = Math.max(span[0], times[a] - half), t1 = Math.min(span[1], times[b] + half);
    svg.appendChild(svgEl("rect", {x: X(t0), y: 0, width: Math.max(0, X(t1) - X(t0)), height: 10,
                                   class: states[a] || "none", "data-state": states[a] || "",
                                   "data-t0": t0.toFixed(3), "data-t1": t1.toFixed(3)}));
    a = b + 1;
  }
  svg.appendChild(svgEl("line", {class: "cursor", x1: 0, x2: 0, y1: 0, y2: 10}));
  svg.addEventListener("click", seekFromClick);
  const label = `${shortTrack(tl.track_id)} ${tl.role || ""}${tl.mine ? " (this clip)" : ""}`;
  return el("div", {class: "row" + (tl.mine ? " mine" : ""), "data-clip-id": tl.clip_id, "data-track": tl.track_id},
    tl.mine ? el("span", {class: "label", text: label, title: tl.clip_id})
            : el("a", {class: "label", href: clipHref(tl.clip_id), text: label, title: tl.clip_id}),
    svg, el("span", {class: "now"}));
}

async function drawWave() {
  const box = document.getElementById("wave");
  const svg = svgEl("svg", {viewBox: "0 0 1000 100", preserveAspectRatio: "none"});
  for (const s of D.video.voice_segments || [])
    svg.appendChild(svgEl("rect", {class: "voice", x: X(Math.max(span[0], s.start_s)), y: 0, height: 100,
                                   width: Math.max(0, X(Math.min(span[1], s.end_s)) - X(Math.max(span[0], s.start_s)))}));
  let w = null;
  try { w = await getJSON("/api/waveform/" + encodeURIComponent(clipId)); } catch (e) { w = null; }
  if (w && w.max && w.max.length) {
    const n = w.max.length, parts = [];
    for (let i = 0; i < n; i++) {
      const x = (1000 * (i + 0.5) / n).toFixed(1);
      parts.push(`M${x} ${(50 - 48 * w.max[i]).toFixed(1)}L${x} ${(50 - 48 * w.min[i]).toFixed(1)}`);
    }
    svg.appendChild(svgEl("path", {d: parts.join("")}));
  } else {
    svg.appendChild(svgEl("text", {x: 10, y: 55, text: "no audio"}));
  }
  svg.appendChild(svgEl("line", {class: "cursor", x1: 0, x2: 0, y1: 0, y2: 100}));
  svg.addEventListener("click", seekFromClick);
  box.appendChild(el("div", {class: "muted", text: `waveform (mix); green: voice (${D.video.voice_source || "vad"})`}));
  box.appendChild(svg);
  const sent = document.getElementById("sentences");
  for (const s of D.video.asr_sentences || []) {
    const a = Math.max(span[0], s.start_s), b = Math.min(span[1], s.end_s);
    const div = el("div", {class: "sentence", text: s.text,
                           title: `${fmt(s.start_s)}–${fmt(s.end_s)} s, confidence ${fmt(s.confidence)}: ${s.text}`});
    div.style.left = (X(a) / 10) + "%";
    div.style.width = Math.max(0.5, (X(b) - X(a)) / 10) + "%";
    sent.appendChild(div);
  }
}

function syncRoleAudio(force) {
  const want = videoTime() - span[0];
  if (force || Math.abs(roleAudio.currentTime - want) > 0.15) roleAudio.currentTime = Math.max(0, want);
  if (video.paused && !roleAudio.paused) roleAudio.pause();
  if (!video.paused && roleAudio.paused) roleAudio.play().catch(() => {});
}

function audioSwitch() {
  const box = document.getElementById("audio-switch");
  box.appendChild(document.createTextNode("audio: "));
  const modes = [["mix", "mix", D.audio.mix], ["speaker", "speaker only", D.audio.speaker],
                 ["listener", "listener only", D.audio.listener]];
  for (const [mode, label, available] of modes) {
    const input = el("input", {type: "radio", name: "audio", value: mode, checked: mode === "mix",
                               disabled: !available, id: "audio-" + mode});
    input.addEventListener("change", () => {
      audioMode = mode;
      video.muted = mode !== "mix";
      if (mode === "mix") { roleAudio.pause(); return; }
      roleAudio.src = D.audio[mode];
      roleAudio.addEventListener("loadedmetadata", () => syncRoleAudio(true), {once: true});
    });
    box.appendChild(el("label", {title: available ? "" : "not in this store"}, input, label + " "));
  }
}

function whySection() {
  const sec = document.getElementById("why");
  const run = D.run.workflow ? `the filters of workflow ${D.run.workflow} (run ${D.run.run_id})` : "no workflow run recorded";
  sec.appendChild(el("p", {id: "fate", "data-fate": D.fate, class: "fate " + (D.fate === "kept" ? "kept" : "dropped"),
                           text: D.fate === "kept" ? `kept: passes ${run}` : `dropped by ${D.fate} (${run})`}));
  const table = el("table", {}, el("tr", {}, el("th", {text: "stage"}), el("th", {text: "filter"}),
                                   el("th", {text: "this clip"}), el("th", {text: "verdict"})));
  let removed = false;
  for (const v of D.verdicts) {
    const parts = el("td", {});
    for (const p of v.parts)
      parts.appendChild(el("div", {class: "mono", text: p.expr
        ? `${p.expr} = ${fmt(p.value)} (needs ${p.op} ${p.threshold_sql})${p.ok === true ? "" : " ✗"}`
        : `${p.sql}: ${fmt(p.ok)}`}));
    let verdict, cls;
    if (!v.applied) { verdict = v.note; cls = "na"; }
    else if (v.passed === true) { verdict = "pass"; cls = "pass"; }
    else {
      cls = v.passed === false ? "fail" : "null";
      verdict = (removed ? "fails too" : "removed here") + (v.passed === false ? "" : " (no value)");
      removed = true;
    }
    table.appendChild(el("tr", {class: cls, "data-stage": v.stage},
      el("td", {text: v.stage}), el("td", {class: "mono", text: v.where}), parts,
      el("td", {class: "verdict", text: verdict})));
  }
  sec.appendChild(table);
}

function windowsSection() {
  const sec = document.getElementById("windows");
  const w = D.windows;
  if (!w.present) {
    sec.appendChild(el("p", {class: "muted", text: "no validator windows in this store (curation validate has not run)"}));
    return;
  }
  if (!w.rows.length) { sec.appendChild(el("p", {class: "muted", text: "no window of this clip was validated"})); return; }
  const table = el("table", {}, el("tr", {}, ...["profile", "window s", "verdict", "reason", "checks"].map(h => el("th", {text: h}))));
  for (const r of w.rows) {
    const checks = (r.checks || []).map(c => `${c.check} ${fmt(c.value)} ${c.keep ? "ok" : "✗"}`).join("; ");
    table.appendChild(el("tr", {class: r.kept === false ? "fail" : "pass", "data-kept": String(r.kept)},
      el("td", {text: fmt(r.profile)}), el("td", {text: `${fmt(r.start_s)}–${fmt(r.end_s)}`}),
      el("td", {class: "verdict", text: r.kept === null ? "–" : (r.kept ? "kept" : `dropped: ${fmt(r.failed_check)}`)}),
      el("td", {text: r.reason || ""}), el("td", {class: "mono", text: checks})));
  }
  sec.appendChild(table);
  if (w.missing.length) sec.appendChild(el("p", {class: "muted", text: "columns not in this store: " + w.missing.join(", ")}));
}

function kv(sec, pairs) {
  const t = el("table");
  for (const [k, v] of pairs) if (v !== null && v !== undefined) t.appendChild(el("tr", {}, el("td", {text: k}), el("td", {class: "mono", text: fmt(v)})));
  sec.appendChild(t.childNodes.length ? t : el("p", {class: "muted", text: "not measured for this clip"}));
}

function sideSections() {
  const c = D.clip;
  kv(document.getElementById("sync"), [
    ["offset (frames; > 0: audio lags)", c.sync_offset_frames], ["confidence (LSE-C)", c.sync_confidence],
    ["min distance (LSE-D)", c.sync_min_dist], ["backend", c.sync_backend]]);
  const emo = document.getElementById("emotion");
  kv(emo, [["label", c.emotion_label], ["score", c.emotion_score], ["emotional", c.emotional],
           ["top-1 before neutral correction", c.emotion_top1], ["backend", c.emotion_backend]]);
  if (c.emotion_scores) {
    const bars = el("div", {class: "bars"});
    for (const [k, v] of Object.entries(c.emotion_scores)) {
      const bar = el("span", {class: "bar"}); bar.style.width = Math.round(120 * (v || 0)) + "px";
      bars.appendChild(el("div", {}, el("span", {class: "mono", text: k.padEnd(9, " ")}), " ", bar, " " + fmt(v)));
    }
    emo.appendChild(bars);
  }
  const cap = document.getElementById("captions");
  kv(cap, [["scene", c.scene_class && `${c.scene_class} (${fmt(c.scene_prob)})`], ["summary", c.caption_summary],
           ["dense", c.caption_dense], ["subject", c.caption_subject], ["silent", c.silent],
           ["backend", c.caption_backend]]);
  if (c.tags) for (const [k, v] of Object.entries(c.tags)) if (v && v.length) cap.appendChild(el("div", {class: "mono", text: `${k}: ${v.join(", ")}`}));
  for (const s of c.behaviour_captions || []) cap.appendChild(el("div", {text: `${fmt(s.start_s)}–${fmt(s.end_s)} s: ${s.text}`}));
  if (c.listener_captions) cap.appendChild(el("div", {text: "listener: " + Object.entries(c.listener_captions).map(([k, v]) => `${k}: ${v}`).join("; ")}));
  const refs = document.getElementById("refs");
  const box = el("div", {class: "refs"});
  for (const r of D.references)
    box.appendChild(el("figure", {}, el("img", {src: "/media/ref/" + encodeURIComponent(r.ref_id), alt: r.kind, loading: "lazy"}),
      el("figcaption", {text: `${r.kind}${r.label ? " " + r.label : ""} @ ${fmt(r.frame_s)} s`})));
  refs.appendChild(D.references.length ? box : el("p", {class: "muted", text: "no reference images for this clip"}));
  const ft = document.getElementById("field-table");
  for (const [k, v] of Object.entries(c)) ft.appendChild(el("tr", {}, el("td", {text: k}), el("td", {class: "mono", text: fmt(v)})));
}

function startVideo() {
  const stage = document.getElementById("stage");
  const w = D.video.width || 16, h = D.video.height || 9;
  stage.style.aspectRatio = `${w} / ${h}`;
  overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
  overlay.setAttribute("preserveAspectRatio", "xMidYMid meet");
  video.dataset.offset = D.media.offset;
  video.addEventListener("loadedmetadata", () => { video.currentTime = Math.max(0, span[0] - D.media.offset); }, {once: true});
  video.addEventListener("error", () => {     // the browser cannot play the original: re-encoded span
    if (D.media.transcoded) { document.getElementById("error").textContent = "the video cannot be played"; return; }
    D.media = {src: "/media/clip/" + encodeURIComponent(clipId), offset: span[0], transcoded: true};
    video.dataset.offset = D.media.offset;
    video.src = D.media.src;
  });
  for (const ev of ["seeked", "timeupdate", "loadeddata"]) video.addEventListener(ev, () => update(videoTime()));
  video.addEventListener("play", () => { if (audioMode !== "mix") syncRoleAudio(true); });
  video.addEventListener("pause", () => roleAudio.pause());
  if ("requestVideoFrameCallback" in video) {
    const onFrame = (now, meta) => { update(D.media.offset + meta.mediaTime); video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }
  video.src = D.media.src;
}

async function main() {
  try { D = await getJSON("/api/clip/" + encodeURIComponent(clipId)); }
  catch (e) { document.getElementById("error").textContent = e.message; document.body.dataset.ready = "1"; return; }
  header(D.store);
  span = [D.clip.start_s, D.clip.end_s];
  document.title = "curation audit: " + D.clip.clip_id;
  document.getElementById("title").textContent = D.clip.clip_id;
  const sub = document.getElementById("subtitle");
  sub.appendChild(el("span", {id: "video-name", text: D.video.name}));
  sub.appendChild(document.createTextNode(`  ${fmt(span[0])}–${fmt(span[1])} s, ${D.clip.clip_kind || ""} clip` +
    (D.clip.track_id ? ` of track ${D.clip.track_id}` : "") + (D.clip.error ? `; error: ${D.clip.error}` : "") + "  "));
  sub.appendChild(el("code", {id: "show", text: D.show_command}));
  const tls = document.getElementById("timelines");
  for (const tl of D.timelines) tls.appendChild(timelineRow(tl));
  if (!D.timelines.length) tls.appendChild(el("p", {class: "muted", text: "no per-frame states (not a person clip span, or the conversation steps did not run)"}));
  audioSwitch();
  whySection();
  windowsSection();
  sideSections();
  startVideo();
  await drawWave();
  update(span[0]);
  document.body.dataset.ready = "1";
}

main();
