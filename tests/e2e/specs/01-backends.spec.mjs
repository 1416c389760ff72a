// Which backend the page picks, and says why; each one's map equals the native engine's.

import { join } from "node:path";
import { test, expect, expectSamePicture } from "../support/fixtures.mjs";
import { scene, shots } from "../support/env.mjs";

test("on a software WebGPU adapter the page picks the CPU and says why", async ({ app, native, page }) => {
  await page.goto(app.site.url());
  await app.screenshot(join(shots, "01-loading.png"));
  await app.ready();
  const backend = await app.header.backend();
  expect(backend.startsWith("CPU"), `backend is "${backend}"`).toBe(true);
  // One thread per core (the engine's worker and its helpers), at most 4: the map below is
  // computed with the rows shared out wherever there is more than one core.
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  const threads = Math.min(Math.max(cores, 1), 4);
  expect(backend.includes(threads === 1 ? "one thread" : `${threads} threads`), `backend is "${backend}" on ${cores} cores`).toBe(true);
  const reason = await app.header.reason();
  expect(/software adapter/.test(reason) && /swiftshader/i.test(reason), `reason: ${reason}`).toBe(true);
  expect(reason, "the reason says how to force WebGPU").toContain("?backend=webgpu");
  await app.screenshot(join(shots, "02-model-ready-cpu.png"));
  // The CPU path's map equals the native engine's.
  await app.image.dropScene();
  await app.settings.size("448");
  await app.prompts.fill("a blue circle");
  await app.results.waitForCard("a blue circle");
  expectSamePicture(await app.results.compare("a blue circle", native.explain(scene, "a blue circle", "auto-cpu")), "canvas vs native");
});

test("?backend=webgpu loads the default model on WebGPU", async ({ app }) => {
  await app.open("?backend=webgpu");
  const backend = await app.header.backend();
  expect(backend.startsWith("WebGPU"), `backend is "${backend}"`).toBe(true);
  await app.screenshot(join(shots, "02-model-ready.png"));
});

test("?backend=cpu&threads=1 runs on the CPU in one thread, says so, and explains as the native engine", async ({ app, native }) => {
  await app.open("?backend=cpu&threads=1");
  const backend = await app.header.backend();
  expect(backend.startsWith("CPU") && backend.includes("one thread"), `backend is "${backend}"`).toBe(true);
  expect(await app.header.reason()).toContain("as asked");
  await app.image.dropScene();
  await app.settings.size("224");
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  await app.screenshot(join(shots, "11-cpu-fallback.png"));
  // No helper workers: the same map as the native engine (and as the first test's, with them).
  await app.settings.size("448");
  await app.prompts.fill("a blue circle");
  await app.results.waitForCard("a blue circle");
  expectSamePicture(await app.results.compare("a blue circle", native.explain(scene, "a blue circle", "cpu-one-thread")), "canvas vs native");
});
