// The Files page: browse the roots, inspect a LoRA file, compare a folder's LoRA files.
import { el, api, page, current, showError, t } from "../ui.js";

export async function filesPage(root = 0, path = "") {
  const session = await api("/session");
  const listing = await api(`/fs?root=${root}&path=${encodeURIComponent(path)}`);
  const rootPicker = el("select", { "aria-label": t("Root"), onchange: (e) => filesPage(Number(e.target.value), "").catch(showError) });
  for (const r of session.roots) {
    const option = el("option", { value: String(r.id), text: r.path });
    if (r.id === root) option.selected = true;
    rootPicker.append(option);
  }
  const inspector = el("section", { "aria-label": t("LoRA file") });
  const rows = listing.entries.map((entry) => {
    const full = path ? `${path}/${entry.name}` : entry.name;
    const name = entry.kind === "dir"
      ? el("button", { class: "link", text: `${entry.name}/`, onclick: () => filesPage(root, full).catch(showError) })
      : el("span", { text: entry.name });
    const action = entry.kind === "file" && entry.name.endsWith(".safetensors")
      ? el("button", { type: "button", text: t("Inspect"), "aria-label": t("Inspect {name}", { name: entry.name }), onclick: () => inspectLora(inspector, root, full) })
      : "";
    return el("tr", {}, el("td", {}, name), el("td", { class: "muted", text: entry.kind === "file" ? `${entry.size} B` : entry.kind }), el("td", {}, action));
  });
  const up = path
    ? el("button", { class: "link", text: "..", onclick: () => filesPage(root, path.split("/").slice(0, -1).join("/")).catch(showError) })
    : el("span", { class: "muted", text: t("(root)") });
  const loras = listing.entries.filter((e) => e.kind === "file" && e.name.endsWith(".safetensors")).map((e) => (path ? `${path}/${e.name}` : e.name));
  const compare = loras.length >= 2
    ? el("button", { type: "button", text: t("Compare {n} LoRA files", { n: loras.length }), onclick: () => compareLoras(inspector, root, loras) })
    : "";
  if (!current("files")) return;
  page().replaceChildren(
    el("h1", { text: t("Files") }),
    rootPicker,
    el("p", {}, el("span", { class: "muted", text: `/${path} ` }), up, " ", compare),
    el("table", {}, el("tbody", {}, ...rows)),
    inspector,
  );
}


// Several LoRA files side by side (e.g. a run's epochs): a blocks × files heat map of the mean
// weight norm, each cell shaded by its share of the largest, the value in the cell.
export async function compareLoras(box, root, paths) {
  box.replaceChildren(el("p", { class: "muted", text: t("reading {n} files…", { n: paths.length }) }));
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
  const table = el("table", { class: "heatmap", "aria-label": t("Block norms by file") },
    el("thead", {}, el("tr", {}, el("th", { text: t("block") }), ...reports.map((r) => el("th", { text: name(r.path), title: r.error ?? r.path })))),
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
    el("h2", { text: t("{n} LoRA files, block by block (mean ‖ΔW‖)", { n: paths.length }) }),
    ...reports.filter((r) => r.error).map((r) => el("p", { class: "error", text: `${r.path}: ${r.error}` })),
    table,
  );
}


// `lorakit inspect` in the page: what CivitAI users look at (base model, network, rank/alpha,
// training length, top tags) and the block-by-block weight norms as bars.
export async function inspectLora(box, root, path) {
  box.replaceChildren(el("p", { class: "muted", text: t("reading {path}…", { path }) }));
  let r;
  try {
    r = await api(`/lora?root=${root}&path=${encodeURIComponent(path)}`);
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", role: "alert", text: e.message }));
    return;
  }
  const m = r.metadata || {};
  const facts = [
    [t("format"), r.format],
    [t("base model"), r.base_model + (r.base_model_conflict ? ` (${r.base_model_conflict})` : "")],
    [t("layout"), r.layout],
    [t("network"), m.network_module],
    [t("rank / alpha"), `${Object.keys(r.ranks).join(", ")} / ${Object.keys(r.alphas).join(", ")}`],
    [t("modules"), String(r.module_count)],
    [t("resolution"), m.resolution ? m.resolution.join("×") : null],
    [t("epochs / steps"), m.epoch != null || m.steps != null ? t("{epoch} of {epochs} / {steps}", { epoch: m.epoch ?? "?", epochs: m.num_epochs ?? "?", steps: m.steps ?? "?" }) : null],
    [t("optimizer"), m.optimizer],
    [t("learning rate"), m.learning_rate != null ? String(m.learning_rate) : null],
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
    el("td", { class: "muted", text: t("{mean} (max {max}, {n} modules)", { mean: b.mean_norm.toFixed(4), max: b.max_norm.toFixed(4), n: b.modules }) }),
  ));
  // Bar widths through the CSSOM (the CSP allows no style attributes in markup).
  r.blocks.forEach((b, i) => { bars[i].querySelector(".bar").style.width = `${(100 * b.mean_norm) / maxNorm}%`; });
  box.replaceChildren(
    el("h2", { text: path }),
    el("table", {}, el("tbody", {}, ...facts.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))))),
    ...r.notes.map((n) => el("p", { class: "muted", text: n })),
    topTags.length ? el("p", { text: t("top tags: {tags}", { tags: topTags.map(([tag, n]) => `${tag} (${n})`).join(", ") }) }) : "",
    el("h3", { text: t("Block-by-block weight norms (mean ‖ΔW‖)") }),
    el("table", { class: "blocks" }, el("tbody", {}, ...bars)),
  );
}
