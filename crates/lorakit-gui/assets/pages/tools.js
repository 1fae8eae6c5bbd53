// The Resize · Merge · Convert page (and XY plots): LoRA file tools run as jobs in the queue,
// with a preview of the rank each module gets before a resize writes anything. Other pages link
// here with `#tools?op=resize|merge|convert|xy&root=N&path=REL` (the file to start from), and
// the Jobs page's Clone & edit with `#tools?op=…&job=ID` (the form refilled from that job).
import { el, api, page, current, pageLink, onLeave, t } from "../ui.js";

const OPS = ["resize", "merge", "convert", "xy"];
const statusName = (status) => ({ queued: t("queued"), running: t("running"), done: t("done"), failed: t("failed"), stopped: t("stopped"), interrupted: t("interrupted") })[status] ?? status;

const fmtBytes = (n) => n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
const pct = (x) => (x == null || !isFinite(x) ? "" : `${(100 * x).toFixed(1)}%`);
const stemOf = (path) => (path.split("/").pop() || "").replace(/\.[^.]+$/, "");
const folderOf = (path) => path.split("/").slice(0, -1).join("/");
// A number field's value, or undefined when empty (the server then takes lorakit's default).
const num = (input) => (input.value.trim() === "" ? undefined : Number(input.value));

// A labelled input; its name is the label alone (the hint under it is not part of it).
const field = (label, input, hint) => {
  if (!input.hasAttribute("aria-label")) input.setAttribute("aria-label", label);
  return el("label", { class: "field" }, el("span", { text: label }), input, hint ? el("small", { class: "muted", text: hint }) : "");
};
const numberInput = (value, attrs = {}) => el("input", { type: "number", value: value ?? "", ...attrs });
const select = (options, value) => {
  const node = el("select", {}, ...options.map(([v, text]) => el("option", { value: v, text })));
  node.value = value ?? options[0][0];
  return node;
};

/**
 * A file (or folder) under a root: the root, the path as text, and Browse to pick it from a
 * listing (GET /api/fs). `ext`: the file type picked (".safetensors"); `folders`: pick a folder;
 * `orFolder`: a file or a folder (a base model: a single file or a diffusers folder).
 */
function picker(roots, { label, ext = ".safetensors", folders = false, orFolder = false, initial = null, onchange = () => {} }) {
  const rootSelect = select(roots.map((r) => [String(r.id), r.name]), String(initial?.root ?? 0));
  rootSelect.setAttribute("aria-label", t("{label}: root", { label }));
  const path = el("input", { type: "text", value: initial?.path ?? "", "aria-label": label, placeholder: folders ? t("folder under the root") : t("file under the root"), spellcheck: "false" });
  const listing = el("div", { class: "listing", hidden: "" });
  let at = "";
  async function browse(folder) {
    at = folder;
    const { entries } = await api(`/fs?root=${rootSelect.value}&path=${encodeURIComponent(folder)}`);
    const join = (name) => (folder ? `${folder}/${name}` : name);
    const items = [];
    if (folder) items.push(el("button", { type: "button", class: "link", text: "../", onclick: () => browse(folderOf(folder)).catch(shown) }));
    if (folders || (orFolder && folder)) items.push(el("button", { type: "button", text: t("Use this folder"), onclick: () => choose(folder) }));
    for (const e of entries) {
      if (e.kind === "dir") items.push(el("button", { type: "button", class: "link", text: `${e.name}/`, onclick: () => browse(join(e.name)).catch(shown) }));
      else if (!folders && e.kind === "file" && e.name.endsWith(ext)) items.push(el("button", { type: "button", class: "link file", text: e.name, onclick: () => choose(join(e.name)) }));
    }
    listing.replaceChildren(el("div", { class: "muted", text: `${roots[Number(rootSelect.value)]?.name ?? ""}/${folder}` }), ...items);
  }
  const shown = (e) => listing.replaceChildren(el("p", { class: "error", text: e.message }));
  function choose(value) {
    path.value = value;
    listing.hidden = true;
    onchange();
  }
  const toggle = el("button", { type: "button", text: t("Browse"), "aria-label": t("Browse for {label}", { label }), onclick: () => {
    listing.hidden = !listing.hidden;
    if (!listing.hidden) browse(folders ? path.value.trim() : folderOf(path.value.trim())).catch(() => browse("").catch(shown));
  } });
  rootSelect.addEventListener("change", () => { if (!listing.hidden) browse("").catch(shown); onchange(); });
  path.addEventListener("change", onchange);
  const row = el("div", { class: "tool-picker" }, roots.length > 1 ? rootSelect : "", path, toggle);
  return {
    node: el("div", { class: "field" }, el("span", { text: label }), row, listing),
    value: () => ({ root: Number(rootSelect.value), path: path.value.trim() }),
    set(v) { if (v) { rootSelect.value = String(v.root ?? 0); path.value = v.path ?? ""; } },
    get at() { return at; },
  };
}

