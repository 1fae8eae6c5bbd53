// One run's view (shown under the Jobs page's queue): what a user watches while a training runs
// and looks at after — the loss (raw, smoothed, epoch mean, other runs over it), the learning
// rate of each parameter group, the gradient norm, the sample gallery (with two save points side
// by side), the LoRA files saved so far and the output.
import { el, api, t, pageLink } from "../ui.js";
import { inspectLora } from "./files.js";

// Line colours of the other runs drawn over the loss and of the learning-rate groups.
// The epoch mean has its own (EPOCH_MEAN), never given to another line.
const PALETTE = ["#1e8e3e", "#9334e6", "#d93025", "#12a4af", "#c2185b", "#7cb342", "#5f6368", "#3949ab"];
const EPOCH_MEAN = "#e37400";
const SMOOTHING_KEY = "lorakit-run-smoothing";
// The output keeps its last lines (the whole of it is one click away as output.log).
const LOG_LINES = 5000;

const cssVar = (name, fallback) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

/**
 * The view of one job's run. `show(id)` follows job `id` (its output and metrics as SSE that
 * resume where they left off; its samples and saved files polled); `close()` stops everything;
 * `onStatus()` is called when the job's status changes.
 */
export function runView({ onStatus }) {
  const title = el("h2", { text: t("Run") });
  const loss = lossPanel();
  const lr = seriesPanel({ title: t("Learning rate"), label: t("Learning rate by step"), keys: (k) => k.startsWith("lr/"), name: (k) => k.slice(3), axis: t("learning rate") });
  const norms = seriesPanel({
    title: t("Gradient norm"), label: t("Gradient norm by step"), axis: t("norm"),
    keys: (k) => k === "norm/grad_norm" || k === "norm/avg_key_norm" || k === "max_norm/max_key_norm",
    name: (k) => ({ "norm/grad_norm": t("gradient norm (before clipping)"), "norm/avg_key_norm": t("mean key norm"), "max_norm/max_key_norm": t("max key norm") })[k] ?? k,
    empty: t("This run logs no gradient norm: lorakit train measures it only when max_grad_norm is above 0."),
  });
  // sd-scripts' validation loss (dataset.validation_split): measured every N steps and at epoch ends.
  const validation = seriesPanel({
    title: t("Validation loss"), label: t("Validation loss over the run"), axis: t("loss"),
    keys: (k) => k === "loss/validation/step_average" || k === "loss/validation/epoch_average",
    name: (k) => ({ "loss/validation/step_average": t("every N steps"), "loss/validation/epoch_average": t("at epoch ends") })[k] ?? k,
    empty: t("This run measures no validation loss: set dataset.validation_split to hold images out of training."),
  });
  const gallery = samplesPanel();
  const saved = savedPanel();
  const output = logPanel();
  let metrics = null, jobId = null;
  const stop = () => {
    if (metrics) metrics.close();
    metrics = null;
    output.stop();
  };
  // New samples and saved files appear at save points: look again now and then.
  const timer = setInterval(() => {
    if (!jobId) return;
    gallery.refresh(jobId).catch(() => {});
    saved.refresh(jobId).catch(() => {});
    loss.refreshOverlays().catch(() => {});
  }, 5000);
  // uPlot draws with the colours it was given: the theme picker or the system changing the
  // theme redraws the charts in the new colours.
  const redraw = () => { loss.redraw(); lr.redraw(); norms.redraw(); validation.redraw(); };
  const themeWatch = new MutationObserver(redraw);
  themeWatch.observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
  const scheme = matchMedia("(prefers-color-scheme: dark)");
  scheme.addEventListener("change", redraw);
  // Nothing is shown until a job is chosen.
  const node = el("section", { class: "run", "aria-label": t("Run") },
    title,
    el("div", { class: "run-charts" }, loss.node, lr.node, norms.node, validation.node),
    gallery.node, saved.node, output.node);
  node.hidden = true;
  return {
    node,
    show(id) {
      stop();
      node.hidden = false;
      jobId = id;
      title.textContent = t("Run of job {id}", { id });
      loss.reset(id);
      lr.reset();
      norms.reset();
      validation.reset();
      // The run's log.jsonl rows; EventSource reconnects by itself with Last-Event-ID and the
      // server resumes after the last row it sent.
      metrics = new EventSource(`/api/jobs/${id}/metrics`);
      metrics.onmessage = (e) => {
        const row = JSON.parse(e.data);
        loss.add(row);
        lr.add(row);
        norms.add(row);
        validation.add(row);
      };
      metrics.addEventListener("end", () => metrics?.close());
      gallery.refresh(id).catch(() => {});
      saved.refresh(id).catch(() => {});
      output.show(id, onStatus);
    },
    close() {
      stop();
      jobId = null;
      clearInterval(timer);
      themeWatch.disconnect();
      scheme.removeEventListener("change", redraw);
      loss.destroy();
      lr.destroy();
      norms.destroy();
      validation.destroy();
    },
  };
}

