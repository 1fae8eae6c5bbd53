// lorakit gui: plain ES module, no framework. User data (file names, docs, captions) is only
// ever inserted with textContent (the CSP forbids inline scripts; nothing here builds HTML).

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};

async function api(path, options = {}) {
  const response = await fetch(`/api${path}`, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const page = () => document.getElementById("page");

function showError(err) {
  page().replaceChildren(el("p", { class: "error", role: "alert", text: String(err.message || err) }));
}

async function filesPage(root = 0, path = "") {
  const session = await api("/session");
  const listing = await api(`/fs?root=${root}&path=${encodeURIComponent(path)}`);
  const rootPicker = el("select", { "aria-label": "Root", onchange: (e) => filesPage(Number(e.target.value), "").catch(showError) });
  for (const r of session.roots) {
    const option = el("option", { value: String(r.id), text: r.path });
    if (r.id === root) option.selected = true;
    rootPicker.append(option);
  }
  const rows = listing.entries.map((entry) => {
    const name = entry.kind === "dir"
      ? el("button", { class: "link", text: `${entry.name}/`, onclick: () => filesPage(root, path ? `${path}/${entry.name}` : entry.name).catch(showError) })
      : el("span", { text: entry.name });
    return el("tr", {}, el("td", {}, name), el("td", { class: "muted", text: entry.kind === "file" ? `${entry.size} B` : entry.kind }));
  });
  const up = path
    ? el("button", { class: "link", text: "..", onclick: () => filesPage(root, path.split("/").slice(0, -1).join("/")).catch(showError) })
    : el("span", { class: "muted", text: "(root)" });
  page().replaceChildren(
    el("h1", { text: "Files" }),
    rootPicker,
    el("p", {}, el("span", { class: "muted", text: `/${path} ` }), up),
    el("table", {}, el("tbody", {}, ...rows)),
  );
}

async function optionsPage() {
  const fields = await api("/schema");
  const search = el("input", { type: "search", placeholder: "Find an option (name, sd-scripts argument, words from its description)", "aria-label": "Find an option" });
  const body = el("tbody");
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = fields.filter((f) => !q || `${f.section}.${f.key} ${f.kohya} ${f.doc}`.toLowerCase().includes(q));
    body.replaceChildren(...shown.map((f) => el("tr", {},
      el("td", {}, el("code", { text: `${f.section}.${f.key}` })),
      el("td", { class: "muted", text: f.kohya }),
      el("td", { class: "muted", text: f.default === null ? "unset" : JSON.stringify(f.default) }),
      el("td", { text: f.doc }),
    )));
  };
  search.addEventListener("input", render);
  render();
  page().replaceChildren(
    el("h1", { text: "Training options" }),
    search,
    el("table", {}, el("thead", {}, el("tr", {}, ...["key", "sd-scripts", "default", "what it does"].map((t) => el("th", { text: t })))), body),
  );
}

const pages = { files: () => filesPage(), options: optionsPage };

function route() {
  const name = location.hash.slice(1) || "files";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  (pages[name] || pages.files)().catch(showError);
}

window.addEventListener("hashchange", route);
route();