/** Where a result goes: a folder, a file name, and whether an existing file is replaced. */
function outputFields(roots, { ext, initialName = "" }) {
  const folder = picker(roots, { label: t("Output folder"), folders: true });
  const name = el("input", { type: "text", value: initialName, "aria-label": t("Output file name"), spellcheck: "false" });
  const overwrite = el("input", { type: "checkbox" });
  return {
    node: el("fieldset", { class: "output" }, el("legend", { text: t("Output") }),
      folder.node,
      field(t("File name"), name, t("{ext} is added when missing", { ext })),
      el("label", { class: "check" }, overwrite, t("Replace an existing file"))),
    value: () => ({ ...folder.value(), name: name.value.trim(), overwrite: overwrite.checked }),
    set(v) { if (v) { folder.set(v); name.value = v.name ?? ""; overwrite.checked = !!v.overwrite; } },
    suggest(root, path, suffix) { folder.set({ root, path: folderOf(path) }); name.value = `${stemOf(path)}${suffix}`; },
  };
}

/** The line under a section's button: what was queued (with a link to the queue), then its result. */
function jobStatus() {
  const node = el("div", { class: "job-status", role: "status" });
  let timer = null;
  const stop = () => { if (timer) clearInterval(timer); timer = null; };
  return {
    node,
    stop,
    error(e) { stop(); node.replaceChildren(el("p", { class: "error", text: e.message })); },
    // Follows the job until it ends; a finished XY plot shows its image, a file its folder.
    follow(job) {
      stop();
      const show = (j) => {
        const head = el("p", {}, t("queued job {id}", { id: j.id }), " · ", el("a", { href: pageLink("jobs"), text: t("Jobs") }), " · ", el("span", { class: `status-${j.status}`, text: statusName(j.status) }));
        const parts = [head];
        if (j.progress?.line && j.status === "running") parts.push(el("p", { class: "muted", text: j.progress.line }));
        if (j.error) parts.push(el("p", { class: "error", text: j.error }));
        if (j.status === "done") {
          for (const f of j.files ?? []) {
            if (j.kind === "generate") parts.push(el("img", { class: "plot", src: `/api/image/${encodeURIComponent(f.image)}`, alt: t("XY plot of job {id}", { id: j.id }) }));
            else parts.push(el("p", {}, t("written: "), el("a", { href: pageLink("files", { root: f.root, path: folderOf(f.path) }), text: f.path })));
          }
        }
        node.replaceChildren(...parts);
        if (!["queued", "running"].includes(j.status)) stop();
      };
      show(job);
      timer = setInterval(() => api(`/jobs/${job.id}`).then((j) => { if (!node.isConnected) stop(); else show(j); }).catch(() => stop()), 1500);
    },
  };
}

