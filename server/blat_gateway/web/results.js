// The result list: each hit titled, described (duration, licence, source, its JSON), drawn as a waveform, tagged
// (predicted tags with their confidence) and playable; the facets of the page's hits; the pager. Uses app.js's
// helpers ($, el, call, apiKey, authHeaders, itemPath) and its navigate().
"use strict";

// A result's title: its caption, else its file name (the last part of its id): long package paths stay below it.
function title(hit) {
  return hit.item.caption || hit.id.split("/").pop() || hit.id;
}

// The item's audio, fetched with the key (an <audio> element cannot send one), played from memory and drawn.
function player(id) {
  const audio = el("audio", { controls: "", preload: "metadata", "data-testid": "result-audio" });
  const wave = el("canvas", { class: "wave", width: "600", height: "48", "data-testid": "result-wave",
                              role: "img", "aria-label": "waveform" });
  fetch("/v1/audio/" + itemPath(id), { headers: authHeaders() }).then(async (r) => {
    if (!r.ok) throw new Error(`${r.status}`);
    const bytes = await r.arrayBuffer();
    audio.src = URL.createObjectURL(new Blob([bytes]));
    drawWave(wave, bytes);
  }).catch(() => {
    audio.replaceWith(el("span", { class: "noaudio" }, "no playable audio for this item"));
    wave.remove();
  });
  return [wave, audio];
}

// The waveform, decoded in the page (nothing leaves it): per pixel column, the loudest sample's level.
const decoder = new OfflineAudioContext(1, 1, 22050);

async function drawWave(canvas, bytes) {
  let samples;
  try {
    samples = (await decoder.decodeAudioData(bytes)).getChannelData(0);
  } catch (err) {
    canvas.remove();  // a format the browser cannot decode: no drawing rather than a wrong one
    return;
  }
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, step = samples.length / w;
  let loudest = 1e-9;
  for (let i = 0; i < samples.length; i++) loudest = Math.max(loudest, Math.abs(samples[i]));
  g.fillStyle = getComputedStyle(canvas).color;
  for (let x = 0; x < w; x++) {
    let peak = 0;
    for (let i = Math.floor(x * step); i < Math.floor((x + 1) * step); i++) peak = Math.max(peak, Math.abs(samples[i]));
    const bar = Math.max(1, Math.round((peak / loudest) * (h - 2)));
    g.fillRect(x, (h - bar) / 2, 1, bar);
  }
  canvas.dataset.seconds = (samples.length / decoder.sampleRate).toFixed(3);
  canvas.setAttribute("aria-label", `waveform of ${canvas.dataset.seconds} s`);
}

// Given tags plain; predicted ones (extra.predicted_tags: label -> confidence) marked, with their confidence.
function tagChips(item) {
  const predicted = (item.extra && item.extra.predicted_tags) || {};
  const box = el("div", { class: "tags", "data-testid": "result-tags" });
  for (const t of item.tags) {
    if (t in predicted) {
      box.append(el("span", { class: "tag predicted", title: "predicted by the model" },
                    t, el("small", {}, ` ${Math.round(predicted[t] * 100)}%`)));
    } else {
      box.append(el("span", { class: "tag" }, t));
    }
  }
  return box;
}

function meta(hit) {
  const x = hit.item.extra || {}, parts = [];
  if (hit.item.duration_s != null) parts.push(el("span", {}, `${hit.item.duration_s.toFixed(1)} s`));
  if (x.licence) parts.push(el("span", { "data-testid": "result-licence" }, x.licence));
  const source = x.package ? `${x.package}${x.file ? ": " + x.file : ""}` : "";
  if (source) parts.push(el("span", { class: "source", "data-testid": "result-source" }, source));
  // The item as the API has it (a key, when the server has keys, is needed to open it)
  parts.push(el("a", { href: "/v1/items/" + itemPath(hit.id), "data-testid": "result-json" }, "JSON"));
  const line = el("div", { class: "meta" });
  parts.forEach((p, i) => { if (i) line.append(" · "); line.append(p); });
  return line;
}

