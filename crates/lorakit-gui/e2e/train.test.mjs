// The Train page: preset, changed marks, TOML, save.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gui, useGui, at, shots } from "./harness.mjs";

useGui();

test("the train form starts from a preset, marks changes and renders an accepted config", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
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
  await page.screenshot({ path: join(shots, "train-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
