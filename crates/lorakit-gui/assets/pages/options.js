// The Training options page: every config key with its sd-scripts name, default and doc.
import { el, api, page, current, t } from "../ui.js";

export async function optionsPage() {
  const fields = await api("/schema");
  const search = el("input", { type: "search", placeholder: t("Find an option (name, sd-scripts argument, words from its description)"), "aria-label": t("Find an option") });
  // Which family's options to list (the schema says where each key applies).
  const FAMILY_NAMES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL", flux: "Flux", sd3: "SD3 / SD3.5" };
  const families = [...new Set(fields.flatMap((f) => f.families))];
  const family = el("select", { "aria-label": t("Model family") },
    el("option", { value: "", text: t("every family") }), ...families.map((f) => el("option", { value: f, text: FAMILY_NAMES[f] ?? f })));
  const body = el("tbody");
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = fields.filter((f) => (!q || `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase().includes(q))
      && (!family.value || f.families.includes(family.value)));
    body.replaceChildren(...shown.map((f) => el("tr", {},
      el("td", {}, el("code", { text: `${f.section}.${f.key}` }),
        f.family_reason ? el("div", { class: "family-note", text: t(f.family_reason) }) : ""),
      el("td", { class: "muted", text: f.kohya }),
      el("td", { class: "muted", text: f.default === null ? t("unset") : JSON.stringify(f.default) }),
      el("td", { text: f.doc }),
    )));
  };
  search.addEventListener("input", render);
  family.addEventListener("change", render);
  render();
  if (!current("options")) return;
  page().replaceChildren(
    el("h1", { text: t("Training options") }),
    el("p", { class: "toolbar" }, search, " ", family),
    el("table", { class: "options" }, el("thead", {}, el("tr", {}, ...[t("key"), "sd-scripts", t("default"), t("what it does")].map((h) => el("th", { text: h })))), body),
  );
}
