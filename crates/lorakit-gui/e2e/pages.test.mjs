// Every page renders at desktop and phone width; the option search; file names shown as text.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { useGui, at, shots, openPage } from "./harness.mjs";

useGui();

for (const [width, height] of [[1280, 800], [390, 844]]) {
  test(`every page renders without errors at ${width}px`, async () => {
    const { page, errors } = await openPage({ width, height });
    assert.ok(!page.url().includes("token="), "the token left the address bar");
    for (const [hash, heading] of [["files", "Files"], ["datasets", "Datasets"], ["options", "Training options"], ["jobs", "Jobs"], ["train", "Train"], ["loras", "LoRAs"], ["tools", "Resize · Merge · Convert"]]) {
      await page.goto(at(hash));
      await page.getByRole("heading", { level: 1, name: heading }).waitFor();
      await page.waitForLoadState("networkidle");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `${hash} at ${width}px overflows sideways by ${overflow}px`);
      await page.screenshot({ path: join(shots, `${hash}-${width}.png`) });
    }
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("the option search filters and the files page lists the root as text", async () => {
  const { page } = await openPage();
  await page.goto(at("options"));
  const rows = page.locator("tbody tr");
  await rows.first().waitFor();
  const all = await rows.count();
  await page.getByLabel("Find an option").fill("blocks_to_swap");
  await page.waitForFunction((n) => document.querySelectorAll("tbody tr").length < n, all);
  assert.ok((await rows.count()) >= 1 && (await rows.count()) < all);
  await assert.doesNotReject(page.getByText("accelerate.blocks_to_swap").first().waitFor());

  await page.goto(at("files"));
  await page.getByRole("button", { name: "10_cat/" }).click();
  await page.getByText("แมว.txt").waitFor();
  // A file named like markup is shown as text, never run.
  assert.equal(await page.locator("script", { hasText: "alert" }).count(), 0);
  await page.close();
});

test("the header switches to Thai and to the dark theme, and both are kept after a reload", async () => {
  const { page, errors } = await openPage();
  await page.goto(at("options"));
  await page.getByRole("heading", { level: 1, name: "Training options" }).waitFor();
  await page.getByLabel("Language / ภาษา").selectOption("th");
  // The page and the navigation are redrawn in Thai from the merged dictionary.
  await page.getByRole("heading", { level: 1, name: "ตัวเลือกการเทรน" }).waitFor();
  await page.getByRole("link", { name: "ชุดข้อมูล" }).waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.lang), "th");
  await page.getByLabel("ธีม").selectOption("dark");
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(await background(), "rgb(22, 22, 24)");
  await page.reload();
  await page.getByRole("heading", { level: 1, name: "ตัวเลือกการเทรน" }).waitFor();
  assert.equal(await background(), "rgb(22, 22, 24)");
  await page.screenshot({ path: join(shots, "options-th-dark-1280.png") });
  // Back to English and the system theme for the other tests of this browser.
  await page.getByLabel("Language / ภาษา").selectOption("en");
  await page.getByLabel("Theme").selectOption("");
  await page.getByRole("heading", { level: 1, name: "Training options" }).waitFor();
  assert.deepEqual(errors, []);
  await page.close();
});

test("the options page lists one family's options and marks family-only keys", async () => {
  const { page } = await openPage();
  await page.goto(at("options"));
  const rows = page.locator("tbody tr");
  await rows.first().waitFor();
  const all = await rows.count();
  const flux = page.locator("tr", { hasText: "accelerate.fp8_base_unet" });
  assert.match(await flux.textContent(), /Flux only/);
  await page.getByLabel("Model family").selectOption("sd1");
  await page.waitForFunction((n) => document.querySelectorAll("tbody tr").length < n, all);
  assert.equal(await flux.count(), 0, "a Flux-only key is not listed for SD 1.x");
  assert.equal(await page.locator("tr", { hasText: "model.clip_skip" }).count(), 1);
  await page.getByLabel("Model family").selectOption("flux");
  assert.equal(await page.locator("tr", { hasText: "model.clip_skip" }).count(), 0);
  // SD3: its own keys listed and marked, Flux's and SD 1.x's not.
  const clipG = page.locator("tr", { hasText: "model.clip_g_dropout_rate" });
  assert.equal(await clipG.count(), 0, "an SD3-only key is not listed for Flux");
  await page.getByLabel("Model family").selectOption({ label: "SD3 / SD3.5" });
  await clipG.waitFor();
  assert.match(await clipG.textContent(), /SD3 only/);
  assert.equal(await page.locator("tr", { hasText: "model.clip_l_dropout_rate" }).count(), 1);
  assert.equal(await flux.count(), 0, "a Flux-only key is not listed for SD3");
  assert.equal(await page.locator("tr", { hasText: "model.clip_skip" }).count(), 0);
  await page.close();
});