// A uPlot line chart that fills its container's width (and follows it: phone rotation, a
// narrower window) and takes its axis colours from the page's theme.
function lineChart(container, axisLabel) {
  let plot = null, shape = "", lastSeries = [], lastData = null;
  const size = () => {
    const width = Math.max(200, Math.floor(container.clientWidth || 600));
    return { width, height: width < 520 ? 190 : 240 };
  };
  const fmt = (v) => v == null ? "" : v === 0 ? "0" : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
  const axis = (label, extra = {}) => ({
    label, stroke: () => cssVar("--fg", "#1d1d1f"),
    grid: { stroke: () => cssVar("--line", "#d2d2d7"), width: 1 },
    ticks: { stroke: () => cssVar("--line", "#d2d2d7"), width: 1 },
    ...extra,
  });
  const build = () => {
    plot?.destroy();
    plot = new window.uPlot({
      ...size(),
      scales: { x: { time: false } },
      legend: { live: true },
      series: [{ label: t("step") }, ...lastSeries.map((s) => ({ spanGaps: true, value: (u, v) => fmt(v), ...s }))],
      // Whole steps on the x axis (uPlot would otherwise tick 1.25, 1.5, …).
      axes: [
        axis(t("step"), { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000] }),
        axis(axisLabel, { size: 60, values: (u, vals) => vals.map(fmt) }),
      ],
    }, lastData, container);
  };
  const watch = new ResizeObserver(() => {
    if (!plot) return;
    const next = size();
    if (next.width !== plot.width || next.height !== plot.height) plot.setSize(next);
  });
  watch.observe(container);
  return {
    /** Draws `data` ([x, ...one array per series]) as `series` ({label, stroke, width, dash, points}). */
    draw(series, data) {
      const next = series.map((s) => `${s.label}\u0000${s.stroke}`).join("\u0001");
      lastSeries = series;
      lastData = data;
      if (!plot || next !== shape) {
        shape = next;
        build();
      } else {
        plot.setData(data);
      }
    },
    clear() { plot?.destroy(); plot = null; shape = ""; lastData = null; },
    destroy() { watch.disconnect(); plot?.destroy(); plot = null; },
  };
}

// Draws at most once a frame however fast rows arrive (a finished run's log comes at once).
function throttled(fn) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; fn(); });
  };
}

// TensorBoard's smoothing: an exponential moving average with weight `w`, debiased so the
// first values are not pulled toward 0.
function smoothed(values, w) {
  let last = 0, n = 0;
  return values.map((v) => {
    if (v == null || !isFinite(v)) return null;
    last = last * w + (1 - w) * v;
    n += 1;
    return w === 0 ? v : last / (1 - w ** n);
  });
}