function resizeSection(roots, statusFor) {
  const status = statusFor();
  const rank = numberInput(8, { min: "1", step: "1" });
  const convRank = numberInput("", { min: "1", step: "1", placeholder: t("same as rank") });
  const dynamic = select([["", t("fixed rank")], ["sv_ratio", "sv_ratio"], ["sv_fro", "sv_fro"], ["sv_cumulative", "sv_cumulative"]]);
  const param = numberInput("", { step: "any" });
  const precision = select([["fp32", "fp32"], ["fp16", "fp16"], ["bf16", "bf16"]]);
  const output = outputFields(roots, { ext: ".safetensors" });
  const input = picker(roots, { label: t("LoRA file"), onchange: () => { const v = input.value(); if (v.path) output.suggest(v.root, v.path, `-r${rank.value || 8}`); } });
  const preview = el("div", { class: "preview" });
  const settings = () => ({ rank: num(rank), conv_rank: num(convRank), dynamic: dynamic.value || undefined, param: num(param), precision: precision.value });
  const previewButton = el("button", { type: "button", text: t("Preview"), onclick: async () => {
    preview.replaceChildren(el("p", { class: "muted", text: t("Computing the rank of each module…") }));
    try {
      const p = await api("/resize/preview", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ...input.value(), ...settings() }) });
      const ranks = p.modules.map((m) => m.rank);
      preview.replaceChildren(
        el("p", { class: "summary" },
          t("{n} modules · ranks {low}–{high} · size {before} → about {after}", { n: p.modules.length, low: Math.min(...ranks), high: Math.max(...ranks), before: fmtBytes(p.bytes_before), after: fmtBytes(p.bytes_after) })),
        el("p", { class: "muted", text: p.average }),
        // SVD pads a module up to the new rank with near-zero directions: bigger, no better.
        p.params_after > p.params_before
          ? el("p", { class: "warning", text: t("The result is larger than the file: rank {rank} is above its modules' ranks (up to {old}).", { rank: rank.value, old: Math.max(...p.modules.map((m) => m.old_rank)) }) })
          : "",
        el("div", { class: "scroll" }, el("table", { class: "preview-table", "aria-label": t("Resize preview") },
          el("thead", {}, el("tr", {}, ...[t("module"), t("rank"), t("new rank"), t("norm retained"), t("sum retained")].map((h) => el("th", { text: h })))),
          el("tbody", {}, ...p.modules.map((m) => el("tr", {},
            el("td", { class: "module", text: m.name }),
            el("td", { class: "num", text: String(m.old_rank) }),
            el("td", { class: "num new-rank", text: String(m.rank) }),
            el("td", { class: "num", text: pct(m.fro_retained) }),
            el("td", { class: "num", text: pct(m.sum_retained) })))))),
      );
    } catch (e) {
      preview.replaceChildren(el("p", { class: "error", text: e.message }));
    }
  } });
  const go = el("button", { type: "button", class: "primary", text: t("Resize"), onclick: () =>
    api("/resize", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input: input.value(), output: output.value(), ...settings() }) })
      .then((job) => status.follow(job), (e) => status.error(e)) });
  return {
    node: el("section", { class: "tool", "aria-label": t("Resize") },
      el("p", { class: "muted", text: t("Shrink a LoRA by SVD as sd-scripts' resize_lora.py does (lorakit resize). Preview shows the rank each module gets before anything is written.") }),
      input.node,
      el("div", { class: "row" }, field(t("Rank"), rank, t("with a dynamic method: the largest rank")), field(t("Conv rank"), convRank), field(t("Dynamic method"), dynamic), field(t("Parameter"), param, t("sv_ratio: ≥ 2; sv_fro, sv_cumulative: between 0 and 1")), field(t("Precision"), precision)),
      output.node,
      el("p", { class: "buttons" }, previewButton, go),
      status.node,
      preview),
    start(root, path) { input.set({ root, path }); output.suggest(root, path, `-r${rank.value || 8}`); },
    fill(r) {
      input.set(r.input); output.set(r.output);
      rank.value = r.rank ?? ""; convRank.value = r.conv_rank ?? ""; dynamic.value = (r.dynamic ?? "").replace(/-/g, "_"); param.value = r.param ?? ""; precision.value = r.precision ?? "fp32";
    },
  };
}

