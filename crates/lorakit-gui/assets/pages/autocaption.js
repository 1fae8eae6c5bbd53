// Captioning a dataset from the Datasets page: `lorakit caption wd14` (a WD v3 tagger folder
// under the roots), `lorakit caption florence` (a Florence-2 folder) or `lorakit caption api`
// (any OpenAI-compatible vision server), queued as a job. The API key never passes through the page: the job reads it from the environment
// variable of the server that the form names.
import { el, api, pageLink, t } from "../ui.js";

const post = (path, body) => api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

/**
 * The caption form for the folder `base` under root `root` (subset folders included);
 * `request`, when given, refills it (a job's Clone & edit). Returns { node }.
 */
export function captionForm(root, base, roots, request = null) {
  const captioner = el("select", { "aria-label": t("Captioner") },
    el("option", { value: "wd14", text: t("WD14 tagger (booru tags: SD 1.5, SDXL, Pony, Illustrious)") }),
    el("option", { value: "florence", text: t("Florence-2 on this machine (sentences: Flux, SD3)") }),
    el("option", { value: "api", text: t("Vision model over an OpenAI-compatible API (sentences: Flux, SD3)") }));
  const recursive = el("input", { type: "checkbox", "aria-label": t("Include subfolders") });
  recursive.checked = true;
  const existing = el("select", { "aria-label": t("Existing captions") },
    el("option", { value: "skip", text: t("keep existing captions (caption only the others)") }),
    el("option", { value: "append", text: t("add to existing captions") }),
    el("option", { value: "overwrite", text: t("replace existing captions") }));
  const trigger = el("input", { type: "text", "aria-label": t("Trigger word"), placeholder: t("trigger word, put first (optional)") });
  // WD14.
  const modelRoot = el("select", { "aria-label": t("Tagger folder: root") }, ...roots.map((r) => el("option", { value: String(r.id), text: r.name })));
  const modelPath = el("input", { type: "text", "aria-label": t("Tagger folder"), placeholder: t("e.g. models/wd-vit-tagger-v3 (model.safetensors, config.json, selected_tags.csv)"), spellcheck: "false" });
  const general = el("input", { type: "number", min: "0", max: "1", step: "0.01", value: "0.35", "aria-label": t("General tag threshold") });
  const character = el("input", { type: "number", min: "0", max: "1", step: "0.01", value: "0.35", "aria-label": t("Character tag threshold") });
  const underscore = el("input", { type: "checkbox", "aria-label": t("Replace underscores with spaces") });
  underscore.checked = true;
  const undesired = el("input", { type: "text", "aria-label": t("Undesired tags"), placeholder: t("tags never written, comma separated") });
  const wd14 = el("fieldset", { class: "captioner" }, el("legend", { text: t("WD14 tagger") }),
    el("label", {}, t("Tagger folder"), " ", modelRoot, " ", modelPath),
    el("label", {}, t("General tag threshold"), " ", general),
    el("label", {}, t("Character tag threshold"), " ", character),
    el("label", {}, underscore, " ", t("Replace underscores with spaces")),
    el("label", {}, t("Undesired tags"), " ", undesired));
  // Florence-2.
  const florenceRoot = el("select", { "aria-label": t("Florence-2 folder: root") }, ...roots.map((r) => el("option", { value: String(r.id), text: r.name })));
  const florencePath = el("input", { type: "text", "aria-label": t("Florence-2 folder"), placeholder: t("e.g. models/Florence-2-base (config.json, model.safetensors, tokenizer.json)"), spellcheck: "false" });
  const task = el("select", { "aria-label": t("Caption length") },
    el("option", { value: "caption", text: t("short (<CAPTION>)") }),
    el("option", { value: "detailed", text: t("detailed (<DETAILED_CAPTION>)") }),
    el("option", { value: "more-detailed", text: t("a paragraph (<MORE_DETAILED_CAPTION>)") }));
  task.value = "more-detailed";
  const beams = el("input", { type: "number", min: "1", max: "16", value: "3", "aria-label": t("Beams") });
  const florence = el("fieldset", { class: "captioner" }, el("legend", { text: t("Florence-2") }),
    el("label", {}, t("Florence-2 folder"), " ", florenceRoot, " ", florencePath),
    el("label", {}, t("Caption length"), " ", task),
    el("label", {}, t("Beams"), " ", beams));
  // API.
  const url = el("input", { type: "url", value: "http://127.0.0.1:11434/v1", "aria-label": t("API address"), spellcheck: "false" });
  const model = el("input", { type: "text", "aria-label": t("Model name"), placeholder: t("e.g. gpt-4o-mini, llava, joycaption"), spellcheck: "false" });
  const keyEnv = el("input", { type: "text", value: "OPENAI_API_KEY", "aria-label": t("API key variable"), spellcheck: "false" });
  const prompt = el("textarea", { rows: "3", "aria-label": t("Prompt"), placeholder: t("empty: lorakit's prompt (one plain paragraph, subject first); {trigger}, {tags}, {name}, {folder} are filled in") });
  const concurrency = el("input", { type: "number", min: "1", max: "64", value: "4", "aria-label": t("Requests at once") });
  const apiBox = el("fieldset", { class: "captioner" }, el("legend", { text: t("OpenAI-compatible API") }),
    el("label", {}, t("API address"), " ", url),
    el("label", {}, t("Model name"), " ", model),
    el("label", {}, t("API key variable"), " ", keyEnv),
    el("p", { class: "muted", text: t("The key is read from this environment variable of the lorakit gui process (set it before starting the server; local servers need none). It is never sent to this page.") }),
    el("label", {}, t("Prompt"), " ", prompt),
    el("label", {}, t("Requests at once"), " ", concurrency));
  const show = () => {
    wd14.hidden = captioner.value !== "wd14";
    florence.hidden = captioner.value !== "florence";
    apiBox.hidden = captioner.value !== "api";
  };
  captioner.addEventListener("change", show);
  if (request) {
    captioner.value = request.captioner ?? "wd14";
    recursive.checked = Boolean(request.recursive);
    existing.value = request.existing ?? "skip";
    trigger.value = request.trigger ?? "";
    const w = request.wd14 ?? {};
    if (w.model) { modelRoot.value = String(w.model.root); modelPath.value = w.model.path ?? ""; }
    if (w.general_threshold != null) general.value = String(w.general_threshold);
    if (w.character_threshold != null) character.value = String(w.character_threshold);
    if (w.remove_underscore != null) underscore.checked = Boolean(w.remove_underscore);
    undesired.value = w.undesired_tags ?? "";
    const f = request.florence ?? {};
    if (f.model) { florenceRoot.value = String(f.model.root); florencePath.value = f.model.path ?? ""; }
    if (f.task) task.value = f.task;
    if (f.num_beams) beams.value = String(f.num_beams);
    const a = request.api ?? {};
    if (a.url) url.value = a.url;
    model.value = a.model ?? "";
    if (a.key_env) keyEnv.value = a.key_env;
    prompt.value = a.prompt ?? "";
    if (a.concurrency) concurrency.value = String(a.concurrency);
  }
  show();
  const message = el("p", { role: "status" });
  const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
  const submit = el("button", { type: "button", class: "primary", text: t("Caption (queue a job)") });
  submit.addEventListener("click", async () => {
    const body = {
      root: Number(root), path: base, captioner: captioner.value, recursive: recursive.checked,
      existing: existing.value, trigger: trigger.value,
      wd14: captioner.value === "wd14" ? {
        model: { root: Number(modelRoot.value), path: modelPath.value.trim() },
        general_threshold: number(general), character_threshold: number(character),
        remove_underscore: underscore.checked, undesired_tags: undesired.value,
      } : undefined,
      florence: captioner.value === "florence" ? {
        model: { root: Number(florenceRoot.value), path: florencePath.value.trim() }, task: task.value, num_beams: number(beams),
      } : undefined,
      api: captioner.value === "api" ? {
        url: url.value.trim(), model: model.value.trim(), key_env: keyEnv.value.trim(),
        prompt: prompt.value, concurrency: number(concurrency),
      } : undefined,
    };
    try {
      const job = await post("/caption", body);
      message.replaceChildren(t("queued job {id}", { id: job.id }), " · ",
        el("a", { href: pageLink("jobs", { job: job.id }), text: t("follow it on the Jobs page") }));
    } catch (e) { message.textContent = e.message; }
  });
  const node = el("details", { class: "autocaption" },
    el("summary", { text: t("Caption the images (WD14 tagger or a vision model)") }),
    el("section", { "aria-label": t("Caption images") },
      el("p", { class: "captioner-row" }, captioner),
      el("p", { class: "captioner-row" }, el("label", {}, recursive, " ", t("Include subfolders")), " ", existing, " ", trigger),
      wd14, florence, apiBox,
      el("p", {}, submit), message));
  node.open = Boolean(request);
  return { node };
}
