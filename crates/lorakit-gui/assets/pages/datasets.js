import { el, api, page, current, t, onLeave } from "../ui.js";
import { captionForm } from "./autocaption.js";

// The Datasets page: the dataset doctor over a kohya train folder (or a dataset TOML) — subsets
// and their repeats (changed by renaming the folder, previewed first), steps, findings — and a
// virtualised grid of its images with their captions; a finding filters the grid to the images
// it is about. Captions are edited three ways, all through one undo history kept by the server:
// the tag editor, find/replace for sentence captions, and one caption at a time in the grid.
// Clicking an image shows how training sees it (bucket, resize, crop, flip), computed and
// rendered by the server with the dataset loader training uses.

const post = (path, body) => api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
const query = (params) => new URLSearchParams(params).toString();
const size = (pair) => `${pair[0]}×${pair[1]}`;

export async function datasetsPage(params = new URLSearchParams()) {
  const session = await api("/session");
  const rootPicker = el("select", { "aria-label": t("Dataset root") }, ...session.roots.map((r) => el("option", { value: String(r.id), text: r.path })));
  const folder = el("input", { type: "text", class: "dataset-path", "aria-label": t("Train folder"), placeholder: t("train folder (holds 10_name subsets) or a dataset .toml"), spellcheck: "false" });
  const full = el("input", { type: "checkbox", "aria-label": t("Decode every image") });
  const result = el("section", { "aria-label": t("Dataset report") });
  if (params.has("root")) rootPicker.value = params.get("root");
  if (params.has("path")) folder.value = params.get("path");
  // A captioning job's Clone & edit (#datasets?job=ID): its folder and its form, filled in.
  let cloned = null;
  if (/^\d+$/.test(params.get("job") ?? "")) {
    cloned = (await api(`/jobs/${params.get("job")}/command`)).request;
    rootPicker.value = String(cloned.root);
    folder.value = cloned.path ?? "";
  }
  // Captioning the folder shown (a job), above its report.
  const captionSlot = el("div");
  // The editors of the folder shown; kept across report refreshes so their messages stay.
  let shown = null;
  const load = async (root, base) => {
    const report = await api(`/dataset?root=${root}&path=${encodeURIComponent(base)}${full.checked ? "&full=1" : ""}`);
    if (!shown || shown.root !== root || shown.base !== base) {
      const refresh = () => load(root, base).catch((e) => result.prepend(el("p", { class: "error", role: "alert", text: e.message })));
      shown = { root, base, refresh, tags: tagEditor(root, base, refresh), captions: captionEditor(root, base, refresh) };
      const request = cloned && String(cloned.root) === root && (cloned.path ?? "") === base ? cloned : null;
      captionSlot.replaceChildren(captionForm(root, base, session.roots, request).node);
    }
    showReport(result, report, shown);
  };
  const run = async () => {
    result.replaceChildren(el("p", { class: "muted", text: t("checking…") }));
    try {
      await load(rootPicker.value, folder.value.trim());
    } catch (e) {
      result.replaceChildren(el("p", { class: "error", role: "alert", text: e.message }));
    }
  };
  folder.addEventListener("keydown", (e) => e.key === "Enter" && run());
  if (!current("datasets")) return;
  page().replaceChildren(
    el("h1", { text: t("Datasets") }),
    el("p", { class: "dataset-form" }, rootPicker, " ", folder, " ", el("label", {}, full, " ", t("decode every image")), " ",
      el("button", { type: "button", text: t("Check"), onclick: run })),
    captionSlot,
    result,
  );
  if (folder.value) run();
}

// An edit's preview table: file, before, after (the new text's replacement marked when given).
function diffRows(changes, marked = "") {
  const after = (text) => {
    if (!marked) return [text];
    const parts = text.split(marked);
    return parts.flatMap((p, i) => (i ? [el("mark", { text: marked }), p] : [p]));
  };
  return changes.map((c) => el("tr", {}, el("td", { class: "muted", text: c.file }), el("td", { text: c.before }), el("td", {}, ...after(c.after))));
}

