// charter serve: the page polls small JSON (every copy as last measured) and redraws.
// No framework, no build. Text from the system is always set as text, never as HTML.
"use strict";

const POLL_MS = 1000;
const state = { info: null, snap: null, mapKey: "", mapLoading: "", parkedTotal: -1, parkedAt: 0,
  token: "", actions: false, story: null, latency: null, findingsVersion: -1 };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.status + " " + response.statusText;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return body;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0";
  if (value < 1) return (value * 1000).toPrecision(3).replace(/\.?0+$/, "") + " ms";
  if (value < 120) return value.toPrecision(3).replace(/\.?0+$/, "") + " s";
  if (value < 7200) return (value / 60).toPrecision(3).replace(/\.?0+$/, "") + " min";
  return (value / 3600).toPrecision(3).replace(/\.?0+$/, "") + " h";
}

function share(value) {
  return value === null || value === undefined ? "–" : (value * 100).toFixed(value < 1 ? 1 : 0) + " %";
}

function badge(text) { return el("span", { class: "state state-" + text }, text); }

// -- the token: from the address (#token=…, then taken out of it), or typed in

function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("charter-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("charter-token") || "";
}

async function checkSession(known) {
  const mode = $("mode");
  if (state.info.read_only) {
    state.actions = false;
    mode.textContent = "read-only";
    mode.title = "started --read-only: nothing can be retried or dropped from here";
    $("token-form").hidden = true;
  } else {
    const answer = known || await api("/api/session").catch(() => ({ actions: false, why: "" }));
    state.actions = answer.actions;
    mode.textContent = state.actions ? "actions enabled" : "read-only: no token";
    mode.title = state.actions ? "retry and drop parked events" : answer.why;
    mode.classList.toggle("actions", state.actions);
    $("token-form").hidden = state.actions;
  }
  document.body.dataset.actions = state.actions ? "1" : "0";
  renderParked(state.parked);
}

// -- the copies

function renderCounts(snap) {
  const counts = $("counts");
  counts.replaceChildren();
  for (const [name, count] of Object.entries(snap.counts).sort()) {
    counts.append(el("span", {}, badge(name), " " + count));
  }
}

function renderCopies(snap) {
  const body = $("copies").tBodies[0];
  const rows = snap.copies.map((c) => {
    const drift = c.drift ? (c.drift_text || "none") + " · checked " + c.drift.checked_at : "never checked";
    const row = el("tr", { "data-copy": c.copy, "data-state": c.state,
        title: c.breaks ? "breaks: " + c.breaks : (c.error || ""),
        onclick: () => showLatency(c.copy) },
      el("td", {}, c.copy), el("td", {}, c.of), el("td", {}, c.owner + " → " + c.in),
      el("td", { class: "copy-state" }, badge(c.state)),
      el("td", { class: "num" }, c.lag_events === null ? "?" : c.lag_events),
      el("td", { class: "num" }, c.lag_s === null ? "?" : seconds(c.lag_s)),
      el("td", { class: "num" }, seconds(c.window_s)),
      el("td", { class: "num" }, seconds(c.latency_p50_s)),
      el("td", { class: "num" }, seconds(c.latency_p99_s)),
      el("td", { class: "num" }, share(c.within_window_1h)),
      el("td", { class: "num" }, share(c.within_window_1d)),
      el("td", { class: "num" }, c.parked),
      el("td", {}, drift),
      el("td", {}, c.last_applied_at || "never"));
    return row;
  });
  body.replaceChildren(...rows);
}

function renderLive(snap, ok) {
  const live = $("live");
  if (!ok) {
    live.textContent = "not answering: retrying";
    live.classList.add("stale");
    return;
  }
  live.classList.remove("stale");
  live.textContent = "live · measured " + snap.measured_at.slice(11, 19) + " UTC (" +
    seconds(snap.took_s) + ")";
}

function renderMap(snap) {
  if (snap.map === state.mapKey || snap.map === state.mapLoading) return;
  state.mapLoading = snap.map;
  const shown = $("map-img");
  // the first map straight into the page; a new one loaded aside, then swapped (no flicker)
  const img = state.mapKey ? new Image() : shown;
  img.onload = () => {
    if (img !== shown) shown.src = img.src;
    shown.dataset.key = snap.map;
    $("map-note").hidden = true;
    state.mapKey = snap.map;
    state.mapLoading = "";
  };
  img.onerror = async () => {
    const answer = await fetch("/map.svg").then((r) => r.json()).catch(() => null);
    const note = $("map-note");
    note.hidden = false;
    note.textContent = answer && answer.error ? answer.error : "the map could not be drawn";
    if (answer && /Graphviz|dot/.test(note.textContent)) state.mapKey = snap.map;  // no retry
    state.mapLoading = "";
  };
  img.src = "/map.svg?k=" + encodeURIComponent(snap.map);
}

