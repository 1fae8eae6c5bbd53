// The Train page: preset, changed marks, TOML, save; the base model's family and the fields it
// hides; the run-plan panel against `lorakit train --dry-run`; the sample prompts table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gui, useGui, at, shots, openPage, repo, bin } from "./harness.mjs";

useGui();

test("the train form starts from a preset, marks changes and renders an accepted config", async () => {
  const { page, errors } = await openPage();
  await page.goto(at("train"));
  await page.getByLabel("Preset", { exact: true }).selectOption("sd15-character");
  await page.getByText("preset sd15-character loaded").waitFor();
  // The search opens the section holding the field.
  await page.getByLabel("Find a training option").fill("max_train_epochs");
  const epochs = page.getByLabel("training.max_train_epochs", { exact: true });
  await epochs.fill("3");
  await epochs.press("Tab");
  const row = page.locator("tr", { has: epochs });
  assert.equal(await row.locator(".changed").textContent(), "●");
  await page.getByRole("button", { name: "Show TOML" }).click();
  await page.getByText("lorakit train accepts this config").waitFor();
  const toml = await page.getByLabel("Result").textContent();
  assert.match(toml, /max_train_epochs = 3/);
  assert.match(toml, /network_dim = 16/, "the preset's values are kept");
  // Save as TOML under the root: the file is what Show TOML showed, and the command runs it.
  await page.getByLabel("Config file name").fill("from-the-form");
  await page.getByRole("button", { name: "Save as TOML" }).click();
  await page.getByText(/^saved .*from-the-form\.toml$/).waitFor();
  assert.equal(readFileSync(join(gui.dataRoot, "from-the-form.toml"), "utf8"), toml);
  assert.match(await page.getByLabel("Result").textContent(), /^lorakit train .*from-the-form\.toml$/);
  // Show CLI: the same command, and its dry run.
  await page.getByRole("button", { name: "Show CLI" }).click();
  await page.waitForFunction(() => document.querySelector('[aria-label="Result"]').textContent.includes("--dry-run"));
  assert.match(await page.getByLabel("Result").textContent(), /^lorakit train .*from-the-form\.toml\nlorakit train .*from-the-form\.toml --dry-run$/);
  assert.deepEqual(errors, []);
  await page.close();
});

// Picks `path` (folders separated by /) under root 1 (the repository's examples/) in the
// picker the button opens; a folder is taken with "Use this folder".
async function pick(page, button, path, folder) {
  await page.getByRole("button", { name: button }).click();
  const picker = page.getByRole("dialog", { name: button });
  await picker.getByLabel("Root").selectOption("1");
  const parts = path.split("/");
  for (const [i, part] of parts.entries()) {
    const last = i === parts.length - 1;
    await picker.getByRole("button", { name: last && !folder ? part : `${part}/`, exact: true }).click();
  }
  if (folder) await picker.getByRole("button", { name: "Use this folder" }).click();
  await picker.waitFor({ state: "detached" });
}

// A field of the form by its `section.key` label.
async function setField(page, label, value) {
  const box = page.getByLabel(label, { exact: true });
  const details = page.locator("details", { has: box });
  if (!(await details.evaluate((d) => d.open))) await details.locator("summary").click();
  if (typeof value === "boolean") await box.setChecked(value);
  else { await box.fill(value); await box.press("Tab"); }
}

