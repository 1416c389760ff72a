// Bad input and lost devices: a message in words, and the page goes on.

import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { test, expect, expectSamePicture } from "../support/fixtures.mjs";
import { root, scene, shots, work } from "../support/env.mjs";

test("a corrupt file gives a message, and the next image still works", async ({ app }) => {
  await app.open();
  const broken = join(work, "broken.png");
  writeFileSync(broken, Buffer.from("\x89PNG\r\n\x1a\nthis is not really a png", "binary"));
  await app.image.drop(broken, "broken.png");
  expect(await app.image.error(), "the message names the file").toContain("broken.png");
  await app.screenshot(join(shots, "07-corrupt-file.png"));
  await app.image.drop(join(root, "www/samples/scene-2.png"), "scene-2.png");
  await app.image.waitReady();
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  await app.screenshot(join(shots, "08-recovered.png"));
});

test("a file that cannot be decoded leaves the image and its maps in place, the error beside them", async ({ app }) => {
  await app.openWithScene();
  await app.prompts.fill("a blue circle");
  await app.results.waitForCard("a blue circle");
  const before = await app.results.mainPixels();
  // An HTML page saved as .jpg.
  const page = join(work, "page-saved-as.jpg");
  writeFileSync(page, "<!DOCTYPE html><html><body>not a picture</body></html>");
  await app.image.drop(page, "page-saved-as.jpg", "image/jpeg");
  const msg = await app.image.error();
  expect(msg.includes("page-saved-as.jpg") && msg.includes("still in use"), `message: ${msg}`).toBe(true);
  await app.image.waitReady("scene-1.png");
  expect(await app.results.prompts(), "the cards after the bad drop").toEqual(["a blue circle"]);
  expect(await app.results.mainPixels(), "the large view after the bad drop").toEqual(before);
  // The image kept is the one explained: a new prompt is answered on it.
  await app.prompts.fill("a blue circle\na red ring");
  await app.results.waitForCard("a red ring");
  expect(await app.results.prompts()).toEqual(["a blue circle", "a red ring"]);
  await app.screenshot(join(shots, "08b-bad-drop-kept.png"));
});

test("a 12000x9000 JPEG is refused in words, and the page goes on", async ({ app }) => {
  await app.open("?backend=cpu");
  await app.image.dropDrawn({ name: "huge.jpg", width: 12000, height: 9000, type: "image/jpeg", quality: 0.8, fill: "#3a7",
    circle: { colour: "#d33", x: 0.42, y: 0.39, r: 0.2 } });
  const msg = await app.image.error();
  expect(msg.includes("huge.jpg") && msg.includes("12000") && msg.includes("9000"), `message: ${msg}`).toBe(true);
  await app.screenshot(join(shots, "14-huge-jpeg.png"));
  await app.image.drop(scene, "scene-1.png");
  await app.image.waitReady("scene-1.png");
  await app.prompts.fill("a red ring");
  await app.results.waitForCard("a red ring");
});

test("the GPU device lost mid-explanation: the page says so, moves to the CPU, the next prompt works", async ({ app, native }) => {
  await app.openWithScene("?backend=webgpu");
  await app.settings.size("224");
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  // Taken away while the next explanation runs (www/worker.js keeps the engine's devices).
  await app.prompts.fill("a blue circle\na red ring");
  await app.results.waitWorking();
  const destroyed = await app.worker().evaluate(() => { self.legradGpuDevices.forEach((d) => d.destroy()); return self.legradGpuDevices.length; });
  expect(destroyed, "GPU devices taken away").toBeGreaterThanOrEqual(1);
  await app.header.waitForReason("lost");
  await app.results.waitForCard("a red ring");
  const backend = await app.header.backend();
  expect(backend.startsWith("CPU"), `backend after the loss: ${backend}`).toBe(true);
  expect(await app.status.anyError(), "an error shown").toBeNull();
  await app.screenshot(join(shots, "15-gpu-lost.png"));
  // The next prompt, at 448: the native engine's map, pixel for pixel.
  await app.settings.size("448");
  await app.prompts.fill("a green star");
  await app.results.waitForCard("a green star");
  expectSamePicture(await app.results.compare("a green star", native.explain(scene, "a green star", "after-gpu-loss")), "after the loss: canvas vs native");
});
