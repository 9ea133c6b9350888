// lookalike's page: search by photo, browse an item and its similar items. No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const K = 24;
let attributes = {};  // attribute -> values, for the filters

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function filterParams() {
  const params = new URLSearchParams({ k: K });
  for (const sel of document.querySelectorAll("#filters select")) {
    if (sel.value) params.append(sel.name, sel.value);
  }
  return params;
}

function describe(meta) {
  // the most telling attributes first (the server lists them in that order), then the rest
  const keys = [...Object.keys(attributes), ...Object.keys(meta)];
  const seen = new Set();
  return keys.filter((k) => !seen.has(k) && seen.add(k) && k !== "product_id")
    .map((k) => meta[k]).filter((v) => v !== null && v !== undefined && v !== "")
    .slice(0, 3).join(" · ");
}

function productName(meta) {
  // a name-like column (productDisplayName, name, title): what a shopper calls the product
  const key = Object.keys(meta).find((k) => /name|title/i.test(k) && typeof meta[k] === "string");
  return key ? meta[key] : "";
}

function card(hit) {
  const a = document.createElement("a");
  a.className = "card";
  a.href = `#/item/${encodeURIComponent(hit.item_id)}`;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = describe(hit.metadata) || hit.item_id;
  img.src = `/items/${encodeURIComponent(hit.item_id)}/image`;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = "<div></div><div class='score'></div>";
  meta.firstChild.textContent = describe(hit.metadata) || hit.item_id;
  meta.lastChild.textContent = `${hit.item_id} · similarity ${hit.score.toFixed(3)}`;
  a.append(img, meta);
  return a;
}

function showResults(title, results) {
  $("results-title").hidden = false;
  $("results-title").textContent = title;
  $("results").replaceChildren(...results.map(card));
}

async function failed(resp) {
  let detail = resp.statusText;
  try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
  if (typeof detail !== "string") detail = JSON.stringify(detail);
  status(`Error ${resp.status}: ${detail}`, true);
}

async function searchPhoto(file) {
  $("item").hidden = true;
  const q = $("query");
  q.hidden = false;
  const preview = document.createElement("img");
  preview.alt = "your photo";
  preview.src = URL.createObjectURL(file);
  const note = document.createElement("p");
  note.textContent = `Your photo: ${file.name}`;
  q.replaceChildren(preview, note);
  status("Searching…");
  const body = new FormData();
  body.append("image", file);
  const resp = await fetch(`/search?${filterParams()}`, { method: "POST", body });
  if (!resp.ok) return failed(resp);
  const { results } = await resp.json();
  status(`${results.length} similar products`);
  showResults("Similar products", results);
}

async function showItem(id) {
  $("query").hidden = true;
  status("Loading…");
  const [itemResp, simResp] = await Promise.all([
    fetch(`/items/${encodeURIComponent(id)}`),
    fetch(`/items/${encodeURIComponent(id)}/similar?${filterParams()}`),
  ]);
  if (!itemResp.ok) return failed(itemResp);
  if (!simResp.ok) return failed(simResp);
  const item = await itemResp.json();
  const sec = $("item");
  sec.hidden = false;
  const img = document.createElement("img");
  const name = productName(item.metadata) || id;
  img.alt = name;
  img.src = `/items/${encodeURIComponent(id)}/image`;
  const about = document.createElement("div");
  about.className = "about";
  const title = document.createElement("h2");
  title.className = "name";
  title.textContent = name;
  const line = document.createElement("p");
  line.textContent = describe(item.metadata);
  // every column, out of the way: the name, the photo and the similar items come first
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Details";
  const dl = document.createElement("dl");
  for (const [k, v] of Object.entries({ id, ...item.metadata })) {
    if (v === null || v === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  details.append(summary, dl);
  about.append(title, line);
  sec.replaceChildren(img, about, details);
  const { results } = await simResp.json();
  status("");
  showResults("Similar items", results);
}

async function loadFilters() {
  const resp = await fetch("/attributes");
  if (!resp.ok) return;
  attributes = await resp.json();
  const box = $("filters");
  for (const [name, values] of Object.entries(attributes)) {
    const sel = document.createElement("select");
    sel.name = name;
    sel.setAttribute("aria-label", name);
    sel.append(new Option(`any ${name}`, ""), ...values.map((v) => new Option(v, v)));
    sel.addEventListener("change", route);
    box.append(sel);
  }
}

function route() {
  const m = location.hash.match(/^#\/item\/(.+)$/);
  if (m) return showItem(decodeURIComponent(m[1]));
  const file = $("photo").files[0];
  if (file) return searchPhoto(file);
  $("item").hidden = true;
  status("Take or choose a photo of a garment to find similar products.");
}

$("filters-toggle").addEventListener("click", () => {
  const open = document.querySelector("header").classList.toggle("open");
  $("filters-toggle").setAttribute("aria-expanded", String(open));
});
$("photo").addEventListener("change", () => {
  if (!$("photo").files[0]) return;
  // route() shows the photo search: at once on #/, else through the hash change (once)
  if (location.hash === "#/") route();
  else location.hash = "#/";
});
window.addEventListener("hashchange", route);
loadFilters().then(route);
