// Long sessions: memory flat after warm-up (README, Reliability).

import { join, extname } from "node:path";
import { readdirSync } from "node:fs";
import { test, expect } from "../support/fixtures.mjs";
import { root, shots } from "../support/env.mjs";
import { expectFlat, printSeries, sampleMemory, watchPageWasm } from "../support/memory.mjs";

/// `edits` prompt edits, an image swap every 10 (files from disk: PNG of every kind and JPEG;
/// drawn in the page: JPEG and WebP, 256 to 2048 px) and, with `modelUrl`, a model switch every
/// 100 (the default model and that one, from the Cache API, by turns). Every 50 edits, a memory
/// sample. Returns the series.
async function soak(app, query, edits, modelUrl, numbered = true) {
  await watchPageWasm(app.page);
  await app.open(query);
  await app.settings.size("224");
  const cdp = await app.page.context().newCDPSession(app.page);
  const files = [...readdirSync(join(root, "tests/fixtures/images")).map((f) => join(root, "tests/fixtures/images", f)),
    ...readdirSync(join(root, "www/samples")).map((f) => join(root, "www/samples", f))];
  const colours = ["red", "green", "blue", "yellow", "purple", "orange"];
  const shapes = ["circle", "square", "triangle", "star", "cross", "ring"];
  let seed = 12345;
  const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
  const series = [];
  let imageNo = 0;
  let lastPrompts = "";
  const swapImage = async () => {
    imageNo++;
    if (imageNo % 2) {
      const f = files[rand(files.length)];
      await app.image.drop(f, `soak-${imageNo}${extname(f)}`, extname(f) === ".jpg" ? "image/jpeg" : "image/png");
    } else {
      const [width, height] = [[256, 640, 1024, 2048][rand(4)], [256, 480, 768, 1536][rand(4)]];
      const type = ["image/jpeg", "image/webp"][rand(2)];
      await app.image.dropDrawn({ name: `soak-${imageNo}.${type.split("/")[1]}`, width, height, type,
        fill: `hsl(${(imageNo * 47) % 360} 60% 50%)`, circle: { colour: "#c22", x: 0.3, y: 0.6, r: 0.2 } });
    }
    await app.image.waitReady(`soak-${imageNo}.`);
  };
  await swapImage();
  for (let i = 0; i < edits; i++) {
    if (modelUrl && i % 100 === 50) {
      if (Math.floor(i / 100) % 2 === 0) {
        await app.model.loadUrl(modelUrl);
        await app.header.waitForModel(modelUrl);
      } else {
        await app.model.backToDefault();
        await app.page.waitForFunction(() => { const n = document.querySelector('[data-testid="model-name"]')?.textContent; return n && !n.startsWith("http"); },
          null, { timeout: 300_000 });
      }
    }
    if (i % 10 === 5) await swapImage();
    let prompts;
    do {
      const n = 1 + rand(3);
      prompts = Array.from({ length: n }, () => `a ${colours[rand(6)]} ${shapes[rand(6)]}${numbered && rand(4) === 0 ? ` ${rand(1000)}` : ""}`).join("\n");
    } while (prompts === lastPrompts);
    lastPrompts = prompts;
    await app.prompts.fill(prompts);
    await app.results.waitForCard(prompts.split("\n").pop());
    if ((i + 1) % 50 === 0) series.push(await sampleMemory(app, cdp, i + 1));
  }
  printSeries(series);
  return series;
}

test("soak: 1,000 prompt edits, 100 image swaps, 10 model switches; memory flat after warm-up", async ({ app, native }) => {
  const edits = Number(process.env.LEGRAD_SOAK_EDITS ?? 1000);
  // Warm-up: 200 edits (both models loaded twice, every kind of image seen).
  const series = await soak(app, "", edits, native.urlModel());
  expectFlat(series, Math.min(200, edits), { worker: 32, ui: 16, heap: 8 });
  await app.screenshot(join(shots, "18-after-soak.png"));
});

test("soak on WebGPU: 150 prompt edits, 15 image swaps; GPU pools flat after warm-up", async ({ app }) => {
  // The 36 colour-shape names only: the engine keeps up to 512 text embeddings on purpose
  // (GPU memory that grows with new prompts until the cache is full); with a fixed set of names
  // that cache fills during warm-up, so growth after it is what the per-edit path leaves.
  const series = await soak(app, "?backend=webgpu", Number(process.env.LEGRAD_SOAK_GPU_EDITS ?? 150), null, false);
  expect(series.every((s) => s.gpu > 0), "the engine reported GPU memory on WebGPU").toBe(true);
  expectFlat(series, 50, { worker: 32, ui: 16, heap: 8, gpu: 32 });
});