// The shared undo: the latest caption edit of any editor (the server keeps the history on disk).
async function undoLast(message, onChange) {
  try {
    const r = await api("/tags/undo", { method: "POST" });
    message.textContent = r.kept.length
      ? t("undone: {what} ({n} files restored; left: {kept})", { what: r.undone, n: r.restored, kept: r.kept.join("; ") })
      : t("undone: {what} ({n} files restored)", { what: r.undone, n: r.restored });
    onChange();
  } catch (e) { message.textContent = e.message; }
}

// Bulk tag editing over the train folder: choose an edit, preview "N files will change" with
// each caption before and after, apply (atomic writes), undo the last edit.
function tagEditor(root, base, onChange) {
  const op = el("select", { "aria-label": t("Tag edit") },
    ...[["add_front", t("add at the front")], ["add_back", t("add at the end")], ["remove", t("remove")], ["replace", t("replace")],
      ["move_to_front", t("move to the front")], ["dedupe", t("remove duplicates")], ["sort", t("sort A–Z")]]
      .map(([v, label]) => el("option", { value: v, text: label })));
  const tags = el("input", { type: "text", "aria-label": t("Tags"), placeholder: t("tags, comma separated") });
  const old = el("input", { type: "text", "aria-label": t("Replace tag"), placeholder: t("tag to replace") });
  const replacement = el("input", { type: "text", "aria-label": t("Replacement"), placeholder: t("replacement (empty: remove)") });
  const message = el("p", { role: "status" });
  const diff = el("tbody");
  const apply = el("button", { type: "button", text: t("Apply"), disabled: "" });
  const body = () => ({
    root: Number(root), path: base, op: op.value,
    tags: tags.value.split(",").map((s) => s.trim()).filter(Boolean), old: old.value, new: replacement.value,
  });
  const preview = async () => {
    apply.disabled = true;
    try {
      const p = await post("/tags/preview", body());
      const parts = [t("{n} files will change, {m} stay", { n: p.changed, m: p.unchanged })];
      if (p.skipped_natural_language) parts.push(t("{n} natural-language captions left alone", { n: p.skipped_natural_language }));
      if (p.failed.length) parts.push(t("{n} cannot be read", { n: p.failed.length }));
      message.textContent = parts.join(", ");
      diff.replaceChildren(...diffRows(p.changes));
      apply.disabled = p.changed === 0;
    } catch (e) { message.textContent = e.message; diff.replaceChildren(); }
  };
  for (const input of [op, tags, old, replacement]) input.addEventListener("change", () => { apply.disabled = true; });
  apply.addEventListener("click", async () => {
    apply.disabled = true;
    try {
      const r = await post("/tags/apply", body());
      message.textContent = r.write_failures.length
        ? t("{n} files written; not written: {files}", { n: r.written, files: r.write_failures.map((f) => f.file).join(", ") })
        : t("{n} files written", { n: r.written });
      diff.replaceChildren();
      onChange();
    } catch (e) { message.textContent = e.message; }
  });
  const undo = el("button", { type: "button", text: t("Undo last edit"), onclick: () => undoLast(message, onChange) });
  return {
    setTag: (tag) => { tags.value = tag; old.value = tag; apply.disabled = true; },
    node: el("section", { "aria-label": t("Tag editor"), class: "editor" },
      el("h2", { text: t("Edit tags") }),
      el("p", { class: "controls" }, op, " ", tags, " ", old, " ", replacement, " ",
        el("button", { type: "button", text: t("Preview"), onclick: preview }), " ", apply, " ", undo),
      message,
      el("table", { class: "diff" }, diff),
    ),
  };
}