function mergeSection(roots, statusFor) {
  const status = statusFor();
  const list = el("div", { class: "inputs" });
  const rows = [];
  const output = outputFields(roots, { ext: ".safetensors", initialName: "merged" });
  function addRow(value, ratio = 1) {
    const n = rows.length + 1;
    const file = picker(roots, { label: t("LoRA {n}", { n }), initial: value });
    const weight = numberInput(ratio, { step: "any", "aria-label": t("Ratio of LoRA {n}", { n }) });
    const row = { file, weight, node: null };
    row.node = el("div", { class: "input-row" }, file.node, field(t("Ratio"), weight), el("button", { type: "button", class: "link", text: t("Remove"), onclick: () => {
      rows.splice(rows.indexOf(row), 1);
      row.node.remove();
    } }));
    rows.push(row);
    list.append(row.node);
  }
  const rank = numberInput(16, { min: "1", step: "1" });
  const convRank = numberInput("", { min: "1", step: "1", placeholder: t("same as rank") });
  const precision = select([["fp32", "fp32"], ["fp16", "fp16"], ["bf16", "bf16"]]);
  const go = el("button", { type: "button", class: "primary", text: t("Merge"), onclick: () => {
    const inputs = rows.map((r) => ({ ...r.file.value(), ratio: num(r.weight) ?? 1 }));
    api("/merge", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ inputs, output: output.value(), rank: num(rank), conv_rank: num(convRank), precision: precision.value }) })
      .then((job) => status.follow(job), (e) => status.error(e));
  } });
  return {
    node: el("section", { class: "tool", "aria-label": t("Merge") },
      el("p", { class: "muted", text: t("A weighted sum of LoRAs, re-factored by SVD to one rank (lorakit merge, as sd-scripts' svd_merge_lora.py). A negative ratio subtracts.") }),
      list,
      el("p", {}, el("button", { type: "button", text: t("Add a LoRA"), onclick: () => addRow() })),
      el("div", { class: "row" }, field(t("Rank"), rank), field(t("Conv rank"), convRank), field(t("Precision"), precision)),
      output.node,
      el("p", { class: "buttons" }, go),
      status.node),
    start(root, path) { rows.length = 0; list.replaceChildren(); addRow({ root, path }); addRow(); output.suggest(root, path, "-merged"); },
    init() { if (!rows.length) { addRow(); addRow(); } },
    fill(r) {
      rows.length = 0; list.replaceChildren();
      for (const i of r.inputs ?? []) addRow(i, i.ratio ?? 1);
      output.set(r.output); rank.value = r.rank ?? ""; convRank.value = r.conv_rank ?? ""; precision.value = r.precision ?? "fp32";
    },
  };
}

