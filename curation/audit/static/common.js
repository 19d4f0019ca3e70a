"use strict";
// Shared helpers of the audit pages. Every string from the store reaches the page as a text node
// or an attribute value (never through innerHTML), so it is shown, not interpreted.

const SVGNS = "http://www.w3.org/2000/svg";

function _build(node, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    node.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

function el(tag, attrs, ...kids) { return _build(document.createElement(tag), attrs, kids); }
function svgEl(tag, attrs, ...kids) { return _build(document.createElementNS(SVGNS, tag), attrs, kids); }

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

async function getJSON(url) {
  const r = await fetch(url);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || (r.status + " " + r.statusText));
  return body;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return (a !== 0 && (a < 0.001 || a >= 1e5)) ? v.toExponential(2) : String(+v.toPrecision(3));
  }
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "object") { const s = JSON.stringify(v); return s.length > 120 ? s.slice(0, 119) + "…" : s; }
  return String(v);
}

function clipHref(id) { return "/clip/" + encodeURIComponent(id); }

function header(storeUri) {
  const h = document.querySelector("header .store");
  if (h) h.textContent = storeUri || "";
}
