// The camera (Chromium's fake device playing the global setup's video).

import { join } from "node:path";
import { test, expect } from "../support/fixtures.mjs";
import { shots } from "../support/env.mjs";
import { expectFlat, sampleMemory, watchPageWasm } from "../support/memory.mjs";
import { App } from "../support/app.mjs";

test.use({ permissions: ["camera"] });

test("camera: the map's peak follows a moving object, frames/s and latency shown, pause freezes, 200 frames leave memory flat; refused in words", async ({ app, browser, site }) => {
  const { page, camera, results } = app;
  await watchPageWasm(page);
  await app.open();
  await app.prompts.fill("a blue circle");
  await camera.toggle();
  await camera.waitForFrames(5);
  const stats = await camera.stats();
  expect(stats.trim(), "camera stats").toMatch(/^[\d.]+ frames\/s · \d+ ms from frame to map$/);
  expect(await camera.choices(), "cameras to choose").toBeGreaterThanOrEqual(1);
  // Drawn over the frame itself (320x240), not over the model's input.
  const cv = await results.mainView();
  expect(cv.size === "320x240" && cv.width === 320 && cv.height === 240, `camera view: ${JSON.stringify(cv)}`).toBe(true);
  await app.screenshot(join(shots, "24-camera.png"), true);
  // The peak of each shown map against the circle in the frame it was drawn over (opacity 0:
  // the canvas is the frame), read together.
  await app.settings.opacity(0);
  // Over one whole period of the video (8 s, there and back), so that the circle's positions
  // span its path whatever phase the sampling starts at.
  const samples = [];
  let lastImage = null;
  const t0 = Date.now();
  for (let k = 0; (samples.length < 10 || Date.now() - t0 < 8500) && k < 200; k++) {
    await page.waitForTimeout(250);
    const s = await page.evaluate(() => {
      const c = document.querySelector('[data-testid="main-canvas"]');
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let sx = 0, n = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 110) { sx += (i / 4) % c.width; n++; }
      return { image: c.dataset.image, peak: Number(c.dataset.peak.split(",")[0]), blob: n ? sx / n : null, width: c.width };
    });
    if (s.blob !== null && s.image !== lastImage) { samples.push(s); lastImage = s.image; }
  }
  const near = samples.filter((s) => Math.abs(s.peak - s.blob) < 0.2 * s.width).length;
  const xs = samples.map((s) => s.blob);
  expect(samples.length >= 8 && near >= samples.length - Math.ceil(samples.length / 10) && Math.max(...xs) - Math.min(...xs) > 120,
    `peak vs circle: ${JSON.stringify(samples.map((s) => [Math.round(s.blob), s.peak]))}`).toBe(true);
  // Prompts can change while it runs; pause freezes the frame.
  await app.prompts.fill("a blue circle\na red square");
  await results.waitForCard("a red square");
  await camera.pause();
  await page.waitForTimeout(500);
  const frozen = await camera.frames();
  await page.waitForTimeout(1500);
  expect(await camera.frames(), "frames while paused").toBe(frozen);
  await camera.pause();
  // 200 frames: memory flat after warm-up (bounds as the soak's).
  const cdp = await page.context().newCDPSession(page);
  const start = await camera.frames();
  const series = [];
  for (let step = 0; step <= 200; step += 40) {
    await camera.waitForFrames(start + step);
    series.push({ ...(await sampleMemory(app, cdp, step)), gpu: null });
  }
  const mb = (b) => (b / 1048576).toFixed(1);
  console.log(`     camera frames: ${series.map((s) => `${s.step}: worker ${mb(s.worker)} / page ${mb(s.ui)} / heap ${mb(s.heap)} MB`).join("; ")}; ${await camera.stats()}`);
  expectFlat(series, 40, { worker: 32, ui: 16, heap: 8 });
  await camera.toggle();
  await camera.waitStopped();
  // Stopped: the last frame stays the image, and a new prompt is explained on it.
  await app.prompts.fill("a blue circle\na green star");
  await results.waitForCard("a green star");

  // Refused: a context without the camera permission (said so: a new context takes the
  // file's options, this permission among them, unless told otherwise).
  const denied = await browser.newContext({ permissions: [] });
  try {
    const other = new App(await denied.newPage(), site);
    await other.open();
    other.page.on("dialog", (d) => d.dismiss());
    await other.camera.toggle();
    expect(await other.camera.error(), "camera refused").toMatch(/refused|No camera/);
    expect(await other.camera.pressed(), "the camera looks off after a refusal").toBe("false");
  } finally {
    await denied.close();
  }
});