function convertSection(roots, statusFor) {
  const status = statusFor();
  const to = select([["kohya", t("kohya (ComfyUI, A1111, Forge)")], ["peft", t("PEFT / diffusers")]]);
  const family = select([["", t("detect from the file")], ["sd15", "SD 1.5"], ["sdxl", "SDXL"], ["flux", "Flux.1"], ["sd3", "SD3 / SD3.5"]]);
  const precision = select([["", t("the input's")], ["fp32", "fp32"], ["fp16", "fp16"], ["bf16", "bf16"]]);
  const output = outputFields(roots, { ext: ".safetensors" });
  const input = picker(roots, { label: t("LoRA file"), onchange: () => { const v = input.value(); if (v.path) output.suggest(v.root, v.path, `-${to.value}`); } });
  const go = el("button", { type: "button", class: "primary", text: t("Convert"), onclick: () =>
    api("/convert", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input: input.value(), output: output.value(), to: to.value, family: family.value || undefined, precision: precision.value || undefined }) })
      .then((job) => status.follow(job), (e) => status.error(e)) });
  return {
    node: el("section", { class: "tool", "aria-label": t("Convert") },
      el("p", { class: "muted", text: t("Rename a LoRA's keys between kohya and PEFT/diffusers naming (lorakit convert); the effective weights stay the same.") }),
      input.node,
      el("div", { class: "row" }, field(t("To"), to), field(t("Base model"), family), field(t("Precision"), precision)),
      output.node,
      el("p", { class: "buttons" }, go),
      status.node),
    start(root, path) { input.set({ root, path }); output.suggest(root, path, `-${to.value}`); },
    fill(r) { input.set(r.input); output.set(r.output); to.value = r.to ?? "kohya"; family.value = r.family ?? ""; precision.value = r.precision ?? ""; },
  };
}

