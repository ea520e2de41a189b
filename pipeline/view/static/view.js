// emim-stream live view: one tile per camera, updated from the server's Server-Sent Events (/events).
// Message data is only ever set as text (textContent), never parsed as HTML.
"use strict";

const tiles = new Map();
const COLORS = ["#ffffff", "#ff6b6b", "#4ea1ff", "#c77dff", "#06d6a0", "#8ecae6", "#ffd166", "#f78c6b"];

function tileOf(id) {
  let tile = tiles.get(id);
  if (tile) return tile;
  const node = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  node.dataset.camera = id;
  node.querySelector(".camera").textContent = id;
  document.getElementById("empty")?.remove();
  const list = document.getElementById("tiles");
  const after = [...list.children].find((el) => el.dataset.camera > id);
  list.insertBefore(node, after || null);
  tile = { node, chart: null, stages: "", frames: [] };
  tiles.set(id, tile);
  return tile;
}

function showFrame(tile, frame) {
  const img = tile.node.querySelector(".frame");
  img.src = "data:image/jpeg;base64," + frame.data;
  img.dataset.seq = frame.seq;
  const now = performance.now();
  tile.frames = tile.frames.filter((t) => now - t < 5000).concat(now);
  const fps = (tile.frames.length - 1) / Math.max((now - tile.frames[0]) / 1000, 1e-3);
  tile.node.querySelector(".fps").textContent = tile.frames.length > 1 ? `${fps.toFixed(1)} previews/s` : "";
}

function showLabel(tile, label) {
  const list = tile.node.querySelector(".topk");
  list.replaceChildren(...label.topk.map((entry, i) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = i === 0 ? "label top1" : "label";
    name.textContent = entry.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(entry.score * 100)}%`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = entry.score.toFixed(2);
    li.append(name, bar, score);
    return li;
  }));
  tile.node.dataset.label = label.topk.length ? label.topk[0].label : "";
  const w = label.window;
  tile.node.querySelector(".window").textContent =
    `frames ${w.first_seq}-${w.last_seq}, ${w.frames} sampled over ${(w.span_ms / 1000).toFixed(2)} s`;
}

function showStatus(tile, status) {
  const badge = tile.node.querySelector(".state");
  const state = status.silent ? "silent" : status.state;
  badge.dataset.state = state;
  badge.textContent = state + (status.detail ? ` (${status.detail})` : "");
  badge.title = status.silent ? "no status message for a few seconds: is the pipeline running?" : "";
  tile.node.dataset.state = state;
}

function clock(ns) {
  return new Date(ns / 1e6).toLocaleTimeString([], { hour12: false });
}

function showEvents(tile, events) {
  const list = tile.node.querySelector(".events");
  list.replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    const span = (e.end_wall_ns - e.start_wall_ns) / 1e9;
    const open = e.phase !== "end";
    li.textContent = `${e.label}  ${clock(e.start_wall_ns)}, ${span.toFixed(1)} s${open ? " so far" : ""}, peak ${Number(e.peak_score).toFixed(2)}`;
    li.classList.toggle("open", open);
    if (open) li.title = "in progress";
    return li;
  }));
}

function showLatency(tile, latency) {
  const stages = Object.keys(latency.stages);
  const data = [latency.t, latency.total_p50, latency.total_p99, ...stages.map((s) => latency.stages[s])];
  const box = tile.node.querySelector(".chart");
  if (!tile.chart || tile.stages !== stages.join()) {
    tile.chart?.destroy();
    const series = [{}, { label: "total p50", stroke: COLORS[0], width: 2 }, { label: "total p99", stroke: COLORS[1], width: 2 },
      ...stages.map((s, i) => ({ label: `${s} p50`, stroke: COLORS[(i + 2) % COLORS.length], width: 1, show: s === "infer" }))];
    tile.chart = new uPlot({
      width: Math.max(box.clientWidth, 300), height: 150, series, legend: { live: false },
      axes: [
        { stroke: "#8b949e", space: 60, values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false })) },
        { stroke: "#8b949e", label: "ms" },
      ],
      scales: { x: { time: true } },
    }, data, box);
    tile.stages = stages.join();
  } else {
    tile.chart.setData(data);
  }
  box.dataset.points = String(latency.t.length);
  const m = latency.minute;
  tile.node.querySelector(".minute").textContent = m.count
    ? `last ${latency.window_s} s: total p50 ${m.p50.toFixed(1)} ms, p99 ${m.p99.toFixed(1)} ms (${m.count} labels)`
    : "no labels in the last minute";
}

function apply(update) {
  const tile = tileOf(update.id);
  if (update.frame) showFrame(tile, update.frame);
  if (update.label) showLabel(tile, update.label);
  if (update.status) showStatus(tile, update.status);
  if (update.events) showEvents(tile, update.events);
  if (update.latency) showLatency(tile, update.latency);
}

function connect() {
  const badge = document.getElementById("connection");
  const source = new EventSource("/events");
  source.onopen = () => { badge.dataset.state = "live"; badge.textContent = "live"; };
  source.onerror = () => { badge.dataset.state = "lost"; badge.textContent = "reconnecting"; };
  source.addEventListener("update", (event) => JSON.parse(event.data).forEach(apply));
}

connect();
