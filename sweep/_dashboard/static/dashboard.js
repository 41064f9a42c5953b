// The sweep dashboard: three pages that read the JSON endpoints and poll them while a sweep
// runs. Plain JavaScript, no build step; charts by plotly.js, served by the app itself.
"use strict";

const POLL_MS = 1000; // a new trial shows within one poll and one render (under 2 s)
const PAGE_SIZE = 50;
const PERCENT = new Set(["accuracy", "fp32_accuracy", "accuracy_drop", "sparsity",
  "zero_fraction", "removed_fraction"]);

// ---- helpers -------------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const url = path + (query.toString() ? "?" + query : "");
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(error) {
  const box = $("error");
  if (!box) return;
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

function fmt(metric, value) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  if (PERCENT.has(metric)) return (100 * value).toFixed(2) + "%";
  if (metric.endsWith("_bytes") || metric.endsWith("params") || metric === "macs") {
    return Math.round(value).toLocaleString("en-US");
  }
  if (metric.startsWith("speedup")) return value.toFixed(2) + "x";
  if (metric.endsWith("_ms")) return value.toFixed(3);
  if (metric.endsWith("_s")) return value.toFixed(1);
  return Number.isInteger(value) ? String(value) : value.toPrecision(4);
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function sweepUrl(name) { return "/sweeps/" + encodeURIComponent(name); }
function trialUrl(name, number) { return `${sweepUrl(name)}/trials/${number}`; }
function apiUrl(name) { return "/api/sweeps/" + encodeURIComponent(name); }

function every(ms, work) {
  // Polls one at a time (a slow store never piles requests up), paused in hidden tabs.
  const tick = async () => {
    if (!document.hidden) {
      try { await work(); } catch (error) { showError(error); }
    }
    setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

function ready() { document.body.dataset.ready = "1"; }

function bestText(best) {
  return Object.entries(best || {}).map(([k, v]) => `${k} ${fmt(k, v)}`).join(", ") || "-";
}

const PLOT_CONFIG = { displaylogo: false, responsive: true };
// plotly.js is deferred after this script: the page's requests go out while it is evaluated
// (about a second on a small machine), and each chart waits for it here.
const plotlyLoaded = new Promise((resolve) => {
  if (window.Plotly) resolve();
  else document.addEventListener("DOMContentLoaded", resolve, { once: true });
});

async function plot(id, traces, layout) {
  await plotlyLoaded;
  await Plotly.react(id, traces, layout, PLOT_CONFIG);
}

// ---- sweeps ----------------------------------------------------------------------------------

async function sweepsPage() {
  const render = async () => {
    const data = await api("/api/sweeps");
    $("store").textContent = data.store;
    const body = $("sweeps").tBodies[0];
    body.replaceChildren();
    for (const s of data.sweeps) {
      const row = body.insertRow();
      row.dataset.name = s.name;
      cell(row, link(sweepUrl(s.name), s.name));
      cell(row, s.status, "status-" + s.status);
      cell(row, s.kind === "scan" ? `${s.task} (scan)` : s.task || "-");
      cell(row, `${s.done} / ${s.budget}`);
      cell(row, String(s.running));
      cell(row, String(s.failed));
      cell(row, String(s.pruned));
      cell(row, s.trials_per_minute === null ? "-" : s.trials_per_minute.toFixed(1));
      cell(row, s.pending ? "…" : String(s.front));
      cell(row, s.pending ? "…" : bestText(s.best));
      cell(row, clock(s.elapsed_s));
      cell(row, clock(s.remaining_s));
    }
    $("empty").hidden = data.sweeps.length > 0;
    showError(null);
    if (!data.sweeps.some((s) => s.pending)) ready(); // fronts still computing show "…"
  };
  await render();
  every(POLL_MS, render);
}

// ---- one sweep -------------------------------------------------------------------------------

function sweepState(name) {
  const params = new URLSearchParams(location.search);
  return {
    name,
    where: params.get("where") || "",
    offset: 0,
    version: null,
    info: null,
  };
}

function pointText(p, x, y) {
  const m = p.metrics;
  return [`trial ${p.number} (${p.order}, ${p.granularity})`,
    `${x} ${fmt(x, p.x)}, ${y} ${fmt(y, p.y)}`,
    `accuracy ${fmt("accuracy", m.accuracy)}, drop ${fmt("accuracy_drop", m.accuracy_drop)}`,
    `latency ${fmt("latency_ms", m.latency_ms)} ms, sparsity ${fmt("sparsity", m.sparsity)}`,
    `${p.recipe.pruned_layers}/${p.recipe.layers} layers pruned, mean amount ` +
      `${p.recipe.mean_amount.toFixed(3)}, max ${p.recipe.max_amount.toFixed(3)}`,
    `methods: ${p.recipe.methods.join(", ") || "none"}`].join("<br>");
}

async function drawFront(state) {
  const x = $("x").value, y = $("y").value, colour = $("color").value;
  const data = await api(apiUrl(state.name) + "/front", { x, y, where: state.where });
  const traces = [{
    type: "scatter", mode: "markers", name: "all COMPLETE trials",
    x: data.cloud.x, y: data.cloud.y, customdata: data.cloud.number,
    marker: { color: "rgba(120,130,150,0.25)", size: 5 },
    hovertemplate: "trial %{customdata}<extra></extra>",
  }];
  const sorted = [...data.points].sort((a, b) => a.x - b.x);
  traces.push({
    type: "scatter", mode: "lines", name: "front", x: sorted.map((p) => p.x),
    y: sorted.map((p) => p.y), line: { shape: "hv", color: "#888", width: 1 },
    hoverinfo: "skip", showlegend: false,
  });
  const groups = new Map();
  for (const p of data.points) {
    const key = p[colour];
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(p);
  }
  for (const [key, points] of groups) {
    traces.push({
      type: "scatter", mode: "markers", name: key, x: points.map((p) => p.x),
      y: points.map((p) => p.y), customdata: points.map((p) => p.number),
      text: points.map((p) => pointText(p, x, y)), hovertemplate: "%{text}<extra></extra>",
      marker: { size: 10, line: { width: 1, color: "#fff" } },
    });
  }
  const shown = data.cloud.x.length < data.cloud_of ? ` (${data.cloud.x.length} shown)` : "";
  $("front-note").textContent = data.pending ? "computing the front…"
    : `${data.points.length} trials on the front of ${data.cloud_of} COMPLETE${shown}; ` +
      "click a point to open its trial";
  const layout = {
    margin: { l: 60, r: 10, t: 10, b: 45 }, uirevision: `${x}|${y}|${state.where}`,
    xaxis: { title: { text: `${x} (${data.directions[x]})` } },
    yaxis: { title: { text: `${y} (${data.directions[y]})` } },
    legend: { orientation: "h", y: -0.2 }, hovermode: "closest",
  };
  await plot("front", traces, layout);
  return { version: data.version, pending: data.pending };
}

async function drawHypervolume(state) {
  const data = await api(apiUrl(state.name) + "/hypervolume");
  $("hypervolume-note").textContent = data.pending ? "computing the curve…" : data.note ||
    `normalized, objectives ${Object.entries(data.objectives).map(([k, d]) => `${k}:${d}`)
      .join(", ")}; feasible COMPLETE trials up to each trial number`;
  await plot("hypervolume", [{
    type: "scatter", mode: "lines", x: data.numbers, y: data.hypervolume, line: { shape: "hv" },
    hovertemplate: "up to trial %{x}: %{y:.4f}<extra></extra>",
  }], {
    margin: { l: 60, r: 10, t: 10, b: 45 }, uirevision: "hv",
    xaxis: { title: { text: "trial number" } }, yaxis: { title: { text: "hypervolume" } },
  });
  return data.pending;
}


async function drawHeatmap(state) {
  const data = await api(apiUrl(state.name) + "/layers");
  const mode = $("heat-value").value;
  const labels = data.trials.map((n) => `#${n}`);
  const name = (coded, i, j) => {
    const code = coded.cells[i][j];
    return code === null ? "-" : coded.names[code];
  };
  const text = data.layers.map((layer, i) => data.trials.map((n, j) =>
    `${layer}<br>trial ${n}<br>amount ${data.amount[i][j] ?? "-"}<br>` +
    `${name(data.method, i, j)}, ${name(data.granularity, i, j)}`));
  let trace;
  if (mode === "amount") {
    trace = { z: data.amount, zmin: 0, zmax: 1, colorscale: "Viridis",
      colorbar: { title: { text: "amount" } } };
  } else {
    const { names, cells } = data[mode];
    const top = Math.max(names.length - 1, 1);
    trace = { z: cells, zmin: 0, zmax: top, colorscale: "Portland",
      colorbar: { tickvals: names.map((_, i) => i), ticktext: names } };
  }
  Object.assign(trace, { type: "heatmap", x: labels, y: data.layers, text,
    hovertemplate: "%{text}<extra></extra>", customdata: data.layers.map(() => data.trials) });
  const first = data.first_objective ? `, best ${data.first_objective} first` : "";
  $("heatmap-note").textContent = data.pending ? "computing…" : data.trials.length
    ? `${data.layers.length} layers x ${data.trials.length} front trials` +
      `${data.trials.length < data.front_size ? ` (of ${data.front_size})` : ""}${first}; ` +
      "click a column to open its trial"
    : "no front yet";
  const height = Math.min(2400, Math.max(320, 14 * data.layers.length + 120));
  $("heatmap").style.height = `${height}px`;
  await plot("heatmap", [trace], {
    margin: { l: 160, r: 10, t: 10, b: 60 }, uirevision: mode,
    xaxis: { type: "category", title: { text: "front trial" } },
    yaxis: { autorange: "reversed", automargin: true },
  });
  return data.pending;
}

async function drawSensitivity(state) {
  const data = await api(apiUrl(state.name) + "/sensitivity");
  if (!data.scan) {
    $("sensitivity-note").textContent =
      "no sensitivity scan stored for this sweep: `sweep sensitivity CONFIG` runs one";
    $("sensitivity").hidden = true;
    return false;
  }
  $("sensitivity").hidden = false;
  $("sensitivity-note").textContent = data.pending ? `reading scan ${data.scan}…`
    : `scan ${data.scan}: accuracy lost to pruning each layer alone (points, vs the ` +
      "unpruned int8 model)";
  const traces = data.curves.map((c) => ({
    type: "scatter", mode: "lines+markers", name: `${c.layer} (${c.granularity})`,
    x: c.amounts, y: c.drops.map((d) => (d === null ? null : 100 * d)),
  }));
  await plot("sensitivity", traces, {
    margin: { l: 60, r: 10, t: 10, b: 45 }, uirevision: "scan",
    showlegend: traces.length <= 20,
    xaxis: { title: { text: "amount" } }, yaxis: { title: { text: "accuracy drop (points)" } },
  });
  return data.pending;
}

async function drawTrials(state) {
  const data = await api(apiUrl(state.name) + "/trials", {
    where: state.where, state: $("state").value, offset: state.offset, limit: PAGE_SIZE,
  });
  const head = $("trials").tHead;
  if (!head.rows.length) {
    const row = head.insertRow();
    for (const name of data.columns) {
      const th = document.createElement("th");
      th.textContent = name;
      row.appendChild(th);
    }
  }
  const body = $("trials").tBodies[0];
  body.replaceChildren();
  for (const t of data.rows) {
    const row = body.insertRow();
    row.dataset.number = t.number;
    for (const name of data.columns) {
      const value = name === "number" ? link(trialUrl(state.name, t.number), t.number)
        : fmt(name, t[name]);
      cell(row, value);
    }
  }
  $("trials-count").textContent = `(${data.total})`;
  const last = Math.min(data.offset + data.rows.length, data.total);
  $("page-note").textContent = data.total
    ? `${data.offset + 1}-${last} of ${data.total}, newest first` : "none";
  $("newer").disabled = data.offset === 0;
  $("older").disabled = last >= data.total;
}

function fillSelect(select, options, chosen) {
  select.replaceChildren(...options.map((name) => new Option(name, name, false, name === chosen)));
}

async function recommend(state, event) {
  event.preventDefault();
  const form = new FormData($("recommend-form"));
  const out = $("recommendation");
  out.replaceChildren();
  try {
    const data = await api(apiUrl(state.name) + "/recommend", Object.fromEntries(form));
    const p = document.createElement("p");
    if (data.trial) {
      const t = data.trial;
      p.append("recommended: ", link(trialUrl(state.name, t.number), `trial ${t.number}`));
      p.lastChild.id = "recommended-trial";
      p.append(`: accuracy ${fmt("accuracy", t.accuracy)} (drop ` +
        `${fmt("accuracy_drop", t.accuracy_drop)}), ${fmt("compressed_bytes",
          t.compressed_bytes)} compressed bytes, ${fmt("latency_ms", t.latency_ms)} ms`);
    } else {
      p.id = "no-match";
      p.textContent = data.message;
    }
    const pre = document.createElement("pre");
    pre.textContent = data.command;
    out.append(p, pre);
  } catch (error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = error.message;
    out.append(p);
  }
}

async function sweepPage() {
  const name = decodeURIComponent(location.pathname.slice("/sweeps/".length));
  const state = sweepState(name);
  document.title = `${name} - sweep`;
  $("title").textContent = name;
  $("where").value = state.where;
  const info = await api(apiUrl(name));
  state.info = info;
  $("store").textContent = info.store;
  const size = info.size_metric;
  const [xDefault, yDefault] = info.default_axes;
  fillSelect($("x"), info.metrics, xDefault);
  fillSelect($("y"), info.metrics, yDefault);
  fillSelect($("minimize"), info.metrics, size);
  $("size-metric").textContent = size;

  const summary = (s) => {
    $("summary").textContent = `${s.status} · ${s.done}/${s.budget} done · ${s.running} ` +
      `running · ${s.failed} failed · ${s.pruned} pruned · front ${s.pending ? "…" : s.front} · ` +
      `${s.trials_per_minute ?? "-"} trials/min · elapsed ${clock(s.elapsed_s)} · ETA ` +
      `${clock(s.remaining_s)} · best ${s.pending ? "…" : bestText(s.best)} · ` +
      `${info.layers} layers, ` +
      `sampler ${info.sampler || "-"}`;
  };
  // The charts may answer from the sweep's previous version while the new one is computed
  // (a sweep of many trials): the page redraws until what it drew is the current version.
  // A view computed for the first time answers "pending" and is asked again at the next poll;
  // the page is ready once nothing it shows is pending.
  const charts = async () => {
    const [front, ...others] = await Promise.all([drawFront(state), drawHypervolume(state),
      drawHeatmap(state), drawTrials(state)]);
    state.version = front.version;
    state.pending = front.pending || others.some((pending) => pending === true);
  };
  const scan = async () => { state.scanPending = await drawSensitivity(state); };
  const readyIfDone = () => { if (!state.pending && !state.scanPending) ready(); };

  summary(info);
  await Promise.all([charts(), scan()]);
  readyIfDone();

  const redraw = (work) => async () => {
    try { await work(); showError(null); } catch (error) { showError(error); }
  };
  // A front asked for the first time may be pending: the poll draws it once computed.
  const front = async () => { if ((await drawFront(state)).pending) state.pending = true; };
  for (const id of ["x", "y", "color"]) $(id).addEventListener("change", redraw(front));
  $("heat-value").addEventListener("change", redraw(() => drawHeatmap(state)));
  $("state").addEventListener("change", redraw(() => { state.offset = 0; return drawTrials(state); }));
  $("newer").addEventListener("click", redraw(() => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE); return drawTrials(state);
  }));
  $("older").addEventListener("click", redraw(() => {
    state.offset += PAGE_SIZE; return drawTrials(state);
  }));
  $("filter").addEventListener("submit", (event) => {
    event.preventDefault();
    state.where = $("where").value.trim();
    state.offset = 0;
    const url = new URL(location.href);
    if (state.where) url.searchParams.set("where", state.where); else url.searchParams.delete("where");
    history.replaceState(null, "", url);
    redraw(() => Promise.all([front(), drawTrials(state)]))();
  });
  $("recommend-form").addEventListener("submit", (event) => recommend(state, event));
  const open = (event) => {
    const point = event.points && event.points[0];
    if (!point) return;
    const number = point.customdata; // a front point's trial, or a heatmap column's
    if (number !== undefined && number !== null) location.href = trialUrl(name, number);
  };
  $("front").on("plotly_click", open);
  $("heatmap").on("plotly_click", open);

  every(POLL_MS, async () => {
    const now = await api(apiUrl(name));
    summary(now);
    if (now.version !== state.version || state.pending) await charts();
    if (state.scanPending) await scan();
    readyIfDone();
    showError(null);
  });
}

// ---- one trial -------------------------------------------------------------------------------

async function trialPage() {
  const match = location.pathname.match(/^\/sweeps\/(.+)\/trials\/(\d+)$/);
  const name = decodeURIComponent(match[1]), number = Number(match[2]);
  document.title = `${name} trial ${number} - sweep`;
  $("sweep-link").href = sweepUrl(name);
  $("sweep-link").textContent = name;
  const t = await api(`${apiUrl(name)}/trials/${number}`);
  $("title").textContent = `${name}: trial ${number}`;
  $("summary").textContent = `${t.state} · ${t.order} · ${t.granularity}` +
    (t.error ? ` · error: ${t.error}` : "");
  const metrics = $("metrics").tBodies[0];
  for (const m of t.metrics) {
    const row = metrics.insertRow();
    row.dataset.metric = m.metric;
    cell(row, m.metric);
    cell(row, fmt(m.metric, m.value));
    cell(row, m.fp32 === null ? "" : fmt(m.metric, m.fp32));
    cell(row, m.ratio === null || m.ratio === undefined ? "" : m.ratio.toFixed(3) + "x");
  }
  const info = $("info").tBodies[0];
  for (const key of ["measured_on", "latency_node", "worker", "attempt", "started_at",
    "finished_at", "queued_s", "run_s", "duration_s"]) {
    const row = info.insertRow();
    row.dataset.field = key;
    cell(row, key);
    cell(row, fmt(key, t[key]));
  }
  // Phase timings as bars in a table: no chart library on this page, so it shows at once.
  const phases = Object.entries(t.timings || {}).filter(([, v]) => typeof v === "number");
  const longest = Math.max(...phases.map(([, v]) => v), 1e-9);
  const timings = $("timings").tBodies[0];
  for (const [phase, seconds] of phases) {
    const row = timings.insertRow();
    row.dataset.phase = phase;
    cell(row, phase);
    cell(row, `${seconds.toFixed(2)} s`);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * seconds) / longest}%`;
    cell(row, bar, "bar-cell");
  }
  const download = $("download");
  if (t.state === "COMPLETE") {
    download.href = `${apiUrl(name)}/trials/${number}/recipe.json`;
    download.setAttribute("download", t.recipe_file);
  } else {
    download.removeAttribute("href");
    download.textContent = `no recipe to download: the trial is ${t.state}`;
  }
  $("apply-command").textContent = t.apply_command;
  $("recommend-command").textContent = t.recommend_command;
  const layers = $("layers").tBodies[0];
  for (const l of t.layers) {
    const row = layers.insertRow();
    cell(row, l.layer);
    cell(row, l.amount === null || l.amount === undefined ? "-" : l.amount.toFixed(3));
    cell(row, l.method || "-");
    cell(row, l.granularity || "-");
  }
  ready();
}

// ---- start -----------------------------------------------------------------------------------

const PAGES = { sweeps: sweepsPage, sweep: sweepPage, trial: trialPage };

// A deferred script runs once the document is parsed: the page starts now, not after plotly.
PAGES[document.body.dataset.page]().catch((error) => { showError(error); ready(); });
