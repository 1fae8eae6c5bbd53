import { el, api, page, current } from "../ui.js";

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

export async function trainPage() {
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
