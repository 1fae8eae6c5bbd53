// The Training options page: every config key with its sd-scripts name, default and doc.
import { el, api, page, current, t } from "../ui.js";

export async function optionsPage() {
  const fields = await api("/schema");
  const search = el("input", { type: "search", placeholder: t("Find an option (name, sd-scripts argument, words from its description)"), "aria-label": t("Find an option") });
  const body = el("tbody");
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = fields.filter((f) => !q || `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase().includes(q));
    body.replaceChildren(...shown.map((f) => el("tr", {},
      el("td", {}, el("code", { text: `${f.section}.${f.key}` })),
      el("td", { class: "muted", text: f.kohya }),
      el("td", { class: "muted", text: f.default === null ? t("unset") : JSON.stringify(f.default) }),
      el("td", { text: f.doc }),
    )));
  };
  search.addEventListener("input", render);
  render();
  if (!current("options")) return;
  page().replaceChildren(
    el("h1", { text: t("Training options") }),
    search,
    el("table", {}, el("thead", {}, el("tr", {}, ...[t("key"), "sd-scripts", t("default"), t("what it does")].map((h) => el("th", { text: h })))), body),
  );
}