// The loss: every step's raw loss, its smoothing (the slider's weight, kept in this browser),
// each epoch's mean, and other runs' smoothed loss drawn over it in their own colours.
function lossPanel() {
  const chartBox = el("div", { class: "chart", role: "img", "aria-label": t("Loss by step") });
  const chart = lineChart(chartBox, t("loss"));
  let weight = 0.6;
  try { weight = Number(localStorage.getItem(SMOOTHING_KEY) ?? 0.6); } catch { /* private mode */ }
  if (!(weight >= 0 && weight < 1)) weight = 0.6;
  const slider = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", "aria-label": t("Smoothing") });
  slider.value = String(weight);
  const shown = el("output", { text: weight.toFixed(2) });
  slider.addEventListener("input", () => {
    weight = Number(slider.value);
    shown.textContent = weight.toFixed(2);
    try { localStorage.setItem(SMOOTHING_KEY, String(weight)); } catch { /* private mode */ }
    draw();
  });
  const picker = el("select", { "aria-label": t("Other run") });
  const addButton = el("button", { type: "button", text: t("Add to chart") });
  const pick = el("span", { class: "overlay-pick" }, picker, " ", addButton);
  pick.hidden = true;
  const chips = el("span", { class: "overlay-chips" });
  const note = el("span", { class: "muted", role: "status" });
  let id = null, steps = [], raw = [], epochMean = [];
  const overlays = new Map(); // job id → { steps, values, colour, final }

  const draw = throttled(() => {
    const accent = cssVar("--accent", "#0a66c2");
    let x = steps, column = (s, v) => v;
    if (overlays.size) {
      // One x axis for all runs: the union of their steps.
      const all = new Set(steps);
      for (const o of overlays.values()) for (const s of o.steps) all.add(s);
      x = [...all].sort((a, b) => a - b);
      const at = new Map(x.map((s, i) => [s, i]));
      column = (s, v) => {
        const out = new Array(x.length).fill(null);
        s.forEach((step, i) => { out[at.get(step)] = v[i]; });
        return out;
      };
    }
    const series = [
      { label: t("loss"), stroke: cssVar("--muted", "#9aa0a6"), width: 1 },
      { label: t("smoothed"), stroke: accent, width: 2 },
      { label: t("epoch mean"), stroke: EPOCH_MEAN, width: 2, points: { show: true, size: 6 } },
    ];
    const data = [x, column(steps, raw), column(steps, smoothed(raw, weight)), column(steps, epochMean)];
    let points = 0;
    for (const [other, o] of overlays) {
      series.push({ label: t("job {id} (smoothed)", { id: other }), stroke: o.colour, width: 1.5, dash: [6, 3] });
      data.push(column(o.steps, smoothed(o.values, weight)));
      points += o.steps.length;
    }
    chart.draw(series, data);
    chartBox.dataset.series = String(series.length);
    chartBox.dataset.overlayPoints = String(points);
  });

  async function fillPicker() {
    const { jobs } = await api("/jobs");
    const others = jobs.filter((j) => j.id !== id && (j.kind ?? "train") === "train").reverse();
    const keep = picker.value;
    picker.replaceChildren(...others.map((j) => el("option", { value: j.id, text: t("job {id} ({status})", { id: j.id, status: j.status }) })));
    if (others.some((j) => j.id === keep)) picker.value = keep;
    // Nothing to draw over this run yet: no empty picker.
    pick.hidden = !others.length;
  }
  picker.addEventListener("focus", () => fillPicker().catch(() => {}));

  async function loadOverlay(other) {
    const series = await api(`/runs/${other}/series?key=${encodeURIComponent("loss/current")}`);
    const o = overlays.get(other);
    if (!o) return;
    Object.assign(o, { steps: series.steps, values: series.values, final: ["done", "failed", "stopped", "interrupted"].includes(series.status) });
    draw();
  }

  function renderChips() {
    chips.replaceChildren(...[...overlays].map(([other, o]) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = o.colour;
      return el("span", { class: "chip" }, swatch, t("job {id}", { id: other }),
        el("button", { type: "button", class: "link", text: "×", "aria-label": t("Remove job {id} from the chart", { id: other }), onclick: () => { overlays.delete(other); renderChips(); draw(); } }));
    }));
  }

  addButton.addEventListener("click", () => {
    const other = picker.value;
    if (!other || overlays.has(other)) return;
    const used = new Set([...overlays.values()].map((o) => o.colour));
    const colour = PALETTE.find((c) => !used.has(c)) ?? PALETTE[overlays.size % PALETTE.length];
    overlays.set(other, { steps: [], values: [], colour, final: false });
    renderChips();
    note.textContent = "";
    loadOverlay(other).then(() => {
      const o = overlays.get(other);
      if (o && !o.steps.length) note.textContent = t("job {id} has logged no loss yet", { id: other });
    }).catch((e) => { note.textContent = e.message; });
  });

  return {
    node: el("section", { class: "panel", "aria-label": t("Loss") },
      el("h3", { text: t("Loss") }),
      el("div", { class: "controls" },
        el("label", {}, t("Smoothing"), " ", slider, " ", shown),
        pick, chips, note),
      chartBox),
    reset(jobId) {
      id = jobId;
      steps = []; raw = []; epochMean = [];
      chart.clear();
      chartBox.dataset.points = "0";
      fillPicker().catch(() => {});
      if (overlays.has(id)) { overlays.delete(id); renderChips(); }
      draw();
    },
    add(row) {
      const epochAverage = row["loss/epoch_average"];
      const value = row["loss/current"];
      if (value == null && epochAverage == null) return;
      // An epoch's mean lands on the step it was logged at (after that epoch's last step).
      if (steps.length && steps[steps.length - 1] === row.step) {
        if (epochAverage != null) epochMean[epochMean.length - 1] = epochAverage;
        if (value != null) raw[raw.length - 1] = value;
      } else {
        steps.push(row.step);
        raw.push(value ?? null);
        epochMean.push(epochAverage ?? null);
      }
      chartBox.dataset.points = String(steps.length);
      draw();
    },
    // Runs still training draw further: read theirs again.
    async refreshOverlays() {
      for (const [other, o] of overlays) if (!o.final) await loadOverlay(other);
    },
    // Line colours come from the theme too: draw afresh.
    redraw() { chart.clear(); draw(); },
    destroy() { chart.destroy(); },
  };
}

