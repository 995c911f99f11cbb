// The fdn-index viewer: plain JS, no build step, no network beyond this server.
"use strict";

const MODE_TITLES = { normal: "S_normal — anatomy", abnormal: "S_abnormal — lesion", sum: "S_sum — both" };
const $ = (id) => document.getElementById(id);
const state = { case: null, slice: null, mode: "sum", region: null };  // region: "x0,y0,x1,y1"
let info = null;
let cases = {};          // case id -> metadata from /api/cases
let querySeq = 0;        // answers to older requests are dropped
let queryAbort = null;
let sliderTimer = null;

function overlays() {
  const list = [];
  if ($("overlay-seg").checked) list.push("seg");
  if ($("overlay-anat").checked) list.push("anat");
  return list.join(",");
}

function sliceUrl(c, s) {
  const p = new URLSearchParams({ sequence: $("sequence").value });
  const o = overlays();
  if (o) p.set("overlay", o);
  return `/api/cases/${encodeURIComponent(c)}/slices/${s}.png?${p}`;
}

function setMessage(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  if (response.status === 401) {  // a server with a token: the session ended, sign in again
    window.location.assign("/login");
  }
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- URL state and history -------------------------------------------------------------
function urlOf(s) {
  const p = new URLSearchParams({ case: s.case, slice: s.slice, mode: s.mode });
  return `?${p}`;
}

function navigate(next, push) {
  Object.assign(state, next);
  const url = urlOf(state);
  const entry = { case: state.case, slice: state.slice, mode: state.mode };
  if (push) history.pushState(entry, "", url);
  else history.replaceState(entry, "", url);
  render();
}

window.addEventListener("popstate", (event) => {
  const s = event.state || fromUrl();
  if (s && s.case) {
    Object.assign(state, s);
    render();
  }
});

function fromUrl() {
  const p = new URLSearchParams(location.search);
  if (!p.get("case")) return null;
  const slice = p.get("slice");
  return { case: p.get("case"), slice: slice === null ? null : Number(slice), mode: p.get("mode") || "sum" };
}

// ---- the case picker ---------------------------------------------------------------------
async function loadCases() {
  const p = new URLSearchParams({ limit: "500", q: $("case-filter").value });
  if ($("lesion-only").checked) p.set("has_lesion", "true");
  const page = await getJSON(`/api/cases?${p}`);
  const select = $("case-select");
  select.innerHTML = "";
  for (const c of page.cases) {
    cases[c.case] = c;
    const option = document.createElement("option");
    option.value = c.case;
    const lesion = c.has_lesion === null ? "" : c.has_lesion ? ", lesion" : ", healthy";
    option.textContent = `${c.case} (${c.n_slices} slices${lesion})`;
    select.appendChild(option);
  }
  if (state.case) select.value = state.case;
}

async function caseInfo(c) {
  if (!cases[c]) cases[c] = await getJSON(`/api/cases/${encodeURIComponent(c)}`);
  return cases[c];
}

// ---- rendering ------------------------------------------------------------------------------
async function render() {
  if (!state.case) return;
  let meta;
  try {
    meta = await caseInfo(state.case);
  } catch (error) {
    setMessage(error.message, true);
    return;
  }
  if (state.slice === null || Number.isNaN(state.slice)) state.slice = meta.default_slice;
  $("case-select").value = state.case;
  const slider = $("slice-slider");
  slider.min = meta.first_slice;
  slider.max = meta.last_slice;
  slider.value = state.slice;
  $("slice-label").textContent = `${state.slice} / ${meta.last_slice}`;
  $("query-image").src = sliceUrl(state.case, state.slice);
  $("query-caption").textContent = `${state.case} · slice ${state.slice}`;
  for (const tab of document.querySelectorAll("#mode-tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === state.mode));
  }
  await runQuery();
}

function queryParams() {
  const p = new URLSearchParams({
    mode: state.mode,
    distance: $("distance").value,
    topq: $("topq").value || "6",
    engine: $("engine").value,
  });
  if ($("normalized-sum").checked) p.set("normalized_sum", "true");
  if (state.region) p.set("region", state.region);
  if ($("explain-maps").checked) p.set("explain", "true");
  const where = $("where").value.trim();
  if (where) p.set("where", where);
  return p;
}

async function runQuery() {
  const seq = ++querySeq;
  if (queryAbort) queryAbort.abort();
  queryAbort = new AbortController();
  const p = queryParams();
  p.set("case", state.case);
  p.set("slice", state.slice);
  const t0 = performance.now();
  setMessage("searching…");
  try {
    const result = await getJSON(`/api/query?${p}`, { signal: queryAbort.signal });
    if (seq !== querySeq) return;
    showResult(result, performance.now() - t0);
  } catch (error) {
    if (error.name === "AbortError") return;
    setMessage(error.message, true);
  }
}

function showResult(result, roundTripMs) {
  const search = Object.values(result.results).reduce((a, r) => a + r.search_seconds, 0);
  $("latency").textContent =
    `search ${(search * 1000).toFixed(1)} ms · server ${(result.query_seconds * 1000).toFixed(1)} ms` +
    ` · round trip ${roundTripMs.toFixed(0)} ms`;
  setMessage(`· query ${result.query}`);
  showRegion(result.region);
  $("compare").hidden = true;
  const container = $("hits");
  container.innerHTML = "";
  for (const [mode, r] of Object.entries(result.results)) {
    const block = document.createElement("section");
    block.className = "mode-block";
    block.dataset.mode = mode;
    const title = document.createElement("h3");
    title.textContent = `${MODE_TITLES[mode] || mode} (${r.distance}, ${r.engine})`;
    block.appendChild(title);
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const hit of r.hits) grid.appendChild(hitCard(hit, mode, r.distance));
    if (!r.hits.length) grid.textContent = "no hits";
    block.appendChild(grid);
    container.appendChild(block);
  }
}

function explainUrl(hit, mode, distance, side) {
  const p = new URLSearchParams({
    case: state.case, slice: state.slice, hit_case: hit.case, hit_slice: hit.slice,
    mode, distance, side, sequence: $("sequence").value,
  });
  if ($("normalized-sum").checked) p.set("normalized_sum", "true");
  if (state.region) p.set("region", state.region);
  const o = overlays();
  if (o) p.set("overlay", o);
  return `/api/explain.png?${p}`;
}

function topCells(explanation) {
  // the three grid cells holding most of the distance, as text
  const books = Object.values(explanation.books);
  const cells = [];
  books[0].contributions.forEach((row, i) => row.forEach((_, j) => {
    const v = books.reduce((a, b) => a + b.contributions[i][j], 0);
    cells.push([v, i, j]);
  }));
  cells.sort((a, b) => b[0] - a[0]);
  const d = explanation.distance;
  return cells.slice(0, 3).map(([v, i, j]) => `(${i},${j}) ${d > 0 ? Math.round((100 * v) / d) : 0}%`).join(", ");
}

function openCompare(hit, mode, distance) {
  $("compare").hidden = false;
  $("compare-title").textContent = `why ${hit.case} : ${hit.slice} (${MODE_TITLES[mode] || mode}, ${distance})`;
  $("compare-query").src = explainUrl(hit, mode, distance, "query");
  $("compare-hit").src = explainUrl(hit, mode, distance, "hit");
  $("compare-hit-caption").textContent = `#${hit.rank} ${hit.case} : ${hit.slice}`;
  $("compare-text").textContent = hit.explanation
    ? `d = ${Number(hit.distance.toPrecision(4))}; most of it at ${topCells(hit.explanation)}`
    : `d = ${Number(hit.distance.toPrecision(4))}`;
}

function hitCard(hit, mode, distance) {
  const card = document.createElement("button");
  card.className = "hit";
  card.type = "button";
  card.title = `search from ${hit.case} slice ${hit.slice}`;
  card.dataset.case = hit.case;
  card.dataset.slice = hit.slice;
  const img = document.createElement("img");
  img.src = $("explain-maps").checked
    ? explainUrl(hit, mode, distance, "hit")
    : sliceUrl(hit.case, hit.slice);
  img.alt = `${hit.case} slice ${hit.slice}`;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `#${hit.rank} ${hit.case} : ${hit.slice}`;
  const dist = document.createElement("span");
  dist.className = "distance";
  const lesion = hit.lesion_area === null ? "" : ` · lesion ${hit.lesion_area} px`;
  dist.textContent = `d = ${Number(hit.distance.toPrecision(4))}${lesion}`;
  const why = document.createElement("span");
  why.className = "why";
  why.setAttribute("role", "button");
  why.tabIndex = 0;
  why.textContent = "why?";
  why.title = "the query and this hit side by side, with where the distance comes from";
  why.addEventListener("click", (event) => {
    event.stopPropagation();
    openCompare(hit, mode, distance);
  });
  card.append(img, label, dist, why);
  card.addEventListener("click", () => navigate({ case: hit.case, slice: hit.slice }, true));
  return card;
}

// ---- the region drawn on the query slice ----------------------------------------------------
function imageRect() {
  // where the slice's pixels lie in the stage (object-fit: contain letterboxes it)
  const img = $("query-image");
  const w = img.clientWidth, h = img.clientHeight;
  const scale = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  return {
    scale, x: (w - img.naturalWidth * scale) / 2, y: (h - img.naturalHeight * scale) / 2,
    nx: img.naturalWidth, ny: img.naturalHeight,
  };
}

function toVoxel(px, py) {
  // the image's columns are the first axis (x), its rows the second (y) from the top down
  const r = imageRect();
  const x = Math.min(r.nx - 1, Math.max(0, Math.floor((px - r.x) / r.scale)));
  const row = Math.min(r.ny - 1, Math.max(0, Math.floor((py - r.y) / r.scale)));
  return [x, r.ny - 1 - row];
}

let lastRegion = null;  // the region the last answer echoed

function showRegion(echoed) {
  lastRegion = echoed;
  const box = $("region-box");
  $("region-clear").disabled = !state.region;
  if (!state.region || !$("query-image").naturalWidth) {
    box.hidden = true;
    $("region-text").textContent = "";
    return;
  }
  const [x0, y0, x1, y1] = state.region.split(",").map(Number);
  const r = imageRect();
  box.hidden = false;
  box.style.left = `${r.x + x0 * r.scale}px`;
  box.style.top = `${r.y + (r.ny - 1 - y1) * r.scale}px`;
  box.style.width = `${(x1 - x0 + 1) * r.scale}px`;
  box.style.height = `${(y1 - y0 + 1) * r.scale}px`;
  let text = `region ${state.region}`;
  if (echoed) {
    const [h, w] = echoed.grid.normal;
    text += ` · ${echoed.positions.normal.length} of ${h * w} grid cells`;
  }
  $("region-text").textContent = text;
}

function wireRegionDrawing() {
  const stage = $("query-stage");
  let start = null;
  const point = (e) => {
    const rect = stage.getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  };
  $("region-draw").addEventListener("change", (e) => stage.classList.toggle("drawing", e.target.checked));
  stage.addEventListener("mousedown", (e) => {
    if (!$("region-draw").checked || !$("query-image").naturalWidth) return;
    e.preventDefault();
    start = point(e);
  });
  stage.addEventListener("mousemove", (e) => {
    if (!start) return;
    const [px, py] = point(e);
    const box = $("region-box");
    box.hidden = false;
    box.style.left = `${Math.min(start[0], px)}px`;
    box.style.top = `${Math.min(start[1], py)}px`;
    box.style.width = `${Math.abs(px - start[0])}px`;
    box.style.height = `${Math.abs(py - start[1])}px`;
  });
  window.addEventListener("mouseup", (e) => {
    if (!start) return;
    const [ax, ay] = toVoxel(...start);
    const [bx, by] = toVoxel(...point(e));
    start = null;
    state.region = `${Math.min(ax, bx)},${Math.min(ay, by)},${Math.max(ax, bx)},${Math.max(ay, by)}`;
    render();
  });
  $("region-clear").addEventListener("click", () => {
    state.region = null;
    render();
  });
  $("compare-close").addEventListener("click", () => { $("compare").hidden = true; });
  $("query-image").addEventListener("load", () => showRegion(lastRegion));
}

// ---- external case ------------------------------------------------------------------------
async function uploadQuery(event) {
  event.preventDefault();
  const form = new FormData($("upload-form"));
  for (const [key, value] of [...form.entries()]) {
    if ((value instanceof File && value.size === 0) || value === "") form.delete(key);
  }
  for (const [key, value] of queryParams()) form.set(key, value);
  const t0 = performance.now();
  setMessage("uploading and encoding…");
  try {
    const result = await getJSON("/api/query/upload", { method: "POST", body: form });
    ++querySeq;
    $("query-image").removeAttribute("src");
    $("query-caption").textContent = `${result.query}`;
    showResult(result, performance.now() - t0);
  } catch (error) {
    setMessage(error.message, true);
  }
}

// ---- wiring -------------------------------------------------------------------------------
function fillSelect(select, values, chosen) {
  for (const v of values) {
    const option = document.createElement("option");
    option.value = option.textContent = v;
    select.appendChild(option);
  }
  select.value = chosen;
}

function moveSlice(delta) {
  const meta = cases[state.case];
  if (!meta) return;
  const next = Math.min(meta.last_slice, Math.max(meta.first_slice, state.slice + delta));
  if (next !== state.slice) navigate({ slice: next }, false);
}

async function main() {
  info = await getJSON("/api/info");
  $("index-info").textContent =
    `${info.index}: ${info.n_cases} cases, ${info.n_slices} slices · model ${info.preset || "custom"} ` +
    `(${info.input_size}², grid ${info.grid.join("×")})`;
  // "" lets the API choose each mode's best distance, as the CLI does
  fillSelect($("distance"), ["", ...info.distances], "");
  $("distance").options[0].textContent = "best per mode";
  // "" lets the API choose the index's default engine for the distance, as the CLI does
  fillSelect($("engine"), ["", ...info.engines], "");
  $("engine").options[0].textContent = "default";
  await loadCases();

  $("case-filter").addEventListener("input", () => loadCases().catch((e) => setMessage(e.message, true)));
  $("lesion-only").addEventListener("change", () => loadCases().catch((e) => setMessage(e.message, true)));
  $("case-select").addEventListener("change", (e) => {
    if (e.target.value) navigate({ case: e.target.value, slice: null }, true);
  });
  $("slice-slider").addEventListener("input", (e) => {
    const slice = Number(e.target.value);
    $("slice-label").textContent = `${slice} / ${e.target.max}`;
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(() => navigate({ slice }, false), 60);
  });
  wireRegionDrawing();
  for (const id of ["sequence", "overlay-seg", "overlay-anat", "distance", "topq", "engine", "normalized-sum", "where", "explain-maps"]) {
    $(id).addEventListener("change", () => render());
  }
  for (const tab of document.querySelectorAll("#mode-tabs button")) {
    tab.addEventListener("click", () => navigate({ mode: tab.dataset.mode }, true));
  }
  $("upload-form").addEventListener("submit", uploadQuery);
  document.addEventListener("keydown", (e) => {
    const tag = (e.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag) && e.target.id !== "slice-slider") return;
    if (e.target.id === "slice-slider") return; // the slider moves itself
    if (e.key === "ArrowLeft" || e.key === "ArrowDown") { moveSlice(-1); e.preventDefault(); }
    if (e.key === "ArrowRight" || e.key === "ArrowUp") { moveSlice(1); e.preventDefault(); }
  });

  const initial = fromUrl();
  if (initial) {
    Object.assign(state, initial);
  } else {
    const first = Object.values(cases).find((c) => c.has_lesion) || Object.values(cases)[0];
    if (!first) { setMessage("this index has no cases", true); return; }
    state.case = first.case;
    state.slice = first.default_slice;
  }
  history.replaceState({ case: state.case, slice: state.slice, mode: state.mode }, "", urlOf(state));
  await render();
}

main().catch((error) => setMessage(error.message, true));