// Find and replace in sentence captions (the tag editor leaves those alone): plain text,
// whole words or not, any case or not; the preview's file digests make the apply write exactly
// what was shown (a caption changed since is reported, not overwritten).
function captionEditor(root, base, onChange) {
  const find = el("input", { type: "text", "aria-label": t("Find"), placeholder: t("text to find") });
  const replace = el("input", { type: "text", "aria-label": t("Replace with"), placeholder: t("replace with (empty: remove)") });
  const wholeWord = el("input", { type: "checkbox", "aria-label": t("Whole words") });
  const caseSensitive = el("input", { type: "checkbox", "aria-label": t("Match case") });
  const scope = el("select", { "aria-label": t("Captions to search") },
    el("option", { value: "sentences", text: t("sentence captions") }), el("option", { value: "all", text: t("all captions") }));
  const message = el("p", { role: "status" });
  const diff = el("tbody");
  const apply = el("button", { type: "button", text: t("Apply"), disabled: "" });
  let expect = [];
  const body = () => ({
    root: Number(root), path: base, find: find.value, replace: replace.value,
    whole_word: wholeWord.checked, case_sensitive: caseSensitive.checked, scope: scope.value,
  });
  const preview = async () => {
    apply.disabled = true;
    try {
      const p = await post("/captions/preview", body());
      const parts = [t("{n} files will change ({m} matches), {u} unchanged", { n: p.changed, m: p.matches, u: p.unchanged })];
      if (p.skipped_tags) parts.push(t("{n} tag captions left to the tag editor", { n: p.skipped_tags }));
      if (p.failed.length) parts.push(t("{n} cannot be read", { n: p.failed.length }));
      message.textContent = parts.join(", ");
      diff.replaceChildren(...diffRows(p.changes, replace.value));
      expect = p.expect;
      apply.disabled = p.changed === 0;
    } catch (e) { message.textContent = e.message; diff.replaceChildren(); }
  };
  for (const input of [find, replace, wholeWord, caseSensitive, scope]) input.addEventListener("change", () => { apply.disabled = true; });
  apply.addEventListener("click", async () => {
    apply.disabled = true;
    try {
      const r = await post("/captions/apply", { ...body(), expect });
      const notes = [...r.changed_since, ...r.write_failures];
      message.textContent = notes.length
        ? t("{n} files written; not written: {notes}", { n: r.written, notes: notes.join("; ") })
        : t("{n} files written", { n: r.written });
      diff.replaceChildren();
      onChange();
    } catch (e) { message.textContent = e.message; }
  });
  const undo = el("button", { type: "button", text: t("Undo last edit"), onclick: () => undoLast(message, onChange) });
  return {
    node: el("section", { "aria-label": t("Caption find and replace"), class: "editor" },
      el("h2", { text: t("Find and replace in captions") }),
      el("p", { class: "controls" }, find, " ", replace, " ", scope, " ",
        el("label", {}, wholeWord, " ", t("whole words")), " ", el("label", {}, caseSensitive, " ", t("match case")), " ",
        el("button", { type: "button", text: t("Preview"), onclick: preview }), " ", apply, " ", undo),
      message,
      el("table", { class: "diff" }, diff),
    ),
  };
}

// A subset's repeats: the number in its folder name, changed by a rename the server previews
// ("5_chk → 10_chk: samples per epoch 40 → 80") before doing it.
function repeatsCell(subset, root, path, onChange) {
  const cell = el("td", { class: "repeats" });
  const show = () => cell.replaceChildren(t("{n} repeats", { n: subset.num_repeats }), " ",
    el("button", { type: "button", class: "link", text: t("change"), title: t("Change the repeats (renames the folder)"), onclick: edit }));
  const edit = () => {
    const input = el("input", { type: "number", min: "1", step: "1", value: String(subset.num_repeats), "aria-label": t("Repeats of {dir}", { dir: subset.dir }) });
    const status = el("div", { role: "status" });
    const rename = el("button", { type: "button", text: t("Rename"), disabled: "" });
    const change = (dry_run) => post("/dataset/repeats", { root: Number(root), path, repeats: Number(input.value), dry_run });
    const preview = async () => {
      rename.disabled = true;
      try {
        const p = await change(true);
        status.textContent = t("{from} → {to}: samples per epoch {before} → {after}", { from: p.from, to: p.to, before: p.samples_before, after: p.samples_after });
        rename.disabled = false;
      } catch (e) { status.textContent = e.message; }
    };
    input.addEventListener("input", () => { rename.disabled = true; });
    input.addEventListener("keydown", (e) => e.key === "Enter" && preview());
    rename.addEventListener("click", async () => {
      rename.disabled = true;
      try {
        const r = await change(false);
        status.textContent = t("renamed {from} to {to}", { from: r.from, to: r.to });
        onChange();
      } catch (e) { status.textContent = e.message; }
    });
    cell.replaceChildren(input, " ", el("button", { type: "button", text: t("Preview"), onclick: preview }), " ", rename, " ",
      el("button", { type: "button", class: "link", text: t("cancel"), onclick: show }), status);
    input.focus();
  };
  show();
  return cell;
}

