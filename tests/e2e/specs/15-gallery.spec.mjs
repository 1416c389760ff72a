// The gallery (issue 30): a folder of images with a broken file among them, scored as the native
// engine scores them (`legrad explain --images`), sorted by score, filtered, exported as one ZIP
// whose maps are the native engine's; and the memory over a 1,000-image run of the default model.

import { join, basename } from "node:path";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { test, expect, readNpy, readPng16 } from "../support/fixtures.mjs";
import { defaultModel, root, shots, work } from "../support/env.mjs";
import { watchPageWasm } from "../support/memory.mjs";

const PROMPT = "a blue circle";

/// `legrad scenes` into `dir`, without the masks it writes beside each scene (the scenes and
/// their JSON stay).
function scenes(native, dir, seed, count, size) {
  native.run(["scenes", "--seed", String(seed), "--count", String(count), "--size", String(size), "--out", dir]);
  for (const f of readdirSync(dir).filter((f) => f.includes(".mask"))) unlinkSync(join(dir, f));
}

/// `legrad explain --images` on `dir` with the page's defaults (the default model at 224, the
/// image's shape kept, the template on): { name: { score, presence, npy } } and the failures.
function nativeRun(native, dir, tag, prompt) {
  const out = join(work, tag);
  rmSync(out, { recursive: true, force: true });
  native.run(["explain", "--model", defaultModel, "--images", dir, "--prompt", prompt, "--size", "224", "--keep-aspect", "--out", out]);
  const lines = readFileSync(join(out, "index.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const scored = {};
  const failed = [];
  for (const l of lines) {
    if (l.error) failed.push(basename(l.image));
    else scored[basename(l.image)] = { score: l.score, presence: l.presence, npy: join(out, l.files.find((f) => f.endsWith("/0.npy"))) };
  }
  return { scored, failed };
}

test("a folder with a broken file: scores as the native engine's, sorted and filtered, the ZIP's maps the native maps", async ({ app, native, page }) => {
  const dir = join(work, "gallery-in");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // Scenes of another size (PNG, and a JSON that is not an image), the samples, a broken file.
  scenes(native, dir, 43, 6, 160);
  for (const i of [1, 2, 3, 4]) copyFileSync(join(root, `www/samples/scene-${i}.png`), join(dir, `sample-${i}.png`));
  writeFileSync(join(dir, "broken.png"), "this is not a PNG at all");
  const files = readdirSync(dir);
  const images = files.filter((f) => f.endsWith(".png"));
  const others = files.length - images.length;
  expect(others, "the scenes' JSON").toBeGreaterThan(0);
  expect(images.length).toBe(11);

  await app.open();
  await app.prompts.fill(PROMPT);
  await app.gallery.pickFolder(dir);
  const progress = await app.gallery.waitDone(images.length);
  console.log(`     ${progress.text}`);
  expect(await page.textContent('[data-testid="gallery-skipped"]'), "what was left out").toContain(`${others} file`);

  const { scored, failed } = nativeRun(native, dir, "gallery-native", PROMPT);
  expect(failed, "the native run skips the broken file").toEqual(["broken.png"]);
  const cards = await app.gallery.cards();
  expect(cards.length).toBe(images.length);
  const broken = cards.find((c) => c.name === "broken.png");
  expect(broken.state, "the broken file is reported, the run went on").toBe("failed");
  expect(broken.text).toContain("broken.png");
  for (const c of cards.filter((c) => c.name !== "broken.png")) {
    expect(c.state, c.name).toBe("done");
    const n = scored[c.name];
    expect(Math.abs(c.score - n.score) < 2e-3, `${c.name}: score ${c.score}, native ${n.score}`).toBe(true);
    expect(Math.abs(c.presence - n.presence) < 2e-3, `${c.name}: presence ${c.presence}, native ${n.presence}`).toBe(true);
  }

  // Sorted by score, the native order (within the scores' tolerance); the broken file last.
  await app.gallery.sort("score-high");
  const sorted = await app.gallery.cards();
  expect(sorted[sorted.length - 1].name).toBe("broken.png");
  const order = sorted.slice(0, -1).map((c) => scored[c.name].score);
  for (let i = 1; i < order.length; i++) {
    expect(order[i] <= order[i - 1] + 2e-3, `native scores in the page's order: ${order.join(", ")}`).toBe(true);
  }
  await app.gallery.filter("sample");
  expect((await app.gallery.cards()).map((c) => c.name).sort()).toEqual(["sample-1.png", "sample-2.png", "sample-3.png", "sample-4.png"]);
  await app.gallery.filter("");
  await page.locator('[data-testid="gallery"]').screenshot({ path: join(shots, "50-gallery.png") });

  // The ZIP: an overlay and a 16-bit map per image, index.csv; the maps are the native maps.
  const download = await app.gallery.exportZip();
  const unzipped = join(work, "gallery-zip");
  rmSync(unzipped, { recursive: true, force: true });
  execFileSync("python3", ["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])", await download.path(), unzipped]);
  const rows = readFileSync(join(unzipped, "index.csv"), "utf8").trim().split("\n").slice(1).map((l) => l.split(","));
  expect(rows.length).toBe(images.length);
  let [worst, sum, count] = [0, 0, 0];
  for (const [image, prompt, score, , , overlay, map, error] of rows) {
    expect(prompt).toBe(PROMPT);
    if (image === "broken.png") {
      expect(error, "the failure in the index").toContain("broken.png");
      continue;
    }
    expect(Math.abs(+score - scored[image].score) < 2e-3, `${image}: index score`).toBe(true);
    readFileSync(join(unzipped, overlay));
    const mine = readPng16(join(unzipped, map));
    const theirs = readNpy(scored[image].npy);
    expect([mine.height, mine.width], `${image}: the map's size`).toEqual(theirs.shape);
    for (let i = 0; i < mine.data.length; i++) {
      const d = Math.abs(mine.data[i] - theirs.data[i]);
      worst = Math.max(worst, Number.isNaN(d) ? Infinity : d);
      sum += d;
      count++;
    }
  }
  const mean = sum / count;
  console.log(`     ZIP maps vs native: max abs diff ${worst.toExponential(2)}, mean ${mean.toExponential(2)}`);
  expect(worst < 1e-2 && mean < 1e-3, `the ZIP's maps against the native maps: max abs diff ${worst}, mean ${mean}`).toBe(true);

  // A new prompt: the grid follows (the traces kept serve the last images); a card opens in the
  // large view with that prompt's card.
  await app.prompts.fill(`${PROMPT}\na red ring`);
  await app.gallery.prompt("a red ring");
  await app.gallery.waitDone(images.length);
  const ring = nativeRun(native, dir, "gallery-native-ring", "a red ring").scored;
  for (const c of (await app.gallery.cards()).filter((c) => c.state === "done")) {
    expect(Math.abs(c.score - ring[c.name].score) < 2e-3, `${c.name}, a red ring: ${c.score} vs ${ring[c.name].score}`).toBe(true);
  }
  await app.gallery.open("sample-2.png");
  await app.image.waitReady("sample-2.png");
  await app.results.waitForCard("a red ring");
});

test("1,000 images of the default model: the engine's memory flat, the page's within its bound per image", async ({ app, native, page }) => {
  const N = 1000;
  const dir = join(work, "gallery-1000");
  rmSync(dir, { recursive: true, force: true });
  scenes(native, dir, 44, N, 224);
  await watchPageWasm(page);
  await app.open();
  await app.prompts.fill(PROMPT);
  const cdp = await page.context().newCDPSession(page);
  const sample = async () => {
    await cdp.send("HeapProfiler.collectGarbage");
    const heap = (await cdp.send("Runtime.getHeapUsage")).usedSize;
    const ui = await page.evaluate(() => window.__uiWasm?.memory?.buffer.byteLength ?? 0);
    const p = await app.gallery.progress();
    return { done: p.done, engine: p.engineWasm, ui, heap };
  };
  const t0 = Date.now();
  await app.gallery.pickFolder(dir);
  await page.waitForFunction(() => +document.querySelector('[data-testid="gallery-progress"]')?.dataset.done >= 100, null, { timeout: 600_000 });
  const warm = await sample();
  const done = await app.gallery.waitDone(N);
  const end = await sample();
  const mb = (b) => (b / 1048576).toFixed(1);
  console.log(`     ${N} images in ${((Date.now() - t0) / 1000).toFixed(0)} s (${done.perS.toFixed(1)} images/s by the page); ` +
    `from ${warm.done} to ${end.done} images: engine wasm ${mb(warm.engine)} -> ${mb(end.engine)} MB, page wasm ${mb(warm.ui)} -> ${mb(end.ui)} MB, ` +
    `page JS heap ${mb(warm.heap)} -> ${mb(end.heap)} MB`);
  // The bounds (README, "Many images"): the engine holds one image at a time and at most
  // GALLERY_TRACES traces: flat after the first images; the page keeps a thumbnail (128 px,
  // RGB) and a grid map per image, at most 64 kB each, and shows 60 cards.
  const added = end.done - warm.done;
  expect(end.engine - warm.engine <= 8 * 1048576, `engine wasm grew ${mb(end.engine - warm.engine)} MB`).toBe(true);
  expect(end.ui - warm.ui <= added * 65536, `page wasm grew ${mb(end.ui - warm.ui)} MB over ${added} images`).toBe(true);
  expect(end.heap - warm.heap <= 32 * 1048576, `page JS heap grew ${mb(end.heap - warm.heap)} MB`).toBe(true);
  expect((await app.gallery.cards()).length, "the grid shows the first 60").toBe(60);
});
