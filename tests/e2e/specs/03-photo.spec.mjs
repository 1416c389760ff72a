// A photo that is not square: its input keeps the shape, the map is drawn over the photo itself.

import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { test, expect, expectSamePicture, readNpy, pngInfo } from "../support/fixtures.mjs";
import { shots, work } from "../support/env.mjs";

test("a photo keeps its shape: a 448x288 input for 451x300 (32-pixel patches), the map over the photo itself, exports at its size, the value under the cursor, the layer strip", async ({ app, native, page }) => {
  await app.open();
  const results = app.results;
  // A 3:2 picture the default model knows (a blue circle and a red square on stripes), drawn
  // in the page, saved for the native engine, dropped as a file.
  const png = await page.evaluate(async () => {
    const c = new OffscreenCanvas(451, 300);
    const g = c.getContext("2d");
    for (let y = 0; y < 300; y += 20) { g.fillStyle = y % 40 ? "#d8d8d8" : "#f2f2f2"; g.fillRect(0, y, 451, 20); }
    g.fillStyle = "#1f4fe0"; g.beginPath(); g.arc(340, 150, 60, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#e02020"; g.fillRect(40, 60, 110, 110);
    return Array.from(new Uint8Array(await (await c.convertToBlob({ type: "image/png" })).arrayBuffer()));
  });
  const photo = join(work, "photo-451x300.png");
  writeFileSync(photo, Buffer.from(png));
  await app.image.drop(photo, "photo.png");
  await app.image.waitReady();
  await app.settings.size("448");
  await app.prompts.fill("a blue circle\na red square");
  await results.waitForCard("a red square");
  let v = await results.mainView();
  expect(v.input === "448x288" && v.size === "451x300" && v.width === 451 && v.height === 300, `large view: ${JSON.stringify(v)}`).toBe(true);
  // The same map as the native engine's, on the input (the card) and over the photo (the view).
  const nativeMaps = (tag, extra) => {
    native.explain(photo, "a blue circle", tag, ["--on-original", ...extra]);
    return { input: app.site.file(`${tag}/0.png`), original: app.site.file(`${tag}/0.original.png`), npy: join(work, tag, "0.original.npy") };
  };
  const kept = nativeMaps("aspect", ["--keep-aspect"]);
  expectSamePicture(await results.compare("a blue circle", kept.input), "card vs native (448x288)");
  expectSamePicture(await results.compareMain(kept.original), "large view vs native over the photo");
  await app.screenshot(join(shots, "20-photo-large-view.png"), true);
  // The value under the cursor is the map's there (over the photo, at its pixels).
  const box = await results.mainCanvas().boundingBox();
  await page.mouse.move(box.x + box.width * 0.75, box.y + box.height * 0.5);
  const hv = await results.cursorValue();
  const npy = readNpy(kept.npy);
  const want = npy.data[hv.y * npy.shape[1] + hv.x];
  const shownValue = parseFloat(hv.text.match(/value ([\d.]+)/)[1]);
  expect(Math.abs(shownValue - want) < 0.0015 && hv.x > 300 && hv.x < 360, `under the cursor: ${JSON.stringify(hv)}, native ${want}`).toBe(true);
  // Exports at the photo's size.
  for (const [label, depth] of [["Overlay PNG", 8], ["Map PNG", 16]]) {
    const info = pngInfo(await results.exportMain(label));
    expect(info, label).toEqual({ width: 451, height: 300, depth });
  }
  // Another card on the large view.
  await results.openCard("a red square");
  await results.waitForMain(() => document.querySelector('[data-testid="main-label"]')?.textContent.startsWith("a red square"));
  await results.openCard("a blue circle");
  // The layer strip: the sum and each layer of the range (the last 2); a layer alone differs
  // from the sum; with a range of one layer, that layer is the sum.
  await results.waitForLayerButtons(3);
  const sum = await results.mainPixels();
  const layers = await results.layerButtons();
  await results.showLayer(layers[1]);
  await results.waitForLabel(`layer ${layers[1]}`);
  const one = await results.mainPixels();
  expect(one.some((p, i) => p !== sum[i]), "a layer alone looks like the sum").toBe(true);
  await app.screenshot(join(shots, "21-layer-strip.png"), true);
  await app.settings.layers("-1");
  await results.waitForLayerButtons(2);
  await results.waitForCard("a blue circle");
  await results.showLayer("all");
  const sumOne = await results.mainPixels();
  const last = (await results.layerButtons())[1];
  await results.showLayer(last);
  await results.waitForLabel(`layer ${last}`);
  const alone = await results.mainPixels();
  expect(alone.every((p, i) => Math.abs(p - sumOne[i]) <= 1), "a range of one layer: the layer is the sum").toBe(true);
  // Square, as the reference: the input is 448x448, still drawn over the photo's own shape.
  await app.settings.layers("-2");
  await results.showLayer("all");
  await app.settings.keepAspect(false);
  await results.waitForMain(() => document.querySelector('[data-testid="main-view"]')?.dataset.input === "448x448");
  await results.waitForCard("a blue circle");
  v = await results.mainView();
  expect(v.width === 451 && v.height === 300, `square input, view ${JSON.stringify(v)}`).toBe(true);
  const square = nativeMaps("square", []);
  expectSamePicture(await results.compare("a blue circle", square.input), "card vs native (square)");
  expectSamePicture(await results.compareMain(square.original), "large view vs native (square) over the photo");
});