// Only the rows of thumbnails near the viewport exist: thousands of images must not become
// thousands of <img>. Rows have a fixed height (a square thumbnail and a caption box), so the
// rows on screen follow from the scroll position; the grid's full height is kept by its box.
function virtualGrid(render) {
  const GAP = 10, MIN_WIDTH = 150, CAPTION = 84, OVERSCAN = 2;
  const box = el("div", { class: "vgrid" });
  const grid = el("div", { class: "grid", role: "list", "aria-label": t("Images") });
  box.append(grid);
  let items = [], cols = 1, stride = 1, range = "";
  const nodes = new Map();
  const draw = (force = false) => {
    if (!box.isConnected) return;
    const top = box.getBoundingClientRect().top;
    const rows = Math.ceil(items.length / cols);
    const screen = Math.ceil(window.innerHeight / stride);
    const first = Math.min(rows, Math.max(0, Math.floor(-top / stride) - OVERSCAN));
    // Below the viewport the first screen is made anyway: it is what scrolling reaches first.
    const last = Math.min(rows, Math.max(first + screen + OVERSCAN, Math.ceil((window.innerHeight - top) / stride) + OVERSCAN));
    const key = `${first}:${last}`;
    if (key === range && !force) return;
    range = key;
    grid.style.transform = `translateY(${first * stride}px)`;
    const shown = items.slice(first * cols, last * cols);
    grid.replaceChildren(...shown.map((item) => {
      if (!nodes.has(item.file)) nodes.set(item.file, render(item));
      return nodes.get(item.file);
    }));
  };
  const layout = () => {
    const width = box.clientWidth || 800;
    cols = Math.max(1, Math.floor((width + GAP) / (MIN_WIDTH + GAP)));
    const cell = (width - GAP * (cols - 1)) / cols;
    stride = cell + CAPTION + GAP;
    grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    grid.style.gridAutoRows = `${cell + CAPTION}px`;
    grid.style.gap = `${GAP}px`;
    box.style.height = `${Math.max(0, Math.ceil(items.length / cols) * stride - GAP)}px`;
    draw(true);
  };
  let frame = 0;
  const soon = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); };
  window.addEventListener("scroll", soon, { passive: true });
  // A width change re-lays the rows; anything above the grid growing moves it (drawn again).
  const resized = new ResizeObserver(() => requestAnimationFrame(layout));
  resized.observe(box);
  resized.observe(document.body);
  onLeave(() => { window.removeEventListener("scroll", soon); resized.disconnect(); });
  return {
    node: box,
    show(list) { items = list; layout(); },
    forget(file) { nodes.delete(file); },
  };
}

// One image's caption, edited in place: the file is read first, saved only over what was read.
function captionBox(img, onSaved) {
  const box = el("div", { class: "caption-box" });
  const show = () => { box.classList.remove("editing"); box.replaceChildren(el("button", {
    type: "button", class: "caption-text", title: t("Click to edit the caption"), "aria-label": t("Edit the caption of {name}", { name: img.file }),
    text: img.caption || t("(no caption)"), onclick: edit,
  })); };
  const edit = async () => {
    let current;
    try {
      current = await api(`/captions/one?${query({ root: img.root, image: img.file })}`);
    } catch (e) { box.replaceChildren(el("div", { class: "error", text: e.message })); return; }
    const text = el("textarea", { "aria-label": t("Caption of {name}", { name: img.file }), rows: "5" });
    text.value = current.text;
    const status = el("span", { class: "muted", role: "status" });
    const save = async () => {
      try {
        const r = await post("/captions/one", { root: img.root, image: img.file, text: text.value, digest: current.digest });
        img.caption = text.value.split(/\r?\n/)[0].trim();
        show();
        onSaved(r);
      } catch (e) { status.textContent = e.message; }
    };
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) save();
      if (e.key === "Escape") show();
    });
    // The editor lies over the card (growing up over the thumbnail): the row height is fixed.
    box.classList.add("editing");
    box.replaceChildren(text, el("div", { class: "caption-actions" },
      el("button", { type: "button", text: t("Save"), onclick: save }), " ",
      el("button", { type: "button", class: "link", text: t("cancel"), onclick: show }), " ", status));
    text.focus();
  };
  show();
  return box;
}

