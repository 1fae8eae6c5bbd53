import { el, api, page, current } from "../ui.js";

// The Datasets page: the dataset doctor over a kohya train folder (subsets, steps, findings)
// and a grid of its images with their captions; a finding filters the grid to the images it is
// about. Thumbnails are made by the server (upright, as training sees them).
export async function datasetsPage() {
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