function xySection(roots, statusFor) {
  const status = statusFor();
  const model = picker(roots, { label: t("Base model"), orFolder: true });
  // Flux's and SD3's separate parts (lorakit generate --clip-l --clip-g --t5xxl --ae), and a VAE
  // in place of the model's (--vae; not Flux).
  const labels = { clip_l: t("CLIP-L"), clip_g: t("CLIP-G (SD3)"), t5xxl: t("T5-XXL"), ae: t("Autoencoder (ae, Flux)"), vae: t("VAE (instead of the model's; not Flux)") };
  const parts = Object.entries(labels).map(([key, label]) => [key, picker(roots, { label })]);
  const list = el("div", { class: "inputs" });
  const rows = [];
  function addRow(value, weight = 1) {
    const n = rows.length + 1;
    const file = picker(roots, { label: t("Row {n}: LoRA", { n }), initial: value });
    const strength = numberInput(weight, { step: "any", "aria-label": t("Weight of row {n}", { n }) });
    const row = { file, strength, node: null };
    row.node = el("div", { class: "input-row" }, file.node, field(t("Weight"), strength), el("button", { type: "button", class: "link", text: t("Remove"), onclick: () => {
      rows.splice(rows.indexOf(row), 1);
      row.node.remove();
    } }));
    rows.push(row);
    list.append(row.node);
  }
  const prompts = el("textarea", { rows: "3", "aria-label": t("Prompts, one per line (the columns)"), spellcheck: "false" });
  const negative = el("input", { type: "text", "aria-label": t("Negative prompt") });
  const steps = numberInput("", { min: "1", step: "1", placeholder: t("model's") });
  const cfg = numberInput("", { step: "any", placeholder: t("model's") });
  const seed = numberInput(0, { min: "0", step: "1" });
  const width = numberInput("", { min: "8", step: "8", placeholder: t("model's") });
  const height = numberInput("", { min: "8", step: "8", placeholder: t("model's") });
  const baseline = el("input", { type: "checkbox" });
  const device = select([["cpu", "CPU"], ["cuda", "CUDA"], ["metal", "Metal"]]);
  const output = outputFields(roots, { ext: ".png", initialName: "xy-plot" });
  const go = el("button", { type: "button", class: "primary", text: t("Queue XY plot"), onclick: () => {
    const body = {
      model: model.value(),
      loras: rows.map((r) => ({ ...r.file.value(), weight: num(r.strength) ?? 1 })).filter((l) => l.path),
      prompts: prompts.value.split("\n").map((p) => p.trim()).filter(Boolean),
      negative: negative.value.trim() || undefined,
      steps: num(steps), cfg: num(cfg), seed: num(seed), width: num(width), height: num(height),
      baseline: baseline.checked, device: device.value, output: output.value(),
    };
    for (const [key, p] of parts) if (p.value().path) body[key] = p.value();
    api("/generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then((job) => status.follow(job), (e) => status.error(e));
  } });
  return {
    node: el("section", { class: "tool", "aria-label": t("XY plot") },
      el("p", { class: "muted", text: t("LoRA files as rows × prompts as columns, one labelled image (lorakit generate --grid), every cell with the same seed.") }),
      model.node,
      el("details", {}, el("summary", { text: t("Flux and SD3: text encoder and autoencoder files") }),
        el("p", { class: "muted", text: t("Only for a model file that does not hold them; a diffusers folder has its own.") }),
        ...parts.map(([, p]) => p.node)),
      list,
      el("p", {}, el("button", { type: "button", text: t("Add a row"), onclick: () => addRow() }), " ", el("label", { class: "check" }, baseline, t("First row without a LoRA"))),
      field(t("Prompts, one per line (the columns)"), prompts),
      field(t("Negative prompt"), negative),
      el("div", { class: "row" }, field(t("Steps"), steps, t("SD 25 · Flux 20 · SD3 30")), field(t("CFG scale"), cfg, t("SD 7 · Flux 1 · SD3 7.5")), field(t("Seed"), seed), field(t("Width"), width), field(t("Height"), height), field(t("Device"), device)),
      output.node,
      el("p", { class: "buttons" }, go),
      status.node),
    start(root, path) { rows.length = 0; list.replaceChildren(); addRow({ root, path }); output.suggest(root, path, "-xy"); },
    init() { if (!rows.length) addRow(); },
    fill(r) {
      model.set(r.model);
      for (const [key, p] of parts) p.set(r[key]);
      rows.length = 0; list.replaceChildren();
      for (const l of r.loras ?? []) addRow(l, l.weight ?? 1);
      prompts.value = (r.prompts ?? []).join("\n"); negative.value = r.negative ?? "";
      steps.value = r.steps ?? ""; cfg.value = r.cfg ?? ""; seed.value = r.seed ?? 0; width.value = r.width ?? ""; height.value = r.height ?? "";
      baseline.checked = !!r.baseline; device.value = r.device ?? "cpu"; output.set(r.output);
    },
  };
}

export async function toolsPage(params = new URLSearchParams()) {
  const { roots } = await api("/session");
  const statuses = [];
  const statusFor = () => { const s = jobStatus(); statuses.push(s); return s; };
  onLeave(() => statuses.forEach((s) => s.stop()));
  const sections = { resize: resizeSection(roots, statusFor), merge: mergeSection(roots, statusFor), convert: convertSection(roots, statusFor), xy: xySection(roots, statusFor) };
  const names = { resize: t("Resize"), merge: t("Merge"), convert: t("Convert"), xy: t("XY plot") };
  let op = OPS.includes(params.get("op")) ? params.get("op") : "resize";
  const tabs = el("div", { class: "tabs", role: "tablist", "aria-label": t("Tools") });
  const show = (name) => {
    op = name;
    for (const b of tabs.children) b.setAttribute("aria-selected", String(b.dataset.op === name));
    for (const [key, s] of Object.entries(sections)) s.node.hidden = key !== name;
  };
  for (const name of OPS) tabs.append(el("button", { type: "button", role: "tab", "data-op": name, text: names[name], onclick: () => show(name) }));
  for (const s of Object.values(sections)) s.init?.();
  const note = el("p", { role: "status" });
  const root = params.get("root"), path = params.get("path"), job = params.get("job");
  if (path != null && path !== "") sections[op].start(Number(root ?? 0), path);
  if (job) {
    try {
      const { request } = await api(`/jobs/${encodeURIComponent(job)}/command`);
      sections[op].fill(request);
      note.textContent = t("The settings of job {id}: change them, then queue again.", { id: job });
    } catch (e) {
      note.textContent = e.message;
    }
  }
  if (!current("tools")) return;
  show(op);
  page().replaceChildren(el("h1", { text: t("Resize · Merge · Convert") }), tabs, note, ...Object.values(sections).map((s) => s.node));
}
