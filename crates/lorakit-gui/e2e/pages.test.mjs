// Layer 2 of gui-peers.md §9: the real pages in a real browser (Debian's chromium driven by
// playwright-core). Starts `lorakit gui` on a free port with a known token over a temporary
// root, opens the printed address (the token becomes a cookie), and checks every page at desktop
// and phone width: it renders, nothing errors in the console, the option search filters, the
// files page lists the root, and nothing overflows sideways on a phone. Screenshots go to
// target/e2e/ for a human look.
//
// Run: (cd crates/lorakit-gui/e2e && npm ci && node --test); LORAKIT_BIN (default
// target/debug/lorakit) and CHROMIUM (default /usr/bin/chromium) override the paths.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, cpSync, mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const repo = resolve(import.meta.dirname, "../../..");
const bin = process.env.LORAKIT_BIN ?? join(repo, "target/debug/lorakit");
const shots = join(repo, "target/e2e");
mkdirSync(shots, { recursive: true });

let server, url, browser, dataRoot;

before(async () => {
  const root = mkdtempSync(join(tmpdir(), "lorakit-e2e-"));
  mkdirSync(join(root, "10_cat"));
  writeFileSync(join(root, "10_cat", "a.txt"), "<script>alert(1)</script>, cat");
  writeFileSync(join(root, "10_cat", "แมว.txt"), "a Thai file name");
  // A train folder the tag editor may change: the example dataset's chessboard subset.
  cpSync(join(repo, "examples/dataset/img/8_chessboard"), join(root, "train", "5_chk"), { recursive: true });
  // A LoRA trained by lorakit on the tiny Flux fixture, for the inspector.
  mkdirSync(join(root, "loras"));
  copyFileSync(join(repo, "tests/fixtures/reference/trained_lora/tiny_flux_trained.safetensors"), join(root, "loras", "tiny flux.safetensors"));
  copyFileSync(join(repo, "tests/fixtures/reference/trained_lora/tiny_sdxl_trained.safetensors"), join(root, "loras", "tiny sdxl.safetensors"));
  dataRoot = root;
  // The bundled quick-start model and dataset, a second root the jobs may read.
  server = spawn(bin, ["gui", "--port", "0", "--token", "e2e-token-0123456789", "--root", root, "--root", join(repo, "examples"), "--state", join(root, ".state")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  url = await new Promise((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`no address printed: ${out}`)), 30000);
    server.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/http:\/\/\S+/);
      if (m) {
        clearTimeout(timer);
        ok(m[0]);
      }
    });
    server.on("exit", (code) => fail(new Error(`lorakit gui exited (${code}): ${out}`)));
  });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGINT");
});

// A training of the bundled quick-start model on the shapes dataset, writing to
// `<dataRoot>/<name>`, for `steps` steps; `extra` lines are appended (more sections).
function quickstartRun(name, steps, extra = []) {
  return [
    "[model]",
    `pretrained_model_name_or_path = ${JSON.stringify(join(repo, "examples/quickstart/shapes-sd15"))}`,
    "[folders]",
    `output_dir = ${JSON.stringify(join(dataRoot, name))}`,
    `output_name = ${JSON.stringify(name)}`,
    "[dataset]",
    `train_data_dir = ${JSON.stringify(join(repo, "examples/shapes/img"))}`,
    'resolution = "64"',
    "enable_bucket = false",
    "[training]",
    `max_train_steps = ${steps}`,
    ...extra,
  ].join("\n");
}

// Queues `config` through the Jobs page's editor and opens its output; returns its table row.
async function queueAndShow(page, config) {
  await page.goto(new URL("/#jobs", url).href);
  await page.getByLabel("Training config (TOML)").fill(config);
  await page.getByRole("button", { name: "Add to queue" }).click();
  const queued = page.getByText(/^queued job \d+$/);
  await queued.waitFor();
  const id = (await queued.textContent()).split(" ").pop();
  const row = page.locator("tr", { hasText: id });
  await row.getByRole("button", { name: "Output" }).click();
  return row;
}

for (const [width, height] of [[1280, 800], [390, 844]]) {
  test(`every page renders without errors at ${width}px`, async () => {
    const page = await browser.newPage({ viewport: { width, height } });
    const errors = [];
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    assert.ok(!page.url().includes("token="), "the token left the address bar");
    for (const [hash, heading] of [["files", "Files"], ["datasets", "Datasets"], ["options", "Training options"], ["jobs", "Jobs"], ["train", "Train"]]) {
      await page.goto(new URL(`/#${hash}`, url).href);
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
  const page = await browser.newPage();
  await page.goto(url);
  await page.goto(new URL("/#options", url).href);
  const rows = page.locator("tbody tr");
  await rows.first().waitFor();
  const all = await rows.count();
  await page.getByLabel("Find an option").fill("blocks_to_swap");
  await page.waitForFunction((n) => document.querySelectorAll("tbody tr").length < n, all);
  assert.ok((await rows.count()) >= 1 && (await rows.count()) < all);
  await assert.doesNotReject(page.getByText("accelerate.blocks_to_swap").first().waitFor());

  await page.goto(new URL("/#files", url).href);
  await page.getByRole("button", { name: "10_cat/" }).click();
  await page.getByText("แมว.txt").waitFor();
  // A file named like markup is shown as text, never run.
  assert.equal(await page.locator("script", { hasText: "alert" }).count(), 0);
  await page.close();
});

test("the train form starts from a preset, marks changes and renders an accepted config", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.goto(new URL("/#train", url).href);
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
  assert.equal(readFileSync(join(dataRoot, "from-the-form.toml"), "utf8"), toml);
  assert.match(await page.getByLabel("Result").textContent(), /^lorakit train .*from-the-form\.toml$/);
  await page.screenshot({ path: join(shots, "train-1280.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test("a queued training runs and its loss chart grows from the run's log", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  const config = quickstartRun("e2e", 6, [
    "[samples]",
    `sample_prompts = ${JSON.stringify(join(dataRoot, "prompts.txt"))}`,
    "sample_every_n_steps = 3",
  ]);
  writeFileSync(join(dataRoot, "prompts.txt"), "red lkstar, large --w 64 --h 64 --s 3 --d 1\nblue lkstar --w 64 --h 64 --s 3 --d 2\n");
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

test("a LoRA file is inspected in the files page: base model, network, block norms", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.goto(new URL("/#files", url).href);
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

test("the dataset doctor's findings filter the image grid", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.goto(new URL("/#datasets", url).href);
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
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const caption = () => readFileSync(join(dataRoot, "train", "5_chk", "left01.txt"), "utf8");
  const before = caption();
  await page.goto(url);
  await page.goto(new URL("/#datasets", url).href);
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

test("Save now saves a running job's LoRA at its current step, Stop now ends it", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
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
