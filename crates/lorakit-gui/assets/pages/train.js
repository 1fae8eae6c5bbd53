import { el, api, page, current, t, pageLink, onLeave } from "../ui.js";

// The Train page: a form generated from the config schema (every key of `lorakit train`'s
// config, in the guide's order), started from a preset or an imported kohya config, with the
// base model's family detected by the server (fields of other families hidden, with the reason),
// a live run plan (the dry run's numbers), a sample prompts table written as the prompt file the
// config points to, and Add to queue · Start · Save as TOML · Show CLI.
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
  ["flow", "3.6 Flow matching (Flux, SD3)"],
  ["save", "Saving and resuming"],
  ["samples", "Sample images"],
  ["logging", "Logging"],
];
const OPEN_KEY = "lorakit-train-open";
const DEFAULT_OPEN = ["model", "folders", "dataset", "training"];
const FAMILY_NAMES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL", flux: "Flux", sd3: "SD3 / SD3.5" };

function savedOpen() {
  try { return JSON.parse(localStorage.getItem(OPEN_KEY)) ?? {}; } catch { return {}; }
}
function keepOpen(name, open) {
  const state = savedOpen();
  state[name] = open;
  try { localStorage.setItem(OPEN_KEY, JSON.stringify(state)); } catch { /* private mode: not kept */ }
}

// A folder browser over GET /api/fs: `pick` gets {root, path} of the chosen file or folder.
function browser(roots, { files, label, pick }) {
  const box = el("div", { class: "picker", role: "dialog", "aria-label": label });
  let root = 0;
  let path = "";
  async function show() {
    const listing = await api(`/fs?root=${root}&path=${encodeURIComponent(path)}`);
    const rootPick = el("select", { "aria-label": t("Root") }, ...roots.map((r) => el("option", { value: String(r.id), text: r.path })));
    rootPick.value = String(root);
    rootPick.addEventListener("change", () => { root = Number(rootPick.value); path = ""; show().catch(fail); });
    const up = el("button", { type: "button", text: t("Up"), onclick: () => { path = path.split("/").slice(0, -1).join("/"); show().catch(fail); } });
    up.disabled = !path;
    const entries = listing.entries.filter((e) => e.kind === "dir" || (files && e.kind === "file"));
    box.replaceChildren(
      el("div", { class: "picker-head" }, rootPick, " ", up, " ", el("code", { text: `/${path}` })),
      el("ul", { class: "picker-list" }, ...entries.map((e) => el("li", {},
        el("button", {
          type: "button", class: "link", text: e.kind === "dir" ? `${e.name}/` : e.name,
          onclick: () => {
            const next = path ? `${path}/${e.name}` : e.name;
            if (e.kind === "dir") { path = next; show().catch(fail); } else { box.remove(); pick({ root, path: next }); }
          },
        })))),
      el("p", {},
        el("button", { type: "button", text: t("Use this folder"), onclick: () => { box.remove(); pick({ root, path }); } }), " ",
        el("button", { type: "button", text: t("Cancel"), onclick: () => box.remove() })),
    );
  }
  const fail = (e) => box.replaceChildren(el("p", { class: "error", text: e.message }));
  show().catch(fail);
  return box;
}

const fmtGb = (gb) => (gb >= 1 ? `${gb.toFixed(1)} GB` : `${Math.ceil(gb * 1000)} MB`);
function listText(points) {
  if (!points.length) return t("none");
  return points.length > 8 ? `${points.slice(0, 7).join(", ")}, … (${points.length})` : points.join(", ");
}

