// hpcinsight unit view: every GPU one square on a canvas, fed by the service's Server-Sent Events.
// No library: the live grid is drawn into one ImageData (only the squares whose look changed are
// rewritten, then the dirty rectangle is put back); the job panel draws SVG and canvas by hand.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const qs = new URLSearchParams(location.search);
  const RENDER = qs.get("render") !== "0"; // ?render=0: parse the feed, draw nothing (the benchmark's baseline)
  const METRIC_RANGE = { util: [0, 100, "%"], power: [0, 700, " W"], mem: [0, 100, "%"], temp: [20, 95, " °C"], p95: [0, 100, "%"] };
  const LUT_SIZE = 64;
  const BG = rgba(16, 20, 24), NOJOB = rgba(16, 20, 24), MISSING = rgba(70, 76, 84), ANOMALY = rgba(255, 30, 60), WHITE = rgba(255, 255, 255);
  const JOB_COLOURS = [[235, 235, 235], [110, 130, 150], [150, 110, 210], [70, 150, 200], [190, 190, 120], [120, 120, 230],
    [90, 100, 110], [170, 200, 230], [130, 90, 150], [60, 120, 140]].map(([r, g, b]) => rgba(r, g, b));

  // what the tests and the benchmark read
  const stats = (window.__hpci = { updates: 0, rafFrames: 0, updateMs: [], layouts: 0, squares: 0, highlighted: [], lastFrameT: 0,
    // where a GPU's square is, and the job a click on it opens now (null: none in the current frame)
    cellOf: (uuid) => {
      const i = layout ? layout.byUuid.get(uuid) : undefined;
      if (i === undefined) return null;
      const j = frame && frame.n === layout.gpus.length && frame.job[i] >= 0 ? frame.jobs[frame.job[i]][0] : null;
      return { x: layout.x[i], y: layout.y[i], size: layout.pitch, job: j };
    } });

  let token = sessionStorage.getItem("hpcinsight-token") || "";
  if (location.hash.startsWith("#token=")) { // a fragment never reaches the server or its logs
    token = decodeURIComponent(location.hash.slice(7));
    sessionStorage.setItem("hpcinsight-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const filters = { team: qs.get("team") || "", user: qs.get("user") || "", job: qs.get("job") || "", model: qs.get("model") || "", kind: qs.get("kind") || "" };
  let view = qs.get("view") === "user" ? "user" : "operator";
  let metric = METRIC_RANGE[qs.get("metric")] ? qs.get("metric") : "util";

  function rgba(r, g, b) { return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; }
  // a perceptual-ish ramp of our own: dark blue, teal, green, yellow
  const STOPS = [[30, 35, 90], [30, 110, 160], [40, 170, 120], [150, 210, 60], [250, 230, 40]];
  const LUT = Array.from({ length: LUT_SIZE }, (_, k) => {
    const t = (k / (LUT_SIZE - 1)) * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
    const c = STOPS[i].map((v, j) => Math.round(v + (STOPS[i + 1][j] - v) * f));
    return rgba(c[0], c[1], c[2]);
  });
  const cssOf = (c) => `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`;
  function jobColour(name) { let h = 0; for (let k = 0; k < name.length; k++) h = (h * 31 + name.charCodeAt(k)) | 0; return JOB_COLOURS[Math.abs(h) % JOB_COLOURS.length]; }

  // ---------------------------------------------------------------- API and the feed
  function authHeaders() { return token ? { Authorization: "Bearer " + token } : {}; }
  function needToken(message) { $("token-box").hidden = false; $("token-error").textContent = message || ""; setStatus("token needed"); }
  async function api(path) {
    const r = await fetch(path, { headers: authHeaders() });
    if (r.status === 401) { needToken(token ? "that token was refused" : ""); throw new Error("unauthorised"); }
    if (!r.ok) { let d = r.statusText; try { d = (await r.json()).detail; } catch (e) { /* not JSON */ } throw new Error(`${r.status}: ${d}`); }
    return r.json();
  }
  function setStatus(text) { $("status").textContent = text; }

  let abort = null, retry = null;
  async function connect() {
    if (abort) abort.abort();
    clearTimeout(retry);
    const controller = (abort = new AbortController());
    const q = new URLSearchParams({ view });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (view === "user" && !filters.user) { setStatus("choose your user for the user view"); return; }
    try {
      // fetch, not EventSource: the token travels in a header, never in a URL
      const r = await fetch("/api/stream?" + q, { headers: authHeaders(), signal: controller.signal });
      if (r.status === 401) { needToken(token ? "that token was refused" : ""); return; }
      if (!r.ok) { setStatus(`stream refused: ${r.status} ${(await r.json()).detail}`); return; }
      $("token-box").hidden = true;
      setStatus("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let k;
        while ((k = buf.indexOf("\n\n")) >= 0) { onEvent(buf.slice(0, k)); buf = buf.slice(k + 2); }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (controller === abort) { setStatus("reconnecting…"); retry = setTimeout(connect, 2000); }
  }
  function onEvent(block) {
    let ev = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) ev = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    if (ev === "layout") onLayout(JSON.parse(data));
    else if (ev === "frame") onFrame(data);
  }

  // ---------------------------------------------------------------- layout
  let layout = null, img = null, buf32 = null, prevKey = null, frame = null;
  const canvas = $("grid"), ctx = canvas.getContext("2d", { alpha: false });

  function onLayout(msg) {
    const gpus = msg.gpus, n = gpus.length;
    stats.layouts++;
    const width = Math.max(320, $("grid-wrap").clientWidth - 20);
    const avail = Math.max(200, window.innerHeight - canvas.getBoundingClientRect().top - 40);
    let plan = null;
    for (const pitch of [18, 14, 12, 10, 8, 7, 6, 5, 4]) { plan = place(gpus, pitch, width); if (plan.height <= avail) break; }
    layout = plan;
    layout.gpus = gpus;
    layout.byUuid = new Map(gpus.map((g, i) => [g[2], i]));
    canvas.width = width; canvas.height = plan.height;
    img = ctx.createImageData(width, plan.height);
    buf32 = new Uint32Array(img.data.buffer);
    buf32.fill(BG);
    prevKey = new Float64Array(n).fill(-1);
    for (const el of document.querySelectorAll(".group-label")) el.remove();
    for (const g of plan.labels) {
      const el = document.createElement("div");
      el.className = "group-label"; el.textContent = g.text;
      el.style.cssText = `position:absolute;left:${10 + g.x}px;top:${4 + g.y}px;font-size:11px;color:#9fb0c0;pointer-events:none`;
      $("grid-wrap").appendChild(el);
    }
    ctx.putImageData(img, 0, 0);
    stats.squares = n;
    const models = [...new Set(gpus.map((g) => g[5]).filter(Boolean))].sort();
    fillSelect($("f-model"), models, filters.model);
    if (frame) draw(frame);
  }

  // groups by zone/pool, then nodes as blocks of up to 8 squares a row, flowing left to right
  function place(gpus, pitch, width) {
    const n = gpus.length, x = new Int32Array(n), y = new Int32Array(n), labels = [];
    const nodeGap = Math.max(3, pitch >> 1), rowGap = Math.max(3, pitch >> 1), labelH = 15;
    let cx = 0, cy = 0, rowH = 0, group = null;
    for (let i = 0; i < n;) {
      const g = gpus[i], key = `${g[3] || "-"} / ${g[4] || "-"}`;
      let j = i; while (j < n && gpus[j][0] === g[0]) j++; // this node's GPUs
      if (key !== group) {
        if (group !== null) { cy += rowH + rowGap; }
        labels.push({ text: `zone ${g[3] || "?"} · pool ${g[4] || "?"}`, x: 0, y: cy });
        cy += labelH; cx = 0; rowH = 0; group = key;
      }
      const count = j - i, cols = Math.min(8, count), rows = Math.ceil(count / 8);
      const bw = cols * pitch, bh = rows * pitch;
      if (cx > 0 && cx + bw > width) { cx = 0; cy += rowH + rowGap; rowH = 0; }
      for (let k = 0; k < count; k++) { x[i + k] = cx + (k % 8) * pitch; y[i + k] = cy + Math.floor(k / 8) * pitch; }
      cx += bw + nodeGap; rowH = Math.max(rowH, bh);
      i = j;
    }
    const height = cy + rowH + 2;
    const hit = new Int32Array(width * height).fill(-1);
    for (let i = 0; i < n; i++) for (let dy = 0; dy < pitch - 1; dy++) hit.fill(i, (y[i] + dy) * width + x[i], (y[i] + dy) * width + x[i] + pitch - 1);
    return { x, y, pitch, width, height, labels, hit };
  }

  // ---------------------------------------------------------------- frames
  function onFrame(text) {
    const t0 = performance.now();
    performance.mark("update-start");
    frame = JSON.parse(text);
    if (layout && frame.n === layout.gpus.length) draw(frame);
    performance.mark("update-end");
    performance.measure("update", "update-start", "update-end");
    const ms = performance.now() - t0;
    stats.updates++; stats.lastFrameT = frame.t;
    stats.updateMs.push(ms); if (stats.updateMs.length > 600) stats.updateMs.shift();
    if (stats.updates % 3 === 1) refreshFilters(frame);
  }

  function draw(f) {
    const values = f[metric], [lo, hi] = METRIC_RANGE[metric], span = hi - lo, n = f.n;
    const jobCol = f.job, jobs = f.jobs, anom = f.anom;
    const jobColours = jobs.map((j) => jobColour(j[0]));
    const highlighted = [];
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    const { x, y, pitch, width } = layout;
    const ring = Math.max(1, Math.floor(pitch / 6)), size = pitch - 1;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      const c = v < 0 ? -1 : Math.max(0, Math.min(LUT_SIZE - 1, Math.round(((v - lo) / span) * (LUT_SIZE - 1))));
      const a = anom[i] !== 0;
      if (a) highlighted.push(layout.gpus[i][2]);
      const key = (c + 1) * 65536 + (jobCol[i] + 1) * 2 + (a ? 1 : 0);
      if (key === prevKey[i] || !RENDER) continue;
      prevKey[i] = key;
      // outline: the job's colour (a dark gap where none); an open anomaly fills the square red
      // around a small core, so outliers jump out at any zoom
      const outer = a ? ANOMALY : jobCol[i] >= 0 ? jobColours[jobCol[i]] : NOJOB;
      const core = a ? (size >= 5 ? WHITE : ANOMALY) : c < 0 ? MISSING : LUT[c];
      const inset = a ? Math.max(1, Math.floor(size / 3)) : ring;
      const px = x[i], py = y[i];
      for (let dy = 0; dy < size; dy++) {
        const row = (py + dy) * width + px;
        if (dy < inset || dy >= size - inset) { buf32.fill(outer, row, row + size); continue; }
        buf32.fill(outer, row, row + inset);
        buf32.fill(core, row + inset, row + size - inset);
        buf32.fill(outer, row + size - inset, row + size);
      }
      if (px < x0) x0 = px; if (py < y0) y0 = py; if (px + pitch > x1) x1 = px + pitch; if (py + pitch > y1) y1 = py + pitch;
    }
    stats.highlighted = highlighted;
    if (x1 >= 0) ctx.putImageData(img, 0, 0, x0, y0, x1 - x0, y1 - y0); // only the rectangle that changed
  }

  function redrawAll() { if (prevKey) prevKey.fill(-1); if (frame && layout) draw(frame); drawLegend(); }

  function fillSelect(sel, values, current) {
    const have = [...sel.options].slice(1).map((o) => o.value).join("\n");
    const want = [...new Set(current ? [...values, current] : values)].sort();
    if (have === want.join("\n")) return;
    sel.length = 1;
    for (const v of want) sel.add(new Option(v, v));
    sel.value = current;
  }
  function refreshFilters(f) {
    fillSelect($("f-job"), f.jobs.map((j) => j[0]), filters.job);
    fillSelect($("f-user"), f.jobs.map((j) => j[1]).filter(Boolean), filters.user);
    fillSelect($("f-team"), f.jobs.map((j) => j[2]).filter(Boolean), filters.team);
    fillSelect($("f-kind"), f.kinds, filters.kind);
  }

  function drawLegend() {
    const [lo, hi, unit] = METRIC_RANGE[metric];
    const legend = $("legend");
    legend.textContent = "";
    const c = document.createElement("canvas"); c.width = 160; c.height = 10;
    const g = c.getContext("2d");
    for (let k = 0; k < 160; k++) { g.fillStyle = cssOf(LUT[Math.floor((k / 160) * LUT_SIZE)]); g.fillRect(k, 0, 1, 10); }
    legend.append(`${lo}${unit}`, c, `${hi}${unit}`);
    const a = document.createElement("span"); a.innerHTML = ` &nbsp;<b style="color:${cssOf(ANOMALY)}">■</b> open anomaly &nbsp; outline: the job holding the GPU`;
    legend.append(a);
  }

  // ---------------------------------------------------------------- hover and click
  function gpuAt(ev) {
    if (!layout) return -1;
    const r = canvas.getBoundingClientRect(), px = Math.floor(ev.clientX - r.left), py = Math.floor(ev.clientY - r.top);
    if (px < 0 || py < 0 || px >= layout.width || py >= layout.height) return -1;
    return layout.hit[py * layout.width + px];
  }
  canvas.addEventListener("mousemove", (ev) => {
    const i = gpuAt(ev), tip = $("tip");
    if (i < 0 || !frame) { tip.hidden = true; return; }
    const g = layout.gpus[i], j = frame.job[i] >= 0 ? frame.jobs[frame.job[i]] : null;
    const kinds = frame.kinds.filter((_, b) => frame.anom[i] & (1 << b));
    const val = (m, u) => (frame[m] && frame[m][i] >= 0 ? frame[m][i] + u : "–");
    tip.textContent = `GPU ${g[1]} on ${g[0]}  (${g[5] || "model ?"})\n${g[2]}\nzone ${g[3] || "?"} · pool ${g[4] || "?"}\n` +
      `job ${j ? j[0] : "–"}  user ${j && j[1] ? j[1] : "–"}  team ${j && j[2] ? j[2] : "–"}\n` +
      `util ${val("util", " %")}  power ${val("power", " W")}  mem ${val("mem", " %")}  temp ${val("temp", " °C")}  p95 ${val("p95", " %")}` +
      (kinds.length ? `\nOPEN ANOMALY: ${kinds.join(", ")}` : "");
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 420) + "px"; tip.style.top = ev.clientY + 14 + "px";
  });
  canvas.addEventListener("mouseleave", () => ($("tip").hidden = true));
  canvas.addEventListener("click", (ev) => {
    const i = gpuAt(ev);
    if (i >= 0 && frame && frame.job[i] >= 0) openJob(frame.jobs[frame.job[i]][0]);
  });

  // ---------------------------------------------------------------- job drill-down
  const SVG = "http://www.w3.org/2000/svg";
  function el(parent, name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e); return e;
  }
  function li(list, text, cls) { const e = document.createElement("li"); e.textContent = text; if (cls) e.className = cls; list.appendChild(e); return e; }
  const ms = (v) => (typeof v === "number" ? v : Date.parse(v.endsWith("Z") || v.includes("+") ? v : v + "Z"));

  async function openJob(job) {
    const panel = $("job-panel");
    panel.hidden = false;
    $("job-title").textContent = "job " + job;
    $("job-meta").textContent = "loading…";
    for (const id of ["job-quant", "job-ranks", "job-anoms"]) $(id).textContent = "";
    for (const id of ["job-anom-list", "job-findings"]) $(id).textContent = "";
    $("job-heat").getContext("2d").clearRect(0, 0, 340, 120);
    let d;
    try { d = await api("/api/jobs/" + encodeURIComponent(job)); } catch (e) { $("job-meta").textContent = String(e.message || e); return; }
    const store = d.store || {}, summary = store.summary || {};
    const user = summary.user || (d.gpus.find((g) => g.user) || {}).user, team = summary.team || (d.gpus.find((g) => g.team) || {}).team;
    $("job-meta").textContent = `user ${user || "?"} · team ${team || "?"} · ${d.gpus.length || summary.gpus || 0} GPUs` +
      (summary.state ? ` · ${summary.state}` : "") + (d.store_error ? ` · history: ${d.store_error}` : "");
    const live = d.quantiles.find((q) => q.metric === "gpu_util" && q.window === "since_start");
    quantBar(live ? live.p25 : summary.util_p25, live ? live.p50 : summary.util_p50, live ? live.p95 : summary.util_p95, d.threshold_pct);
    heatStrip(store.heat_strip || []);
    rankLines(store.ranks || []);
    anomalies(d.open_anomalies, store.timeline || []);
    const findings = $("job-findings");
    if (store.findings && store.findings.length) {
      for (const f of store.findings) {
        const item = li(findings, `${f.what}`, "sev-" + f.severity);
        const sub = document.createElement("div"); sub.style.color = "#9fb0c0";
        sub.textContent = `${f.evidence.join("; ")} → ${f.next_step}`; item.appendChild(sub);
      }
    } else li(findings, store.diagnose_error || (d.store_error ? "diagnose needs the store" : "no findings"));
  }

  function quantBar(p25, p50, p95, threshold) {
    const s = $("job-quant"), X = (v) => 10 + (v / 100) * 320;
    el(s, "rect", { x: 10, y: 20, width: 320, height: 18, fill: "#1f2830" });
    if (p25 != null && p95 != null) {
      el(s, "rect", { x: X(p25), y: 20, width: Math.max(1, X(p95) - X(p25)), height: 18, fill: "#2e8fbf" });
      if (p50 != null) el(s, "line", { x1: X(p50), x2: X(p50), y1: 18, y2: 40, stroke: "#fff" });
      el(s, "text", { x: X(p25), y: 52, "text-anchor": "middle" }, `p25 ${p25.toFixed(0)}`);
      el(s, "text", { x: X(p95), y: 62, "text-anchor": "middle" }, `p95 ${p95.toFixed(0)}`);
    } else el(s, "text", { x: 14, y: 33 }, "no since-start quantiles yet");
    if (threshold != null) {
      el(s, "line", { x1: X(threshold), x2: X(threshold), y1: 12, y2: 44, stroke: "#ff4d4d", "stroke-dasharray": "3 2" });
      el(s, "text", { x: X(threshold) + 3, y: 12 }, `threshold ${threshold}%`);
    }
  }

  function heatStrip(rows) {
    const c = $("job-heat"), g = c.getContext("2d");
    if (!rows.length) { g.fillStyle = "#9fb0c0"; g.fillText("no stored samples yet", 10, 20); return; }
    const gpus = [...new Set(rows.map((r) => `${r.node}/${r.gpu}`))].sort();
    const buckets = [...new Set(rows.map((r) => ms(r.bucket)))].sort((a, b) => a - b);
    const gi = new Map(gpus.map((k, i) => [k, i])), bi = new Map(buckets.map((k, i) => [k, i]));
    c.height = Math.min(240, Math.max(40, gpus.length * 6));
    const w = 340 / buckets.length, h = c.height / gpus.length;
    for (const r of rows) {
      const v = Math.max(0, Math.min(100, r.util));
      g.fillStyle = cssOf(LUT[Math.round((v / 100) * (LUT_SIZE - 1))]);
      g.fillRect(bi.get(ms(r.bucket)) * w, gi.get(`${r.node}/${r.gpu}`) * h, Math.ceil(w), Math.ceil(h));
    }
  }

  function rankLines(rows) {
    const s = $("job-ranks");
    if (!rows.length) { el(s, "text", { x: 10, y: 20 }, "no step metrics for this job"); return; }
    const byRank = new Map();
    for (const r of rows) { if (!byRank.has(r.rank)) byRank.set(r.rank, []); byRank.get(r.rank).push(r); }
    const t = rows.map((r) => ms(r.bucket)), v = rows.map((r) => r.step_s);
    const t0 = Math.min(...t), t1 = Math.max(...t) || t0 + 1, vmax = Math.max(...v) * 1.05 || 1, vmin = Math.min(...v) * 0.95;
    const X = (x) => 30 + ((x - t0) / Math.max(1, t1 - t0)) * 300, Y = (y) => 120 - ((y - vmin) / Math.max(1e-9, vmax - vmin)) * 110;
    el(s, "text", { x: 0, y: 12 }, `${vmax.toFixed(2)} s`); el(s, "text", { x: 0, y: 124 }, `${vmin.toFixed(2)} s`);
    const worst = [...byRank.entries()].map(([rank, rs]) => [rank, Math.max(...rs.map((r) => r.vs_median || 0))]).sort((a, b) => b[1] - a[1]);
    const slow = worst.length && worst[0][1] >= 1.15 ? worst[0][0] : null;
    for (const [rank, rs] of [...byRank.entries()].sort((a, b) => a[0] - b[0])) {
      rs.sort((a, b) => ms(a.bucket) - ms(b.bucket));
      const pts = rs.map((r) => `${X(ms(r.bucket)).toFixed(1)},${Y(r.step_s).toFixed(1)}`).join(" ");
      el(s, "polyline", { points: pts, fill: "none", stroke: rank === slow ? "#ff4d4d" : "#5fb3e6", "stroke-width": rank === slow ? 2 : 1, "data-rank": rank },);
    }
    el(s, "text", { x: 30, y: 138 }, `${byRank.size} ranks` + (slow !== null ? ` · rank ${slow} slowest (×${worst[0][1]})` : ""));
  }

  function anomalies(open, timeline) {
    const s = $("job-anoms"), list = $("job-anom-list");
    const events = timeline.filter((r) => r.source === "anomaly");
    const seen = new Set();
    for (const a of open) { li(list, `OPEN ${a.kind} (${a.severity}) on ${a.subject}: ${a.message}`, "sev-" + a.severity); seen.add(a.kind); }
    for (const r of events) li(list, `${String(r.ts).slice(11, 19)} ${r.event} on ${r.subject}`);
    if (!open.length && !events.length) li(list, "none");
    const times = events.map((r) => ms(r.ts)).concat(open.map((a) => a.started_at));
    if (!times.length) return;
    const t0 = Math.min(...times), t1 = Math.max(Date.now(), ...times);
    const X = (x) => 5 + ((x - t0) / Math.max(1, t1 - t0)) * 330;
    el(s, "line", { x1: 5, x2: 335, y1: 30, y2: 30, stroke: "#46525e" });
    for (const a of open) el(s, "rect", { x: X(a.started_at), y: 22, width: Math.max(2, 335 - X(a.started_at)), height: 16, fill: "#ff2d5566" });
    for (const r of events) el(s, "circle", { cx: X(ms(r.ts)), cy: 30, r: 4, fill: r.event.includes("resolved") ? "#5fd38d" : "#ff2d55" });
    el(s, "text", { x: 5, y: 55 }, new Date(t0).toISOString().slice(11, 19)); el(s, "text", { x: 290, y: 55 }, new Date(t1).toISOString().slice(11, 19));
  }
  $("job-close").onclick = () => ($("job-panel").hidden = true);

  // ---------------------------------------------------------------- operator summary
  async function refreshSummary() {
    if (view !== "operator") { $("summary").textContent = ""; return; }
    try {
      const c = await api("/api/cluster");
      const kpi = (name) => { const k = c.kpis.find((x) => x.kpi === name); return k ? k.value : null; };
      const pct = (v) => (v == null ? "–" : (v * (v <= 1 ? 100 : 1)).toFixed(1) + " %");
      // stranded on partly used nodes, and FGD's expected fragmentation for the recent jobs' shapes
      const strandedText = (f) => {
        const parts = [];
        if (f.stranded_gpus != null) parts.push(f.stranded_gpus.toFixed(0) + (f.free_gpus != null ? " of " + f.free_gpus.toFixed(0) + " free" : ""));
        if (f.fgd_gpus != null) parts.push("FGD " + f.fgd_gpus.toFixed(1) + " GPUs" + (f.fgd_rate != null ? " (" + pct(f.fgd_rate) + ")" : ""));
        return parts.length ? parts.join(" · ") : "–";
      };
      const parts = [["GPUs", c.gpus], ["nodes", c.nodes], ["allocated", pct(c.allocation_rate)], ["mean util", c.mean_util == null ? "–" : c.mean_util + " %"],
        ["jobs", c.jobs], ["open anomalies", c.open_anomalies], ["stranded GPUs (fragmentation)", strandedText(c.fragmentation || {})],
        ["queued jobs", kpi("queued_jobs") == null ? "–" : kpi("queued_jobs")],
        ["queue wait p50", kpi("queue_wait_p50_s") == null ? "–" : kpi("queue_wait_p50_s").toFixed(0) + " s"], ["feed age", c.age_s == null ? "–" : c.age_s < 0 ? "sim clock ahead" : c.age_s + " s"]];
      const box = $("summary"); box.textContent = "";
      for (const [k, v] of parts) { const sp = document.createElement("span"); sp.append(k + " "); const b = document.createElement("b"); b.textContent = v; sp.append(b); box.append(sp); }
    } catch (e) { /* the stream reports the state */ }
  }

  // ---------------------------------------------------------------- controls
  $("view").value = view; $("metric").value = metric;
  $("view").onchange = () => { view = $("view").value; refreshSummary(); connect(); };
  $("metric").onchange = () => { metric = $("metric").value; redrawAll(); };
  for (const sel of document.querySelectorAll("[data-filter]")) {
    if (filters[sel.dataset.filter]) fillSelect(sel, [], filters[sel.dataset.filter]);
    sel.onchange = () => { filters[sel.dataset.filter] = sel.value; connect(); };
  }
  $("token-form").onsubmit = (ev) => { ev.preventDefault(); token = $("token").value.trim(); sessionStorage.setItem("hpcinsight-token", token); refreshSummary(); connect(); };
  const count = () => { stats.rafFrames++; requestAnimationFrame(count); };
  requestAnimationFrame(count);
  drawLegend();
  connect();
  refreshSummary();
  setInterval(refreshSummary, 5000);
  if (qs.get("open")) openJob(qs.get("open"));
})();
