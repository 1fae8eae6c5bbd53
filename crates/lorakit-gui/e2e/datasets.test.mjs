// The Datasets page: the doctor's findings filter the grid; bulk tag edits with diff and undo.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gui, useGui, at, shots } from "./harness.mjs";

useGui();

test("the dataset doctor's findings filter the image grid", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
  await page.goto(at("datasets"));
  // The bundled example dataset (examples/dataset/img: 2_misc, 8_chessboard), in the second root.
  await page.getByLabel("Dataset root").selectOption({ index: 1 });
  await page.getByLabel("Train folder").fill("dataset/img");
  await page.getByRole("button", { name: "Check" }).click();
  const report = page.getByRole("region", { name: "Dataset report" });
  await report.getByRole("cell", { name: "2_misc" }).waitFor();
  const items = report.getByRole("listitem").filter({ has: page.locator("img") });
  const all = await items.count();
  assert.ok(all >= 5, `the grid shows the images (${all})`);
  // Thumbnails really load (server-made PNGs through the cookie).
  await page.waitForFunction(() => [...document.querySelectorAll(".grid img")].every((i) => i.complete));
  const loaded = await report.locator(".grid img").evaluateAll((imgs) => imgs.filter((i) => i.naturalWidth > 0).length);
  assert.equal(loaded, all, "every thumbnail decoded");
  const finding = report.getByRole("list", { name: "Findings by image" }).getByRole("button").first();
  await finding.click();
  const filtered = await items.count();
  assert.ok(filtered >= 1 && filtered < all, `a finding filters the grid (${filtered} of ${all})`);
  await finding.click();
  assert.equal(await items.count(), all, "clicking it again shows every image");
  await page.screenshot({ path: join(shots, "datasets-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test("a bulk tag edit shows the files that will change, applies, and undoes", async () => {
  const page = await gui.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const caption = () => readFileSync(join(gui.dataRoot, "train", "5_chk", "left01.txt"), "utf8");
  const before = caption();
  await page.goto(gui.url);
  await page.goto(at("datasets"));
  await page.getByLabel("Train folder").fill("train");
  await page.getByRole("button", { name: "Check" }).click();
  const editor = page.getByRole("region", { name: "Tag editor" });
  await editor.waitFor();
  await editor.getByLabel("Tag edit").selectOption("add_front");
  await editor.getByLabel("Tags", { exact: true }).fill("mytrigger");
  await editor.getByRole("button", { name: "Preview" }).click();
  await editor.getByText(/^\d+ files will change/).waitFor();
  const planned = Number((await editor.getByText(/files will change/).textContent()).split(" ")[0]);
  assert.ok(planned >= 5, `${planned} files`);
  assert.equal(caption(), before, "a preview writes nothing");
  assert.ok((await editor.locator("table.diff tr", { hasText: "mytrigger" }).count()) >= 1, "the diff shows the new caption");
  await editor.getByRole("button", { name: "Apply" }).click();
  await editor.getByText(`${planned} files written`).waitFor();
  assert.ok(caption().startsWith("mytrigger, "), caption());
  // The grid shows the new captions.
  await page.getByText(/^mytrigger, /).first().waitFor();
  await editor.getByRole("button", { name: "Undo last edit" }).click();
  await editor.getByText(`undone: add_front mytrigger (${planned} files restored)`).waitFor();
  assert.equal(caption(), before, "undo puts the caption back byte for byte");
  await page.screenshot({ path: join(shots, "tags-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});
