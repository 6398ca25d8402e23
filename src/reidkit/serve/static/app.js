// reidkit operator page: plain JavaScript against the /v1 API, no build step, no network
// access beyond this server. The token lives in sessionStorage (gone when the tab closes) and
// travels only in the Authorization header; thumbnails are fetched with it and shown as blobs.
"use strict";

const state = { token: null, me: null, stats: null, query: null, hits: [], selected: null, urls: [] };
const $ = (id) => document.getElementById(id);

function show(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut();
    throw new Error("The token was refused; sign in again.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail
        : (body.detail || []).map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    } catch (_) { /* not JSON: keep the status text */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await (await api("/v1/me")).json();
  } catch (error) {
    state.token = null;
    show(error.message);
    return;
  }
  sessionStorage.setItem("reidkit-token", token);
  $("login").hidden = true;
  $("session").hidden = false;
  $("who").textContent = `${state.me.name} (${state.me.scopes.join(", ")})`;
  $("workspace").hidden = false;
  $("forget").hidden = !state.me.scopes.includes("admin");
  show("");
  await loadStats();
}

function signOut() {
  sessionStorage.removeItem("reidkit-token");
  state.token = null;
  $("login").hidden = false;
  $("session").hidden = true;
  $("workspace").hidden = true;
  $("token").value = "";
}

const isoToInput = (iso) => (iso ? iso.replace("Z", "").replace(/\+00:00$/, "").slice(0, 19) : "");
const inputToIso = (value) => (value ? `${value.length === 16 ? `${value}:00` : value}Z` : "");

async function loadStats() {
  state.stats = await (await api("/v1/gallery/stats")).json();
  const box = $("cameras");
  box.replaceChildren();
  for (const camera of state.stats.cameras) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
    input.value = camera;
    label.append(input, ` cam ${camera}`);
    box.append(label);
  }
  if (!$("start").value) $("start").value = isoToInput(state.stats.start);
  if (!$("end").value) $("end").value = isoToInput(state.stats.end);
  const threshold = state.stats.match_threshold;
  $("gallery-stats").textContent = `${state.stats.size} crops · ${state.stats.cameras.length} cameras · ` +
    (threshold == null ? "no match threshold" : `match if distance ≤ ${threshold.toFixed(3)}`);
}

function setQuery(blob) {
  state.query = blob;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("search").disabled = false;
}

async function search() {
  if (!state.query) return;
  const form = new FormData();
  form.append("images", state.query, "query.png");
  form.append("k", $("k").value);
  for (const box of $("cameras").querySelectorAll("input:checked")) form.append("cameras", box.value);
  const start = inputToIso($("start").value);
  const end = inputToIso($("end").value);
  if (start) form.append("start", start);
  if (end) form.append("end", end);
  $("search").disabled = true;
  try {
    const result = await (await api("/v1/search", { method: "POST", body: form })).json();
    state.hits = result.hits;
    show("");
    await render();
  } catch (error) {
    show(error.message);
  } finally {
    $("search").disabled = false;
  }
}

async function thumbnail(cropId) {
  const blob = await (await api(`/v1/crops/${encodeURIComponent(cropId)}`)).blob();
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return { blob, url };
}

