// lorakit gui: plain ES module, no framework. User data (file names, docs, captions) is only
// ever inserted with textContent (the CSP forbids inline scripts; nothing here builds HTML).

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};

async function api(path, options = {}) {
  const response = await fetch(`/api${path}`, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const page = () => document.getElementById("page");

// Whether `name` is still the page the address names: a page's data can arrive after the user
// (or a test) moved on, and must not replace the page shown then.
const current = (name) => (location.hash.slice(1) || "files") === name;

function showError(err) {
  page().replaceChildren(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
}

async function filesPage(root = 0, path = "") {
  const session = await api("/session");
  const listing = await api(`/fs?root=${root}&path=${encodeURIComponent(path)}`);
  const rootPicker = el("select", { "aria-label": "Root", onchange: (e) => filesPage(Number(e.target.value), "").catch(showError) });
  for (const r of session.roots) {
    const option = el("option", { value: String(r.id), text: r.path });
    if (r.id === root) option.selected = true;
    rootPicker.append(option);
  }
  const inspector = el("section", { "aria-label": "LoRA file" });
  const rows = listing.entries.map((entry) => {
    const full = path ? `${path}/${entry.name}` : entry.name;
    const name = entry.kind === "dir"
      ? el("button", { class: "link", text: `${entry.name}/`, onclick: () => filesPage(root, full).catch(showError) })
      : el("span", { text: entry.name });
    const action = entry.kind === "file" && entry.name.endsWith(".safetensors")
      ? el("button", { type: "button", text: "Inspect", "aria-label": `Inspect ${entry.name}`, onclick: () => inspectLora(inspector, root, full) })
      : "";
    return el("tr", {}, el("td", {}, name), el("td", { class: "muted", text: entry.kind === "file" ? `${entry.size} B` : entry.kind }), el("td", {}, action));
  });
  const up = path
    ? el("button", { class: "link", text: "..", onclick: () => filesPage(root, path.split("/").slice(0, -1).join("/")).catch(showError) })
    : el("span", { class: "muted", text: "(root)" });
  const loras = listing.entries.filter((e) => e.kind === "file" && e.name.endsWith(".safetensors")).map((e) => (path ? `${path}/${e.name}` : e.name));
  const compare = loras.length >= 2
    ? el("button", { type: "button", text: `Compare ${loras.length} LoRA files`, onclick: () => compareLoras(inspector, root, loras) })
    : "";
  if (!current("files")) return;
  page().replaceChildren(
    el("h1", { text: "Files" }),
    rootPicker,
    el("p", {}, el("span", { class: "muted", text: `/${path} ` }), up, " ", compare),
    el("table", {}, el("tbody", {}, ...rows)),
    inspector,
  );
}

// Several LoRA files side by side (e.g. a run's epochs): a blocks × files heat map of the mean
// weight norm, each cell shaded by its share of the largest, the value in the cell.
async function compareLoras(box, root, paths) {
  box.replaceChildren(el("p", { class: "muted", text: `reading ${paths.length} files…` }));
  const reports = [];
  for (const path of paths) {
    try {
      reports.push({ path, report: await api(`/lora?root=${root}&path=${encodeURIComponent(path)}`) });
    } catch (e) {
      reports.push({ path, error: e.message });
    }
  }
  const blocks = [];
  for (const r of reports) for (const b of r.report?.blocks ?? []) if (!blocks.includes(b.block)) blocks.push(b.block);
  const value = (r, block) => r.report?.blocks.find((b) => b.block === block)?.mean_norm;
  const max = Math.max(1e-12, ...reports.flatMap((r) => blocks.map((b) => value(r, b) ?? 0)));
  const name = (p) => p.split("/").pop();
  const cells = [];
  const table = el("table", { class: "heatmap", "aria-label": "Block norms by file" },
    el("thead", {}, el("tr", {}, el("th", { text: "block" }), ...reports.map((r) => el("th", { text: name(r.path), title: r.error ?? r.path })))),
    el("tbody", {}, ...blocks.map((block) => el("tr", {}, el("th", { text: block }), ...reports.map((r) => {
      const v = value(r, block);
      const cell = el("td", { text: v == null ? "–" : v.toFixed(3) });
      if (v != null) cells.push([cell, v / max]);
      return cell;
    })))),
  );
  // Shading through the CSSOM (no style attributes in markup under the CSP).
  for (const [cell, share] of cells) cell.style.backgroundColor = `rgba(10, 102, 194, ${(0.08 + 0.72 * share).toFixed(3)})`;
  box.replaceChildren(
    el("h2", { text: `${paths.length} LoRA files, block by block (mean ‖ΔW‖)` }),
    ...reports.filter((r) => r.error).map((r) => el("p", { class: "error", text: `${r.path}: ${r.error}` })),
    table,
  );
}

// `lorakit inspect` in the page: what CivitAI users look at (base model, network, rank/alpha,
// training length, top tags) and the block-by-block weight norms as bars.
async function inspectLora(box, root, path) {
  box.replaceChildren(el("p", { class: "muted", text: `reading ${path}…` }));
  let r;
  try {
    r = await api(`/lora?root=${root}&path=${encodeURIComponent(path)}`);
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", role: "alert", text: e.message }));
    return;
  }
  const m = r.metadata || {};
  const facts = [
    ["format", r.format],
    ["base model", r.base_model + (r.base_model_conflict ? ` (${r.base_model_conflict})` : "")],
    ["layout", r.layout],
    ["network", m.network_module],
    ["rank / alpha", `${Object.keys(r.ranks).join(", ")} / ${Object.keys(r.alphas).join(", ")}`],
    ["modules", String(r.module_count)],
    ["resolution", m.resolution ? m.resolution.join("×") : null],
    ["epochs / steps", m.epoch != null || m.steps != null ? `${m.epoch ?? "?"} of ${m.num_epochs ?? "?"} / ${m.steps ?? "?"}` : null],
    ["optimizer", m.optimizer],
    ["learning rate", m.learning_rate != null ? String(m.learning_rate) : null],
  ].filter(([, v]) => v);
  const tags = {};
  for (const folder of Object.values(m.tag_frequency || {})) {
    for (const [tag, n] of Object.entries(folder)) tags[tag] = (tags[tag] || 0) + n;
  }
  const topTags = Object.entries(tags).sort((a, b) => b[1] - a[1]).slice(0, 20);
  const maxNorm = Math.max(1e-12, ...r.blocks.map((b) => b.mean_norm));
  const bars = r.blocks.map((b) => el("tr", {},
    el("td", { text: b.block }),
    el("td", { class: "bar-cell" }, el("div", { class: "bar" })),
    el("td", { class: "muted", text: `${b.mean_norm.toFixed(4)} (max ${b.max_norm.toFixed(4)}, ${b.modules} modules)` }),
  ));
  // Bar widths through the CSSOM (the CSP allows no style attributes in markup).
  r.blocks.forEach((b, i) => { bars[i].querySelector(".bar").style.width = `${(100 * b.mean_norm) / maxNorm}%`; });
  box.replaceChildren(
    el("h2", { text: path }),
    el("table", {}, el("tbody", {}, ...facts.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))))),
    ...r.notes.map((n) => el("p", { class: "muted", text: n })),
    topTags.length ? el("p", { text: `top tags: ${topTags.map(([t, n]) => `${t} (${n})`).join(", ")}` }) : "",
    el("h3", { text: "Block-by-block weight norms (mean ‖ΔW‖)" }),
    el("table", { class: "blocks" }, el("tbody", {}, ...bars)),
  );
}

