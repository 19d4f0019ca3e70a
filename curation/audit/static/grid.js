"use strict";
// The clip grid: filter (the same predicate as `curation query --where`), sort, funnel tabs, paging.
// All of it is done by the server in the store; the state lives in the URL so a view can be shared.

const PAGE = 48;
const CARD_SCORES = ["duration_s", "speech_ratio", "sharpness", "still_score", "role", "speak_ratio",
                     "listen_ratio", "discard_ratio", "sync_confidence", "sync_offset_frames",
                     "emotion_label", "camera_motion", "jump_count", "error"];
const state = Object.fromEntries(new URLSearchParams(location.search));

function query(extra) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(Object.assign({}, state, extra || {})))
    if (v !== "" && v !== undefined && v !== null) q.set(k, v);
  return q;
}

function go(extra) { location.search = query(Object.assign({offset: ""}, extra)).toString(); }

async function loadTabs() {
  const f = await getJSON("/api/funnel");
  header(f.store);
  const tabs = clear(document.getElementById("tabs"));
  const current = state.tab || "all";
  const stages = Object.fromEntries((f.funnel || []).map(r => [r.stage, r]));
  const total = f.funnel && f.funnel.length ? f.funnel[0].remaining : null;
  const live = (f.funnel || []).filter(r => r.remaining !== null && r.remaining !== undefined);
  const kept = live.length ? live[live.length - 1].remaining : null;
  for (const name of f.tabs) {
    let label = name, cls = "";
    if (name === "all") label = `all (${fmt(total)})`;
    else if (name === "kept") label = `kept (${fmt(kept)})`;
    else { cls = "dropped"; label = `dropped by ${name} (${fmt((stages[name] || {}).removed)})`; }
    tabs.appendChild(el("a", {href: "?" + query({tab: name === "all" ? "" : name, offset: ""}).toString(),
                               class: (cls + (name === current ? " active" : "")).trim(),
                               "data-tab": name, text: label}));
  }
  if (f.workflow) tabs.appendChild(el("span", {class: "muted",
      text: `filters of workflow ${f.workflow} (run ${f.run_id}), as curation stats applies them`}));
}

function card(r, sort) {
  const dropped = r.fate && r.fate !== "kept";
  const scores = el("dl");
  const keys = (sort && !CARD_SCORES.includes(sort) ? [sort] : []).concat(CARD_SCORES);
  let n = 0;
  for (const k of keys) {
    if (!(k in r) || r[k] === null || n >= 7) continue;
    scores.appendChild(el("dt", {text: k}));
    scores.appendChild(el("dd", {text: fmt(r[k]), "data-col": k}));
    n++;
  }
  return el("a", {class: "card", href: clipHref(r.clip_id), "data-clip-id": r.clip_id, "data-fate": r.fate},
    el("img", {src: "/thumb/" + encodeURIComponent(r.clip_id), loading: "lazy", alt: ""}),
    el("div", {class: "body"},
      el("div", {class: "cid", text: r.clip_id}),
      el("div", {class: "vname", text: `${r.video_name}  ${fmt(r.start_s)}–${fmt(r.end_s)} s  ${r.clip_kind || ""}`}),
      el("div", {class: "fate " + (dropped ? "dropped" : "kept"),
                 text: dropped ? `dropped by ${r.fate}` : (r.fate || "")}),
      scores));
}

async function loadPage() {
  const err = document.getElementById("error");
  const params = query({limit: PAGE});
  let data;
  try {
    data = await getJSON("/api/clips?" + params.toString());
  } catch (e) {
    err.textContent = e.message;
    document.body.dataset.ready = "1";
    return;
  }
  err.textContent = "";
  const sortSel = document.getElementById("sort");
  for (const c of data.sortable) sortSel.appendChild(el("option", {value: c, text: c, selected: c === state.sort}));
  const grid = clear(document.getElementById("grid"));
  for (const r of data.rows) grid.appendChild(card(r, state.sort));
  const first = data.total ? data.offset + 1 : 0, last = data.offset + data.rows.length;
  document.getElementById("range").textContent = `clips ${first}–${last} of ${data.total}`;
  document.getElementById("summary").textContent =
    `${data.total} clip(s) match${data.where ? " " + data.where : ""} in tab ${data.tab}; ` +
    `page read in ${data.ms.total} ms (${data.ms.page} ms page, ${data.ms.count} ms count)`;
  document.getElementById("prev").disabled = data.offset <= 0;
  document.getElementById("next").disabled = last >= data.total;
  document.getElementById("prev").onclick = () => go({offset: Math.max(0, data.offset - PAGE) || ""});
  document.getElementById("next").onclick = () => go({offset: data.offset + PAGE});
  document.body.dataset.ready = "1";
}

document.getElementById("where").value = state.where || "";
document.getElementById("desc").checked = state.desc === "1";
document.getElementById("query").addEventListener("submit", ev => {
  ev.preventDefault();
  go({where: document.getElementById("where").value.trim(), sort: document.getElementById("sort").value,
      desc: document.getElementById("desc").checked ? "1" : ""});
});
loadTabs().catch(e => { document.getElementById("error").textContent = e.message; });
loadPage();
