// The gateway's web page: plain JavaScript over the REST API (/v1/...), no framework and nothing from a CDN.
// Every call carries the API key typed into the page (kept in localStorage); answers are shown with textContent
// only, so ids, tags and captions can never inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "blat.apiKey";
const LONG_CLIP_S = 10;   // longer clips also get tags per window
const WINDOW_S = 5;

let serverLimits = {};  // /v1/info's limits, once read

function apiKey() { return localStorage.getItem(KEY) || ""; }

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  return headers;
}

// One API call: JSON (or nothing) back, or an Error carrying the gateway's {"error": {"code", "message"}}.
async function call(method, path, { json, body, type } = {}) {
  const init = { method, headers: authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  if (body !== undefined) { init.body = body; init.headers["Content-Type"] = type || "application/octet-stream"; }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: reported below */ }
  if (!r.ok) {
    const why = data && data.error ? `${data.error.code}: ${data.error.message}` : text.slice(0, 300);
    const hint = r.status === 401 ? " (type the API key at the top)"
      : r.status === 403 ? " (this key lacks the scope)" : "";
    throw new Error(`${r.status} ${why}${hint}`);
  }
  return data;
}

// Errors are shown where they happened: a search's above the results, a clip's in the clip panel, others at the top.
function showError(err, where = "error") { $(where).textContent = err.message || String(err); $(where).hidden = false; }
function clearError(where = "error") { $(where).hidden = true; $(where).textContent = ""; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function itemPath(id) { return id.split("/").map(encodeURIComponent).join("/"); }

// One user action: its error box cleared, a busy state on its panel while it runs, its failure shown in place.
async function run(task, where = "error", busy = null) {
  clearError(where);
  if (busy) busy.setAttribute("aria-busy", "true");
  try { await task(); } catch (err) { showError(err, where); } finally { if (busy) busy.removeAttribute("aria-busy"); }
}

const MAX_RESULTS = 1000;  // k + offset of a search (the server's MAX_K)

function clampK(value) { return Math.max(1, Math.min(100, parseInt(value, 10) || 10)); }

// Only the newest search may draw its answer: Back pressed twice quickly must not end on the older results.
let searchSeq = 0;

// The search lives in the URL: ?q=TEXT or ?similar=ID, &k=N, &page=N, and the filters &tag=T (repeated: all of
// them), &m.KEY=VALUE (the items' metadata, extra.KEY: &m.licence=CC0-1.0), &min_s=S, &max_s=S. A result page can
// be shared or reloaded; Back and Forward step through.
function urlState() {
  const q = new URLSearchParams(location.search);
  const meta = {};
  for (const [name, value] of q) if (name.startsWith("m.") && name.length > 2 && value) meta[name.slice(2)] = value;
  return {
    query: q.get("q") || "", similar: q.get("similar") || "", k: clampK(q.get("k")),
    page: Math.max(1, parseInt(q.get("page"), 10) || 1), tags: q.getAll("tag"), meta,
    minS: q.get("min_s") || "", maxS: q.get("max_s") || "",
  };
}

function searchUrl(state) {
  const q = new URLSearchParams();
  if (state.query) q.set("q", state.query);
  else if (state.similar) q.set("similar", state.similar);
  if (state.k !== 10) q.set("k", String(state.k));
  if (state.page > 1) q.set("page", String(state.page));
  for (const t of state.tags) q.append("tag", t);
  for (const [key, value] of Object.entries(state.meta)) q.set("m." + key, value);
  if (state.minS !== "") q.set("min_s", state.minS);
  if (state.maxS !== "") q.set("max_s", state.maxS);
  return "?" + q.toString();
}

// A new address from the current one with these changes (names as in the URL: q, similar, k, page, tag, ...).
function navigate(changes) {
  const st = urlState(), c = changes;
  const next = {
    query: "q" in c ? c.q : st.query, similar: "similar" in c ? c.similar : st.similar, k: "k" in c ? c.k : st.k,
    page: "page" in c ? c.page : st.page, tags: "tag" in c ? c.tag : st.tags,
    meta: "meta" in c ? c.meta : st.meta, minS: "min_s" in c ? c.min_s : st.minS,
    maxS: "max_s" in c ? c.max_s : st.maxS,
  };
  const url = searchUrl(next);
  if (url !== location.search) history.pushState(null, "", url || "?");
  showUrlState();
}

function filterOf(st) {
  const f = {};
  if (st.tags.length) f.tags_all = st.tags;
  if (st.minS !== "") f.min_duration_s = Number(st.minS);
  if (st.maxS !== "") f.max_duration_s = Number(st.maxS);
  if (Object.keys(st.meta).length) f.extra = st.meta;
  return Object.keys(f).length ? f : undefined;
}

async function search(st, seq) {
  const by = st.query ? { path: "/v1/search/text", body: { query: st.query }, heading: `“${st.query}”` }
    : { path: "/v1/search/item", body: { id: st.similar }, heading: `Similar to ${st.similar}` };
  $("results-title").textContent = `Searching: ${by.heading}…`;
  const body = { ...by.body, k: st.k, offset: (st.page - 1) * st.k, filter: filterOf(st) };
  const answer = await call("POST", by.path, { json: body });
  if (seq === searchSeq) renderHits(by.heading, answer, st);
}

function showUrlState() {
  const st = urlState();
  $("k").value = String(st.k);
  $("search-input").value = st.query;
  $("min-s").value = st.minS;
  $("max-s").value = st.maxS;
  const panel = $("search-panel"), seq = ++searchSeq;
  if (st.query || st.similar) { run(() => search(st, seq), "search-error", panel); return; }
  clearError("search-error");
  $("results-title").textContent = "";
  for (const id of ["results", "facets", "active-filters"]) $(id).replaceChildren();
  $("pager").hidden = true;
}

// The clip's length from its metadata, as the browser decodes it (0 when it cannot tell).
function clipSeconds(url) {
  return new Promise((resolve) => {
    const probe = new Audio();
    const done = (s) => { probe.removeAttribute("src"); resolve(s); };
    probe.addEventListener("loadedmetadata", () => done(isFinite(probe.duration) ? probe.duration : 0));
    probe.addEventListener("error", () => done(0));
    setTimeout(() => done(0), 3000);
    probe.src = url;
  });
}

function scoreRow(label, score) {
  const bar = el("span", { class: "bar" });
  bar.style.width = `${Math.round(score * 100)}px`;  // through CSSOM: the CSP refuses style attributes
  return el("tr", {}, el("td", {}, label), el("td", { class: "num" }, score.toFixed(3)), el("td", {}, bar));
}

// A dropped or chosen file: tag it (over time when long), caption it guided by its top tags, find similar sounds.
async function analyse(file) {
  const data = await file.arrayBuffer();
  const local = URL.createObjectURL(file);
  $("clip-out").hidden = false;
  $("clip-name").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  $("clip-audio").src = local;
  const save = $("clip-download");  // a recording exists only in the page: it can be saved from here
  save.hidden = !file.recorded;
  save.href = local;
  save.download = file.name;
  $("tags-output").replaceChildren();
  $("windows-output").replaceChildren();
  $("caption-output").textContent = "…";
  try {
    await describe(file, data, local);
  } finally {
    if ($("caption-output").textContent === "…") $("caption-output").textContent = "(no caption: see the error above)";
  }
}

async function describe(file, data, local) {
  const seconds = await clipSeconds(local);
  const windowed = seconds > LONG_CLIP_S ? `&window_s=${WINDOW_S}` : "";
  const similar = call("POST", `/v1/search/audio?k=${urlState().k}`, { body: data });
  similar.catch(() => {});  // awaited below; if tagging fails first, its failure is the one reported
  const tags = await call("POST", `/v1/tag?top_k=10${windowed}`, { body: data });
  for (const t of tags.tags) $("tags-output").append(scoreRow(t.label, t.score));
  $("windows-block").hidden = tags.windows.length === 0;
  drawTimeline(tags.windows);
  for (const w of tags.windows) {
    const top = w.tags.slice(0, 3).map((t) => `${t.label} ${t.score.toFixed(2)}`).join(", ");
    $("windows-output").append(el("tr", { "data-testid": "window" },
      el("td", { class: "num" }, `${w.start_s.toFixed(1)}–${w.end_s.toFixed(1)} s`), el("td", {}, top)));
  }
  // BLAT's captioner is guided by AudioSet tags: give it the clip's confident ones.
  const guide = tags.tags.filter((t) => t.score >= 0.3).slice(0, 3).map((t) => "tags=" + encodeURIComponent(t.label));
  const captions = await call("POST", "/v1/caption?" + guide.join("&"), { body: data });
  const caption = captions.captions.length ? captions.captions[0].text : "";
  $("caption-output").textContent = caption || "(empty caption)";
  offerToAdd(file, data, tags.tags.filter((t) => t.score >= 0.3).slice(0, 3).map((t) => t.label), caption);
  const hits = await similar;
  searchSeq++;  // the newest list on the left: a text search still in flight does not replace it
  renderHits(`Sounds like ${file.name}`, hits, { ...urlState(), page: 1, ofClip: true });
}

// Tags over time: a row per label that is among a window's top 3, a column per window, each cell as dark as the
// label's score there (blank where the label was not in that window's answer).
function drawTimeline(windows) {
  const best = new Map();
  for (const w of windows) {
    for (const t of w.tags.slice(0, 3)) best.set(t.label, Math.max(best.get(t.label) || 0, t.score));
  }
  const labels = [...best.keys()].sort((a, b) => best.get(b) - best.get(a)).slice(0, 8);
  const head = el("tr", {}, el("th", { scope: "col" }, "from (s)"));
  for (const w of windows) head.append(el("th", { scope: "col", class: "num" }, w.start_s.toFixed(0)));
  const table = $("timeline");
  table.replaceChildren(head);
  for (const label of labels) {
    const row = el("tr", {}, el("th", { scope: "row" }, label));
    for (const w of windows) {
      const hit = w.tags.find((t) => t.label === label);
      const cell = el("td", { class: "heat", "data-testid": "timeline-cell", "data-label": label,
                              "data-start": String(w.start_s), "data-score": hit ? String(hit.score) : "",
                              title: hit ? `${label}: ${hit.score.toFixed(2)} at ${w.start_s.toFixed(1)} s` : "" });
      cell.style.setProperty("--level", hit ? hit.score.toFixed(3) : "0");  // CSSOM: the CSP refuses style attributes
      row.append(cell);
    }
    table.append(row);
  }
}

// "Add to the index": the clip under an id, with tags and a caption (prefilled from the analysis; editable).
let clipToAdd = null;

function offerToAdd(file, data, tags, caption) {
  clipToAdd = data;
  const stem = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._:-]+/g, "-").replace(/^[-.]+|[-.]+$/g, "");
  $("add-id").value = `uploads/${stem || "clip"}`;
  $("add-tags").value = tags.join(", ");
  $("add-caption").value = caption;
  $("add-result").textContent = "";
  clearError("add-error");
  $("add-form").hidden = false;
}

