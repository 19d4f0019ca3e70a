"use strict";
// The funnel as a chart (clips remaining after each stage, what each removed) and the histograms of
// the filtered scores with each threshold drawn.

function funnelChart(f) {
  const sec = document.getElementById("funnel");
  sec.appendChild(el("p", {class: "muted", text: f.workflow
    ? `filters of workflow ${f.workflow} (run ${f.run_id}), in order, as curation stats applies them`
    : "no workflow run recorded: only annotation errors"}));
  const rows = f.funnel || [];
  const total = rows.length ? Math.max(1, rows[0].remaining || 0) : 1;
  const rowH = 22, labelW = 300, barW = 560;
  const svg = svgEl("svg", {viewBox: `0 0 ${labelW + barW + 40} ${rowH * rows.length + 4}`});
  rows.forEach((r, i) => {
    const y = i * rowH + 2;
    const tab = i === 0 ? "" : (r.remaining === null ? null : r.stage);
    const label = svgEl("text", {x: 0, y: y + 15, text: `${r.stage}${r.where ? ": " + r.where : ""}`.slice(0, 52)});
    svg.appendChild(tab === null ? label : (() => {
      const a = svgEl("a", {href: "/?" + new URLSearchParams(tab ? {tab} : {}).toString()}); a.appendChild(label); return a;
    })());
    if (r.remaining === null) {
      svg.appendChild(svgEl("text", {x: labelW, y: y + 15, text: r.note || "not applied"}));
      return;
    }
    const w = barW * r.remaining / total, gone = barW * (r.removed || 0) / total;
    svg.appendChild(svgEl("rect", {class: "remaining", x: labelW, y, width: w, height: rowH - 6, "data-stage": r.stage,
                                   "data-remaining": r.remaining}));
    if (gone > 0) svg.appendChild(svgEl("rect", {class: "removed", x: labelW + w, y, width: gone, height: rowH - 6}));
    svg.appendChild(svgEl("text", {x: labelW + w + gone + 4, y: y + 13,
      text: `${r.remaining}${r.removed ? "  (−" + r.removed + ")" : ""}`}));
  });
  sec.appendChild(svg);
}

function histogram(h) {
  const W = 360, H = 130, top = 18, bottom = 20, n = h.counts.length;
  const lo = h.edges[0], hi = h.edges[n], max = Math.max(1, ...h.counts);
  const X = v => 10 + (W - 20) * (v - lo) / (hi - lo);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, "data-expr": h.expr, "data-threshold": h.threshold});
  h.counts.forEach((c, i) => {
    const x0 = X(h.edges[i]), x1 = X(h.edges[i + 1]), bh = (H - top - bottom) * c / max;
    if (c) svg.appendChild(svgEl("rect", {class: "bin", x: x0, y: H - bottom - bh, width: Math.max(0.5, x1 - x0 - 0.5), height: bh},
                                 svgEl("title", {text: `${fmt(h.edges[i])}–${fmt(h.edges[i + 1])}: ${c}`})));
  });
  const tx = X(h.threshold);
  svg.appendChild(svgEl("line", {class: "threshold", x1: tx, x2: tx, y1: top - 4, y2: H - bottom}));
  svg.appendChild(svgEl("text", {x: Math.min(W - 80, tx + 3), y: top - 6, text: `${h.op} ${h.threshold_sql}`}));
  svg.appendChild(svgEl("text", {x: 10, y: H - 5, text: fmt(lo)}));
  svg.appendChild(svgEl("text", {x: W - 50, y: H - 5, text: fmt(hi)}));
  return el("div", {class: "hist"},
    el("div", {class: "mono", text: `${h.stage}: ${h.expr} ${h.op} ${h.threshold_sql}`}),
    svg,
    el("div", {class: "muted", text: `${h.judged} judged, ${h.rejected} fail this comparison, ${h.nulls} without a value`}));
}

async function main() {
  try {
    const f = await getJSON("/api/funnel");
    header(f.store);
    funnelChart(f);
    const hs = await getJSON("/api/histograms");
    const sec = document.getElementById("histograms");
    for (const h of hs.histograms) sec.appendChild(histogram(h));
    if (!hs.histograms.length) sec.appendChild(el("p", {class: "muted", text: "no numeric threshold in the workflow's filters"}));
  } catch (e) {
    document.getElementById("error").textContent = e.message;
  }
  document.body.dataset.ready = "1";
}

main();
