// One run's view (shown under the Jobs page's queue): its output, the loss chart and the
// sample gallery, all following the job live.
import { el, api } from "../ui.js";

/**
 * The view of one job's run. `show(id)` follows job `id` (its output and metrics as SSE that
 * resume where they left off, its samples polled); `close()` stops everything;
 * `onStatus()` is called when the job's status changes.
 */
export function runView({ onStatus }) {
  const logTitle = el("h2", { text: "Output" });
  const log = el("pre", { class: "log", "aria-live": "off" });
  const chartBox = el("div", { class: "chart", role: "img", "aria-label": "Loss by step" });
  const samplesBox = el("section", { "aria-label": "Samples" });
  let stream = null, metrics = null, chart = null, samplesFor = null;
  const stop = () => {
    if (stream) stream.close();
    if (metrics) metrics.close();
    if (chart) chart.destroy();
    stream = metrics = chart = null;
  };
  // New samples appear at save points: look again now and then while a job is shown.
  const sampleTimer = setInterval(() => samplesFor && !document.querySelector(".lightbox") && showSamples(samplesBox, samplesFor).catch(() => {}), 5000);
  return {
    node: el("section", { "aria-label": "Run" }, logTitle, chartBox, samplesBox, log),
    show(id) {
      stop();
      chart = lossChart(chartBox);
      // The run's log.jsonl rows, resumed by Last-Event-ID like the output.
      metrics = new EventSource(`/api/jobs/${id}/metrics`);
      metrics.onmessage = (e) => chart.add(JSON.parse(e.data));
      metrics.addEventListener("end", () => metrics.close());
      samplesFor = id;
      showSamples(samplesBox, id).catch(() => {});
      logTitle.textContent = `Output of job ${id}`;
      log.replaceChildren();
      // EventSource reconnects by itself and sends Last-Event-ID: the server resumes there.
      stream = new EventSource(`/api/jobs/${id}/events`);
      stream.onmessage = (e) => { log.append(`${e.data}\n`); log.scrollTop = log.scrollHeight; };
      stream.addEventListener("status", () => onStatus());
      stream.addEventListener("end", () => { stream.close(); onStatus(); });
    },
    close() {
      stop();
      clearInterval(sampleTimer);
    },
  };
}

// The loss chart of a run (uPlot, vendored): the raw loss of every step, its exponential
// moving average (0.9, as TensorBoard's default smoothing) and each epoch's mean loss.
function lossChart(container) {
  const steps = [], raw = [], smooth = [], epochMean = [];
  let ema = null;
  const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0a66c2";
  const width = () => Math.max(280, container.clientWidth || 600);
  const plot = new window.uPlot({
    width: width(),
    height: 240,
    scales: { x: { time: false } },
    series: [
      { label: "step" },
      { label: "loss", stroke: "#9aa0a6", width: 1 },
      { label: "smoothed", stroke: accent, width: 2 },
      { label: "epoch mean", stroke: "#e37400", width: 2, points: { show: true } },
    ],
    // Whole steps on the x axis (uPlot would otherwise tick 1.25, 1.5, …).
    axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, { label: "loss" }],
  }, [steps, raw, smooth, epochMean], container);
  const resize = () => plot.setSize({ width: width(), height: 240 });
  window.addEventListener("resize", resize);
  return {
    add(row) {
      const epochAverage = row["loss/epoch_average"];
      const loss = row["loss/current"];
      if (loss == null && epochAverage == null) return;
      if (loss != null) ema = ema === null ? loss : 0.9 * ema + 0.1 * loss;
      // An epoch's mean lands on the step it was logged at (after that epoch's last step).
      if (steps.length && steps[steps.length - 1] === row.step) {
        if (epochAverage != null) epochMean[epochMean.length - 1] = epochAverage;
      } else {
        steps.push(row.step);
        raw.push(loss ?? null);
        smooth.push(loss != null ? ema : null);
        epochMean.push(epochAverage ?? null);
      }
      plot.setData([steps, raw, smooth, epochMean]);
      container.dataset.points = String(steps.length);
    },
    points: () => steps.length,
    destroy() {
      window.removeEventListener("resize", resize);
      plot.destroy();
    },
  };
}

// A run's sample images as save points × prompts; a click opens the image at full size, where
// ←/→ change the prompt, ↑/↓ the save point and Esc closes.
async function showSamples(box, id) {
  const samples = await api(`/jobs/${id}/samples`);
  if (!samples.length) { box.replaceChildren(); return; }
  const tags = [...new Set(samples.map((s) => s.tag))];
  const prompts = [...new Set(samples.map((s) => s.prompt))].sort((a, b) => a - b);
  const at = (t, p) => samples.find((s) => s.tag === tags[t] && s.prompt === prompts[p]);
  const label = (tag) => tag.startsWith("e") ? `epoch ${Number(tag.slice(1))}` : `step ${Number(tag)}`;
  const open = (t, p) => {
    const overlay = el("div", { class: "lightbox", role: "dialog", "aria-label": "Sample image", tabindex: "-1" });
    const show = () => {
      const s = at(t, p);
      overlay.replaceChildren(
        s ? el("img", { src: `/api/image?root=${s.root}&path=${encodeURIComponent(s.path)}`, alt: `${label(tags[t])}, prompt ${prompts[p]}` }) : el("p", { text: "no image" }),
        el("p", { text: `${label(tags[t])} · prompt ${prompts[p]} — ←/→ prompt, ↑/↓ save point, Esc closes` }),
      );
    };
    overlay.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (e.key === "Escape") { overlay.remove(); return; }
      const m = moves[e.key];
      if (!m) return;
      e.preventDefault();
      t = Math.min(tags.length - 1, Math.max(0, t + m[0]));
      p = Math.min(prompts.length - 1, Math.max(0, p + m[1]));
      show();
    });
    overlay.addEventListener("click", () => overlay.remove());
    show();
    document.body.append(overlay);
    overlay.focus();
  };
  box.replaceChildren(
    el("h3", { text: "Samples" }),
    el("table", { class: "samples" }, el("tbody", {}, ...tags.map((tag, t) => el("tr", {},
      el("th", { text: label(tag) }),
      ...prompts.map((prompt, p) => {
        const s = at(t, p);
        return el("td", {}, s ? el("img", {
          src: `/api/thumb?root=${s.root}&path=${encodeURIComponent(s.path)}`, alt: `${label(tag)}, prompt ${prompt}`,
          loading: "lazy", tabindex: "0", onclick: () => open(t, p), onkeydown: (e) => e.key === "Enter" && open(t, p),
        }) : "");
      }))))),
  );
}
