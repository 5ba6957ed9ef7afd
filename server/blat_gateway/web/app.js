// The gateway's web page: plain JavaScript over the REST API (/v1/...), no framework and nothing from a CDN.
// Every call carries the API key typed into the page (kept in localStorage); answers are shown with textContent
// only, so ids, tags and captions can never inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "blat.apiKey";
const LONG_CLIP_S = 10;   // longer clips also get tags per window
const WINDOW_S = 5;

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

// A player for a stored item. Without a key the browser streams /v1/audio/{id} itself (with Range requests);
// with one, <audio> cannot send headers, so the file is fetched with the key and played from memory.
function player(id) {
  const audio = el("audio", { controls: "", preload: "metadata", "data-testid": "result-audio" });
  const url = "/v1/audio/" + itemPath(id);
  if (!apiKey()) { audio.src = url; return audio; }
  fetch(url, { headers: authHeaders() }).then(async (r) => {
    if (!r.ok) throw new Error(`${r.status}`);
    audio.src = URL.createObjectURL(await r.blob());
  }).catch(() => audio.replaceWith(el("span", { class: "noaudio" }, "no playable audio for this item")));
  return audio;
}

// A result's title: its caption, else its file name (the last part of its id): long package paths stay below it.
function title(hit) {
  return hit.item.caption || hit.id.split("/").pop() || hit.id;
}

function renderHits(heading, answer) {
  $("results-title").textContent = `${heading}: ${answer.hits.length} result(s)`;
  const list = $("results");
  for (const old of list.querySelectorAll("audio")) if (old.src.startsWith("blob:")) URL.revokeObjectURL(old.src);
  list.replaceChildren();
  for (const hit of answer.hits) {
    const similar = el("button", { class: "similar", type: "button", "data-testid": "similar-link" },
                       "similar to this");
    similar.addEventListener("click", () => navigate({ similar: hit.id }));
    const tags = el("div", { class: "tags", "data-testid": "result-tags" });
    for (const t of hit.item.tags) tags.append(el("span", { class: "tag" }, t));
    list.append(el("li", { class: "result", "data-testid": "result", "data-id": hit.id },
      el("div", { class: "head" }, el("span", { class: "score", "data-testid": "result-score" }, hit.score.toFixed(3)),
         el("span", { class: "title", "data-testid": "result-title" }, title(hit)), similar),
      el("div", { class: "id", "data-testid": "result-id" }, hit.id),
      tags,
      player(hit.id)));
  }
}

// One user action: its error box cleared, a busy state on its panel while it runs, its failure shown in place.
async function run(task, where = "error", busy = null) {
  clearError(where);
  if (busy) busy.setAttribute("aria-busy", "true");
  try { await task(); } catch (err) { showError(err, where); } finally { if (busy) busy.removeAttribute("aria-busy"); }
}

function k() { return Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10)); }

// Only the newest search may draw its answer: Back pressed twice quickly must not end on the older results.
let searchSeq = 0;

async function searchText(query, seq) {
  $("results-title").textContent = `Searching for “${query}”…`;
  const answer = await call("POST", "/v1/search/text", { json: { query, k: k() } });
  if (seq === searchSeq) renderHits(`“${query}”`, answer);
}

async function searchSimilar(id, seq) {
  $("results-title").textContent = `Searching for sounds like ${id}…`;
  const answer = await call("POST", "/v1/search/item", { json: { id, k: k() } });
  if (seq === searchSeq) renderHits(`Similar to ${id}`, answer);
}

// The search lives in the URL (?q=TEXT or ?similar=ID, and &k=N): a result list can be shared or reloaded, and
// Back and Forward step through earlier searches.
function searchUrl(params) {
  const q = new URLSearchParams(params);
  if (k() !== 10) q.set("k", String(k()));
  return "?" + q.toString();
}

function navigate(params) {
  const url = searchUrl(params);
  if (url !== location.search) history.pushState(null, "", url);
  showUrlState();
}

function showUrlState() {
  const q = new URLSearchParams(location.search);
  if (q.has("k")) $("k").value = String(parseInt(q.get("k"), 10) || 10);
  const query = q.get("q") || "", similar = q.get("similar") || "";
  $("search-input").value = query;
  const panel = $("search-panel"), seq = ++searchSeq;
  if (query) run(() => searchText(query, seq), "search-error", panel);
  else if (similar) run(() => searchSimilar(similar, seq), "search-error", panel);
  else { clearError("search-error"); $("results-title").textContent = ""; $("results").replaceChildren(); }
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
  const similar = call("POST", `/v1/search/audio?k=${k()}`, { body: data });
  similar.catch(() => {});  // awaited below; if tagging fails first, its failure is the one reported
  const tags = await call("POST", `/v1/tag?top_k=10${windowed}`, { body: data });
  for (const t of tags.tags) $("tags-output").append(scoreRow(t.label, t.score));
  $("windows-block").hidden = tags.windows.length === 0;
  for (const w of tags.windows) {
    const top = w.tags.slice(0, 3).map((t) => `${t.label} ${t.score.toFixed(2)}`).join(", ");
    $("windows-output").append(el("tr", { "data-testid": "window" },
      el("td", { class: "num" }, `${w.start_s.toFixed(1)}–${w.end_s.toFixed(1)} s`), el("td", {}, top)));
  }
  // BLAT's captioner is guided by AudioSet tags: give it the clip's confident ones.
  const guide = tags.tags.filter((t) => t.score >= 0.3).slice(0, 3).map((t) => "tags=" + encodeURIComponent(t.label));
  const captions = await call("POST", "/v1/caption?" + guide.join("&"), { body: data });
  $("caption-output").textContent = captions.captions.length ? captions.captions[0].text || "(empty caption)" : "";
  const hits = await similar;
  searchSeq++;  // the newest list on the left: a text search still in flight does not replace it
  renderHits(`Sounds like ${file.name}`, hits);
}

async function refreshStats() {
  const [stats, info] = await Promise.all([call("GET", "/v1/index/stats"), call("GET", "/v1/info")]);
  $("stats-items").textContent = String(stats.items);
  $("stats-version").textContent = stats.index_version;
  $("stats-kind").textContent = stats.index_kind;
  $("bundle").textContent = stats.bundle;
  $("backend").textContent = info.backend;
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
    if (query) navigate({ q: query });
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
