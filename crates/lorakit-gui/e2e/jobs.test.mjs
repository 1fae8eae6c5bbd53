// The Jobs page and its run view: a queued training, its loss, learning-rate and norm charts,
// samples (lightbox, two save points side by side), saved LoRA files with Inspect; Save now /
// Stop now; another run's loss drawn over the chart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gui, useGui, shots, quickstartRun, queueAndShow, openPage } from "./harness.mjs";

useGui();

const points = (page, label) => page.evaluate((l) => Number(document.querySelector(`[aria-label="${l}"]`)?.dataset.points ?? 0), label);

test("a queued training runs and its loss chart grows from the run's log", async () => {
  const { page, errors } = await openPage();
  const config = quickstartRun("e2e", 6, [
    "[samples]",
    `sample_prompts = ${JSON.stringify(join(gui.dataRoot, "prompts.txt"))}`,
    "sample_every_n_steps = 3",
    "[save]",
    "save_every_n_steps = 3",
  ]);
  writeFileSync(join(gui.dataRoot, "prompts.txt"), "red lkstar, large --w 64 --h 64 --s 3 --d 1\nblue lkstar --w 64 --h 64 --s 3 --d 2\n");
  const row = await queueAndShow(page, config);
  const chart = page.getByRole("img", { name: "Loss by step" });
  await page.waitForFunction(() => Number(document.querySelector(".chart")?.dataset.points ?? 0) >= 6, null, { timeout: 120000 });
  await row.getByText("done").waitFor({ timeout: 120000 });
  assert.equal(await chart.locator("canvas").count(), 1);
  // The learning rate of each parameter group has a point per step (the quick-start trains the
  // U-Net only: one group).
  await page.waitForFunction(() => Number(document.querySelector('[aria-label="Learning rate by step"]')?.dataset.points ?? 0) >= 6);
  const lrChart = page.getByRole("img", { name: "Learning rate by step" });
  assert.equal(await lrChart.locator("canvas").count(), 1);
  assert.match(await lrChart.locator(".u-legend").textContent(), /unet/);
  // The gradient norm lorakit train measures for clipping (max_grad_norm 1.0), every step.
  await page.waitForFunction(() => Number(document.querySelector('[aria-label="Gradient norm by step"]')?.dataset.points ?? 0) >= 6);
  assert.match(await page.getByRole("img", { name: "Gradient norm by step" }).locator(".u-legend").textContent(), /gradient norm \(before clipping\)/);
  // Smoothing 0 draws the raw loss itself; the slider redraws at once.
  await page.getByLabel("Smoothing").fill("0");
  assert.equal(await page.locator(".run output").textContent(), "0.00");
  // Samples at steps 3 and 6 for both prompts, in a save points × prompts table.
  const samples = page.getByRole("region", { name: "Samples" });
  await samples.getByRole("img", { name: "step 6, prompt 1" }).waitFor({ timeout: 30000 });
  assert.equal(await samples.getByRole("img").count(), 4);
  await samples.getByRole("img", { name: "step 3, prompt 0" }).click();
  const lightbox = page.getByRole("dialog", { name: "Sample image" });
  await lightbox.getByText("step 3 · prompt 0", { exact: false }).waitFor();
  await page.keyboard.press("ArrowDown");
  await lightbox.getByText("step 6 · prompt 0", { exact: false }).waitFor();
  await page.keyboard.press("ArrowRight");
  await lightbox.getByText("step 6 · prompt 1", { exact: false }).waitFor();
  await page.waitForFunction(() => document.querySelector(".lightbox img")?.naturalWidth === 64);
  await page.screenshot({ path: join(shots, "lightbox-1280.png") });
  await page.keyboard.press("Escape");
  assert.equal(await lightbox.count(), 0);

  // Compare two save points: each prompt's image at step 3 beside the one at step 6.
  await samples.getByRole("button", { name: "Compare two save points" }).click();
  const compare = page.getByRole("region", { name: "Compare save points" });
  await compare.waitFor();
  const rows = compare.locator("tbody tr");
  assert.equal(await rows.count(), 2, "one row per prompt");
  for (const [i, prompt] of [[0, 0], [1, 1]]) {
    const names = await rows.nth(i).getByRole("img").evaluateAll((imgs) => imgs.map((img) => img.alt));
    assert.deepEqual(names, [`step 3, prompt ${prompt}`, `step 6, prompt ${prompt}`]);
  }
  await page.waitForFunction(() => [...document.querySelectorAll(".compare img")].every((img) => img.naturalWidth === 64));
  // Keyboard: the right-hand save point changes from its select, Swap exchanges the two.
  await compare.getByLabel("Right save point").focus();
  await compare.getByLabel("Right save point").selectOption({ label: "step 3" });
  assert.deepEqual(await rows.nth(0).getByRole("img").evaluateAll((imgs) => imgs.map((img) => img.alt)), ["step 3, prompt 0", "step 3, prompt 0"]);
  await compare.getByLabel("Left save point").selectOption({ label: "step 6" });
  await compare.getByRole("button", { name: "Swap" }).press("Enter");
  assert.deepEqual(await rows.nth(1).getByRole("img").evaluateAll((imgs) => imgs.map((img) => img.alt)), ["step 3, prompt 1", "step 6, prompt 1"]);

  // The LoRA files the run saved: the step-3 save and the final file, each inspectable here.
  const saved = page.getByRole("region", { name: "Saved LoRA files" });
  await saved.getByText("e2e.safetensors", { exact: true }).waitFor({ timeout: 30000 });
  const savedRows = saved.locator("tbody tr");
  assert.deepEqual(await savedRows.locator("td:first-child").allTextContents(), ["e2e-step00000003.safetensors", "e2e.safetensors"]);
  assert.deepEqual(await savedRows.locator("td:nth-child(2)").allTextContents(), ["step 3", "final"]);
  const resize = saved.getByRole("link", { name: "Resize e2e.safetensors" });
  assert.equal(await resize.getAttribute("href"), "#tools?op=resize&root=0&path=e2e%2Fe2e.safetensors");
  assert.equal(await saved.getByRole("link", { name: "XY plot of e2e.safetensors" }).getAttribute("href"), "#tools?op=xy&root=0&path=e2e%2Fe2e.safetensors");
  await saved.getByRole("button", { name: "Inspect e2e.safetensors" }).click();
  const report = saved.getByRole("region", { name: "LoRA file" });
  await report.getByRole("heading", { name: "e2e/e2e.safetensors" }).waitFor();
  assert.match(await report.locator("tr", { hasText: "epochs / steps" }).textContent(), /\/ 6/);
  assert.ok((await report.locator(".blocks tr").count()) >= 1, "block norms drawn");
  await page.screenshot({ path: join(shots, "run-1280.png"), fullPage: true });
  // The output: the whole file downloads; scrolling up stops following the end.
  const download = page.getByRole("link", { name: "Download output.log" });
  const text = await page.evaluate((href) => fetch(href).then((r) => r.text()), await download.getAttribute("href"));
  assert.match(text, /done: 6 steps/);
  assert.equal(await download.getAttribute("download"), "");
  const follow = page.getByRole("checkbox", { name: "Follow" });
  assert.equal(await follow.isChecked(), true);

  // Phone width: the charts shrink to the screen and stay drawn.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => [...document.querySelectorAll(".run .chart canvas")].every((c) => c.getBoundingClientRect().right <= 390));
  const box = await chart.locator("canvas").boundingBox();
  assert.ok(box.width >= 300 && box.x >= 0, `loss chart at 390 px: ${JSON.stringify(box)}`);
  await page.screenshot({ path: join(shots, "run-390.png"), fullPage: true });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: join(shots, "run-390-dark.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test("Save now saves a running job's LoRA at its current step, Stop now ends it", async () => {
  const { page, errors } = await openPage();
  const config = quickstartRun("long", 100000);
  const row = await queueAndShow(page, config);
  await row.getByText(/step [1-9]\d*\/100000/).waitFor({ timeout: 120000 });
  await row.getByRole("button", { name: "Save now" }).click();
  await page.locator("pre.log").getByText(/saved .*long-step\d{8}\.safetensors/).waitFor({ timeout: 60000 });
  // The save shows in the run's saved files, named by its step.
  await page.getByRole("region", { name: "Saved LoRA files" }).getByText(/^long-step\d{8}\.safetensors$/).waitFor({ timeout: 30000 });
  await row.getByRole("button", { name: "Stop now" }).click();
  await row.getByRole("cell", { name: "stopped", exact: true }).waitFor({ timeout: 60000 });
  assert.deepEqual(errors, []);
  await page.close();
});

test("another finished run's smoothed loss is drawn over the chart, in its own colour, and removed again", async () => {
  const { page, errors } = await openPage();
  const { jobs } = await page.evaluate(() => fetch("/api/jobs").then((r) => r.json()));
  const first = jobs.find((j) => j.status === "done"), second = jobs.find((j) => j.status === "stopped");
  assert.ok(first && second, JSON.stringify(jobs.map((j) => [j.id, j.status])));
  await page.goto(new URL("/#jobs", gui.url).href);
  await page.locator("tr", { hasText: first.id }).getByRole("button", { name: "Output" }).click();
  await page.waitForFunction(() => Number(document.querySelector(".chart")?.dataset.points ?? 0) >= 6);
  const chart = page.getByRole("img", { name: "Loss by step" });
  assert.equal(await chart.getAttribute("data-series"), "3", "loss, smoothed, epoch mean");
  const other = page.getByLabel("Other run");
  await page.waitForFunction((id) => [...document.querySelectorAll("select[aria-label='Other run'] option")].some((o) => o.value === id), second.id);
  await other.selectOption(second.id);
  await page.getByRole("button", { name: "Add to chart" }).click();
  // Every loss row the stopped run logged becomes a point of the fourth series.
  const logged = await page.evaluate((id) => fetch(`/api/runs/${id}/series?key=loss/current`).then((r) => r.json()), second.id);
  assert.ok(logged.steps.length >= 1, JSON.stringify(logged));
  await page.waitForFunction((n) => document.querySelector(".chart")?.dataset.overlayPoints === String(n), logged.steps.length);
  assert.equal(await chart.getAttribute("data-series"), "4");
  assert.match(await chart.locator(".u-legend").textContent(), new RegExp(`job ${second.id} \\(smoothed\\)`));
  const stroke = await page.evaluate(() => getComputedStyle(document.querySelector(".run .chip .swatch")).backgroundColor);
  assert.notEqual(stroke, "", "the legend chip shows the run's colour");
  await page.locator(".run-charts").screenshot({ path: join(shots, "run-overlay-1280.png") });
  // The theme picker redraws the charts in the dark colours, overlay included.
  await page.getByLabel("Theme").selectOption("dark");
  await page.waitForFunction(() => document.querySelectorAll(".run .chart canvas").length === 3);
  assert.equal(await chart.getAttribute("data-series"), "4");
  assert.equal(await chart.locator("canvas").count(), 1);
  await page.locator(".run-charts").screenshot({ path: join(shots, "run-overlay-1280-dark.png") });
  await page.getByLabel("Theme").selectOption("");
  await page.getByRole("button", { name: `Remove job ${second.id} from the chart` }).click();
  await page.waitForFunction(() => document.querySelector(".chart")?.dataset.series === "3");
  assert.deepEqual(errors, []);
  await page.close();
});

test("Stop & save ends the first of two queued jobs with a resumable state, the second starts, and the chart survives a reload", async () => {
  const { page, errors } = await openPage();
  const first = await queueAndShow(page, quickstartRun("first", 100000));
  const firstId = (await first.getByRole("cell").first().textContent()).trim();
  // The second is queued behind it.
  await page.getByLabel("Training config (TOML)").fill(quickstartRun("second", 3));
  await page.getByRole("button", { name: "Add to queue" }).click();
  // The message still names the first job until the second is queued.
  const queued = page.getByText(new RegExp(`^queued job (?!${firstId}$)\\d+$`));
  await queued.waitFor();
  const secondId = (await queued.textContent()).split(" ").pop();
  const second = page.locator(`tr[data-job="${secondId}"]`);
  await second.getByRole("cell", { name: "queued", exact: true }).waitFor();
  await page.waitForFunction(() => Number(document.querySelector(".chart")?.dataset.points ?? 0) >= 3, null, { timeout: 120000 });
  // A reload (or a closed browser) loses nothing: the run's log is read again from its start.
  const before = await points(page, "Loss by step");
  await page.reload();
  await page.goto(new URL(`/#jobs?job=${firstId}`, gui.url).href);
  await page.waitForFunction((n) => Number(document.querySelector(".chart")?.dataset.points ?? 0) >= n, before, { timeout: 60000 });

  await page.locator(`tr[data-job="${firstId}"]`).getByRole("button", { name: "Stop & save" }).click();
  await page.locator(`tr[data-job="${firstId}"]`).getByRole("cell", { name: "stopped", exact: true }).waitFor({ timeout: 120000 });
  // lorakit train saved its state at the step it stopped after, and the next job started.
  const states = readdirSync(join(gui.dataRoot, "first")).filter((n) => /^first-step\d{8}-state$/.test(n));
  assert.equal(states.length, 1, `one resumable state: ${readdirSync(join(gui.dataRoot, "first"))}`);
  await page.locator(`tr[data-job="${secondId}"]`).getByRole("cell", { name: "done", exact: true }).waitFor({ timeout: 180000 });
  // Resume queues the first again from that state.
  await page.locator(`tr[data-job="${firstId}"]`).getByRole("button", { name: "Resume" }).click();
  await page.getByText(new RegExp(`^queued job \\d+ from .*${states[0]}$`)).waitFor();
  const resumed = (await page.getByText(/^queued job \d+ from /).textContent()).split(" ")[2];
  await page.locator(`tr[data-job="${resumed}"]`).getByRole("cell", { name: "running", exact: true }).waitFor({ timeout: 60000 });
  await page.locator(`tr[data-job="${resumed}"]`).getByRole("button", { name: "Stop now" }).click();
  await page.locator(`tr[data-job="${resumed}"]`).getByRole("cell", { name: "stopped", exact: true }).waitFor({ timeout: 60000 });
  assert.deepEqual(errors, []);
  await page.close();
});

test("a run with a validation split draws its validation loss", async () => {
  const { page, errors } = await openPage();
  const config = quickstartRun("validation", 4, ["validate_every_n_steps = 2"])
    .replace("enable_bucket = false", "enable_bucket = false\nvalidation_split = 0.25\nvalidation_seed = 1");
  const row = await queueAndShow(page, config);
  await row.getByText("done").waitFor({ timeout: 120000 });
  // Measured after steps 2 and 4 (and at the end of the epoch), one line per kind.
  await page.waitForFunction(() => Number(document.querySelector('[aria-label="Validation loss over the run"]')?.dataset.points ?? 0) >= 2);
  const chart = page.getByRole("img", { name: "Validation loss over the run" });
  assert.equal(await chart.locator("canvas").count(), 1);
  assert.match(await chart.locator(".u-legend").textContent(), /every N steps/);
  assert.deepEqual(errors, []);
  await page.close();
});