export async function trainPage() {
  const [schema, presets, session] = await Promise.all([api("/schema"), api("/presets"), api("/session")]);
  const roots = session.roots;
  // section → key → value the user (or a preset/import) set; absent = the default.
  let values = {};
  let presetFamily = null;
  let model = null; // GET /api/model's answer for the picked base model
  const rows = [];
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const get = (f) => values[f.section]?.[f.key];
  const set = (f, v) => {
    values[f.section] ??= {};
    if (v === undefined || same(v, f.default)) delete values[f.section][f.key];
    else values[f.section][f.key] = v;
  };
  const field = (section, key) => schema.find((f) => f.section === section && f.key === key);

  const message = el("p", { role: "status" });
  const output = el("pre", { class: "log", "aria-label": "Result" });
  const say = (text) => { message.textContent = text; };

  // The family the form is for: the picked model's, else the config's model_family, else the
  // preset's; none: every field shows.
  const family = () => (model?.trainable ? model.family : null) ?? values.model?.model_family ?? presetFamily;

  function input(f) {
    const label = `${f.section}.${f.key}`;
    if (f.kind === "bool") {
      const box = el("input", { type: "checkbox", "aria-label": label });
      box.addEventListener("change", () => { set(f, box.checked); changed(); });
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
    text.addEventListener("change", () => {
      set(f, read());
      if (label === "model.pretrained_model_name_or_path") detectTyped();
      changed();
    });
    const show = () => {
      const v = get(f) ?? f.default;
      text.value = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      text.placeholder = f.default === null ? t("unset") : "";
    };
    return { node: text, show };
  }

  const sections = new Map();
  const opened = savedOpen();
  for (const [name, title] of SECTIONS) {
    const body = el("tbody");
    const note = el("p", { class: "hidden-note muted" });
    const details = el("details", { "data-section": name }, el("summary", { text: t(title) }), note, el("table", {}, body));
    details.open = opened[name] ?? DEFAULT_OPEN.includes(name);
    details.addEventListener("toggle", () => { if (!searching()) keepOpen(name, details.open); });
    sections.set(name, { name, details, body, note, showHidden: false });
  }
  for (const f of schema) {
    const section = sections.get(f.section);
    if (!section) continue;
    const control = input(f);
    const changedMark = el("span", { class: "changed", title: t("changed from the default"), "aria-hidden": "true" });
    const only = el("span", { class: "only muted", text: f.family_reason });
    only.hidden = true;
    const row = el("tr", { "data-key": `${f.section}.${f.key}` },
      el("td", { class: "key" }, el("label", {}, el("code", { text: f.key })), " ", changedMark, el("div", {}, only)),
      el("td", { class: "value" }, control.node),
      el("td", { class: "doc muted" }, el("div", { text: f.doc }), el("div", { text: f.kohya ? `sd-scripts: ${f.kohya}` : "" })),
    );
    rows.push({ f, row, control, changedMark, only, section, haystack: `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase() });
    section.body.append(row);
  }

  const search = el("input", { type: "search", placeholder: t("Find an option"), "aria-label": "Find a training option" });
  const searching = () => Boolean(search.value.trim());
  // Which rows show: a search hides what does not match; a family hides what it does not read
  // (each section says how many and why, with a button to show them).
  function layout() {
    const q = search.value.trim().toLowerCase();
    const fam = family();
    for (const s of sections.values()) s.hiddenReasons = new Map();
    for (const r of rows) {
      const foreign = Boolean(fam) && !r.f.families.includes(fam);
      const matches = !q || r.haystack.includes(q);
      if (foreign && matches && !r.section.showHidden) {
        r.section.hiddenReasons.set(r.f.family_reason, (r.section.hiddenReasons.get(r.f.family_reason) ?? 0) + 1);
      }
      r.only.hidden = !foreign;
      r.row.hidden = !matches || (foreign && !r.section.showHidden);
    }
    for (const s of sections.values()) {
      const hidden = [...s.hiddenReasons.values()].reduce((a, b) => a + b, 0);
      const visible = [...s.body.children].some((tr) => !tr.hidden);
      if (hidden) {
        const which = [...s.hiddenReasons.keys()].join("; ");
        s.note.replaceChildren(
          t("{n} options hidden: they apply to {which}", { n: hidden, which }), " ",
          el("button", { type: "button", class: "link", text: t("(show them)"), onclick: () => { s.showHidden = true; layout(); } }),
        );
      } else if (s.showHidden && fam) {
        s.note.replaceChildren(el("button", { type: "button", class: "link", text: t("Hide the options of other model families"), onclick: () => { s.showHidden = false; layout(); } }));
      } else {
        s.note.replaceChildren();
      }
      s.note.hidden = !s.note.childNodes.length;
      s.details.hidden = q ? !visible : !visible && !hidden;
      if (q) s.details.open = visible;
    }
  }
  let wasSearching = false;
  search.addEventListener("input", () => {
    if (!searching() && wasSearching) {
      const state = savedOpen();
      for (const s of sections.values()) s.details.open = state[s.name] ?? DEFAULT_OPEN.includes(s.name);
    }
    wasSearching = searching();
    layout();
  });

  function mark() {
    for (const r of rows) {
      const v = get(r.f);
      r.changedMark.textContent = v === undefined || same(v, r.f.default) ? "" : "●";
    }
  }
  function showAll() {
    for (const r of rows) r.control.show();
    mark();
    showPicks();
    layout();
  }

  // Base model and dataset, picked under the roots.
  const modelPath = el("code", { class: "pick-path" });
  const modelFamily = el("strong", { class: "family", "aria-label": t("Detected model family") });
  const modelNotes = el("ul", { class: "model-notes muted" });
  const dataPath = el("code", { class: "pick-path" });
  const pickers = el("div");
  const absolute = ({ root, path }) => (path ? `${roots[root].path}/${path}` : roots[root].path);
  // An absolute path as {root, path} under a root, when it is under one.
  const underRoot = (abs) => {
    for (const r of roots) {
      if (abs === r.path) return { root: r.id, path: "" };
      if (abs?.startsWith(`${r.path}/`)) return { root: r.id, path: abs.slice(r.path.length + 1) };
    }
    return null;
  };
  function showPicks() {
    modelPath.textContent = values.model?.pretrained_model_name_or_path ?? t("none picked");
    dataPath.textContent = values.dataset?.train_data_dir ?? t("none picked");
    if (model) {
      modelFamily.textContent = t("{family} · {variant}", { family: model.family_name, variant: model.variant });
      modelFamily.className = `family family-${model.family}`;
      modelNotes.replaceChildren(...model.notes.map((n) => el("li", { text: n })));
    } else {
      const fam = family();
      modelFamily.textContent = fam ? t("{family} (from the preset or config)", { family: FAMILY_NAMES[fam] ?? fam }) : "";
      modelFamily.className = "family";
      modelNotes.replaceChildren();
    }
  }
  async function detect(place) {
    try {
      model = await api(`/model?root=${place.root}&path=${encodeURIComponent(place.path)}`);
      set(field("model", "pretrained_model_name_or_path"), model.path);
      if (!model.trainable) say(t("{path}: lorakit does not train this model family", { path: model.path }));
    } catch (e) {
      model = null;
      say(e.message);
    }
    showAll();
    changed();
  }
  // A path typed in the form (or from a preset or import) is detected when it is under a root.
  function detectTyped() {
    const place = underRoot(values.model?.pretrained_model_name_or_path);
    if (place) detect(place);
    else { model = null; showPicks(); layout(); }
  }
  const pickModel = el("button", { type: "button", text: t("Choose base model…"), onclick: () => {
    pickers.replaceChildren(browser(roots, { files: true, label: t("Choose base model…"), pick: detect }));
  } });
  const pickData = el("button", { type: "button", text: t("Choose dataset folder…"), onclick: () => {
    pickers.replaceChildren(browser(roots, { files: false, label: t("Choose dataset folder…"), pick: (place) => {
      set(field("dataset", "train_data_dir"), absolute(place));
      showAll();
      changed();
    } }));
  } });

  // Starting points: a preset, or an imported kohya config whose notes are listed.
  const importNotes = el("div", { class: "import-notes" });
  const presetPicker = el("select", { "aria-label": "Preset" }, el("option", { value: "", text: t("Start from a preset…") }),
    ...presets.map((p) => el("option", { value: p.name, text: `${p.name}: ${p.about}` })));
  presetPicker.addEventListener("change", async () => {
    if (!presetPicker.value) return;
    try {
      const preset = await api(`/presets/${encodeURIComponent(presetPicker.value)}`);
      const kept = values.model?.pretrained_model_name_or_path;
      const data = values.dataset?.train_data_dir;
      values = preset.values;
      // The picked model and dataset stay: a preset is about the settings.
      if (kept) { values.model ??= {}; values.model.pretrained_model_name_or_path = kept; }
      if (data) { values.dataset ??= {}; values.dataset.train_data_dir = data; }
      presetFamily = presets.find((p) => p.name === presetPicker.value)?.family ?? null;
      showAll();
      changed();
      say(t("preset {name} loaded", { name: presetPicker.value }));
    } catch (e) { say(e.message); }
  });
  const importer = el("input", { type: "file", accept: ".json,.toml", "aria-label": "Import a kohya_ss GUI JSON or sd-scripts TOML" });
  importer.addEventListener("change", async () => {
    const file = importer.files[0];
    if (!file) return;
    try {
      const imported = await api("/config/import", { method: "POST", body: await file.text() });
      values = imported.values;
      presetFamily = null;
      importNotes.replaceChildren(
        el("h2", { text: t("Import notes: {file}", { file: file.name }) }),
        imported.notes.length ? el("ul", { "aria-label": t("Import notes") }, ...imported.notes.map((n) => el("li", { text: n }))) : el("p", { class: "muted", text: t("Every key was taken over as it was.") }),
      );
      if (imported.prompts) await loadPromptText(imported.prompts);
      showAll();
      detectTyped();
      changed();
      say(t("{file} imported", { file: file.name }));
    } catch (e) { say(`${file.name}: ${e.message}`); }
  });

  // Sample prompts: a table written as sd-scripts prompt lines (the file samples.sample_prompts
  // names), read back from an existing prompt file by the trainer's own parser.
  const COLUMNS = [
    ["prompt", "Prompt", "text"], ["negative", "Negative", "text"], ["width", "Width", "int"], ["height", "Height", "int"],
    ["steps", "Steps", "int"], ["cfg", "CFG", "float"], ["seed", "Seed", "int"],
  ];
  const promptBody = el("tbody");
  let promptsSaved = null; // the path the table was last read from or written to
  let promptsDirty = false;
  let promptRows = [];
  function promptRow(data) {
    const cells = COLUMNS.map(([key, title, kind]) => {
      const box = el("input", { type: "text", "aria-label": t(title), "data-col": key, spellcheck: "false" });
      if (kind !== "text") box.inputMode = kind === "float" ? "decimal" : "numeric";
      box.value = data[key] ?? "";
      box.placeholder = kind === "text" ? "" : t("default");
      box.addEventListener("change", () => { promptsDirty = true; });
      return { key, kind, box };
    });
    const remove = el("button", { type: "button", class: "link", text: t("Remove") });
    const tr = el("tr", {}, ...cells.map((c) => el("td", { "data-label": t(COLUMNS.find((col) => col[0] === c.key)[1]) }, c.box)), el("td", {}, remove));
    const entry = { tr, cells, sampler: data.sampler ?? null };
    remove.addEventListener("click", () => { promptRows = promptRows.filter((r) => r !== entry); tr.remove(); promptsDirty = true; });
    promptRows.push(entry);
    promptBody.append(tr);
  }
  const readRows = () => promptRows.map((r) => {
    const row = { sampler: r.sampler };
    for (const c of r.cells) {
      const raw = c.box.value.trim();
      row[c.key] = raw === "" ? null : c.kind === "text" ? raw : Number(raw);
      if (c.kind !== "text" && raw !== "" && !Number.isFinite(row[c.key])) throw new Error(t("{column}: {value} is not a number", { column: c.key, value: raw }));
    }
    return row;
  });
  function setPromptRows(list) {
    promptRows = [];
    promptBody.replaceChildren();
    for (const r of list) promptRow(r);
  }
  async function loadPromptText(text) {
    const parsed = await api("/prompts/parse", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ text }) });
    setPromptRows(parsed.rows);
    promptsDirty = true;
  }
  const promptWarnings = el("ul", { class: "muted" });
  async function loadPromptFile(place) {
    try {
      const read = await api(`/prompts?root=${place.root}&path=${encodeURIComponent(place.path)}`);
      setPromptRows(read.rows);
      promptWarnings.replaceChildren(...read.warnings.map((w) => el("li", { text: w })));
      // A .txt file is the one written back; other formats are read, then written as .txt.
      promptsSaved = read.path.endsWith(".txt") ? read.path : null;
      promptsDirty = !promptsSaved;
      if (promptsSaved) { set(field("samples", "sample_prompts"), read.path); showAll(); changed(); }
      say(t("{n} prompts read from {path}", { n: read.rows.length, path: read.path }));
    } catch (e) { say(e.message); }
  }
  const promptPicker = el("div");
  const promptsPanel = el("div", { class: "prompts" },
    el("p", { class: "muted", text: t("Written as the prompt file samples.sample_prompts names (sd-scripts' --n --w --h --s --l --d), next to the saved config. Empty cells use the run's defaults.") }),
    el("table", { class: "prompt-table", "aria-label": t("Sample prompts") },
      el("thead", {}, el("tr", {}, ...COLUMNS.map(([, title]) => el("th", { text: t(title) })), el("th"))), promptBody),
    el("p", {},
      el("button", { type: "button", text: t("Add prompt"), onclick: () => { promptRow({}); promptsDirty = true; } }), " ",
      el("button", { type: "button", text: t("Read a prompt file…"), onclick: () => promptPicker.replaceChildren(browser(roots, { files: true, label: t("Read a prompt file…"), pick: loadPromptFile })) })),
    promptPicker, promptWarnings,
  );
  sections.get("samples").details.append(promptsPanel);

  // Where Save as TOML writes (the prompt file goes beside it).
  const saveRoot = el("select", { "aria-label": "Save in root" }, ...roots.map((r) => el("option", { value: String(r.id), text: r.path })));
  const saveFolder = el("input", { type: "text", "aria-label": "Save in folder", placeholder: t("folder under the root") });
  const saveName = el("input", { type: "text", "aria-label": "Config file name", placeholder: "name.toml" });
  const place = () => ({ root: Number(saveRoot.value), folder: saveFolder.value.trim() });
  const post = async (path, body) => {
    const response = await fetch(`/api${path}`, {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    return { response, body: await response.json().catch(() => ({ error: response.statusText })) };
  };

  // The table's prompts written beside the config (`<name>-prompts.txt`) when they changed;
  // samples.sample_prompts then names that file.
  async function writePrompts(stem) {
    if (!promptRows.length || !promptsDirty) return true;
    const rowsNow = readRows();
    const name = `${stem.replace(/\.toml$/, "")}-prompts`;
    const target = `${absolute({ root: place().root, path: place().folder })}/${name}.txt`;
    let answer = await post("/prompts/save", { ...place(), name, rows: rowsNow, overwrite: target === promptsSaved });
    if (answer.response.status === 409 && confirm(`${answer.body.error}\n${t("Replace it?")}`)) {
      answer = await post("/prompts/save", { ...place(), name, rows: rowsNow, overwrite: true });
    }
    if (!answer.response.ok) { say(answer.body.error); return false; }
    promptsSaved = answer.body.path;
    promptsDirty = false;
    set(field("samples", "sample_prompts"), answer.body.path);
    showAll();
    return true;
  }
  const configStem = () => saveName.value.trim() || values.folders?.output_name || "lorakit";

  const render = () => api("/config/render", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ values }),
  });
  const showToml = async () => {
    const r = await render();
    say(r.ok ? t("lorakit train accepts this config") : r.error);
    output.textContent = r.toml;
    return r;
  };
  const queue = async () => {
    if (!(await writePrompts(configStem()))) return null;
    const r = await render();
    if (!r.ok) { say(r.error); return null; }
    const job = await api("/jobs", { method: "POST", body: r.toml });
    say(t("queued job {id}", { id: job.id }));
    return job;
  };
  const start = async () => {
    const job = await queue();
    if (job) location.hash = pageLink("jobs", { job: job.id });
  };
  const save = async (overwrite = false) => {
    if (!saveName.value.trim()) { say(t("Give the config file a name")); saveName.focus(); return; }
    if (!(await writePrompts(saveName.value.trim()))) return;
    const r = await render();
    if (!r.ok) { say(r.error); return; }
    const answer = await post("/config/save", { ...place(), name: saveName.value.trim(), toml: r.toml, overwrite });
    if (answer.response.status === 409 && confirm(`${answer.body.error}\n${t("Replace it?")}`)) return save(true);
    if (!answer.response.ok) { say(answer.body.error); return; }
    say(t("saved {path}", { path: answer.body.path }));
    output.textContent = answer.body.command;
  };
  // kohya's "Print training command": the lorakit commands that run this config once saved.
  const showCli = async () => {
    const answer = await post("/config/command", { ...place(), name: configStem() });
    if (!answer.response.ok) { say(answer.body.error); return; }
    say(t("The commands that run this config once it is saved (Save as TOML) under that name:"));
    output.textContent = `${answer.body.command}\n${answer.body.dry_run}`;
  };
  const button = (text, action, extra = {}) => el("button", { type: "button", ...extra, onclick: () => action().catch((e) => say(e.message)), text });

  // The live run plan: the dry run of the form's config, shortly after each change.
  const planBody = el("div", { class: "plan-body", "aria-live": "polite" }, el("p", { class: "muted", text: t("Planning…") }));
  const planPanel = el("aside", { class: "plan", "aria-label": t("Run plan") }, el("h2", { text: t("Run plan") }), planBody,
    el("p", { class: "muted small", text: t("The numbers of lorakit train --dry-run for this form.") }));
  let planTimer = null;
  let planSeq = 0;
  function changed() {
    mark();
    // Marked stale at once: what the panel shows is not this form's plan until the next one.
    planBody.classList.add("stale");
    clearTimeout(planTimer);
    planTimer = setTimeout(() => { replan().catch((e) => showPlanError(e.message)); }, 600);
  }
  onLeave(() => clearTimeout(planTimer));
  const stat = (label, value, key) => [el("dt", { text: label }), el("dd", { "data-plan": key, text: value })];
  function showPlanError(text) {
    planBody.replaceChildren(el("p", { class: "plan-error", role: "alert", "data-plan": "error" }, el("strong", { text: t("Blocking: ") }), text));
  }
  async function replan() {
    const seq = ++planSeq;
    planBody.classList.add("stale");
    const r = await render();
    if (seq !== planSeq) return;
    if (!r.ok) { planBody.classList.remove("stale"); showPlanError(r.error); return; }
    const p = await api("/plan", { method: "POST", body: r.toml });
    if (seq !== planSeq) return;
    planBody.classList.remove("stale");
    if (!p.ok) { showPlanError(p.error); return; }
    const fits = p.available_gb == null ? null : p.memory_gb <= p.available_gb;
    const memory = el("dd", { "data-plan": "memory" },
      el("span", { "data-plan": "memory_gb", text: fmtGb(p.memory_gb) }),
      el("div", { class: "muted small", text: t("weights {w} · LoRA + optimizer {n} · activations {a}", { w: fmtGb(p.memory.weights_gb), n: fmtGb(p.memory.network_gb), a: fmtGb(p.memory.activations_gb) }) }),
      el("div", { class: fits === false ? "severity-error" : "muted small", text: p.available_gb == null
        ? t("device {device}; cards: {cards}", { device: p.device, cards: p.cards })
        : t("device {device}: {free} free now", { device: p.device, free: fmtGb(p.available_gb) }) }));
    planBody.replaceChildren(
      el("dl", {},
        ...stat(t("Steps"), String(p.steps), "steps"),
        ...stat(t("Warm-up"), t("{n} steps", { n: p.warmup_steps }), "warmup"),
        ...stat(t("Epochs"), String(p.epochs), "epochs"),
        ...stat(t("Images"), t("{n} images, {b} batches per epoch", { n: p.images, b: p.batches_per_epoch }), "images"),
        ...stat(t("Saves"), listText(p.save_points), "saves"),
        ...stat(t("Samples"), listText(p.sample_points), "samples"),
        el("dt", { text: t("Memory") }), memory),
      p.warnings.length ? el("ul", { class: "plan-warnings", "aria-label": t("Warnings") }, ...p.warnings.map((w) => el("li", { class: "severity-warning", text: w }))) : "",
      p.notes.length ? el("details", { class: "plan-notes" }, el("summary", { text: t("{n} notes", { n: p.notes.length }) }), el("ul", {}, ...p.notes.map((n) => el("li", { class: "muted", text: n })))) : "",
    );
  }

  showAll();
  if (!current("train")) return;
  page().replaceChildren(
    el("h1", { text: t("Train") }),
    el("div", { class: "train-layout" },
      el("div", { class: "train-form" },
        el("p", { class: "starts" }, presetPicker, " ", el("label", {}, t("or import: "), importer)),
        importNotes,
        el("div", { class: "picks" },
          el("div", { class: "pick" }, el("span", { class: "pick-label", text: t("Base model") }), modelPath, " ", modelFamily, " ", pickModel, modelNotes),
          el("div", { class: "pick" }, el("span", { class: "pick-label", text: t("Dataset") }), dataPath, " ", pickData)),
        pickers,
        search,
        ...[...sections.values()].map((s) => s.details),
        el("p", { class: "actions" }, button(t("Add to queue"), queue), " ", button(t("Start"), start, { class: "primary" }), " ",
          button(t("Save as TOML"), () => save(false)), " ", button(t("Show CLI"), showCli), " ", button(t("Show TOML"), showToml)),
        el("p", { class: "save-place" }, saveRoot, " ", saveFolder, " ", saveName),
        message,
        output),
      planPanel),
  );
  changed();
}