function render(snap) {
  state.snap = snap;
  renderLive(snap, true);
  renderCounts(snap);
  renderCopies(snap);
  renderMap(snap);
  if (snap.parked !== state.parkedTotal || Date.now() - state.parkedAt > 5000) loadParked();
  if (state.info.audit && Date.now() - (state.findingsAt || 0) > 5000) loadFindings();
  document.body.dataset.ready = "1";
  document.body.dataset.version = String(snap.version);
}

async function poll() {
  try {
    render(await api("/api/status"));
  } catch (e) {
    renderLive(null, false);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// -- latency over the last hour, minute by minute

async function showLatency(copy) {
  state.latency = copy;
  $("latency").hidden = false;
  $("latency-title").textContent = copy + ": latency over the last hour";
  let doc;
  try { doc = await api("/api/copies/" + encodeURIComponent(copy) + "/latency"); }
  catch (e) { $("latency-note").textContent = e.message; return; }
  const svg = $("latency-plot");
  const ns = "http://www.w3.org/2000/svg";
  const W = 640, H = 180, L = 50, B = 20, T = 10;
  const points = doc.minutes;
  // seconds on a log scale, from 1 ms to above the window (or the slowest p99)
  const low = 0.001;
  const top = Math.max(doc.window_s * 2, ...points.map((m) => m.p99_s || 0), low * 10);
  const x = (i) => L + (i * (W - L - 10)) / (points.length - 1);
  const y = (v) => {
    const at = Math.log(Math.max(v, low) / low) / Math.log(top / low);
    return H - B - (H - B - T) * Math.min(at, 1);
  };
  const shape = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const line = (key, colour) => {
    const d = points.map((m, i) => (m[key] === null ? null : x(i) + "," + y(m[key])))
      .filter((p) => p !== null).join(" ");
    return shape("polyline", { points: d, fill: "none", stroke: colour, "stroke-width": 2 });
  };
  const dots = (key, colour) => points.map((m, i) => m[key] === null ? null :
    shape("circle", { cx: x(i), cy: y(m[key]), r: 2.5, fill: colour })).filter((c) => c !== null);
  const label = (text, px, py, anchor) => {
    const node = shape("text", { x: px, y: py, "font-size": 10, "text-anchor": anchor || "end" });
    node.textContent = text;
    return node;
  };
  svg.replaceChildren(
    shape("line", { x1: L, y1: y(doc.window_s), x2: W - 10, y2: y(doc.window_s),
      stroke: "#c62828", "stroke-dasharray": "4 3" }),
    label("window " + seconds(doc.window_s), W - 12, y(doc.window_s) - 3),
    label(seconds(top), L - 4, T + 8), label("1 ms", L - 4, H - B),
    label("-60 min", L, H - 5, "start"), label("now", W - 10, H - 5),
    line("p50_s", "#2e7d32"), line("p99_s", "#ef6c00"),
    ...dots("p50_s", "#2e7d32"), ...dots("p99_s", "#ef6c00"));
  const events = points.reduce((n, m) => n + m.events, 0);
  $("latency-note").textContent = events
    ? events + " events applied in the hour; per minute: green p50, orange p99 (log scale), dashed red the window"
    : "nothing applied in the last hour";
}

// -- parked events

async function loadParked() {
  state.parkedAt = Date.now();
  try {
    const doc = await api("/api/parked");
    state.parkedTotal = doc.total;
    state.parked = doc;
    renderParked(doc);
  } catch (e) { $("parked-note").textContent = e.message; }
}

function renderParked(doc) {
  if (!doc) return;
  const rows = doc.events.map((p) => el("tr", { "data-event": p.event_id, "data-copy": p.copy },
    el("td", {}, p.copy), el("td", {}, p.id), el("td", { class: "num" }, p.version),
    el("td", {}, p.event_id), el("td", { class: "reason" }, p.reason), el("td", {}, p.parked_at),
    el("td", { class: "actions" }, state.actions ? [
      el("button", { class: "retry", onclick: () => act("retry", p.copy, p.event_id) }, "retry"),
      el("button", { class: "drop", onclick: () => act("drop", p.copy, p.event_id) }, "drop"),
    ] : "–")));
  $("parked").tBodies[0].replaceChildren(...rows);
  const shown = doc.events.length < doc.total ? " (the first " + doc.events.length + ")" : "";
  $("parked-note").textContent = (doc.total ? doc.total + " parked" + shown +
    ". Retry once the cause is mended (the charter corrected, a column widened); drop forgets one (logged)."
    : "nothing parked.") + (doc.errors.length ? " Not readable: " + doc.errors.join("; ") : "") +
    (doc.total && !state.actions ? " Actions need the token `charter serve` printed." : "");
}

async function act(kind, copy, ident) {
  if (kind === "drop" && !confirm("Forget parked event " + ident + " of " + copy + "?")) return;
  const out = $("action-result");
  out.hidden = false;
  try {
    const doc = await api("/api/parked/" + kind, { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ copy, id: ident }) });
    const done = doc.events.filter((e) => e.outcome !== "parked").length;
    out.textContent = kind + " " + ident + ": " + (kind === "retry"
      ? done + " of " + doc.events.length + " resolved" + doc.events.filter((e) => e.outcome === "parked")
        .map((e) => "; still parked: " + e.reason).join("")
      : done + " dropped");
    out.dataset.outcome = doc.events.map((e) => e.outcome).join(",");
  } catch (e) {
    out.textContent = kind + " refused: " + e.message;
    out.dataset.outcome = "refused";
  }
  loadParked();
}

