// The harness of the browser tests (gui-peers.md §9, layer 2): each test file starts its own
// `lorakit gui` on a free port with a known token over a fresh temporary root, opens the printed
// address (the token becomes a cookie) in Debian's chromium driven by playwright-core, and stops
// both when the file's tests end. Screenshots go to target/e2e/ for a human look.
//
// Run: (cd crates/lorakit-gui/e2e && npm ci && node --test); LORAKIT_BIN (default
// target/debug/lorakit) and CHROMIUM (default /usr/bin/chromium) override the paths.
import { before, after } from "node:test";
import { spawn } from "node:child_process";
import { copyFileSync, cpSync, existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

export const repo = resolve(import.meta.dirname, "../../..");
export const bin = process.env.LORAKIT_BIN ?? join(repo, "target/debug/lorakit");
export const shots = join(repo, "target/e2e");
mkdirSync(shots, { recursive: true });

/** What a test file's server and browser are: filled in by `before`. */
export const gui = { url: null, browser: null, dataRoot: null, server: null };

/**
 * Starts the server and the browser before the file's tests and stops them after. The root
 * holds: 10_cat/ (a caption named like markup, a Thai file name), train/5_chk (the example
 * dataset's chessboard subset, which tests may edit), loras/ (lorakit-trained tiny Flux and
 * SDXL LoRAs); the repository's examples/ is the second root.
 */
export function useGui() {
  before(async () => {
    const root = mkdtempSync(join(tmpdir(), "lorakit-e2e-"));
    mkdirSync(join(root, "10_cat"));
    writeFileSync(join(root, "10_cat", "a.txt"), "<script>alert(1)</script>, cat");
    writeFileSync(join(root, "10_cat", "แมว.txt"), "a Thai file name");
    cpSync(join(repo, "examples/dataset/img/8_chessboard"), join(root, "train", "5_chk"), { recursive: true });
    mkdirSync(join(root, "loras"));
    copyFileSync(join(repo, "tests/fixtures/reference/trained_lora/tiny_flux_trained.safetensors"), join(root, "loras", "tiny flux.safetensors"));
    copyFileSync(join(repo, "tests/fixtures/reference/trained_lora/tiny_sdxl_trained.safetensors"), join(root, "loras", "tiny sdxl.safetensors"));
    gui.dataRoot = root;
    gui.server = spawn(bin, ["gui", "--port", "0", "--token", "e2e-token-0123456789", "--root", root, "--root", join(repo, "examples"), "--state", join(root, ".state")], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    gui.url = await new Promise((ok, fail) => {
      let out = "";
      const timer = setTimeout(() => fail(new Error(`no address printed: ${out}`)), 30000);
      gui.server.stdout.on("data", (d) => {
        out += d;
        const m = out.match(/http:\/\/\S+/);
        if (m) {
          clearTimeout(timer);
          ok(m[0]);
        }
      });
      gui.server.on("exit", (code) => fail(new Error(`lorakit gui exited (${code}): ${out}`)));
    });
    gui.browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true });
  });
  after(async () => {
    await gui.browser?.close();
    gui.server?.kill("SIGINT");
    // A job a failed test left running keeps going in its own process group after the server
    // stops (as it should for a user): end it, or a 100000-step training outlives the tests.
    const jobs = join(gui.dataRoot ?? "", ".state", "jobs");
    for (const id of existsSync(jobs) ? readdirSync(jobs) : []) {
      try {
        const record = JSON.parse(readFileSync(join(jobs, id, "job.json"), "utf8"));
        if (record.pid && ["running", "queued"].includes(record.status)) process.kill(-record.pid, "SIGKILL");
      } catch { /* no record, or the process is gone */ }
    }
  });
}

/** The address of page `hash` (e.g. "jobs"). */
export const at = (hash) => new URL(`/#${hash}`, gui.url).href;

/**
 * A signed-in page (the token exchanged for the cookie) whose console errors and uncaught
 * exceptions collect in `errors`.
 */
export async function openPage(viewport) {
  const page = await gui.browser.newPage(viewport ? { viewport } : {});
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(gui.url);
  return { page, errors };
}

// A training of the bundled quick-start model on the shapes dataset, writing to
// `<dataRoot>/<name>`, for `steps` steps; `extra` lines are appended (more sections).
export function quickstartRun(name, steps, extra = []) {
  return [
    "[model]",
    `pretrained_model_name_or_path = ${JSON.stringify(join(repo, "examples/quickstart/shapes-sd15"))}`,
    "[folders]",
    `output_dir = ${JSON.stringify(join(gui.dataRoot, name))}`,
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
export async function queueAndShow(page, config) {
  await page.goto(at("jobs"));
  await page.getByLabel("Training config (TOML)").fill(config);
  await page.getByRole("button", { name: "Add to queue" }).click();
  const queued = page.getByText(/^queued job \d+$/);
  await queued.waitFor();
  const id = (await queued.textContent()).split(" ").pop();
  const row = page.locator("tr", { hasText: id });
  await row.getByRole("button", { name: "Output" }).click();
  return row;
}