async function addClip() {
  const id = $("add-id").value.trim();
  const q = new URLSearchParams({ id });
  for (const t of $("add-tags").value.split(",").map((x) => x.trim()).filter(Boolean)) q.append("tags", t);
  if ($("add-caption").value.trim()) q.set("caption", $("add-caption").value.trim());
  const stored = await call("POST", "/v1/items?" + q.toString(), { body: clipToAdd });
  $("add-result").textContent = `Stored as ${stored.id}.`;
  await refreshStats();
}

async function refreshStats() {
  const [stats, info] = await Promise.all([call("GET", "/v1/index/stats"), call("GET", "/v1/info")]);
  $("stats-items").textContent = String(stats.items);
  $("stats-version").textContent = stats.index_version;
  $("stats-kind").textContent = stats.index_kind;
  $("bundle").textContent = stats.bundle;
  $("backend").textContent = info.backend;
  serverLimits = info.limits;
}

function setup() {
  const key = $("api-key");
  key.value = apiKey();
  key.addEventListener("change", () => {
    localStorage.setItem(KEY, key.value.trim());
    run(refreshStats);
    if (location.search) showUrlState();  // a search the missing key refused: run it again
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("search-input").value.trim();
    if (query) {
      navigate({ q: query, similar: "", page: 1, k: clampK($("k").value), min_s: $("min-s").value.trim(),
                 max_s: $("max-s").value.trim() });
    }
  });
  $("prev-page").addEventListener("click", () => navigate({ page: urlState().page - 1 }));
  $("next-page").addEventListener("click", () => navigate({ page: urlState().page + 1 }));
  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run(addClip, "add-error", $("add-form"));
  });
  document.addEventListener("keydown", (e) => {  // "/" jumps to the search box, as on many search sites
    if (e.key === "/" && !["INPUT", "TEXTAREA"].includes(document.activeElement.tagName)) {
      e.preventDefault();
      $("search-input").focus();
    }
  });
  window.addEventListener("popstate", showUrlState);
  const analyseHere = (file) => run(() => analyse(file), "clip-error", $("clip-panel"));
  $("file-input").addEventListener("change", () => {
    const file = $("file-input").files[0];
    if (file) analyseHere(file);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) analyseHere(file);
  });
  run(refreshStats);
  showUrlState();
}

document.addEventListener("DOMContentLoaded", setup);