// -- one record's story

async function loadStory() {
  if (!state.story) return;
  const [entity, ident] = state.story;
  const out = $("story");
  try {
    const doc = await api("/api/story?entity=" + encodeURIComponent(entity) + "&id=" + encodeURIComponent(ident));
    out.replaceChildren(
      el("p", {}, doc.entity + " " + doc.id + ", owned by " + doc.owner + " (team " + doc.team +
        "): version " + doc.version + (doc.deleted ? ", deleted" : "")),
      el("table", { id: "story-versions" },
        el("thead", {}, el("tr", {}, ...["version", "op", "values", "private", "by", "committed at"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...doc.versions.map((v) => el("tr", {},
          el("td", { class: "num" }, v.version), el("td", {}, v.op),
          el("td", { class: "story-values" }, v.values ? Object.entries(v.values).map(([k, x]) =>
            (v.changed.includes(k) ? "* " : "  ") + k + " = " + JSON.stringify(x)).join("\n") : "(deleted)"),
          el("td", {}, v.private_changed.join(", ")), el("td", {}, v.actor || ""), el("td", {}, v.time))))),
      el("h3", {}, "Where each copy is"),
      el("table", { id: "story-copies" },
        el("thead", {}, el("tr", {}, ...["copy", "in", "version", "synced at", "values", "where"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...doc.copies.map((c) => el("tr", { "data-copy": c.copy, "data-version": c.version ?? "" },
          el("td", {}, c.copy), el("td", {}, c.in), el("td", { class: "num" }, c.version ?? "–"),
          el("td", {}, c.synced_at || "–"),
          el("td", { class: "story-values" }, c.values ? Object.entries(c.values).map(([k, x]) => k + " = " + JSON.stringify(x)).join("\n") : ""),
          el("td", {}, c.error || c.where))))));
  } catch (e) {
    out.replaceChildren(el("p", { class: "note" }, e.message));
  }
}

// -- audit findings

async function loadFindings() {
  state.findingsAt = Date.now();
  let doc;
  try { doc = await api("/api/findings"); } catch (e) { $("findings-note").textContent = e.message; return; }
  if (doc.version === state.findingsVersion) return;
  state.findingsVersion = doc.version;
  $("findings-note").textContent = doc.reading ? "reading " + doc.files.join(", ") + "…" :
    doc.statements + " statements read from " + doc.files.join(", ") + " (" + doc.unknown +
    " could not be parsed), at " + doc.read_at + "; " + doc.findings.length + " findings" +
    (doc.error ? ". Reading again failed: " + doc.error : "");
  $("findings").tBodies[0].replaceChildren(...doc.findings.map((f) => el("tr", { "data-kind": f.kind },
    el("td", {}, f.kind.replace(/_/g, " ")), el("td", {}, f.who), el("td", {}, f.tables.join(", ")),
    el("td", { class: "num" }, f.statements), el("td", {}, f.message))));
}

// -- start

async function start() {
  takeToken();
  let boot = null;
  try { boot = JSON.parse($("boot").textContent); } catch (e) { boot = null; }
  const asked = api("/api/session").catch(() => ({ actions: false, why: "" }));
  let first;
  if (boot && boot.info && boot.status && !state.started) {  // in the page: no round trip
    [state.info, first] = [boot.info, boot.status];
  } else {
    try { [state.info, first] = await Promise.all([api("/api/info"), api("/api/status")]); }
    catch (e) { renderLive(null, false); setTimeout(start, POLL_MS); return; }
  }
  state.started = true;
  const map = $("map-img");
  if (map.dataset.key) {  // the page named the map: it is on its way already
    const key = map.dataset.key;
    const loaded = () => { state.mapKey = key; state.mapLoading = ""; };
    if (map.complete && map.naturalWidth > 0) loaded();
    else { state.mapLoading = key; map.onload = loaded; map.onerror = () => { state.mapLoading = ""; }; }
  }
  document.title = "charter · " + state.info.charter;
  $("title").textContent = "charter · " + state.info.charter;
  $("story-entity").replaceChildren(...state.info.entities.map((e) => el("option", { value: e.name }, e.name)));
  $("story-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.story = [$("story-entity").value, $("story-id").value.trim()];
    loadStory();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("charter-token", state.token);
    checkSession();
  });
  if (state.info.audit) { $("findings-section").hidden = false; $("findings-link").hidden = false; }
  render(first);
  asked.then((session) => checkSession(session));
  setTimeout(poll, POLL_MS);
  setInterval(loadStory, 2000);  // the story stays live too, while one is shown
}

document.addEventListener("DOMContentLoaded", start);
