// The first visit: the page's interface is its own small module and draws before the engine's
// module has arrived; meanwhile it takes an image and prompts and says what it waits for.

import { test, expect } from "../support/fixtures.mjs";
import { scene } from "../support/env.mjs";

test("the page takes an image and prompts while the engine's module is still on its way, shows its progress, then answers them", async ({ app, page }) => {
  // The engine's module held back until the test lets it go.
  let release;
  const gate = new Promise((r) => { release = r; });
  let held = 0;
  await page.context().route("**/legrad-web-engine_bg.wasm", async (route) => {
    held += 1;
    await gate;
    await route.continue();
  });
  await page.goto(app.site.url());
  // The interface is up (its own module) while the engine's is held.
  await page.waitForSelector('[data-testid="image-input"]', { state: "attached", timeout: 60_000 });
  await expect.poll(() => held, { message: "the engine's module was asked for", timeout: 60_000 }).toBeGreaterThan(0);
  await page.waitForFunction(() => document.querySelector('[data-testid="progress"]')?.dataset.stage === "Engine", null, { timeout: 60_000 });
  const progress = await page.textContent('[data-testid="progress"]');
  expect(progress, "the status line says what the page waits for").toContain("Downloading the engine");
  await app.image.drop(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-waiting"]', { timeout: 10_000 });
  await app.prompts.fill("a red ring");
  expect(await page.$('[data-testid="map-card"]'), "no map before the engine").toBeNull();
  // The engine arrives: the image, the model and the prompt typed meanwhile are answered.
  release();
  await app.ready();
  await app.image.waitReady("scene-1.png");
  await app.results.waitForCard("a red ring");
  expect(await page.$('[data-testid="progress"][data-stage="Engine"]'), "the engine's progress is gone").toBeNull();
});