async function render() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  state.selected = null;
  $("detail").hidden = true;
  const timeline = $("timeline");
  timeline.replaceChildren();
  const matches = state.hits.filter((hit) => hit.decision === "match").length;
  const calibrated = state.hits.some((hit) => hit.decision !== null);
  $("results-title").textContent = `Hits: ${state.hits.length}` +
    (calibrated ? ` (${matches} match)` : " (no match threshold: distances only)");
  if (!state.hits.length) {
    timeline.innerHTML = '<p class="empty">No hits in this window.</p>';
    return;
  }
  const times = state.hits.map((hit) => Date.parse(hit.timestamp));
  const start = Math.min(...times);
  const span = Math.max(Math.max(...times) - start, 1);
  const cameras = [...new Set(state.hits.map((hit) => hit.camera))].sort((a, b) => a - b);
  const width = timeline.clientWidth - 64 - 60;
  for (const camera of cameras) {
    const lane = document.createElement("div");
    lane.className = "lane";
    lane.dataset.camera = camera;
    const name = document.createElement("div");
    name.className = "lane-name";
    name.textContent = `cam ${camera}`;
    const track = document.createElement("div");
    track.className = "track";
    // Stack thumbnails that would overlap into rows, closest in time first.
    const rows = [];
    const hits = state.hits.filter((hit) => hit.camera === camera)
      .sort((a, b) => Date.parse(a.timestamp) - Date.parse(b.timestamp));
    for (const hit of hits) {
      const x = ((Date.parse(hit.timestamp) - start) / span) * width;
      let row = rows.findIndex((end) => end <= x);
      if (row < 0) { row = rows.length; rows.push(0); }
      rows[row] = x + 60;
      const card = document.createElement("div");
      card.className = `hit ${hit.decision || "undecided"}`;
      card.style.left = `${x}px`;
      card.style.top = `${4 + row * 122}px`;
      card.title = `${hit.timestamp} · track ${hit.track_id ?? "none"}`;
      card.dataset.cropId = hit.crop_id;
      card.dataset.path = hit.path;
      const image = document.createElement("img");
      image.alt = `crop ${hit.crop_id}`;
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = hit.decision || "–";
      const distance = document.createElement("span");
      distance.textContent = hit.distance.toFixed(3);
      card.append(image, distance, badge);
      card.addEventListener("click", () => select(hit, card));
      track.append(card);
      thumbnail(hit.crop_id).then(({ blob, url }) => { hit.blob = blob; image.src = url; })
        .catch((error) => show(error.message));
    }
    track.style.height = `${8 + rows.length * 122}px`;
    lane.append(name, track);
    timeline.append(lane);
  }
  const axis = document.createElement("div");
  axis.className = "axis";
  for (const t of [start, start + span / 2, start + span]) {
    const tick = document.createElement("span");
    tick.textContent = new Date(t).toISOString().replace("T", " ").slice(0, 19);
    axis.append(tick);
  }
  timeline.append(axis);
}

function select(hit, card) {
  for (const other of document.querySelectorAll(".hit.selected")) other.classList.remove("selected");
  card.classList.add("selected");
  state.selected = hit;
  $("detail-image").src = card.querySelector("img").src;
  const facts = $("detail-facts");
  facts.replaceChildren();
  const rows = [["crop", hit.path], ["camera", hit.camera], ["time", hit.timestamp],
    ["track", hit.track_id ?? "none"], ["distance", hit.distance.toFixed(4)],
    ["decision", hit.decision || "no threshold"]];
  for (const [key, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    facts.append(dt, dd);
  }
  showIdentity(hit, facts);
  $("forget").textContent = `Forget track ${hit.track_id}…`;
  $("forget").hidden = !state.me.scopes.includes("admin") || hit.track_id === null;
  $("detail").hidden = false;
}

// The person this crop belongs to across cameras (written by `reidkit associate`), if known.
async function showIdentity(hit, facts) {
  const response = await fetch(`/v1/crops/${hit.crop_id}/identity`,
    { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok || state.selected !== hit) return;
  const person = await response.json();
  if (person.global_id === null) return;
  const span = [person.start, person.end].map((t) => t.replace("T", " ").slice(0, 19));
  for (const [key, value] of [["person", `global id ${person.global_id}`],
    ["cameras", person.cameras.join(", ")], ["seen", `${span[0]} .. ${span[1]}`]]) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    facts.append(dt, dd);
  }
}

async function forgetSelected() {
  const hit = state.selected;
  if (!hit) return;
  $("confirm-text").textContent = `Forget every crop of track ${hit.track_id}? ` +
    "Its embeddings and thumbnails are deleted from the gallery; this cannot be undone.";
  $("confirm").returnValue = "";
  $("confirm").showModal();
  $("confirm").addEventListener("close", async () => {
    if ($("confirm").returnValue !== "forget") return;
    try {
      const params = new URLSearchParams({ track_id: hit.track_id });
      const result = await (await api(`/v1/gallery?${params}`, { method: "DELETE" })).json();
      show(`Forgot ${result.forgotten} crops of track ${hit.track_id}.`, "info");
      state.hits = state.hits.filter((other) => other.track_id !== hit.track_id);
      await loadStats();
      await render();
    } catch (error) {
      show(error.message);
    }
  }, { once: true });
}

function wire() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("logout").addEventListener("click", signOut);
  $("file").addEventListener("change", () => { if ($("file").files[0]) setQuery($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) setQuery(file);
  });
  $("search").addEventListener("click", search);
  $("search-from").addEventListener("click", () => {
    if (state.selected && state.selected.blob) {
      setQuery(state.selected.blob);
      search();
    }
  });
  $("forget").addEventListener("click", forgetSelected);
  const saved = sessionStorage.getItem("reidkit-token");
  if (saved) signIn(saved);
}

wire();