test("the bundled model's family shows and Flux-only fields are hidden with the reason; the plan equals the dry run", async () => {
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("train"));
  await pick(page, "Choose base model…", "quickstart/shapes-sd15", true);
  await page.getByText("SD 1.x · diffusers folder").waitFor();
  // Flux's (and SD3's) options are not shown, and each section says so.
  const fp8Unet = page.getByLabel("accelerate.fp8_base_unet", { exact: true });
  assert.equal(await fp8Unet.isVisible(), false);
  const accelerate = page.locator("details[data-section=accelerate]");
  await accelerate.locator("summary").click();
  const note = accelerate.locator(".hidden-note");
  assert.match(await note.textContent(), /^\d+ options hidden: they apply to (Flux and SD3 only; )?Flux only \(show them\)$/);
  const flow = page.locator("details[data-section=flow]");
  assert.equal(await flow.isVisible(), true, "the section stays, to say what it hides");
  assert.match(await flow.locator(".hidden-note").textContent(), /options hidden: they apply to Flux only; Flux and SD3 only; SD3 only/);
  await note.getByRole("button", { name: "(show them)" }).click();
  await fp8Unet.waitFor();
  assert.equal(await page.locator("tr", { has: fp8Unet }).locator(".only").textContent(), "Flux only");
  // SD 1.x reads clip_skip: it shows.
  await setField(page, "model.clip_skip", "1");

  // The run: the quick start's settings, written under the first root.
  await pick(page, "Choose dataset folder…", "shapes/img", true);
  await setField(page, "dataset.resolution", "64");
  await setField(page, "dataset.enable_bucket", false);
  await setField(page, "training.max_train_steps", "12");
  await setField(page, "optimizer.lr_scheduler", "cosine");
  await setField(page, "optimizer.lr_warmup_steps", "0.25");
  await setField(page, "save.save_every_n_steps", "5");
  await setField(page, "folders.output_dir", join(gui.dataRoot, "plan-run"));
  const steps = page.locator('.plan [data-plan="steps"]');
  // The panel settles on the plan of the last change (or says what blocks it).
  await page.waitForFunction(() => {
    const body = document.querySelector(".plan-body");
    return !body.classList.contains("stale") && (body.querySelector('[data-plan="steps"]')?.textContent === "12" || body.querySelector('[data-plan="error"]'));
  }, null, { timeout: 60000 });
  assert.equal(await page.locator('.plan [data-plan="error"]').count(), 0, await page.locator(".plan").textContent());
  const panel = {
    steps: await steps.textContent(),
    warmup: await page.locator('.plan [data-plan="warmup"]').textContent(),
    epochs: await page.locator('.plan [data-plan="epochs"]').textContent(),
    memory: await page.locator('.plan [data-plan="memory_gb"]').textContent(),
    saves: await page.locator('.plan [data-plan="saves"]').textContent(),
  };
  assert.equal(panel.saves, "step 5, step 10, end");
  await page.getByLabel("Config file name").fill("plan-check");
  await page.getByRole("button", { name: "Save as TOML" }).click();
  await page.getByText(/^saved .*plan-check\.toml$/).waitFor();
  const printed = execFileSync(bin, ["train", join(gui.dataRoot, "plan-check.toml"), "--dry-run"], { encoding: "utf8" });
  const length = printed.match(/^length: (\d+) steps in (\d+) epochs, (\d+) warmup steps$/m);
  const memory = printed.match(/^memory: this run needs about (\S+ [GM]B) /m);
  assert.ok(length && memory, printed);
  assert.deepEqual(
    { steps: panel.steps, warmup: panel.warmup, epochs: panel.epochs, memory: panel.memory },
    { steps: length[1], warmup: `${length[3]} steps`, epochs: length[2], memory: memory[1] },
  );
  // The page as a user sees it: the model and dataset picked, the plan beside the form.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, "train-1280.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, "train-390.png") });
  await page.locator("details[data-section=accelerate]").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "train-390-fields.png") });
  assert.deepEqual(errors, []);
  await page.close();
});

test("the sample prompts table reads a prompt file and writes it back beside the config", async () => {
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("train"));
  await page.locator("details[data-section=samples] summary").click();
  await pick(page, "Read a prompt file…", "quickstart/prompts.txt", false);
  const table = page.getByRole("table", { name: "Sample prompts" });
  await page.getByText(/^5 prompts read from .*prompts\.txt$/).waitFor();
  const rows = table.locator("tbody tr");
  assert.equal(await rows.count(), 5);
  assert.equal(await rows.nth(0).getByLabel("Prompt").inputValue(), "red lkstar, large, right, white background");
  assert.equal(await rows.nth(0).getByLabel("Seed").inputValue(), "1");
  await rows.nth(0).getByLabel("Negative").fill("blurry");
  await rows.nth(0).getByLabel("Negative").press("Tab");
  await page.getByRole("button", { name: "Add prompt" }).click();
  await rows.nth(5).getByLabel("Prompt").fill("a new prompt");
  await rows.nth(5).getByLabel("Seed").fill("9");
  await rows.nth(5).getByLabel("Seed").press("Tab");
  await page.getByLabel("Config file name").fill("with-prompts");
  await page.getByRole("button", { name: "Save as TOML" }).click();
  await page.getByText(/^saved .*with-prompts\.toml$/).waitFor();
  const written = readFileSync(join(gui.dataRoot, "with-prompts-prompts.txt"), "utf8");
  const original = readFileSync(join(repo, "examples/quickstart/prompts.txt"), "utf8");
  assert.equal(original.split("\n").filter((l) => l && !l.startsWith("#")).length, 5, "the bundled file is untouched");
  const lines = written.trimEnd().split("\n");
  assert.equal(lines.length, 6);
  assert.equal(lines[0], "red lkstar, large, right, white background --n blurry --w 64 --h 64 --s 20 --l 7 --d 1");
  assert.equal(lines[5], "a new prompt --d 9");
  const toml = readFileSync(join(gui.dataRoot, "with-prompts.toml"), "utf8");
  assert.match(toml, /sample_prompts = ".*with-prompts-prompts\.txt"/);
  // Read back from the written file: the same table.
  const before = await table.locator("tbody input").evaluateAll((inputs) => inputs.map((i) => i.value));
  await page.reload();
  await page.locator("details[data-section=samples] summary").waitFor();
  if (!(await page.locator("details[data-section=samples]").evaluate((d) => d.open))) await page.locator("details[data-section=samples] summary").click();
  await page.getByRole("button", { name: "Read a prompt file…" }).click();
  const picker = page.getByRole("dialog", { name: "Read a prompt file…" });
  await picker.getByRole("button", { name: "with-prompts-prompts.txt", exact: true }).click();
  await page.getByText(/^6 prompts read from/).waitFor();
  const after = await table.locator("tbody input").evaluateAll((inputs) => inputs.map((i) => i.value));
  assert.deepEqual(after, before);
  await table.scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "train-prompts-1280.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  await table.scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "train-prompts-390.png") });
  assert.deepEqual(errors, []);
  await page.close();
});
