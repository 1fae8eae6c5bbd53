// The queue: jobs move up and down while queued (the order they then run in), a finished job is
// deleted (its record and output, not what it wrote), and the two LoRAs trained here are drawn
// as an XY plot (a generate job) whose image the tools page and the queue show.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { gui, useGui, at, shots, openPage, quickstartRun } from "./harness.mjs";

useGui();

async function queue(page, config) {
  await page.getByLabel("Training config (TOML)").fill(config);
  await page.getByRole("button", { name: "Add to queue" }).click();
  const queued = page.getByText(/^queued job \d+$/);
  await queued.waitFor();
  const id = (await queued.textContent()).split(" ").pop();
  await page.getByText(/^queued job \d+$/).evaluate((n) => { n.textContent = ""; });
  return id;
}

const jobIds = (page) => page.evaluate(() => [...document.querySelectorAll("table.queue tbody tr")].map((tr) => tr.dataset.job));
const row = (page, id) => page.locator(`tr[data-job="${id}"]`);
const record = (page, id) => page.evaluate((id) => fetch(`/api/jobs/${id}`).then((r) => r.json()), id);

test("queued trainings move, the order holds, and a finished job is deleted", async () => {
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("jobs"));
  const long = await queue(page, quickstartRun("long", 100000));
  const a = await queue(page, quickstartRun("a", 2));
  const b = await queue(page, quickstartRun("b", 2));
  await row(page, long).getByRole("cell", { name: "running", exact: true }).waitFor({ timeout: 60000 });
  assert.deepEqual(await jobIds(page), [long, a, b]);
  // The first queued job cannot move up, the last not down.
  assert.equal(await page.getByRole("button", { name: `Move job ${a} up` }).count(), 0);
  assert.equal(await page.getByRole("button", { name: `Move job ${b} down` }).count(), 0);
  await page.getByRole("button", { name: `Move job ${b} up` }).click();
  await page.waitForFunction(([a, b]) => {
    const ids = [...document.querySelectorAll("table.queue tbody tr")].map((tr) => tr.dataset.job);
    return ids.indexOf(b) >= 0 && ids.indexOf(b) < ids.indexOf(a);
  }, [a, b]);
  assert.deepEqual(await jobIds(page), [long, b, a]);
  // Queued and running jobs have no Delete.
  assert.equal(await page.getByRole("button", { name: /^Delete job/ }).count(), 0);
  await page.screenshot({ path: join(shots, "queue-1280.png"), fullPage: true });

  await row(page, long).getByRole("button", { name: "Stop now" }).click();
  await row(page, long).getByRole("cell", { name: "stopped", exact: true }).waitFor({ timeout: 60000 });
  await row(page, a).getByRole("cell", { name: "done", exact: true }).waitFor({ timeout: 180000 });
  const [ra, rb] = [await record(page, a), await record(page, b)];
  assert.ok(rb.started <= ra.started && rb.finished <= ra.started, `b ran before a: ${JSON.stringify([rb, ra])}`);

  await page.getByRole("button", { name: `Delete job ${long}` }).click();
  await page.getByText(`job ${long} deleted (the files it wrote stay)`).waitFor();
  await row(page, long).waitFor({ state: "detached" });
  assert.deepEqual(await jobIds(page), [b, a]);
  const gone = await page.evaluate((id) => fetch(`/api/jobs/${id}`).then((r) => r.status), long);
  assert.equal(gone, 404);
  await page.screenshot({ path: join(shots, "queue-done-1280.png"), fullPage: true });
  const phone = await openPage({ width: 390, height: 844 });
  await phone.page.goto(at("jobs"));
  await row(phone.page, a).waitFor();
  const overflow = await phone.page.evaluate(() => document.getElementById("page").scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the queue overflows sideways by ${overflow}px at 390px`);
  await phone.page.screenshot({ path: join(shots, "queue-390.png"), fullPage: true });
  // The 404 asked for above is logged by the browser; nothing else.
  assert.deepEqual([...errors.filter((e) => !e.includes("status of 404")), ...phone.errors], []);
  await phone.page.close();

  // XY plot: the two LoRAs (rows, after a row without LoRA) × two prompts on the model they
  // were trained from (the second root holds examples/).
  await page.goto(at(`tools?${new URLSearchParams({ op: "xy", root: 0, path: "a/a.safetensors" })}`));
  const xy = page.getByRole("region", { name: "XY plot", exact: true });
  await xy.getByLabel("Base model: root").selectOption("1");
  await xy.getByLabel("Base model", { exact: true }).fill("quickstart/shapes-sd15");
  await xy.getByRole("button", { name: "Add a row" }).click();
  await xy.getByLabel("Row 2: LoRA", { exact: true }).fill("b/b.safetensors");
  await xy.getByLabel("First row without a LoRA").check();
  await xy.getByLabel("Prompts, one per line (the columns)").fill("red lkstar, large\nblue lkstar");
  await xy.getByLabel("Steps").fill("3");
  await xy.getByLabel("Width").fill("64");
  await xy.getByLabel("Height").fill("64");
  await xy.getByLabel("Output file name").fill("epochs");
  await xy.getByRole("button", { name: "Queue XY plot" }).click();
  const plot = xy.getByRole("img", { name: /^XY plot of job \d+$/ });
  await plot.waitFor({ timeout: 120000 });
  await page.waitForFunction(() => document.querySelector("img.plot")?.naturalWidth > 0);
  // Three rows (no LoRA, a, b) of 64 px cells under the labels: taller than wide per column.
  const size = await plot.evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.ok(size[1] > 3 * 64 && size[0] > 2 * 64, `grid ${size}`);
  await page.screenshot({ path: join(shots, "tools-xy-1280.png"), fullPage: true });
  await page.goto(at("jobs"));
  await page.locator("table.queue .results img").first().waitFor();
  await page.waitForFunction(() => document.querySelector("table.queue .results img")?.naturalWidth > 0);
  await page.screenshot({ path: join(shots, "queue-xy-1280.png") });
  await page.close();
});

test("an address naming a job (the Train page's Start) opens that job's run", async () => {
  const { page, errors } = await openPage({ width: 1280, height: 900 });
  await page.goto(at("jobs"));
  const id = await queue(page, quickstartRun("named", 2));
  await page.goto(gui.url);
  await page.goto(at(`jobs?job=${id}`));
  await page.getByRole("heading", { level: 2, name: `Run of job ${id}` }).waitFor();
  await row(page, id).getByRole("cell", { name: "done", exact: true }).waitFor({ timeout: 180000 });
  assert.deepEqual(errors, []);
  await page.close();
});