// How training sees one image: the numbers from the server (the dataset loader's bucket,
// resize and crop), the crop drawn over the thumbnail, and the sample itself as training gets
// it (flipped too when flip_aug is on).
async function showAsTrained(panel, shown, img) {
  const q = { root: shown.root, path: shown.base, image: img.id };
  const close = el("button", { type: "button", class: "close", text: t("Close"), onclick: () => panel.replaceChildren() });
  panel.replaceChildren(el("div", { class: "as-trained", role: "dialog", "aria-label": t("How training sees this image") },
    el("p", { class: "muted", text: t("reading…") }), close));
  let seen;
  try {
    seen = await api(`/dataset/as-trained?${query(q)}`);
  } catch (e) {
    panel.replaceChildren(el("div", { class: "as-trained", role: "dialog", "aria-label": t("How training sees this image") },
      el("p", { class: "error", role: "alert", text: e.message }), close));
    return;
  }
  // The crop in the original picture's proportions: the thumbnail keeps the aspect ratio.
  const crop = el("div", { class: "crop-box" });
  crop.style.left = `${(100 * seen.crop[0]) / seen.resized[0]}%`;
  crop.style.top = `${(100 * seen.crop[1]) / seen.resized[1]}%`;
  crop.style.width = `${(100 * seen.bucket[0]) / seen.resized[0]}%`;
  crop.style.height = `${(100 * seen.bucket[1]) / seen.resized[1]}%`;
  const original = el("figure", { class: "original" },
    el("div", { class: "framed" }, el("img", { src: `/api/thumb/${encodeURIComponent(img.id)}`, alt: t("{name} with the crop marked", { name: img.file }) }), crop),
    el("figcaption", { class: "muted", text: t("original, crop marked") }));
  const sample = el("img", { src: `/api/dataset/as-trained.png?${query(q)}`, alt: t("{name} as training sees it", { name: img.file }) });
  const flip = el("input", { type: "checkbox", "aria-label": t("Show flipped") });
  flip.addEventListener("change", () => { sample.src = `/api/dataset/as-trained.png?${query({ ...q, flip: flip.checked ? 1 : 0 })}`; });
  const rows = [
    [t("original"), size(seen.original)],
    [t("resized"), seen.interpolation === "none" ? t("{size} (no resize)", { size: size(seen.resized) })
      : t("{size} ({filter}{auto})", { size: size(seen.resized), filter: seen.interpolation, auto: seen.interpolation_auto ? t(", automatic") : "" })],
    [t("crop"), seen.random_crop
      ? t("random: left 0–{x}, top 0–{y} each step (centre shown)", { x: seen.trim[0], y: seen.trim[1] })
      : t("centre: left {x}, top {y}", { x: seen.crop[0], y: seen.crop[1] })],
    [t("bucket"), size(seen.bucket)],
    [t("cut off"), `${(seen.cropped_fraction * 100).toFixed(1)} %`],
    [t("flip"), seen.flip_aug ? t("flip_aug on: half the samples are mirrored") : t("flip_aug off: never mirrored")],
    [t("dataset"), seen.enable_bucket ? t("resolution {size}, buckets on", { size: size(seen.resolution) }) : t("resolution {size}, buckets off", { size: size(seen.resolution) })],
  ];
  panel.replaceChildren(el("div", { class: "as-trained", role: "dialog", "aria-label": t("How training sees this image") },
    el("h2", { text: t("How training sees {name}", { name: img.file.split("/").pop() }) }),
    close,
    el("p", { class: "pipeline", text: t("{original} → resized {resized} → crop at ({x}, {y}) → bucket {bucket}", {
      original: size(seen.original), resized: size(seen.resized), x: seen.crop[0], y: seen.crop[1], bucket: size(seen.bucket) }) }),
    el("div", { class: "pictures" }, original,
      el("figure", { class: "sample" }, sample, el("figcaption", { class: "muted", text: t("the sample, {size}", { size: size(seen.bucket) }) }))),
    seen.flip_aug ? el("p", {}, el("label", {}, flip, " ", t("show it flipped"))) : "",
    el("table", { class: "numbers" }, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))))),
    el("p", { class: "muted", text: t("From the subset {subset}: the dataset loader's own bucket choice, resize and crop.", { subset: seen.subset }) }),
  ));
}

