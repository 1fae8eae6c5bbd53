// SD3 / SD3.5 through the GUI, on the tiny SD3.5-shaped pipeline (tests/fixtures/reference/
// sd3_tiny/pipeline, copied under the root): the Train page shows the detected family and SD3's
// fields (CLIP-G, the per-encoder dropout rates, lora_sd3's dims, training_shift) with Flux's
// and SD 1.x's hidden, its plan equals `lorakit train --dry-run`, and the run it queues trains an
// SD3 LoRA; the tools page converts that LoRA with the SD3 family and draws it in an XY plot
// that equals `lorakit generate --grid` with the same settings.
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gui, useGui, at, shots, openPage, repo, bin } from "./harness.mjs";

useGui();
before(() => cpSync(join(repo, "tests/fixtures/reference/sd3_tiny/pipeline"), join(gui.dataRoot, "models", "sd3-tiny"), { recursive: true }));

const LORA = "sd3-run/sd3-tiny.safetensors";

// Picks `path` under root 0 in the Train page's picker the button opens.
async function pick(page, button, path, folder) {
  await page.getByRole("button", { name: button }).click();
  const picker = page.getByRole("dialog", { name: button });
  const parts = path.split("/");
  for (const [i, part] of parts.entries()) {
    const last = i === parts.length - 1;
    await picker.getByRole("button", { name: last && !folder ? part : `${part}/`, exact: true }).click();
  }
  if (folder) await picker.getByRole("button", { name: "Use this folder" }).click();
  await picker.waitFor({ state: "detached" });
}

async function setField(page, label, value) {
  const box = page.getByLabel(label, { exact: true });
  const details = page.locator("details", { has: box });
  if (!(await details.evaluate((d) => d.open))) await details.locator("summary").click();
  if (typeof value === "boolean") await box.setChecked(value);
  else { await box.fill(value); await box.press("Tab"); }
}

// A job's record, read with the page's cookie.
async function job(page, id) {
  const response = await page.request.get(new URL(`/api/jobs/${id}`, gui.url).href);
  return response.json();
}

async function waitDone(page, id, timeout = 300000) {
  const start = Date.now();
  for (;;) {
    const record = await job(page, id);
    if (record.status === "done") return record;
    assert.ok(!["failed", "stopped", "interrupted"].includes(record.status), JSON.stringify(record));
    assert.ok(Date.now() - start < timeout, `job ${id} still ${record.status}`);
    await new Promise((ok) => setTimeout(ok, 250));
  }
}

