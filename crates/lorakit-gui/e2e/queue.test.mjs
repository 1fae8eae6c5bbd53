// The queue: jobs move up and down while queued (the order they then run in), and a finished
// job is deleted (its record and output, not what it wrote).
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
  await page.close();
});