function showReport(box, report, shown) {
  const totals = report.totals;
  const folderMode = report.source === "folder";
  const images = report.datasets.flatMap((d) => d.images);
  const panel = el("div", { class: "as-trained-slot" });
  const grid = virtualGrid((img) => el("figure", { role: "listitem" },
    el("button", { type: "button", class: "thumb", title: t("How training sees it"), onclick: () => showAsTrained(panel, shown, img) },
      el("img", { src: `/api/thumb/${encodeURIComponent(img.id)}`, alt: img.path, loading: "lazy" })),
    el("figcaption", {},
      el("div", { class: "muted meta", text: `${img.path}${img.bucket ? ` · ${size(img.bucket)}` : ""}` }),
      captionBox(img, () => {})),
  ));
  const filterNote = el("p", { class: "muted", role: "status" });
  const drawGrid = (code) => {
    const list = code ? images.filter((img) => img.warnings.some((w) => w.code === code)) : images;
    filterNote.textContent = code
      ? t("{n} images with {code} (click it again to show all)", { n: list.length, code })
      : t("{n} images", { n: list.length });
    grid.show(list);
  };
  let active = null;
  const counts = new Map();
  for (const img of images) for (const w of img.warnings) counts.set(w.code, [(counts.get(w.code)?.[0] ?? 0) + 1, w]);
  const findingButtons = [...counts.entries()].map(([code, [n, w]]) => el("li", {}, el("button", {
    type: "button", class: `link severity-${w.severity}`, text: t("{code} ({n} images)", { code, n }), title: w.message,
    onclick: () => { active = active === code ? null : code; drawGrid(active); },
  })));
  const subsets = report.datasets.flatMap((d) => d.subsets);
  box.replaceChildren(
    el("p", { class: report.usable ? "" : "error", text: t("{images} images, {used} used, {unusable} unusable · {samples} samples per epoch · {errors} errors, {warnings} warnings", {
      images: totals.images, used: totals.used, unusable: totals.unusable, samples: totals.samples_per_epoch, errors: totals.errors, warnings: totals.warnings }) }),
    el("table", { class: "subsets" }, el("tbody", {}, ...subsets.map((s) => el("tr", {},
      el("td", { text: s.dir }),
      folderMode ? repeatsCell(s, shown.root, shown.base ? `${shown.base}/${s.dir}` : s.dir, shown.refresh) : el("td", { text: t("{n} repeats", { n: s.num_repeats }) }),
      el("td", { text: t("{usable}/{images} images", { usable: s.usable, images: s.images }) }),
      el("td", { class: "muted", text: s.is_reg ? t("regularisation") : s.trigger_word ? t("trigger: {word}", { word: s.trigger_word }) : "" }))))),
    ...report.findings.map((f) => el("p", { class: `severity-${f.severity}`, text: `${f.code}: ${f.message}` })),
    findingButtons.length ? el("ul", { class: "findings", "aria-label": t("Findings by image") }, ...findingButtons) : "",
    report.top_tags.length
      ? el("p", { class: "tag-cloud", "aria-label": t("Top tags") }, t("top tags:"), " ", ...report.top_tags.slice(0, 30).map(([tag, n]) =>
        el("button", { type: "button", class: "link", text: `${tag} (${n})`, onclick: () => shown.tags.setTag(tag) })))
      : "",
    ...(folderMode
      ? [shown.tags.node, shown.captions.node]
      : [el("p", { class: "muted", text: t("A dataset TOML: its subsets' repeats are its num_repeats, edited in the file; the caption editors work on a train folder (check one of its folders).") })]),
    filterNote,
    grid.node,
    panel,
  );
  drawGrid(null);
}
