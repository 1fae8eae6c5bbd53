// The Jobs page: a queued training, its loss chart and samples; Save now and Stop now.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { gui, useGui, at, shots, quickstartRun, queueAndShow } from "./harness.mjs";

useGui();

test("a queued training runs and its loss chart grows from the run's log", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
  const config = quickstartRun("e2e", 6, [
    "[samples]",
    `sample_prompts = ${JSON.stringify(join(gui.dataRoot, "prompts.txt"))}`,
    "sample_every_n_steps = 3",
  ]);
  writeFileSync(join(gui.dataRoot, "prompts.txt"), "red lkstar, large --w 64 --h 64 --s 3 --d 1\nblue lkstar --w 64 --h 64 --s 3 --d 2\n");
  const row = await queueAndShow(page, config);
  const chart = page.getByRole("img", { name: "Loss by step" });
  await page.waitForFunction(() => Number(document.querySelector(".chart")?.dataset.points ?? 0) >= 6, null, { timeout: 120000 });
  await row.getByText("done").waitFor({ timeout: 120000 });
  assert.equal(await chart.locator("canvas").count(), 1);
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
  await page.screenshot({ path: join(shots, "run-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test("Save now saves a running job's LoRA at its current step, Stop now ends it", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
  const config = quickstartRun("long", 100000);
  const row = await queueAndShow(page, config);
  await row.getByText(/step [1-9]\d*\/100000/).waitFor({ timeout: 120000 });
  await row.getByRole("button", { name: "Save now" }).click();
  await page.locator("pre.log").getByText(/saved .*long-step\d{8}\.safetensors/).waitFor({ timeout: 60000 });
  await row.getByRole("button", { name: "Stop now" }).click();
  await row.getByRole("cell", { name: "stopped", exact: true }).waitFor({ timeout: 60000 });
  assert.deepEqual(errors, []);
  await page.close();
});