// Values of the run's log.jsonl whose names `keys` accepts (learning rates per parameter
// group, norms), one line each, drawn from the first row that has one.
function seriesPanel({ title, label, keys, name, axis, empty }) {
  const chartBox = el("div", { class: "chart", role: "img", "aria-label": label });
  const chart = lineChart(chartBox, axis);
  const note = el("p", { class: "muted", text: "" });
  let steps = [], columns = new Map();
  const draw = throttled(() => {
    if (!columns.size) return;
    note.textContent = "";
    const names = [...columns.keys()];
    const accent = cssVar("--accent", "#0a66c2");
    const series = names.map((k, i) => ({ label: name(k), stroke: i === 0 ? accent : PALETTE[(i - 1) % PALETTE.length], width: 1.5 }));
    chart.draw(series, [steps, ...names.map((k) => columns.get(k))]);
    chartBox.dataset.points = String(steps.length);
  });
  return {
    node: el("section", { class: "panel", "aria-label": title }, el("h3", { text: title }), note, chartBox),
    reset() {
      steps = []; columns = new Map();
      chart.clear();
      chartBox.dataset.points = "0";
      note.textContent = empty ?? "";
    },
    add(row) {
      const found = Object.keys(row).filter((k) => keys(k) && row[k] != null);
      if (!found.length) return;
      let at = steps.length - 1;
      if (at < 0 || steps[at] !== row.step) {
        steps.push(row.step);
        for (const column of columns.values()) column.push(null);
        at += 1;
      }
      for (const k of found) {
        if (!columns.has(k)) columns.set(k, new Array(steps.length).fill(null));
        columns.get(k)[at] = row[k];
      }
      draw();
    },
    // Line colours come from the theme too: draw afresh.
    redraw() { chart.clear(); draw(); },
    destroy() { chart.destroy(); },
  };
}

const saveLabel = (tag) => tag.startsWith("e") ? t("epoch {n}", { n: Number(tag.slice(1)) }) : t("step {n}", { n: Number(tag) });
const imageUrl = (s, full) => `/api/${full ? "image" : "thumb"}/${encodeURIComponent(s.id)}`;

