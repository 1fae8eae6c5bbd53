// The Jobs page: the queue (trainings and command jobs: resize, merge, convert, XY plots,
// captioning) in the
// order it runs, each job's actions, and the chosen job's run (pages/run.js) below.
import { el, api, page, current, route, showError, onLeave, progressText, pageLink, t } from "../ui.js";
import { runView } from "./run.js";

// The tools page's tab for each command job (Clone & edit refills that form).
const TOOL_OF = { resize: "resize", merge: "merge", convert: "convert", generate: "xy" };
const kindName = (kind) => ({ train: t("training"), resize: t("resize"), merge: t("merge"), convert: t("convert"), generate: t("XY plot"), caption: t("captioning") })[kind] ?? kind;
const statusName = (status) => ({ queued: t("queued"), running: t("running"), done: t("done"), failed: t("failed"), stopped: t("stopped"), interrupted: t("interrupted") })[status] ?? status;

export async function jobsPage() {
  const editor = el("textarea", { rows: "10", spellcheck: "false", "aria-label": t("Training config (TOML)"), placeholder: t("A lorakit training config (TOML): see Training options") });
  const message = el("p", { role: "status" });
  const body = el("tbody");
  // The chosen job's run: output, charts, samples (pages/run.js).
  const run = runView({ onStatus: () => refresh() });
  onLeave(() => run.close());

  const say = (text) => { message.textContent = text; };
  const post = (id, action, payload) => api(`/jobs/${id}/${action}`, {
    method: "POST",
    ...(payload ? { headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) } : {}),
  });
  const act = (id, action, payload) => post(id, action, payload)
    .then((job) => {
      if (action === "resume") {
        say(job.resume_state
          ? t("queued job {id} from {state}", { id: job.id, state: job.resume_state })
          : t("queued job {id} (no saved state: it starts over)", { id: job.id }));
      } else if (action === "delete") say(t("job {id} deleted (the files it wrote stay)", { id }));
      else say("");
    })
    .catch((e) => say(e.message))
    .then(refresh);

  // The snapshot into the editor: change it, then Add to queue.
  async function cloneConfig(id) {
    const response = await fetch(`/api/jobs/${id}/config`, { credentials: "same-origin" });
    if (!response.ok) { say(t("job {id}: cannot read its config ({status})", { id, status: response.status })); return; }
    editor.value = await response.text();
    say(t("the config of job {id}: edit it, then Add to queue", { id }));
    editor.focus();
  }

  // What a command job wrote: the XY plot's image, or a link to each file's folder.
  function results(job) {
    if (job.status !== "done" || !job.files?.length) return "";
    return el("div", { class: "results" }, ...job.files.map((f) => {
      const name = f.path.split("/").pop();
      if (job.kind === "generate") {
        const src = `/api/image/${encodeURIComponent(f.image)}`;
        return el("a", { href: src, target: "_blank", rel: "noopener" }, el("img", { src, alt: t("XY plot of job {id}", { id: job.id }), loading: "lazy" }));
      }
      const folder = f.path.split("/").slice(0, -1).join("/");
      return el("a", { href: pageLink("files", { root: f.root, path: folder }), text: name, title: f.path });
    }));
  }

  async function refresh() {
    const { jobs, skipped } = await api("/jobs");
    const queued = jobs.filter((j) => j.status === "queued").map((j) => j.id);
    // Queue order: what ran first at the top, the next queued right under what runs now.
    const rows = jobs.map((job) => {
      const training = job.kind === "train";
      const actions = el("td", { class: "actions" });
      const button = (label, fn, aria) => actions.append(el("button", { type: "button", text: label, onclick: fn, ...(aria ? { "aria-label": aria } : {}) }));
      if (job.status === "queued") {
        const at = queued.indexOf(job.id);
        if (at > 0) button("↑", () => act(job.id, "move", { by: -1 }), t("Move job {id} up", { id: job.id }));
        if (at < queued.length - 1) button("↓", () => act(job.id, "move", { by: 1 }), t("Move job {id} down", { id: job.id }));
        button(t("Cancel"), () => act(job.id, "stop"));
      }
      if (job.status === "running") {
        // A command has nothing to save: it stops at once.
        if (training) button(t("Stop & save"), () => act(job.id, "stop"));
        button(t("Stop now"), () => act(job.id, "kill"));
        if (training) {
          // Taken by the run after its current step (lorakit train --requests).
          button(t("Save now"), () => act(job.id, "save-now"));
          button(t("Sample now"), () => act(job.id, "sample-now"));
        }
      }
      if (training && ["stopped", "interrupted", "failed"].includes(job.status)) button(t("Resume"), () => act(job.id, "resume"));
      if (training) button(t("Clone & edit"), () => cloneConfig(job.id));
      else if (job.kind === "caption") actions.append(el("a", { class: "button", href: pageLink("datasets", { job: job.id }), text: t("Clone & edit") }));
      else actions.append(el("a", { class: "button", href: pageLink("tools", { op: TOOL_OF[job.kind] ?? "resize", job: job.id }), text: t("Clone & edit") }));
      button(t("Output"), () => run.show(job.id));
      if (!["queued", "running"].includes(job.status)) button(t("Delete"), () => act(job.id, "delete"), t("Delete job {id}", { id: job.id }));
      const progress = training ? progressText(job) : (job.progress?.line ?? "");
      return el("tr", { "data-job": job.id },
        el("td", { text: job.id }),
        el("td", {}, el("span", { class: `kind kind-${job.kind}`, text: kindName(job.kind) }), job.summary ? el("div", { class: "muted summary", text: job.summary }) : ""),
        el("td", { class: `status-${job.status}`, text: statusName(job.status) }),
        el("td", { class: "progress" }, progress, results(job)),
        el("td", { class: job.status === "failed" || job.status === "interrupted" ? "error" : "muted", text: job.error || "" }),
        actions,
      );
    });
    body.replaceChildren(...rows);
    if (skipped.length) say(skipped.map((s) => t("job folder {id} skipped: {error}", { id: s.id, error: s.error })).join("; "));
  }

  const submit = el("button", { type: "button", text: t("Add to queue"), onclick: () => {
    api("/jobs", { method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8" }, body: editor.value })
      .then((job) => say(t("queued job {id}", { id: job.id })))
      .catch((e) => say(e.message))
      .then(refresh);
  } });

  if (!current("jobs")) return;
  const headings = [t("job"), t("kind"), t("status"), t("progress"), t("cause"), ""];
  page().replaceChildren(
    el("h1", { text: t("Jobs") }),
    el("table", { class: "queue" }, el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { text: h })))), body),
    message,
    el("p", { class: "muted" }, t("Resize, merge, convert and XY plots are queued from "), el("a", { href: pageLink("tools"), text: t("Resize · Merge · Convert") }), "."),
    el("h2", { text: t("New job") }),
    editor,
    el("p", {}, submit),
    run.node,
  );
  await refresh();
  // `#jobs?job=ID` (the Train page's Start): that job's run is shown at once.
  const asked = route().params.get("job");
  if (asked && /^\d+$/.test(asked)) {
    run.show(asked);
    run.node.scrollIntoView({ block: "start" });
  }
  const timer = setInterval(() => refresh().catch(showError), 2000);
  onLeave(() => clearInterval(timer));
}