function renderHits(heading, answer, state) {
  const from = (state.page - 1) * state.k;
  $("results-title").textContent = answer.hits.length
    ? `${heading}: results ${from + 1}–${from + answer.hits.length}`
    : `${heading}: no results`;
  const list = $("results");
  list.start = from + 1;
  for (const old of list.querySelectorAll("audio")) if (old.src.startsWith("blob:")) URL.revokeObjectURL(old.src);
  list.replaceChildren();
  for (const hit of answer.hits) {
    const similar = el("button", { class: "similar", type: "button", "data-testid": "similar-link" },
                       "similar to this");
    similar.addEventListener("click", () => navigate({ q: "", similar: hit.id, page: 1 }));
    list.append(el("li", { class: "result", "data-testid": "result", "data-id": hit.id },
      el("div", { class: "head" }, el("span", { class: "score", "data-testid": "result-score" }, hit.score.toFixed(3)),
         el("span", { class: "title", "data-testid": "result-title" }, title(hit)), similar),
      el("div", { class: "id", "data-testid": "result-id" }, hit.id),
      meta(hit),
      tagChips(hit.item),
      ...player(hit.id)));
  }
  if (state.ofClip) {  // a clip's similar sounds: one list, no filters or pages of its own
    for (const id of ["facets", "active-filters"]) $(id).replaceChildren();
    $("pager").hidden = true;
    return;
  }
  renderFacets(answer.hits, state);
  renderPager(answer.hits.length, state);
}

// Counts over the hits on this page: tags, and each metadata key with text values (licence, package, author...);
// a chip adds its value as a filter (all chosen tags must be present, each chosen key must have its value).
const NOT_FACETS = new Set(["file"]);  // one value per item: nothing to count

function renderFacets(hits, state) {
  const tags = new Map(), meta = new Map();
  for (const h of hits) {
    for (const t of h.item.tags) if (!state.tags.includes(t)) tags.set(t, (tags.get(t) || 0) + 1);
    for (const [key, value] of Object.entries(h.item.extra || {})) {
      if (typeof value !== "string" || key.startsWith("predicted_") || NOT_FACETS.has(key) || key in state.meta) continue;
      if (!meta.has(key)) meta.set(key, new Map());
      meta.get(key).set(value, (meta.get(key).get(value) || 0) + 1);
    }
  }
  const box = $("facets");
  box.replaceChildren();
  const group = (name, counts, pick) => {
    if (!counts.size) return;
    const row = el("div", { class: "facet", "data-testid": `facet-${name}` }, el("span", { class: "facet-name" }, name));
    for (const [value, n] of [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 12)) {
      const chip = el("button", { type: "button", class: "chip", "data-value": value }, `${value} (${n})`);
      chip.addEventListener("click", () => pick(value));
      row.append(chip);
    }
    box.append(row);
  };
  group("tags", tags, (t) => navigate({ tag: [...state.tags, t], page: 1 }));
  for (const [key, counts] of [...meta].sort((a, b) => a[0].localeCompare(b[0]))) {
    group(key, counts, (v) => navigate({ meta: { ...state.meta, [key]: v }, page: 1 }));
  }
  renderActive(state);
}

// The filters in force, each removable.
function renderActive(state) {
  const box = $("active-filters");
  box.replaceChildren();
  const chip = (text, drop) => {
    const b = el("button", { type: "button", class: "chip active", "data-testid": "active-filter",
                             "aria-label": `remove the filter ${text}` }, `${text} ×`);
    b.addEventListener("click", () => navigate({ ...drop, page: 1 }));
    box.append(b);
  };
  for (const t of state.tags) chip(`tag: ${t}`, { tag: state.tags.filter((x) => x !== t) });
  for (const [key, value] of Object.entries(state.meta)) {
    const rest = { ...state.meta };
    delete rest[key];
    chip(`${key}: ${value}`, { meta: rest });
  }
  if (state.minS !== "") chip(`≥ ${state.minS} s`, { min_s: "" });
  if (state.maxS !== "") chip(`≤ ${state.maxS} s`, { max_s: "" });
}

function renderPager(shown, state) {
  const pager = $("pager");
  pager.hidden = state.page === 1 && shown < state.k;
  $("page-number").textContent = `page ${state.page}`;
  $("prev-page").disabled = state.page === 1;
  $("next-page").disabled = shown < state.k || state.page * state.k + state.k > MAX_RESULTS;
}
