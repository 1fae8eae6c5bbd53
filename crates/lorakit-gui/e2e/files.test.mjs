// The Files page: a LoRA file's report and the heat map of several.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { useGui, at, shots, openPage } from "./harness.mjs";

useGui();

test("a LoRA file is inspected in the files page: base model, network, block norms", async () => {
  const { page, errors } = await openPage();
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

test("the LoRAs page lists the root's LoRA files with their metadata, filters, inspects and compares", async () => {
  const { page, errors } = await openPage();
  await page.goto(at("loras"));
  const list = page.getByRole("list", { name: "LoRA files" });
  const cards = list.getByRole("listitem");
  await cards.first().waitFor();
  // The two trained LoRAs of the data root; the bundled model's U-Net and text encoder are not
  // LoRAs and are only counted.
  assert.equal(await cards.count(), 2);
  const sdxl = cards.filter({ hasText: "loras/tiny sdxl.safetensors" });
  assert.match(await sdxl.textContent(), /SDXL · networks\.lora · rank 2\/4, alpha 4\.0 · 64×64 · epoch 2 of \S+ · 8 steps/);
  await page.getByText(/2 of 2 LoRA files; \d+ other \.safetensors files/).waitFor();
  // The base-model filter.
  await page.getByLabel("Base model").selectOption("SDXL");
  assert.equal(await cards.count(), 1);
  await page.getByLabel("Base model").selectOption("");
  await page.getByLabel("Filter LoRA files").fill("flux");
  assert.equal(await cards.count(), 1);
  await page.getByLabel("Filter LoRA files").fill("");
  // Inspect in place, then the heat map of both.
  await sdxl.getByRole("button", { name: "Inspect loras/tiny sdxl.safetensors" }).click();
  await page.getByRole("region", { name: "LoRA file" }).getByRole("heading", { name: "loras/tiny sdxl.safetensors" }).waitFor();
  for (const card of await cards.all()) await card.getByRole("checkbox").check();
  await page.getByRole("button", { name: "Compare 2 selected" }).click();
  await page.getByRole("table", { name: "Block norms by file" }).waitFor();
  // Resize links to the tools page with the file.
  assert.match(await sdxl.getByRole("link", { name: "Resize" }).getAttribute("href"), /^#tools\?op=resize&root=0&path=loras%2Ftiny\+sdxl\.safetensors$/);
  await page.screenshot({ path: join(shots, "loras-1280.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the LoRAs page overflows sideways by ${overflow}px at 390px`);
  await page.screenshot({ path: join(shots, "loras-390.png") });
  assert.deepEqual(errors, []);
  await page.close();
});