async function optionsPage() {
  const fields = await api("/schema");
  const search = el("input", { type: "search", placeholder: "Find an option (name, sd-scripts argument, words from its description)", "aria-label": "Find an option" });
  const body = el("tbody");
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = fields.filter((f) => !q || `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase().includes(q));
    body.replaceChildren(...shown.map((f) => el("tr", {},
      el("td", {}, el("code", { text: `${f.section}.${f.key}` })),
      el("td", { class: "muted", text: f.kohya }),
      el("td", { class: "muted", text: f.default === null ? "unset" : JSON.stringify(f.default) }),
      el("td", { text: f.doc }),
    )));
  };
  search.addEventListener("input", render);
  render();
  if (!current("options")) return;
  page().replaceChildren(
    el("h1", { text: "Training options" }),
    search,
    el("table", {}, el("thead", {}, el("tr", {}, ...["key", "sd-scripts", "default", "what it does"].map((t) => el("th", { text: t })))), body),
  );
}

// What the current page left running (timers, event streams), stopped when the page changes.
let cleanups = [];
function onLeave(fn) { cleanups.push(fn); }

const fmtSeconds = (s) => {
  if (s == null || !isFinite(s)) return "";
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h}h${String(m % 60).padStart(2, "0")}m` : m ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.round(s)}s`;
};

function progressText(job) {
  const p = job.progress;
  if (!p) return "";
  const parts = [];
  if (p.step != null) parts.push(p.total != null ? `step ${p.step}/${p.total}` : `step ${p.step}`);
  else if (p.total != null) parts.push(`${p.total} steps`);
  if (p.epoch != null) parts.push(`epoch ${p.epoch}`);
  if (p.loss != null) parts.push(`loss ${p.loss.toFixed(4)}`);
  if (p.its != null) parts.push(`${p.its.toFixed(2)} it/s`);
  if (p.eta_s != null) parts.push(`ETA ${fmtSeconds(p.eta_s)}`);
  return parts.join(" · ");
}


// The Datasets page: the dataset doctor over a kohya train folder (subsets, steps, findings)
// and a grid of its images with their captions; a finding filters the grid to the images it is
// about. Thumbnails are made by the server (upright, as training sees them).
async function datasetsPage() {
  const session = await api("/session");
  const rootPicker = el("select", { "aria-label": "Dataset root" }, ...session.roots.map((r) => el("option", { value: String(r.id), text: r.path })));
  const folder = el("input", { type: "text", "aria-label": "Train folder", placeholder: "train folder under the root (holds 10_name subsets)", spellcheck: "false" });
  const full = el("input", { type: "checkbox", "aria-label": "Decode every image" });
  const result = el("section", { "aria-label": "Dataset report" });
  let editor = null;
  // After a tag edit: the report again (captions and tag counts), the editor kept.
  const refreshReport = async () => {
    const report = await api(`/dataset?root=${editor.root}&path=${encodeURIComponent(editor.base)}${full.checked ? "&full=1" : ""}`);
    showReport(result, report, editor.root, editor.base, editor);
  };
  const run = async () => {
    result.replaceChildren(el("p", { class: "muted", text: "checking…" }));
    try {
      const root = rootPicker.value;
      const base = folder.value.trim();
      const report = await api(`/dataset?root=${root}&path=${encodeURIComponent(base)}${full.checked ? "&full=1" : ""}`);
      if (!editor || editor.root !== root || editor.base !== base) {
        editor = { root, base, ...tagEditor(root, base, () => refreshReport()) };
      }
      showReport(result, report, root, base, editor);
    } catch (e) {
      result.replaceChildren(el("p", { class: "error", role: "alert", text: e.message }));
    }
  };
  folder.addEventListener("keydown", (e) => e.key === "Enter" && run());
  if (!current("datasets")) return;
  page().replaceChildren(
    el("h1", { text: "Datasets" }),
    el("p", {}, rootPicker, " ", folder, " ", el("label", {}, full, " decode every image"), " ",
      el("button", { type: "button", text: "Check", onclick: run })),
    result,
  );
}

// Bulk tag editing over the train folder: choose an edit, preview "N files will change" with
// each caption before and after, apply (atomic writes), undo the last edit.
function tagEditor(root, base, onChange) {
  const op = el("select", { "aria-label": "Tag edit" },
    ...[["add_front", "add at the front"], ["add_back", "add at the end"], ["remove", "remove"], ["replace", "replace"],
      ["move_to_front", "move to the front"], ["dedupe", "remove duplicates"], ["sort", "sort A–Z"]]
      .map(([v, t]) => el("option", { value: v, text: t })));
  const tags = el("input", { type: "text", "aria-label": "Tags", placeholder: "tags, comma separated" });
  const old = el("input", { type: "text", "aria-label": "Replace tag", placeholder: "tag to replace" });
  const replacement = el("input", { type: "text", "aria-label": "Replacement", placeholder: "replacement (empty: remove)" });
  const message = el("p", { role: "status" });
  const diff = el("tbody");
  const apply = el("button", { type: "button", text: "Apply", disabled: "" });
  const body = () => JSON.stringify({
    root: Number(root), path: base, op: op.value,
    tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean), old: old.value, new: replacement.value,
  });
  const post = (path) => api(path, { method: "POST", headers: { "content-type": "application/json" }, body: body() });
  const preview = async () => {
    apply.disabled = true;
    try {
      const p = await post("/tags/preview");
      message.textContent = `${p.changed} files will change, ${p.unchanged} stay${p.skipped_natural_language ? `, ${p.skipped_natural_language} natural-language captions left alone` : ""}${p.failed.length ? `, ${p.failed.length} cannot be read` : ""}`;
      diff.replaceChildren(...p.changes.map((c) => el("tr", {}, el("td", { class: "muted", text: c.file }), el("td", { text: c.before }), el("td", { text: c.after }))));
      apply.disabled = p.changed === 0;
    } catch (e) { message.textContent = e.message; diff.replaceChildren(); }
  };
  for (const input of [op, tags, old, replacement]) input.addEventListener("change", () => { apply.disabled = true; });
  apply.addEventListener("click", async () => {
    apply.disabled = true;
    try {
      const r = await post("/tags/apply");
      message.textContent = `${r.written} files written${r.write_failures.length ? `; not written: ${r.write_failures.map((f) => f.file).join(", ")}` : ""}`;
      diff.replaceChildren();
      onChange();
    } catch (e) { message.textContent = e.message; }
  });
  const undo = el("button", { type: "button", text: "Undo last edit", onclick: async () => {
    try {
      const r = await api("/tags/undo", { method: "POST" });
      message.textContent = `undone: ${r.undone} (${r.restored} files restored${r.kept.length ? `; left: ${r.kept.join("; ")}` : ""})`;
      onChange();
    } catch (e) { message.textContent = e.message; }
  } });
  return {
    setTag: (tag) => { tags.value = tag; old.value = tag; apply.disabled = true; },
    node: el("section", { "aria-label": "Tag editor" },
      el("h2", { text: "Edit tags" }),
      el("p", {}, op, " ", tags, " ", old, " ", replacement, " ",
        el("button", { type: "button", text: "Preview", onclick: preview }), " ", apply, " ", undo),
      message,
      el("table", { class: "diff" }, el("tbody", {}), diff),
    ),
  };
}

function showReport(box, report, root, base, editor) {
  const t = report.totals;
  const images = report.datasets.flatMap((d) => d.images);
  const grid = el("div", { class: "grid", role: "list", "aria-label": "Images" });
  const filterNote = el("p", { class: "muted", role: "status" });
  const drawGrid = (code) => {
    const shown = code ? images.filter((img) => img.warnings.some((w) => w.code === code)) : images;
    filterNote.textContent = code ? `${shown.length} images with ${code} (click it again to show all)` : `${shown.length} images`;
    grid.replaceChildren(...shown.map((img) => el("figure", { role: "listitem" },
      el("img", { src: `/api/thumb?root=${root}&path=${encodeURIComponent(base ? `${base}/${img.path}` : img.path)}`, alt: img.path, loading: "lazy" }),
      el("figcaption", {}, el("div", { class: "muted", text: `${img.path}${img.bucket ? ` · ${img.bucket.join("×")}` : ""}` }), el("div", { text: img.caption })),
    )));
  };
  let active = null;
  const counts = new Map();
  for (const img of images) for (const w of img.warnings) counts.set(w.code, [(counts.get(w.code)?.[0] ?? 0) + 1, w]);
  const findingButtons = [...counts.entries()].map(([code, [n, w]]) => el("li", {}, el("button", {
    type: "button", class: `link severity-${w.severity}`, text: `${code} (${n} images)`, title: w.message,
    onclick: () => { active = active === code ? null : code; drawGrid(active); },
  })));
  box.replaceChildren(
    el("p", { class: report.usable ? "" : "error", text: `${t.images} images, ${t.used} used, ${t.unusable} unusable · ${t.samples_per_epoch} samples per epoch · ${t.errors} errors, ${t.warnings} warnings` }),
    el("table", {}, el("tbody", {}, ...report.datasets.flatMap((d) => d.subsets).map((s) => el("tr", {},
      el("td", { text: s.dir }), el("td", { text: `${s.num_repeats} repeats` }), el("td", { text: `${s.usable}/${s.images} images` }),
      el("td", { class: "muted", text: s.is_reg ? "regularisation" : s.trigger_word ? `trigger: ${s.trigger_word}` : "" }))))),
    ...report.findings.map((f) => el("p", { class: `severity-${f.severity}`, text: `${f.code}: ${f.message}` })),
    findingButtons.length ? el("ul", { class: "findings", "aria-label": "Findings by image" }, ...findingButtons) : "",
    report.top_tags.length
      ? el("p", { class: "tag-cloud", "aria-label": "Top tags" }, "top tags: ", ...report.top_tags.slice(0, 30).map(([tag, n]) =>
        el("button", { type: "button", class: "link", text: `${tag} (${n})`, onclick: () => editor.setTag(tag) })))
      : "",
    editor.node,
    filterNote,
    grid,
  );
  drawGrid(null);
}

// The loss chart of a run (uPlot, vendored): the raw loss of every step, its exponential
// moving average (0.9, as TensorBoard's default smoothing) and each epoch's mean loss.
function lossChart(container) {
  const steps = [], raw = [], smooth = [], epochMean = [];
  let ema = null;
  const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0a66c2";
  const width = () => Math.max(280, container.clientWidth || 600);
  const plot = new window.uPlot({
    width: width(),
    height: 240,
    scales: { x: { time: false } },
    series: [
      { label: "step" },
      { label: "loss", stroke: "#9aa0a6", width: 1 },
      { label: "smoothed", stroke: accent, width: 2 },
      { label: "epoch mean", stroke: "#e37400", width: 2, points: { show: true } },
    ],
    // Whole steps on the x axis (uPlot would otherwise tick 1.25, 1.5, …).
    axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, { label: "loss" }],
  }, [steps, raw, smooth, epochMean], container);
  const resize = () => plot.setSize({ width: width(), height: 240 });
  window.addEventListener("resize", resize);
  return {
    add(row) {
      const epochAverage = row["loss/epoch_average"];
      const loss = row["loss/current"];
      if (loss == null && epochAverage == null) return;
      if (loss != null) ema = ema === null ? loss : 0.9 * ema + 0.1 * loss;
      // An epoch's mean lands on the step it was logged at (after that epoch's last step).
      if (steps.length && steps[steps.length - 1] === row.step) {
        if (epochAverage != null) epochMean[epochMean.length - 1] = epochAverage;
      } else {
        steps.push(row.step);
        raw.push(loss ?? null);
        smooth.push(loss != null ? ema : null);
        epochMean.push(epochAverage ?? null);
      }
      plot.setData([steps, raw, smooth, epochMean]);
      container.dataset.points = String(steps.length);
    },
    points: () => steps.length,
    destroy() {
      window.removeEventListener("resize", resize);
      plot.destroy();
    },
  };
}

// A run's sample images as save points × prompts; a click opens the image at full size, where
// ←/→ change the prompt, ↑/↓ the save point and Esc closes.
async function showSamples(box, id) {
  const samples = await api(`/jobs/${id}/samples`);
  if (!samples.length) { box.replaceChildren(); return; }
  const tags = [...new Set(samples.map((s) => s.tag))];
  const prompts = [...new Set(samples.map((s) => s.prompt))].sort((a, b) => a - b);
  const at = (t, p) => samples.find((s) => s.tag === tags[t] && s.prompt === prompts[p]);
  const label = (tag) => tag.startsWith("e") ? `epoch ${Number(tag.slice(1))}` : `step ${Number(tag)}`;
  const open = (t, p) => {
    const overlay = el("div", { class: "lightbox", role: "dialog", "aria-label": "Sample image", tabindex: "-1" });
    const show = () => {
      const s = at(t, p);
      overlay.replaceChildren(
        s ? el("img", { src: `/api/image?root=${s.root}&path=${encodeURIComponent(s.path)}`, alt: `${label(tags[t])}, prompt ${prompts[p]}` }) : el("p", { text: "no image" }),
        el("p", { text: `${label(tags[t])} · prompt ${prompts[p]} — ←/→ prompt, ↑/↓ save point, Esc closes` }),
      );
    };
    overlay.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (e.key === "Escape") { overlay.remove(); return; }
      const m = moves[e.key];
      if (!m) return;
      e.preventDefault();
      t = Math.min(tags.length - 1, Math.max(0, t + m[0]));
      p = Math.min(prompts.length - 1, Math.max(0, p + m[1]));
      show();
    });
    overlay.addEventListener("click", () => overlay.remove());
    show();
    document.body.append(overlay);
    overlay.focus();
  };
  box.replaceChildren(
    el("h3", { text: "Samples" }),
    el("table", { class: "samples" }, el("tbody", {}, ...tags.map((tag, t) => el("tr", {},
      el("th", { text: label(tag) }),
      ...prompts.map((prompt, p) => {
        const s = at(t, p);
        return el("td", {}, s ? el("img", {
          src: `/api/thumb?root=${s.root}&path=${encodeURIComponent(s.path)}`, alt: `${label(tag)}, prompt ${prompt}`,
          loading: "lazy", tabindex: "0", onclick: () => open(t, p), onkeydown: (e) => e.key === "Enter" && open(t, p),
        }) : "");
      }))))),
  );
}

async function jobsPage() {
  const editor = el("textarea", { rows: "10", spellcheck: "false", "aria-label": "Training config (TOML)", placeholder: "A lorakit training config (TOML): see Training options" });
  const message = el("p", { role: "status" });
  const body = el("tbody");
  const logTitle = el("h2", { text: "Output" });
  const log = el("pre", { class: "log", "aria-live": "off" });
  let stream = null;
  let metrics = null;
  let chart = null;
  const chartBox = el("div", { class: "chart", role: "img", "aria-label": "Loss by step" });
  const samplesBox = el("section", { "aria-label": "Samples" });
  let samplesFor = null;
  onLeave(() => {
    if (stream) stream.close();
    if (metrics) metrics.close();
    if (chart) chart.destroy();
  });

  const act = (id, action) => api(`/jobs/${id}/${action}`, { method: "POST" })
    .then((job) => { message.textContent = action === "resume" ? `queued job ${job.id}${job.resume_state ? ` from ${job.resume_state}` : " (no saved state: it starts over)"}` : ""; })
    .catch((e) => { message.textContent = e.message; })
    .then(refresh);

  // The snapshot into the editor: change it, then Add to queue.
  async function cloneConfig(id) {
    const response = await fetch(`/api/jobs/${id}/config`, { credentials: "same-origin" });
    if (!response.ok) { message.textContent = `job ${id}: cannot read its config (${response.status})`; return; }
    editor.value = await response.text();
    message.textContent = `the config of job ${id}: edit it, then Add to queue`;
    editor.focus();
  }

  function showLog(id) {
    if (stream) stream.close();
    if (metrics) metrics.close();
    if (chart) chart.destroy();
    chart = lossChart(chartBox);
    // The run's log.jsonl rows, resumed by Last-Event-ID like the output.
    metrics = new EventSource(`/api/jobs/${id}/metrics`);
    metrics.onmessage = (e) => chart.add(JSON.parse(e.data));
    metrics.addEventListener("end", () => metrics.close());
    samplesFor = id;
    showSamples(samplesBox, id).catch(() => {});
    logTitle.textContent = `Output of job ${id}`;
    log.replaceChildren();
    // EventSource reconnects by itself and sends Last-Event-ID: the server resumes there.
    stream = new EventSource(`/api/jobs/${id}/events`);
    stream.onmessage = (e) => { log.append(`${e.data}\n`); log.scrollTop = log.scrollHeight; };
    stream.addEventListener("status", () => refresh());
    stream.addEventListener("end", () => { stream.close(); refresh(); });
  }

  async function refresh() {
    const { jobs, skipped } = await api("/jobs");
    const rows = jobs.slice().reverse().map((job) => {
      const actions = el("td", { class: "actions" });
      const button = (label, fn) => actions.append(el("button", { type: "button", text: label, onclick: fn }));
      if (job.status === "running" || job.status === "queued") {
        button(job.status === "running" ? "Stop & save" : "Cancel", () => act(job.id, "stop"));
        if (job.status === "running") {
          button("Stop now", () => act(job.id, "kill"));
          // Taken by the run after its current step (lorakit train --requests).
          button("Save now", () => act(job.id, "save-now"));
          button("Sample now", () => act(job.id, "sample-now"));
        }
      }
      if (["stopped", "interrupted", "failed"].includes(job.status)) button("Resume", () => act(job.id, "resume"));
      button("Clone & edit", () => cloneConfig(job.id));
      button("Output", () => showLog(job.id));
      return el("tr", {},
        el("td", { text: job.id }),
        el("td", { class: `status-${job.status}`, text: job.status }),
        el("td", { text: progressText(job) }),
        el("td", { class: job.status === "failed" || job.status === "interrupted" ? "error" : "muted", text: job.error || "" }),
        actions,
      );
    });
    body.replaceChildren(...rows);
    if (skipped.length) message.textContent = skipped.map((s) => `job folder ${s.id} skipped: ${s.error}`).join("; ");
  }

  const submit = el("button", { type: "button", text: "Add to queue", onclick: () => {
    api("/jobs", { method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8" }, body: editor.value })
      .then((job) => { message.textContent = `queued job ${job.id}`; })
      .catch((e) => { message.textContent = e.message; })
      .then(refresh);
  } });

  if (!current("jobs")) return;
  page().replaceChildren(
    el("h1", { text: "Jobs" }),
    el("table", {}, el("thead", {}, el("tr", {}, ...["job", "status", "progress", "cause", ""].map((t) => el("th", { text: t })))), body),
    message,
    el("h2", { text: "New job" }),
    editor,
    el("p", {}, submit),
    logTitle,
    chartBox,
    samplesBox,
    log,
  );
  await refresh();
  const timer = setInterval(() => refresh().catch(showError), 2000);
  // New samples appear at save points: look again now and then while a job is shown.
  const sampleTimer = setInterval(() => samplesFor && !document.querySelector(".lightbox") && showSamples(samplesBox, samplesFor).catch(() => {}), 5000);
  onLeave(() => clearInterval(sampleTimer));
  onLeave(() => clearInterval(timer));
}


// The Train page: a form generated from the config schema (every key of `lorakit train`'s
// config, in the guide's order), started from a preset or an imported kohya config, rendered
// to TOML and checked by the server, planned by the dry run, queued as a job.
const SECTIONS = [
  ["accelerate", "3.1 Precision and device"],
  ["model", "3.2 Model"],
  ["folders", "3.3 Folders and output name"],
  ["metadata", "3.4 Metadata"],
  ["dataset", "3.5 Dataset preparation"],
  ["network", "3.6 Network (LoRA type, rank, alpha)"],
  ["training", "3.6 Training length and batches"],
  ["optimizer", "3.6 Optimizer and learning rate"],
  ["loss", "3.6 Loss and noise"],
  ["flow", "3.6 Flow matching (Flux)"],
  ["save", "Saving and resuming"],
  ["samples", "Sample images"],
  ["logging", "Logging"],
];

async function trainPage() {
  const [schema, presets] = await Promise.all([api("/schema"), api("/presets")]);
  // section → key → value the user (or a preset/import) set; absent = the default.
  let values = {};
  const rows = [];
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const get = (f) => values[f.section]?.[f.key];
  const set = (f, v) => {
    values[f.section] ??= {};
    if (v === undefined || same(v, f.default)) delete values[f.section][f.key];
    else values[f.section][f.key] = v;
  };

  const message = el("p", { role: "status" });
  const output = el("pre", { class: "log", "aria-label": "Result" });

  function input(f) {
    const label = `${f.section}.${f.key}`;
    if (f.kind === "bool") {
      const box = el("input", { type: "checkbox", "aria-label": label });
      box.addEventListener("change", () => { set(f, box.checked); mark(); });
      const show = () => { box.checked = Boolean(get(f) ?? f.default); };
      return { node: box, show };
    }
    const text = el("input", { type: "text", "aria-label": label, spellcheck: "false" });
    const read = () => {
      const raw = text.value.trim();
      if (raw === "") return undefined;
      if (f.kind === "integer" || f.kind === "float") {
        const n = Number(raw);
        return Number.isFinite(n) ? n : raw;
      }
      if (f.kind === "array" || f.kind === "table") {
        try { return JSON.parse(raw); } catch { return raw; }
      }
      return raw;
    };
    text.addEventListener("change", () => { set(f, read()); mark(); });
    const show = () => {
      const v = get(f) ?? f.default;
      text.value = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      text.placeholder = f.default === null ? "unset" : "";
    };
    return { node: text, show };
  }

  const sections = new Map();
  for (const [name, title] of SECTIONS) {
    const body = el("tbody");
    const details = el("details", { "data-section": name }, el("summary", { text: title }), el("table", {}, body));
    sections.set(name, { details, body, count: 0 });
  }
  for (const f of schema) {
    const section = sections.get(f.section);
    if (!section) continue;
    const control = input(f);
    const changed = el("span", { class: "changed", title: "changed from the default", "aria-hidden": "true" });
    const row = el("tr", {},
      el("td", {}, el("label", {}, el("code", { text: f.key })), " ", changed),
      el("td", {}, control.node),
      el("td", { class: "muted" }, el("div", { text: f.doc }), el("div", { text: f.kohya ? `sd-scripts: ${f.kohya}` : "" })),
    );
    rows.push({ f, row, control, changed, haystack: `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase() });
    section.body.append(row);
    section.count += 1;
  }
  function mark() {
    for (const r of rows) {
      const v = get(r.f);
      r.changed.textContent = v === undefined || same(v, r.f.default) ? "" : "●";
    }
  }
  function showAll() {
    for (const r of rows) r.control.show();
    mark();
  }

  const search = el("input", { type: "search", placeholder: "Find an option", "aria-label": "Find a training option" });
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    for (const r of rows) r.row.hidden = Boolean(q) && !r.haystack.includes(q);
    for (const s of sections.values()) {
      const visible = [...s.body.children].some((tr) => !tr.hidden);
      s.details.hidden = !visible;
      s.details.open = Boolean(q) && visible;
    }
  });

  const presetPicker = el("select", { "aria-label": "Preset" }, el("option", { value: "", text: "Start from a preset…" }),
    ...presets.map((p) => el("option", { value: p.name, text: `${p.name}: ${p.about}` })));
  presetPicker.addEventListener("change", async () => {
    if (!presetPicker.value) return;
    try {
      const preset = await api(`/presets/${encodeURIComponent(presetPicker.value)}`);
      values = preset.values;
      showAll();
      message.textContent = `preset ${presetPicker.value} loaded`;
    } catch (e) { message.textContent = e.message; }
  });
  const importer = el("input", { type: "file", accept: ".json,.toml", "aria-label": "Import a kohya_ss GUI JSON or sd-scripts TOML" });
  importer.addEventListener("change", async () => {
    const file = importer.files[0];
    if (!file) return;
    try {
      const imported = await api("/config/import", { method: "POST", body: await file.text() });
      values = imported.values;
      showAll();
      message.textContent = `${file.name} imported`;
      output.textContent = imported.notes.join("\n");
    } catch (e) { message.textContent = `${file.name}: ${e.message}`; }
  });

  const render = () => api("/config/render", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ values }),
  });
  const showToml = async () => {
    const r = await render();
    message.textContent = r.ok ? "lorakit train accepts this config" : r.error;
    output.textContent = r.toml;
    return r;
  };
  const plan = async () => {
    const r = await render();
    if (!r.ok) { message.textContent = r.error; return; }
    message.textContent = "planning (the dry run reads the dataset and the model)…";
    const p = await api("/plan", { method: "POST", body: r.toml });
    message.textContent = p.ok ? `${p.steps} steps, about ${p.memory_gb.toFixed(1)} GB` : p.error;
    output.textContent = p.ok ? [p.text, ...p.notes].join("\n") : "";
  };
  const queue = async () => {
    const r = await render();
    if (!r.ok) { message.textContent = r.error; return; }
    const job = await api("/jobs", { method: "POST", body: r.toml });
    location.hash = "jobs";
    return job;
  };
  // Save as TOML under a root, then show the command that runs it (kohya's "Print training
  // command").
  const session = await api("/session");
  const saveRoot = el("select", { "aria-label": "Save in root" }, ...session.roots.map((r) => el("option", { value: String(r.id), text: r.path })));
  const saveFolder = el("input", { type: "text", "aria-label": "Save in folder", placeholder: "folder under the root" });
  const saveName = el("input", { type: "text", "aria-label": "Config file name", placeholder: "name.toml" });
  const save = async (overwrite = false) => {
    const r = await render();
    if (!r.ok) { message.textContent = r.error; return; }
    const response = await fetch("/api/config/save", {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" },
      body: JSON.stringify({ root: Number(saveRoot.value), folder: saveFolder.value.trim(), name: saveName.value.trim(), toml: r.toml, overwrite }),
    });
    const body = await response.json();
    if (response.status === 409 && confirm(`${body.error}\nReplace it?`)) return save(true);
    if (!response.ok) { message.textContent = body.error; return; }
    message.textContent = `saved ${body.path}`;
    output.textContent = body.command;
  };
  const button = (text, action) => el("button", { type: "button", onclick: () => action().catch((e) => { message.textContent = e.message; }) , text });

  showAll();
  if (!current("train")) return;
  page().replaceChildren(
    el("h1", { text: "Train" }),
    el("p", {}, presetPicker, " ", el("label", {}, "or import: ", importer)),
    search,
    ...[...sections.values()].map((s) => s.details),
    el("p", {}, button("Show TOML", showToml), " ", button("Plan", plan), " ", button("Add to queue", queue)),
    el("p", {}, saveRoot, " ", saveFolder, " ", saveName, " ", button("Save as TOML", () => save(false))),
    message,
    output,
  );
}

const pages = { files: () => filesPage(), datasets: datasetsPage, jobs: jobsPage, train: trainPage, options: optionsPage };

function route() {
  for (const fn of cleanups.splice(0)) fn();
  const name = location.hash.slice(1) || "files";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  (pages[name] || pages.files)().catch(showError);
}

window.addEventListener("hashchange", route);
route();
