// The Jobs page: the queue, each job's actions, its output, loss chart and samples.
import { el, api, page, current, showError, onLeave, progressText } from "../ui.js";
import { runView } from "./run.js";

export async function jobsPage() {
  const editor = el("textarea", { rows: "10", spellcheck: "false", "aria-label": "Training config (TOML)", placeholder: "A lorakit training config (TOML): see Training options" });
  const message = el("p", { role: "status" });
  const body = el("tbody");
  // The chosen job's run: output, charts, samples (pages/run.js).
  const run = runView({ onStatus: () => refresh() });
  onLeave(() => run.close());

  const act = (id, action) => api(`/jobs/${id}/${action}`, { method: "POST" })
    .then((job) => { message.textContent = action === "resume" ? `queued job ${job.id}${job.resume_state ? ` from ${job.resume_state}` : " (no saved state: it starts over)"}` : ""; })
    .catch((e) => { message.textContent = e.message; })
    .then(refresh);

  // The snapshot into the editor: change it, then Add to queue.
  async function cloneConfig(id) {
    const response = await fetch(`/api/jobs/${id}/config`, { credentials: "same-origin" });
    if (!response.ok) { message.textContent = `job ${id}: cannot read its config (${response.status})`; return; }
    editor.value = await response.text();
    message.textContent = `the config of job ${id}: edit it, then Add to queue`;
    editor.focus();
  }

  const showLog = (id) => run.show(id);

  async function refresh() {
    const { jobs, skipped } = await api("/jobs");
    const rows = jobs.slice().reverse().map((job) => {
      const actions = el("td", { class: "actions" });
      const button = (label, fn) => actions.append(el("button", { type: "button", text: label, onclick: fn }));
      if (job.status === "running" || job.status === "queued") {
        button(job.status === "running" ? "Stop & save" : "Cancel", () => act(job.id, "stop"));
        if (job.status === "running") {
          button("Stop now", () => act(job.id, "kill"));
          // Taken by the run after its current step (lorakit train --requests).
          button("Save now", () => act(job.id, "save-now"));
          button("Sample now", () => act(job.id, "sample-now"));
        }
      }
      if (["stopped", "interrupted", "failed"].includes(job.status)) button("Resume", () => act(job.id, "resume"));
      button("Clone & edit", () => cloneConfig(job.id));
      button("Output", () => showLog(job.id));
      return el("tr", {},
        el("td", { text: job.id }),
        el("td", { class: `status-${job.status}`, text: job.status }),
        el("td", { text: progressText(job) }),
        el("td", { class: job.status === "failed" || job.status === "interrupted" ? "error" : "muted", text: job.error || "" }),
        actions,
      );
    });
    body.replaceChildren(...rows);
    if (skipped.length) message.textContent = skipped.map((s) => `job folder ${s.id} skipped: ${s.error}`).join("; ");
  }

  const submit = el("button", { type: "button", text: "Add to queue", onclick: () => {
    api("/jobs", { method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8" }, body: editor.value })
      .then((job) => { message.textContent = `queued job ${job.id}`; })
      .catch((e) => { message.textContent = e.message; })
      .then(refresh);
  } });

  if (!current("jobs")) return;
  page().replaceChildren(
    el("h1", { text: "Jobs" }),
    el("table", {}, el("thead", {}, el("tr", {}, ...["job", "status", "progress", "cause", ""].map((t) => el("th", { text: t })))), body),
    message,
    el("h2", { text: "New job" }),
    editor,
    el("p", {}, submit),
    run.node,
  );
  await refresh();
  const timer = setInterval(() => refresh().catch(showError), 2000);
  onLeave(() => clearInterval(timer));
}