// A run's sample images as save points × prompts; a click opens the image at full size, where
// ←/→ change the prompt, ↑/↓ the save point and Esc closes. "Compare two save points" puts two
// of them side by side, prompt by prompt.
function samplesPanel() {
  const box = el("section", { class: "panel", "aria-label": t("Samples") });
  let samples = [], shownFor = "", comparing = false, pair = [null, null];
  const tags = () => [...new Set(samples.map((s) => s.tag))];
  const prompts = () => [...new Set(samples.map((s) => s.prompt))].sort((a, b) => a - b);
  const find = (tag, prompt) => samples.find((s) => s.tag === tag && s.prompt === prompt);

  const open = (t0, p0) => {
    const tagList = tags(), promptList = prompts();
    let ti = t0, pi = p0;
    const opener = document.activeElement;
    const overlay = el("div", { class: "lightbox", role: "dialog", "aria-modal": "true", "aria-label": t("Sample image"), tabindex: "-1" });
    const close = () => { overlay.remove(); opener?.focus?.(); };
    const show = () => {
      const s = find(tagList[ti], promptList[pi]);
      const where = t("{save} · prompt {prompt}", { save: saveLabel(tagList[ti]), prompt: promptList[pi] });
      overlay.replaceChildren(
        s ? el("img", { src: imageUrl(s, true), alt: t("{save}, prompt {prompt}", { save: saveLabel(tagList[ti]), prompt: promptList[pi] }) }) : el("p", { text: t("no image") }),
        el("p", { text: `${where} — ${t("←/→ prompt, ↑/↓ save point, Esc closes")}` }),
      );
    };
    overlay.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (e.key === "Escape") { close(); return; }
      const m = moves[e.key];
      if (!m) return;
      e.preventDefault();
      ti = Math.min(tagList.length - 1, Math.max(0, ti + m[0]));
      pi = Math.min(promptList.length - 1, Math.max(0, pi + m[1]));
      show();
    });
    overlay.addEventListener("click", close);
    show();
    document.body.append(overlay);
    overlay.focus();
  };

  const thumb = (s, ti, pi, full) => el("img", {
    src: imageUrl(s, full), alt: t("{save}, prompt {prompt}", { save: saveLabel(s.tag), prompt: s.prompt }),
    loading: "lazy", tabindex: "0", onclick: () => open(ti, pi), onkeydown: (e) => e.key === "Enter" && open(ti, pi),
  });

  function compareView() {
    const tagList = tags(), promptList = prompts();
    if (!tagList.includes(pair[0])) pair[0] = tagList[0];
    if (!tagList.includes(pair[1])) pair[1] = tagList[tagList.length - 1];
    const choose = (i, label) => {
      const select = el("select", { "aria-label": label }, ...tagList.map((tag) => el("option", { value: tag, text: saveLabel(tag) })));
      select.value = pair[i];
      select.addEventListener("change", () => { pair[i] = select.value; render(); box.querySelector(`select[aria-label="${label}"]`)?.focus(); });
      return select;
    };
    const swap = el("button", { type: "button", text: t("Swap"), onclick: () => { pair = [pair[1], pair[0]]; render(); box.querySelector("button.swap")?.focus(); } });
    swap.classList.add("swap");
    const column = (tag) => tagList.indexOf(tag);
    return el("section", { class: "compare", "aria-label": t("Compare save points") },
      el("p", { class: "controls" }, el("label", {}, t("Left"), " ", choose(0, t("Left save point"))), " ",
        el("label", {}, t("Right"), " ", choose(1, t("Right save point"))), " ", swap),
      el("table", { class: "compare-table" },
        el("thead", {}, el("tr", {}, el("th", { text: t("prompt") }), el("th", { text: saveLabel(pair[0]) }), el("th", { text: saveLabel(pair[1]) }))),
        el("tbody", {}, ...promptList.map((prompt, pi) => el("tr", {},
          el("th", { text: t("prompt {n}", { n: prompt }) }),
          ...pair.map((tag) => {
            const s = find(tag, prompt);
            return el("td", {}, s ? thumb(s, column(tag), pi, true) : el("span", { class: "muted", text: t("no image") }));
          }))))));
  }

  function render() {
    if (!samples.length) { box.replaceChildren(); return; }
    const tagList = tags(), promptList = prompts();
    const toggle = el("button", { type: "button", "aria-pressed": String(comparing), text: t("Compare two save points"), onclick: () => { comparing = !comparing; render(); box.querySelector("button[aria-pressed]")?.focus(); } });
    toggle.disabled = tagList.length < 2;
    box.replaceChildren(
      el("h3", { text: t("Samples") }),
      el("p", {}, toggle),
      comparing ? compareView() : el("div", { class: "samples-scroll" }, el("table", { class: "samples" },
        el("thead", {}, el("tr", {}, el("th", { text: "" }), ...promptList.map((p) => el("th", { text: t("prompt {n}", { n: p }) })))),
        el("tbody", {}, ...tagList.map((tag, ti) => el("tr", {},
          el("th", { text: saveLabel(tag) }),
          ...promptList.map((prompt, pi) => {
            const s = find(tag, prompt);
            return el("td", {}, s ? thumb(s, ti, pi, false) : "");
          })))))),
    );
  }

  return {
    node: box,
    async refresh(id) {
      if (document.querySelector(".lightbox")) return;
      const found = await api(`/jobs/${id}/samples`);
      const key = `${id}:${JSON.stringify(found)}`;
      if (key === shownFor) return;
      if (!shownFor.startsWith(`${id}:`)) { comparing = false; pair = [null, null]; }
      shownFor = key;
      samples = found;
      render();
    },
  };
}

const fmtBytes = (n) => n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : n >= 1024 ? `${(n / 1024).toFixed(1)} kB` : `${n} B`;
const fmtTime = (s) => new Date(s * 1000).toLocaleString();

