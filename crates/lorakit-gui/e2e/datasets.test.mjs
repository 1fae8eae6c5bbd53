// The Datasets page: the doctor's findings filter the grid; bulk tag edits with diff and undo;
// a subset's repeats renamed after a preview; find/replace in sentence captions with diff, apply
// and undo (byte for byte) and one caption edited in the grid; how training sees one image; the
// virtualised grid over hundreds of images.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { gui, useGui, at, shots, openPage, repo, bin } from "./harness.mjs";

useGui();

// A w×h PNG of one colour (tests make their own small datasets).
const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function png(w, h, [r, g, b]) {
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(w, 0);
  header.writeUInt32BE(h, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: w }, () => [r, g, b]).flat())]);
  const pixels = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header), chunk("IDAT", deflateSync(pixels)), chunk("IEND", Buffer.alloc(0))]);
}

// Opens the Datasets page on `path` under the first root and waits for the report.
async function openDataset(page, path) {
  await page.goto(at("datasets"));
  await page.getByLabel("Train folder").fill(path);
  await page.getByRole("button", { name: "Check" }).click();
  const report = page.getByRole("region", { name: "Dataset report" });
  await report.getByRole("table").first().waitFor();
  return report;
}

test("the dataset doctor's findings filter the image grid", async () => {
  const { page, errors } = await openPage();
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
  const caption = () => readFileSync(join(gui.dataRoot, "train", "5_chk", "left01.txt"), "utf8");
  const before = caption();
  const { page, errors } = await openPage();
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

test("a subset's repeats change by renaming its folder after a preview", async () => {
  const { page, errors } = await openPage();
  const report = await openDataset(page, "train");
  const row = report.getByRole("row", { name: /^5_chk/ });
  await row.getByRole("button", { name: "change" }).click();
  await report.getByLabel("Repeats of 5_chk").fill("10");
  await row.getByRole("button", { name: "Preview" }).click();
  const preview = row.getByText(/^5_chk → 10_chk: samples per epoch \d+ → \d+$/);
  await preview.waitFor();
  const [before, after] = (await preview.textContent()).match(/(\d+) → (\d+)$/).slice(1).map(Number);
  assert.equal(after, 2 * before, "twice the repeats, twice the samples (one subset)");
  assert.ok(existsSync(join(gui.dataRoot, "train", "5_chk")), "a preview renames nothing");
  await page.screenshot({ path: join(shots, "datasets-repeats-1280.png") });
  await row.getByRole("button", { name: "Rename" }).click();
  // The report refreshes with the new folder and its samples.
  await report.getByRole("cell", { name: "10_chk", exact: true }).waitFor();
  await report.getByText(new RegExp(`· ${after} samples per epoch ·`)).waitFor();
  assert.ok(existsSync(join(gui.dataRoot, "train", "10_chk", "left01.jpg")) && !existsSync(join(gui.dataRoot, "train", "5_chk")));
  renameSync(join(gui.dataRoot, "train", "10_chk"), join(gui.dataRoot, "train", "5_chk"));
  assert.deepEqual(errors, []);
  await page.close();
});

test("find and replace in sentence captions shows the diff, applies, undoes; one caption is edited in the grid", async () => {
  const dir = join(gui.dataRoot, "prose", "3_cat");
  mkdirSync(dir, { recursive: true });
  const captions = {
    "a.txt": "A photo of a cat sitting on a mat.\r\n",
    "b.txt": "A cat sleeps in the sun. The Cat is orange.",
    "c.txt": "A caterpillar on a leaf, seen from above.",
    "d.txt": "cat, mat, sitting",
  };
  for (const [i, name] of Object.keys(captions).entries()) {
    writeFileSync(join(dir, name.replace(".txt", ".png")), png(48, 32 + 16 * i, [40 + 50 * i, 120, 200 - 40 * i]));
    writeFileSync(join(dir, name), captions[name]);
  }
  const read = (name) => readFileSync(join(dir, name));
  const original = Object.fromEntries(Object.keys(captions).map((n) => [n, read(n)]));
  const { page, errors } = await openPage();
  await openDataset(page, "prose");
  const editor = page.getByRole("region", { name: "Caption find and replace" });
  await editor.getByLabel("Find", { exact: true }).fill("cat");
  await editor.getByLabel("Replace with").fill("kitten");
  await editor.getByLabel("Whole words").check();
  await editor.getByRole("button", { name: "Preview" }).click();
  await editor.getByText(/^2 files will change \(3 matches\), 1 unchanged, 1 tag captions left to the tag editor$/).waitFor();
  assert.equal(await editor.locator("table.diff tr").count(), 2, "one row per changed file");
  assert.equal(await editor.locator("table.diff mark", { hasText: "kitten" }).count(), 3, "each replacement marked");
  for (const name of Object.keys(captions)) assert.deepEqual(read(name), original[name], "a preview writes nothing");
  await page.screenshot({ path: join(shots, "datasets-captions-1280.png"), fullPage: true });
  await editor.getByRole("button", { name: "Apply" }).click();
  await editor.getByText("2 files written").waitFor();
  assert.equal(read("a.txt").toString(), "A photo of a kitten sitting on a mat.\r\n");
  assert.equal(read("b.txt").toString(), "A kitten sleeps in the sun. The kitten is orange.");
  assert.deepEqual(read("c.txt"), original["c.txt"], "the caterpillar is not a whole-word cat");
  // The grid shows the new caption.
  await page.getByRole("button", { name: "Edit the caption of prose/3_cat/b.png" }).getByText(/^A kitten sleeps/).waitFor();
  await editor.getByRole("button", { name: "Undo last edit" }).click();
  await editor.getByText('undone: replace "cat" with "kitten" in captions (2 files restored)').waitFor();
  for (const name of Object.keys(captions)) assert.deepEqual(read(name), original[name], "undo restores byte for byte");

  // One caption, edited in place in the grid and saved atomically; undo takes it back too.
  await page.getByRole("button", { name: "Edit the caption of prose/3_cat/c.png" }).click();
  const box = page.getByLabel("Caption of prose/3_cat/c.png", { exact: true });
  assert.equal(await box.inputValue(), captions["c.txt"]);
  await box.fill("A green caterpillar on a leaf.");
  await page.screenshot({ path: join(shots, "datasets-caption-edit-1280.png") });
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByRole("button", { name: "Edit the caption of prose/3_cat/c.png" }).getByText("A green caterpillar on a leaf.").waitFor();
  assert.equal(read("c.txt").toString(), "A green caterpillar on a leaf.");
  await editor.getByRole("button", { name: "Undo last edit" }).click();
  await editor.getByText("undone: edit the caption prose/3_cat/c.txt (1 files restored)").waitFor();
  assert.deepEqual(read("c.txt"), original["c.txt"]);
  assert.deepEqual(errors, []);
  await page.close();
});

for (const [width, height] of [[1280, 800], [390, 844]]) {
  test(`how training sees one image: bucket, resize, crop and the sample (${width} px)`, async () => {
    const { page, errors } = await openPage({ width, height });
    // The phone shot in the dark theme (both themes looked at).
    if (width < 640) await page.emulateMedia({ colorScheme: "dark" });
    const report = await openDataset(page, "train");
    await report.locator(".vgrid button.thumb").first().click();
    const panel = page.getByRole("dialog", { name: "How training sees this image" });
    const pipeline = panel.getByText(/^\d+×\d+ → resized \d+×\d+ → crop at \(\d+, \d+\) → bucket \d+×\d+$/);
    await pipeline.waitFor();
    const [bw, bh] = (await pipeline.textContent()).match(/bucket (\d+)×(\d+)$/).slice(1).map(Number);
    // The sample as training gets it has exactly the bucket's size.
    const sample = panel.getByRole("img", { name: /as training sees it$/ });
    await page.waitForFunction((img) => img.complete && img.naturalWidth > 0, await sample.elementHandle());
    assert.deepEqual(await sample.evaluate((img) => [img.naturalWidth, img.naturalHeight]), [bw, bh]);
    await panel.getByRole("row", { name: /^bucket/ }).waitFor();
    await page.screenshot({ path: join(shots, `datasets-as-trained-${width}.png`) });
    await panel.getByRole("button", { name: "Close" }).click();
    assert.equal(await panel.count(), 0);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("the grid of a 300-image folder makes far fewer <img> than images until scrolled", async () => {
  const dir = join(gui.dataRoot, "many", "3_dots");
  mkdirSync(dir, { recursive: true });
  for (let i = 0; i < 300; i++) {
    writeFileSync(join(dir, `dot${String(i).padStart(3, "0")}.png`), png(12, 12, [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256]));
    if (i % 3) writeFileSync(join(dir, `dot${String(i).padStart(3, "0")}.txt`), `dot, colour ${i}`);
  }
  for (const [width, height] of [[1280, 800], [390, 844]]) {
    const { page, errors } = await openPage({ width, height });
    const report = await openDataset(page, "many");
    await report.getByText("300 images", { exact: true }).waitFor();
    const imgs = () => page.locator(".vgrid img").count();
    const first = await imgs();
    assert.ok(first > 0 && first <= 100, `${first} <img> for 300 images at ${width} px`);
    // Scrolled to the end: the last images exist now, still not all of them.
    await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
    await page.getByRole("img", { name: "3_dots/dot299.png" }).waitFor();
    await page.waitForFunction(() => [...document.querySelectorAll(".vgrid img")].every((i) => i.complete));
    await page.screenshot({ path: join(shots, `datasets-grid-${width}.png`) });
    const scrolled = await imgs();
    assert.ok(scrolled <= 100, `${scrolled} <img> after scrolling`);
    assert.equal(await page.getByRole("img", { name: "3_dots/dot000.png" }).count(), 0, "the first rows are gone");
    // The doctor's finding still filters: 100 images have no caption.
    await page.evaluate(() => window.scrollTo(0, 0));
    await report.getByRole("list", { name: "Findings by image" }).getByRole("button", { name: /^missing_caption/ }).click();
    await report.getByText(/^100 images with missing_caption/).waitFor();
    await page.getByRole("img", { name: "3_dots/dot000.png" }).waitFor();
    assert.equal(await page.getByRole("img", { name: "3_dots/dot001.png" }).count(), 0, "a captioned image is filtered out");
    assert.deepEqual(errors, []);
    await page.close();
  }
});

test("captioning a folder with a WD14 tagger runs as a job and writes what lorakit caption writes", async () => {
  // The tiny WD v3 ViT tagger of the caption tests, and two copies of a subset: one captioned
  // from the page, one by the command line with the same options.
  const models = join(gui.dataRoot, "models", "wd-vit");
  cpSync(join(repo, "tests/fixtures/reference/wd14/vit"), models, { recursive: true });
  for (const name of ["tagged", "tagged-cli"]) {
    cpSync(join(repo, "examples/dataset/img/8_chessboard"), join(gui.dataRoot, name, "3_chk"), { recursive: true });
  }
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("datasets"));
  await page.getByLabel("Train folder").fill("tagged");
  await page.getByRole("button", { name: "Check" }).click();
  await page.getByRole("region", { name: "Dataset report" }).getByRole("cell", { name: "3_chk" }).waitFor();
  await page.getByText("Caption the images (WD14 tagger or a vision model)").click();
  const form = page.getByRole("region", { name: "Caption images" });
  await form.getByLabel("Tagger folder", { exact: true }).fill("models/wd-vit");
  await form.getByLabel("Existing captions").selectOption("overwrite");
  await form.getByLabel("Trigger word").fill("chk");
  // The API fields are not shown for the tagger.
  assert.equal(await form.getByLabel("API address").isVisible(), false);
  await page.screenshot({ path: join(shots, "datasets-caption-1280.png"), fullPage: true });
  await form.getByRole("button", { name: "Caption (queue a job)" }).click();
  const queued = form.getByText(/^queued job \d+/);
  await queued.waitFor();
  const id = (await queued.textContent()).match(/\d+/)[0];
  await form.getByRole("link", { name: "follow it on the Jobs page" }).click();
  const row = page.locator(`tr[data-job="${id}"]`);
  await row.getByRole("cell", { name: "done", exact: true }).waitFor({ timeout: 120000 });
  assert.match(await row.textContent(), /captioning/);

  execFileSync(bin, ["caption", "wd14", join(gui.dataRoot, "tagged-cli"), "--model", models, "--recursive", "--overwrite",
    "--trigger", "chk", "--general-threshold", "0.35", "--character-threshold", "0.35", "--remove-underscore"], { stdio: "pipe" });
  const captions = (folder) => readdirSync(join(gui.dataRoot, folder, "3_chk")).filter((n) => n.endsWith(".txt")).sort()
    .map((n) => [n, readFileSync(join(gui.dataRoot, folder, "3_chk", n), "utf8")]);
  const fromPage = captions("tagged");
  assert.ok(fromPage.length >= 5 && fromPage.every(([, text]) => text.startsWith("chk")), JSON.stringify(fromPage));
  assert.deepEqual(fromPage, captions("tagged-cli"));

  // Clone & edit brings the form back filled in, on the same folder.
  await row.getByRole("link", { name: "Clone & edit" }).click();
  const again = page.getByRole("region", { name: "Caption images" });
  await again.waitFor();
  assert.equal(await again.getByLabel("Tagger folder", { exact: true }).inputValue(), "models/wd-vit");
  assert.equal(await again.getByLabel("Trigger word").inputValue(), "chk");
  assert.equal(await again.getByLabel("Existing captions").inputValue(), "overwrite");
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.getElementById("page").scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the caption form overflows sideways by ${overflow}px at 390px`);
  await page.screenshot({ path: join(shots, "datasets-caption-390.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test("captioning with a Florence-2 folder from the page writes what lorakit caption florence writes", async () => {
  const model = join(gui.dataRoot, "models", "florence");
  cpSync(join(repo, "tests/fixtures/reference/florence2/model"), model, { recursive: true });
  for (const name of ["described", "described-cli"]) {
    mkdirSync(join(gui.dataRoot, name, "2_photo"), { recursive: true });
    cpSync(join(repo, "tests/fixtures/reference/florence2/images/photo.png"), join(gui.dataRoot, name, "2_photo", "a.png"));
  }
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("datasets"));
  await page.getByLabel("Train folder").fill("described");
  await page.getByRole("button", { name: "Check" }).click();
  await page.getByRole("region", { name: "Dataset report" }).getByRole("cell", { name: "2_photo" }).waitFor();
  await page.getByText("Caption the images (WD14 tagger or a vision model)").click();
  const form = page.getByRole("region", { name: "Caption images" });
  await form.getByLabel("Captioner").selectOption("florence");
  assert.equal(await form.getByLabel("Tagger folder", { exact: true }).isVisible(), false);
  await form.getByLabel("Florence-2 folder", { exact: true }).fill("models/florence");
  await form.getByLabel("Caption length").selectOption("caption");
  await form.getByRole("button", { name: "Caption (queue a job)" }).click();
  const queued = form.getByText(/^queued job \d+/);
  await queued.waitFor();
  const id = (await queued.textContent()).match(/\d+/)[0];
  await page.goto(at(`jobs?job=${id}`));
  await page.locator(`tr[data-job="${id}"]`).getByRole("cell", { name: "done", exact: true }).waitFor({ timeout: 120000 });
  execFileSync(bin, ["caption", "florence", join(gui.dataRoot, "described-cli"), "--model", model, "--recursive", "--task", "caption"], { stdio: "pipe" });
  const caption = (folder) => readFileSync(join(gui.dataRoot, folder, "2_photo", "a.txt"), "utf8");
  assert.ok(caption("described").length > 1);
  assert.equal(caption("described"), caption("described-cli"));
  assert.deepEqual(errors, []);
  await page.close();
});
