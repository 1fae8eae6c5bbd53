// The LoRAs page: every LoRA file under the roots with what CivitAI users look at, filtered by
// words and base model; each one inspected in place, compared with others as a heat map, or
// sent to the tools page (resize, convert, XY plot).
import { el, api, page, current, pageLink, t } from "../ui.js";
import { inspectLora, compareLoras } from "./files.js";

const fmtSize = (bytes) => (bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`);
const fmtDate = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : "");

export async function lorasPage() {
  const library = await api("/loras");
  const search = el("input", { type: "search", placeholder: t("Filter by name, trigger word or tag"), "aria-label": t("Filter LoRA files") });
  const families = [...new Set(library.loras.map((l) => l.base_model))].sort();
  const family = el("select", { "aria-label": t("Base model") },
    el("option", { value: "", text: t("every base model") }), ...families.map((f) => el("option", { value: f, text: f })));
  const list = el("div", { class: "library", role: "list", "aria-label": t("LoRA files") });
  const detail = el("section", { "aria-label": t("LoRA file") });
  const chosen = new Set();
  const compare = el("button", { type: "button", disabled: "", text: t("Compare selected") });
  compare.addEventListener("click", () => {
    const picked = library.loras.filter((l) => chosen.has(`${l.root}:${l.path}`));
    // The heat map reads files of one root at a time (its paths are root-relative).
    const root = picked[0]?.root;
    compareLoras(detail, root, picked.filter((l) => l.root === root).map((l) => l.path));
    detail.scrollIntoView({ behavior: "smooth", block: "start" });
  });
  const status = el("p", { class: "muted", role: "status" });

  const card = (l) => {
    const key = `${l.root}:${l.path}`;
    const pick = el("input", { type: "checkbox", "aria-label": t("Select {name}", { name: l.path }) });
    pick.checked = chosen.has(key);
    pick.addEventListener("change", () => {
      if (pick.checked) chosen.add(key); else chosen.delete(key);
      compare.disabled = chosen.size < 2;
      compare.textContent = chosen.size >= 2 ? t("Compare {n} selected", { n: chosen.size }) : t("Compare selected");
    });
    const facts = [
      l.base_model,
      l.network,
      l.ranks.length ? t("rank {ranks}", { ranks: l.ranks.join("/") }) + (l.alpha ? t(", alpha {alpha}", { alpha: l.alpha }) : "") : null,
      l.resolution ? l.resolution.join("×") : null,
      l.epoch != null ? t("epoch {epoch} of {epochs}", { epoch: l.epoch, epochs: l.num_epochs ?? "?" }) : null,
      l.steps != null ? t("{n} steps", { n: l.steps }) : null,
      fmtSize(l.size),
    ].filter(Boolean);
    const tags = l.top_tags.map(([tag]) => tag).join(", ");
    const link = (text, params) => el("a", { href: pageLink("tools", params), text });
    return el("article", { class: "lora-card", role: "listitem" },
      el("header", {}, pick, " ", el("strong", { text: l.title || l.path.split("/").pop() })),
      el("div", { class: "muted", text: l.path }),
      el("div", { text: facts.join(" · ") }),
      l.trigger ? el("div", {}, el("span", { class: "muted", text: t("trigger: ") }), el("code", { text: l.trigger })) : "",
      tags ? el("div", { class: "muted", text: t("tags: {tags}", { tags }) }) : "",
      el("div", { class: "muted", text: fmtDate(l.modified) }),
      el("div", { class: "actions" },
        el("button", { type: "button", text: t("Inspect"), "aria-label": t("Inspect {name}", { name: l.path }), onclick: () => {
          inspectLora(detail, l.root, l.path);
          detail.scrollIntoView({ behavior: "smooth", block: "start" });
        } }),
        " ", link(t("Resize"), { op: "resize", root: l.root, path: l.path }),
        " ", link(t("Convert"), { op: "convert", root: l.root, path: l.path }),
        " ", link(t("XY plot"), { op: "xy", root: l.root, path: l.path }),
      ),
    );
  };
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const shown = library.loras.filter((l) => (!family.value || l.base_model === family.value)
      && (!q || [l.path, l.title, l.trigger, ...l.top_tags.map(([tag]) => tag)].join(" ").toLowerCase().includes(q)));
    list.replaceChildren(...shown.map(card));
    status.textContent = t("{shown} of {all} LoRA files", { shown: shown.length, all: library.loras.length })
      + (library.other.length ? t("; {n} other .safetensors files (checkpoints, VAEs, unreadable) not listed", { n: library.other.length }) : "")
      + (library.truncated ? t("; the scan stopped at 5,000 files") : "");
  };
  search.addEventListener("input", draw);
  family.addEventListener("change", draw);
  draw();
  if (!current("loras")) return;
  page().replaceChildren(
    el("h1", { text: t("LoRAs") }),
    el("p", { class: "toolbar" }, search, " ", family, " ", compare),
    status,
    list,
    detail,
  );
}
