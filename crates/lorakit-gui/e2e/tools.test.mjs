// The Resize · Merge · Convert page: the resize preview equals what `lorakit resize --verbose`
// chooses for every module, and Resize queues the job that writes the file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gui, useGui, at, bin, shots, openPage } from "./harness.mjs";

useGui();

const FILE = "loras/tiny sdxl.safetensors";
const link = (params) => at(`tools?${new URLSearchParams(params)}`);

// Module → rank from `lorakit resize --verbose` (dynamic methods print `dim: N` per module).
function cliRanks(args) {
  const out = join(mkdtempSync(join(tmpdir(), "lorakit-resize-")), "out.safetensors");
  const stdout = execFileSync(bin, ["resize", join(gui.dataRoot, FILE), out, "--verbose", ...args], { encoding: "utf8" });
  const ranks = {};
  for (const line of stdout.split("\n")) {
    const m = line.match(/^(\S+)\s*\|.*dim: (\d+),/);
    if (m) ranks[m[1]] = Number(m[2]);
  }
  return ranks;
}

// Module → new rank from the page's preview table.
async function pageRanks(page) {
  const table = page.getByRole("table", { name: "Resize preview" });
  await table.waitFor({ timeout: 60000 });
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll(".preview-table tbody tr")]
    .map((tr) => [tr.querySelector(".module").textContent, Number(tr.querySelector(".new-rank").textContent)])));
}

const region = (page, name) => page.getByRole("region", { name, exact: true });

async function previewOn(page) {
  const resize = region(page, "Resize");
  await resize.getByLabel("Rank", { exact: true }).fill("8");
  await resize.getByLabel("Dynamic method").selectOption("sv_fro");
  await resize.getByLabel("Parameter").fill("0.9");
  await resize.getByRole("button", { name: "Preview" }).click();
  return pageRanks(page);
}

test("the resize preview equals lorakit resize, and Resize writes the file", async () => {
  const expected = cliRanks(["--rank", "8", "--dynamic", "sv-fro", "--param", "0.9"]);
  assert.ok(Object.keys(expected).length > 10, `the CLI reported ${Object.keys(expected).length} modules`);
  assert.ok(new Set(Object.values(expected)).size > 1, "a dynamic resize gives different ranks here");

  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(link({ op: "resize", root: 0, path: FILE }));
  await page.getByRole("heading", { level: 1, name: "Resize · Merge · Convert" }).waitFor();
  const resize = region(page, "Resize");
  assert.equal(await resize.getByLabel("LoRA file", { exact: true }).inputValue(), FILE, "the address chose the file");
  assert.deepEqual(await previewOn(page), expected);
  await page.screenshot({ path: join(shots, "tools-resize-1280.png") });

  // The output goes beside the input by default; Resize queues the job, which writes it.
  await resize.getByLabel("Output file name").fill("tiny-r8");
  await resize.getByRole("button", { name: "Resize", exact: true }).click();
  const status = resize.locator(".job-status");
  await status.getByText(/queued job \d+/).waitFor();
  await status.getByText("done", { exact: true }).waitFor({ timeout: 120000 });
  const written = join(gui.dataRoot, "loras", "tiny-r8.safetensors");
  assert.ok(existsSync(written) && statSync(written).size > 0, `${written} was written`);
  // The written file has the ranks the preview showed.
  const again = cliRanks(["--rank", "8", "--dynamic", "sv-fro", "--param", "0.9"]);
  assert.deepEqual(again, expected);
  await status.getByRole("link", { name: "loras/tiny-r8.safetensors" }).waitFor();
  // Writing it again needs "Replace an existing file".
  await resize.getByRole("button", { name: "Resize", exact: true }).click();
  await status.getByText(/exists; choose overwrite/).waitFor();
  // The queue shows it as a resize with its output; no training actions.
  await page.goto(at("jobs"));
  const job = page.locator("table.queue tbody tr").first();
  await job.getByText("resize", { exact: true }).waitFor();
  await job.getByRole("link", { name: "tiny-r8.safetensors" }).waitFor();
  for (const action of ["Resume", "Save now", "Sample now", "Stop & save"]) assert.equal(await job.getByRole("button", { name: action }).count(), 0, action);
  await job.getByRole("button", { name: /^Delete job/ }).waitFor();
  await page.screenshot({ path: join(shots, "queue-command-1280.png") });
  // Clone & edit refills the resize form from the job.
  await job.getByRole("link", { name: "Clone & edit" }).click();
  await page.getByText(/The settings of job \d+/).waitFor();
  assert.equal(await region(page, "Resize").getByLabel("Parameter").inputValue(), "0.9");
  assert.equal(await region(page, "Resize").getByLabel("Output file name").inputValue(), "tiny-r8");
  // The browser logs the refusal (409) it was meant to get; nothing else.
  assert.deepEqual(errors.filter((e) => !e.includes("status of 409")), []);
  await page.close();
});

test("the tools page at phone width, and the other tools' forms", async () => {
  const { page, errors } = await openPage({ width: 390, height: 844 });
  await page.goto(link({ op: "resize", root: 0, path: FILE }));
  await previewOn(page);
  await page.screenshot({ path: join(shots, "tools-resize-390.png") });
  const overflow = await page.evaluate(() => document.getElementById("page").scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page (below the header) overflows sideways by ${overflow}px`);
  // Merge: two rows, the linked file first; a bad rank is refused with lorakit's message.
  await page.getByRole("tab", { name: "Merge" }).click();
  const merge = region(page, "Merge");
  await merge.getByLabel("LoRA 1", { exact: true }).fill(FILE);
  await merge.getByLabel("LoRA 2", { exact: true }).fill("loras/tiny flux.safetensors");
  await merge.getByLabel("Rank", { exact: true }).fill("0");
  await merge.getByRole("button", { name: "Merge" }).click();
  await merge.getByText("--rank must be at least 1").waitFor();
  await page.screenshot({ path: join(shots, "tools-merge-390.png"), fullPage: true });
  // XY plot: the form, with the file picker browsing the root.
  await page.goto(link({ op: "xy", root: 0, path: FILE }));
  const xy = region(page, "XY plot");
  assert.equal(await xy.getByLabel("Row 1: LoRA", { exact: true }).inputValue(), FILE);
  await xy.getByRole("button", { name: "Browse for Base model" }).click();
  await xy.getByRole("button", { name: "loras/" }).click();
  await xy.getByRole("button", { name: "tiny flux.safetensors" }).click();
  assert.equal(await xy.getByLabel("Base model", { exact: true }).inputValue(), "loras/tiny flux.safetensors");
  await page.screenshot({ path: join(shots, "tools-xy-390.png"), fullPage: true });
  // The browser logs the refusal (422) it was meant to get; nothing else.
  assert.deepEqual(errors.filter((e) => !e.includes("status of 422")), []);
  await page.close();
});
