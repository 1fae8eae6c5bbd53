// lorakit gui: the router. Each page is a module under pages/; ui.js holds what they share.
import { el, leavePage, showError, setLanguage, savedLanguage, currentLanguage, route as currentRoute, t } from "./ui.js";
import { filesPage } from "./pages/files.js";
import { datasetsPage } from "./pages/datasets.js";
import { jobsPage } from "./pages/jobs.js";
import { trainPage } from "./pages/train.js";
import { optionsPage } from "./pages/options.js";
import { toolsPage } from "./pages/tools.js";
import { lorasPage } from "./pages/loras.js";

// Each page's show(params) gets the address's parameters (ui.js route()).
const pages = {
  files: { title: "Files", show: (params) => filesPage(Number(params.get("root") ?? 0), params.get("path") ?? "") },
  datasets: { title: "Datasets", show: datasetsPage },
  train: { title: "Train", show: trainPage },
  jobs: { title: "Jobs", show: jobsPage },
  loras: { title: "LoRAs", show: lorasPage },
  tools: { title: "Resize · Merge · Convert", show: toolsPage },
  options: { title: "Training options", show: optionsPage },
};

const THEME_KEY = "lorakit-theme";
// Light, dark, or the system's (no attribute): the stylesheet reads data-theme on <html>.
function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function header() {
  const nav = document.querySelector("nav");
  nav.replaceChildren(...Object.entries(pages).map(([name, p]) => el("a", { href: `#${name}`, "data-page": name, text: t(p.title) })));
  const language = el("select", { "aria-label": "Language / ภาษา" },
    el("option", { value: "en", text: "English" }), el("option", { value: "th", text: "ไทย" }));
  language.value = currentLanguage();
  language.addEventListener("change", async () => { await setLanguage(language.value); header(); route(); });
  let saved = null;
  try { saved = localStorage.getItem(THEME_KEY); } catch { /* private mode */ }
  const theme = el("select", { "aria-label": t("Theme") },
    el("option", { value: "", text: t("System theme") }), el("option", { value: "light", text: t("Light") }), el("option", { value: "dark", text: t("Dark") }));
  theme.value = saved ?? "";
  theme.addEventListener("change", () => {
    applyTheme(theme.value);
    try { localStorage.setItem(THEME_KEY, theme.value); } catch { /* private mode */ }
  });
  applyTheme(theme.value);
  document.getElementById("settings").replaceChildren(language, theme);
}

function route() {
  leavePage();
  const { name, params } = currentRoute();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  (pages[name] || pages.files).show(params).catch(showError);
}

window.addEventListener("hashchange", route);
await setLanguage(savedLanguage());
header();
route();