test("an SD3 base model shows SD3's fields, hides Flux's, plans as the dry run and trains", async () => {
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("train"));
  await pick(page, "Choose base model…", "models/sd3-tiny", true);
  await page.getByText("SD 3 · diffusers folder").waitFor();
  assert.equal(await page.locator(".model-notes li").count(), 0, "the folder holds all three text encoders");
  // SD3's own keys and those it shares with Flux show; Flux's and the SD families' do not.
  for (const label of ["model.clip_g", "model.clip_l", "model.t5xxl", "model.clip_l_dropout_rate", "model.clip_g_dropout_rate", "model.t5_dropout_rate", "model.pos_emb_random_crop_rate", "model.enable_scaled_pos_embed"]) {
    assert.equal(await page.getByLabel(label, { exact: true }).isVisible(), true, label);
  }
  for (const label of ["model.ae", "model.clip_skip", "model.v_parameterization", "accelerate.fp8_base_unet", "network.img_attn_dim", "flow.timestep_sampling", "loss.min_snr_gamma"]) {
    assert.equal(await page.getByLabel(label, { exact: true }).isVisible(), false, label);
  }
  const model = page.locator("details[data-section=model]");
  assert.match(await model.locator(".hidden-note").textContent(), /^\d+ options hidden: they apply to .*Flux only.* \(show them\)$/);
  for (const [section, label] of [["network", "network.context_attn_dim"], ["network", "network.emb_dims"], ["flow", "flow.training_shift"], ["flow", "flow.weighting_scheme"]]) {
    const details = page.locator(`details[data-section=${section}]`);
    if (!(await details.evaluate((d) => d.open))) await details.locator("summary").click();
    assert.equal(await page.getByLabel(label, { exact: true }).isVisible(), true, label);
  }
  await page.locator("details[data-section=flow] summary").waitFor();
  assert.equal(await page.locator("details[data-section=flow] summary").textContent(), "3.6 Flow matching (Flux, SD3)");

  // The run of crates/lorakit/tests/cli_sd3.rs, with SD3's options set in the form.
  await pick(page, "Choose dataset folder…", "train", true);
  for (const [label, value] of [
    ["model.t5xxl_max_token_length", "16"], ["model.clip_g_dropout_rate", "0.1"],
    ["dataset.resolution", "32"], ["dataset.min_bucket_reso", "32"], ["dataset.max_bucket_reso", "64"], ["dataset.bucket_reso_steps", "16"],
    ["network.network_dim", "4"], ["network.network_alpha", "4"], ["network.network_train_unet_only", true], ["network.context_attn_dim", "2"],
    ["training.train_batch_size", "2"], ["training.max_train_steps", "4"], ["optimizer.learning_rate", "0.01"], ["flow.training_shift", "3"],
    ["folders.output_dir", join(gui.dataRoot, "sd3-run")], ["folders.output_name", "sd3-tiny"],
  ]) await setField(page, label, value);
  await page.waitForFunction(() => {
    const body = document.querySelector(".plan-body");
    return !body.classList.contains("stale") && (body.querySelector('[data-plan="steps"]')?.textContent === "4" || body.querySelector('[data-plan="error"]'));
  }, null, { timeout: 60000 });
  assert.equal(await page.locator('.plan [data-plan="error"]').count(), 0, await page.locator(".plan").textContent());
  const panel = {
    steps: await page.locator('.plan [data-plan="steps"]').textContent(),
    warmup: await page.locator('.plan [data-plan="warmup"]').textContent(),
    epochs: await page.locator('.plan [data-plan="epochs"]').textContent(),
    memory: await page.locator('.plan [data-plan="memory_gb"]').textContent(),
  };
  await page.getByLabel("Config file name").fill("sd3-plan");
  await page.getByRole("button", { name: "Save as TOML" }).click();
  await page.getByText(/^saved .*sd3-plan\.toml$/).waitFor();
  const toml = readFileSync(join(gui.dataRoot, "sd3-plan.toml"), "utf8");
  assert.match(toml, /clip_g_dropout_rate = 0\.1/);
  assert.match(toml, /context_attn_dim = 2/);
  const printed = execFileSync(bin, ["train", join(gui.dataRoot, "sd3-plan.toml"), "--dry-run"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const length = printed.match(/^length: (\d+) steps in (\d+) epochs, (\d+) warmup steps$/m);
  const memory = printed.match(/^memory: this run needs about (\S+ [GM]B) /m);
  assert.ok(length && memory, printed);
  assert.deepEqual(panel, { steps: length[1], warmup: `${length[3]} steps`, epochs: length[2], memory: memory[1] });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, "sd3-train-1280.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.locator("details[data-section=model]").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "sd3-train-390.png") });

  // Add to queue: lorakit train writes the SD3 LoRA.
  await page.getByRole("button", { name: "Add to queue" }).click();
  const queued = page.getByText(/^queued job \d+$/);
  await queued.waitFor();
  await waitDone(page, (await queued.textContent()).split(" ").pop());
  assert.ok(existsSync(join(gui.dataRoot, LORA)), `${LORA} was written`);
  assert.match(execFileSync(bin, ["inspect", join(gui.dataRoot, LORA)], { encoding: "utf8" }), /base model\s+SD3/);
  assert.deepEqual(errors, []);
  await page.close();
});

const region = (page, name) => page.getByRole("region", { name, exact: true });

test("the SD3 LoRA converts with the SD3 family, and its XY plot equals lorakit generate", async () => {
  assert.ok(existsSync(join(gui.dataRoot, LORA)), "the first test trained the LoRA");
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  // Convert to PEFT/diffusers, the family named.
  await page.goto(at(`tools?${new URLSearchParams({ op: "convert", root: 0, path: LORA })}`));
  const convert = region(page, "Convert");
  await convert.getByLabel("To", { exact: true }).selectOption("peft");
  await convert.getByLabel("Base model", { exact: true }).selectOption("sd3");
  await convert.getByLabel("Output file name").fill("sd3-tiny-peft");
  await convert.getByRole("button", { name: "Convert", exact: true }).click();
  await convert.locator(".job-status").getByText("done", { exact: true }).waitFor({ timeout: 120000 });
  const converted = execFileSync(bin, ["inspect", join(gui.dataRoot, "sd3-run/sd3-tiny-peft.safetensors")], { encoding: "utf8" });
  assert.match(converted, /base model\s+SD3/);
  assert.match(converted, /diffusers\/PEFT/);

  // XY plot: the base model is the pipeline folder, picked with Browse.
  await page.goto(at(`tools?${new URLSearchParams({ op: "xy", root: 0, path: LORA })}`));
  const xy = region(page, "XY plot");
  assert.equal(await xy.getByLabel("Row 1: LoRA", { exact: true }).inputValue(), LORA);
  await xy.getByRole("button", { name: "Browse for Base model" }).click();
  await xy.getByRole("button", { name: "models/" }).click();
  await xy.getByRole("button", { name: "sd3-tiny/" }).click();
  await xy.getByRole("button", { name: "Use this folder" }).click();
  assert.equal(await xy.getByLabel("Base model", { exact: true }).inputValue(), "models/sd3-tiny");
  // SD3's separate text encoder files (not needed for a folder) are offered.
  await xy.getByText("Flux and SD3: text encoder and autoencoder files").click();
  for (const label of ["CLIP-L", "CLIP-G (SD3)", "T5-XXL", "Autoencoder (ae, Flux)"]) await xy.getByLabel(label, { exact: true }).waitFor();
  await xy.getByLabel("Prompts, one per line (the columns)").fill("chkbrd, a board\na plain board");
  await xy.getByLabel("First row without a LoRA").check();
  for (const [label, value] of [["Steps", "2"], ["Seed", "5"], ["Width", "32"], ["Height", "32"]]) await xy.getByLabel(label, { exact: true }).fill(value);
  await xy.getByLabel("Output file name").fill("sd3-xy");
  await xy.getByRole("button", { name: "Queue XY plot" }).click();
  const status = xy.locator(".job-status");
  await status.getByText("done", { exact: true }).waitFor({ timeout: 300000 });
  await status.locator("img.plot").waitFor();
  const expected = join(mkdtempSync(join(tmpdir(), "lorakit-sd3-xy-")), "cli.png");
  execFileSync(bin, [
    "generate", "--model", join(gui.dataRoot, "models/sd3-tiny"), "--grid", "--grid-baseline", "--lora", join(gui.dataRoot, LORA),
    "--prompt", "chkbrd, a board", "--prompt", "a plain board", "--steps", "2", "--seed", "5", "--width", "32", "--height", "32", "-o", expected,
  ], { stdio: "ignore" });
  assert.ok(readFileSync(join(gui.dataRoot, "sd3-run/sd3-xy.png")).equals(readFileSync(expected)), "the plot is lorakit generate's grid");
  await xy.scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "sd3-xy-1280.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, "sd3-xy-390.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.getElementById("page").scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page overflows sideways by ${overflow}px`);
  assert.deepEqual(errors, []);
  await page.close();
});