// The LoRA files the run has written so far (epoch, step and final saves), each with Inspect
// (here), XY plot and Resize (the tools page) and its folder (the files page).
function savedPanel() {
  const body = el("tbody");
  const inspector = el("section", { class: "inspector", "aria-label": t("LoRA file") });
  const note = el("p", { class: "muted" });
  const folderLink = el("a", { text: t("Open the output folder") });
  folderLink.hidden = true;
  const table = el("table", { class: "saved" },
    el("thead", {}, el("tr", {}, ...[t("file"), t("save"), t("size"), t("written"), ""].map((h) => el("th", { text: h })))),
    body);
  table.hidden = true;
  const box = el("section", { class: "panel", "aria-label": t("Saved LoRA files") },
    el("h3", { text: t("Saved LoRA files") }), note, table, el("p", {}, folderLink), inspector);
  let shownFor = "";
  const kindLabel = (f) => f.kind === "final" ? t("final") : f.kind === "epoch" ? t("epoch {n}", { n: f.n }) : t("step {n}", { n: f.n });
  return {
    node: box,
    async refresh(id) {
      const listed = await api(`/runs/${id}/loras`);
      const key = `${id}:${JSON.stringify(listed)}`;
      if (key === shownFor) return;
      if (!shownFor.startsWith(`${id}:`)) inspector.replaceChildren();
      shownFor = key;
      const { files, outside, folder } = listed;
      note.textContent = !files.length ? t("No LoRA file saved yet.") : outside ? t("{n} more outside the roots (not shown)", { n: outside }) : "";
      folderLink.hidden = !folder;
      table.hidden = !files.length;
      if (folder) folderLink.href = pageLink("files", { root: folder.root, path: folder.path });
      body.replaceChildren(...files.map((f) => {
        const folderPath = f.path.split("/").slice(0, -1).join("/");
        return el("tr", {},
          el("td", {}, el("code", { text: f.name })),
          el("td", { text: kindLabel(f) }),
          el("td", { class: "muted", text: fmtBytes(f.size) }),
          el("td", { class: "muted", text: fmtTime(f.modified) }),
          el("td", { class: "actions" },
            el("button", { type: "button", text: t("Inspect"), "aria-label": t("Inspect {name}", { name: f.name }), onclick: () => { inspectLora(inspector, f.root, f.path); inspector.scrollIntoView?.({ block: "nearest" }); } }),
            el("a", { href: pageLink("tools", { op: "xy", root: f.root, path: f.path }), text: t("XY plot"), "aria-label": t("XY plot of {name}", { name: f.name }) }),
            el("a", { href: pageLink("tools", { op: "resize", root: f.root, path: f.path }), text: t("Resize"), "aria-label": t("Resize {name}", { name: f.name }) }),
            el("a", { href: pageLink("files", { root: f.root, path: folderPath }), text: t("Folder"), "aria-label": t("Folder of {name}", { name: f.name }) })),
        );
      }));
    },
  };
}

// The job's output as it is written (SSE, resumed by Last-Event-ID), following the end unless
// the user scrolls up or unticks Follow; the whole file downloads as output.log.
function logPanel() {
  const log = el("pre", { class: "log", "aria-live": "off", tabindex: "0", "aria-label": t("Output") });
  const follow = el("input", { type: "checkbox", checked: "" });
  const download = el("a", { text: t("Download output.log"), download: "" });
  let stream = null, lines = 0;
  const atEnd = () => log.scrollHeight - log.scrollTop - log.clientHeight < 4;
  follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });
  // Scrolling up to read stops the following; scrolling back to the end resumes it.
  log.addEventListener("scroll", () => { follow.checked = atEnd(); });
  return {
    node: el("section", { class: "panel", "aria-label": t("Output") },
      el("div", { class: "log-head" }, el("h3", { text: t("Output") }), el("label", {}, follow, " ", t("Follow")), download),
      log),
    show(id, onStatus) {
      this.stop();
      log.replaceChildren();
      lines = 0;
      download.href = `/api/runs/${id}/output.log`;
      stream = new EventSource(`/api/jobs/${id}/events`);
      stream.onmessage = (e) => {
        log.append(`${e.data}\n`);
        lines += 1;
        if (lines > LOG_LINES) { log.firstChild?.remove(); lines -= 1; }
        if (follow.checked) log.scrollTop = log.scrollHeight;
      };
      stream.addEventListener("status", () => onStatus());
      stream.addEventListener("end", () => { stream?.close(); onStatus(); });
    },
    stop() {
      if (stream) stream.close();
      stream = null;
    },
  };
}
