// The Files page: a LoRA file's report and the heat map of several.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { gui, useGui, at, shots } from "./harness.mjs";

useGui();

test("a LoRA file is inspected in the files page: base model, network, block norms", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
  await page.goto(at("files"));
  await page.getByRole("button", { name: "loras/" }).click();
  await page.getByRole("button", { name: "Inspect tiny flux.safetensors" }).click();
  const report = page.getByRole("region", { name: "LoRA file" });
  await report.getByRole("heading", { name: "loras/tiny flux.safetensors" }).waitFor();
  assert.match(await report.locator("tr", { hasText: "base model" }).textContent(), /Flux/);
  assert.match(await report.locator("tr", { hasText: "network" }).first().textContent(), /networks\.lora/);
  const bars = report.locator(".blocks tr");
  assert.ok((await bars.count()) >= 2, "one bar per block");
  const widths = await report.locator(".bar").evaluateAll((els) => els.map((e) => e.style.width));
  assert.ok(widths.includes("100%"), `the largest block fills its cell: ${widths}`);
  await page.screenshot({ path: join(shots, "inspect-1280.png"), fullPage: true });
  // Both files side by side: one heat-map column per file, shaded cells.
  await page.getByRole("button", { name: "Compare 2 LoRA files" }).click();
  const heat = page.getByRole("table", { name: "Block norms by file" });
  await heat.waitFor();
  assert.deepEqual(await heat.locator("thead th").allTextContents(), ["block", "tiny flux.safetensors", "tiny sdxl.safetensors"]);
  const shaded = await heat.locator("td").evaluateAll((tds) => tds.filter((td) => td.style.backgroundColor).length);
  assert.ok(shaded >= 4, `${shaded} shaded cells`);
  await page.screenshot({ path: join(shots, "compare-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
