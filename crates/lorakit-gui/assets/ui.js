// lorakit gui: plain ES modules, no framework. User data (file names, docs, captions) is only
// ever inserted with textContent (the CSP forbids inline scripts; nothing here builds HTML).
// Shared by every page: element building, the API, page lifetime, formatting, translation.

export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};

export async function api(path, options = {}) {
  const response = await fetch(`/api${path}`, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

export const page = () => document.getElementById("page");

// Whether `name` is still the page the address names: a page's data can arrive after the user
// (or a test) moved on, and must not replace the page shown then.
export const current = (name) => route().name === name;

/**
 * The page the address names and its parameters: `#tools?op=resize&root=0&path=a.safetensors`
 * is page `tools` with `params.get("op") === "resize"`. Pages link to each other this way.
 */
export function route() {
  const [name, query = ""] = location.hash.slice(1).split("?");
  return { name: name || "files", params: new URLSearchParams(query) };
}

/** The address of `name` with `params` (an object), for links between pages. */
export const pageLink = (name, params = {}) => {
  const query = new URLSearchParams(params).toString();
  return `#${name}${query ? `?${query}` : ""}`;
};

export function showError(err) {
  page().replaceChildren(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
}

// What the current page left running (timers, event streams), stopped when the page changes.
const cleanups = [];
export function onLeave(fn) { cleanups.push(fn); }
/** Runs and forgets what the page being left registered with onLeave. */
export function leavePage() { for (const fn of cleanups.splice(0)) fn(); }

export const fmtSeconds = (s) => {
  if (s == null || !isFinite(s)) return "";
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h}h${String(m % 60).padStart(2, "0")}m` : m ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.round(s)}s`;
};

export function progressText(job) {
  const p = job.progress;
  if (!p) return "";
  const parts = [];
  if (p.step != null) parts.push(p.total != null ? `step ${p.step}/${p.total}` : `step ${p.step}`);
  else if (p.total != null) parts.push(`${p.total} steps`);
  if (p.epoch != null) parts.push(`epoch ${p.epoch}`);
  if (p.loss != null) parts.push(`loss ${p.loss.toFixed(4)}`);
  if (p.its != null) parts.push(`${p.its.toFixed(2)} it/s`);
  if (p.eta_s != null) parts.push(`ETA ${fmtSeconds(p.eta_s)}`);
  return parts.join(" · ");
}


// Translation. English is the source: t with "{n} files will change" and { n } looks the English
// text up in the Thai dictionary (assets/i18n/th/*.json, merged by the server into
// /assets/i18n/th.json) when the page is shown in Thai, then fills `{name}` from `vars`. A text
// missing from the dictionary stays English (a cargo test lists every translated literal without one).
const LANGUAGE_KEY = "lorakit-language";
let language = "en";
let thai = {};

/** The language pages are shown in: `en` or `th`. */
export const currentLanguage = () => language;

/** Chooses the language (kept in this browser) and loads its dictionary. */
export async function setLanguage(lang) {
  language = lang === "th" ? "th" : "en";
  try { localStorage.setItem(LANGUAGE_KEY, language); } catch { /* private mode: not kept */ }
  if (language === "th" && !Object.keys(thai).length) {
    const response = await fetch("/assets/i18n/th.json", { credentials: "same-origin" });
    thai = response.ok ? await response.json() : {};
  }
  document.documentElement.lang = language;
}

/** The language kept in this browser, else the browser's own when it is Thai, else English. */
export function savedLanguage() {
  let saved = null;
  try { saved = localStorage.getItem(LANGUAGE_KEY); } catch { /* private mode */ }
  return saved ?? ((navigator.language || "").toLowerCase().startsWith("th") ? "th" : "en");
}

/** `text` in the page's language, `{name}` placeholders filled from `vars`. */
export function t(text, vars = {}) {
  const template = language === "th" ? thai[text] ?? text : text;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}
