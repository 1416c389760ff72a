// Models other than the default: by URL, by file, SigLIP, large enough for the integer path;
// cancelled, switched mid-explanation, stored or not.

import { join } from "node:path";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { App } from "../support/app.mjs";
import { test, expect, expectSamePicture, readNpy } from "../support/fixtures.mjs";
import { root, scene, shots, work } from "../support/env.mjs";

test("a model by URL from localhost: downloaded, converted to 8-bit, kept for the next visit", async ({ app, native }) => {
  const url = native.urlModel();
  await app.open();
  await app.model.loadUrl(url);
  await app.header.waitForModel(url);
  const info = await app.model.info();
  expect(info, "model info").toContain("converted to 8-bit");
  expect(info, "model info").toContain("downloaded");
  await app.screenshot(join(shots, "09-model-from-url.png"));
  // A new visit: the model comes from the Cache API, not the network.
  const second = await app.another();
  await second.open("?backend=webgpu");
  await second.model.loadUrl(url);
  await second.model.waitForInfo("from this browser's storage");
  expect(await second.settings.sizeValue(), "an OpenCLIP checkpoint starts at the reference demo's 448").toBe("448");
  await second.image.dropScene();
  await second.prompts.fill("anything");
  await second.results.waitForCard("anything");
  await second.screenshot(join(shots, "10-url-model-cached.png"));
  // One bit flipped in the stored model's last tensor byte: the checksum catches it, the entry
  // is ignored and the model downloaded again.
  const damaged = await second.page.evaluate(async () => {
    const cache = await caches.open("legrad-web-models-v1");
    let n = 0;
    for (const request of await cache.keys()) {
      const bytes = new Uint8Array(await (await cache.match(request)).arrayBuffer());
      bytes[bytes.length - 1] ^= 0x10;
      await cache.put(request, new Response(bytes));
      n++;
    }
    return n;
  });
  expect(damaged, "cached models").toBe(1);
  const third = await app.another();
  await third.open("?backend=cpu");
  await third.model.loadUrl(url);
  await third.header.waitForModel(url);
  const again = await third.model.info();
  expect(again.includes("downloaded") && !again.includes("from this browser's storage"), `model info after damage: ${again}`).toBe(true);
});

test("a model large enough for the CPU's 16-bit integer products: the map equals the native engine's, in f32 and in 16-bit integers", async ({ app, native }) => {
  // 512 wide, 2048 hidden: a layer at 448 (785 tokens) is 823 M multiply-adds, over the 200 M
  // from which the browser's CPU path takes LeGrad's products in 16-bit integers (explain::int16).
  const model = join(work, native.model("int16-model.json", 7, "int16-model.safetensors"));
  const q8 = join(work, "int16-model-q8.safetensors");
  native.run(["convert", "--model", model, "--quant", "q8", "--out", q8]);
  const url = app.site.file("int16-model.safetensors");
  await app.open("?backend=cpu");
  await app.model.loadUrl(url);
  await app.header.waitForModel(url);
  // Its vision tower is on the integer grid (512 x 2048 per layer): with more than one core the
  // page's image step at 448 is shared with the helpers (model::int_linear::share).
  const info = await app.model.info();
  expect(/The image step runs on [2-9] threads for images of 192 px and more\./.test(info), `model info: ${info}`).toBe(true);
  await app.settings.size("448");
  await app.image.dropScene();
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  // The native engine on the same 8-bit file, with f32 products and with 16-bit integer ones
  // (on x86 with AVX2 or AVX-512 its own form of them, `K` on the linear layers' grid:
  // explain::int16; and one thread's image step: the shared one differs by its shares'
  // rounding). Each differs from the page's by far less than a pixel level.
  for (const [tag, int16] of [["int16-native-f32", "never"], ["int16-native-int16", "large"]]) {
    native.run(["explain", "--model", q8, "--image", scene, "--prompt", "a red circle", "--size", "448", "--int16", int16, "--out", join(work, tag)]);
    expectSamePicture(await app.results.compare("a red circle", app.site.file(`${tag}/0.png`)), `${tag}: canvas vs native`);
  }
  // Natively the two paths differ (the integer one ran), by far less than a pixel level.
  const f = readNpy(join(work, "int16-native-f32/0.npy")).data, q = readNpy(join(work, "int16-native-int16/0.npy")).data;
  let worst = 0;
  for (let i = 0; i < f.length; i++) worst = Math.max(worst, Math.abs(f[i] - q[i]));
  expect(f.length === q.length && worst > 0 && worst < 1e-3, `native f32 vs integer products: max abs diff ${worst}`).toBe(true);
  console.log(`     native maps, f32 vs 16-bit integer products: max abs diff ${worst.toExponential(2)}`);
});

test("a SigLIP model by URL, its config and tokenizer found beside it: converted, LeGrad only, the map equals the native engine's", async ({ app, native }) => {
  // The Hugging Face Hub's layout (timm/ViT-B-16-SigLIP): the weights, open_clip_config.json
  // and tokenizer.json in one directory; here the tiny random SigLIP the parity tests use.
  const dir = join(work, "siglip");
  mkdirSync(dir, { recursive: true });
  const fx = join(root, "tests/fixtures/siglip");
  copyFileSync(join(fx, "tiny-siglip-p16.safetensors"), join(dir, "open_clip_model.safetensors"));
  copyFileSync(join(fx, "tiny-siglip-p16.json"), join(dir, "open_clip_config.json"));
  copyFileSync(join(fx, "tokenizer/tokenizer.json"), join(dir, "tokenizer.json"));
  const url = app.site.file("siglip/open_clip_model.safetensors");
  await app.open("?backend=cpu");
  await app.model.loadUrl(url);
  await app.header.waitForModel(url);
  const info = await app.model.info();
  expect(info.includes("converted to 8-bit") && info.includes("SigLIP: LeGrad only"), `model info: ${info}`).toBe(true);
  for (const f of ["open_clip_config.json", "tokenizer.json"]) {
    expect(app.site.served.some((r) => r.url === `/files/siglip/${f}`), `${f} was fetched`).toBe(true);
  }
  // The native engine on the same 8-bit file (the CLI's convert rounds as the page does).
  const q8 = join(work, "siglip-q8.safetensors");
  native.run(["convert", "--model", join(dir, "open_clip_model.safetensors"), "--quant", "q8", "--out", q8]);
  await app.image.dropScene();
  const size = await app.settings.sizeValue();
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  const out = join(work, "siglip-native");
  native.run(["explain", "--model", q8, "--image", scene, "--prompt", "a red circle", "--size", size, "--out", out]);
  expectSamePicture(await app.results.compare("a red circle", app.site.file("siglip-native/0.png")), "canvas vs native");
  // The score shown is SigLIP's sigmoid probability, named so, and the native engine's.
  const score = await app.results.score();
  const nativeScore = JSON.parse(readFileSync(join(out, "scores.json"), "utf8")).prompts[0].score;
  expect(score.startsWith("probability ") && Math.abs(parseFloat(score.split(" ")[1]) - nativeScore) < 0.002, `score "${score}", native ${nativeScore}`).toBe(true);
  await app.screenshot(join(shots, "25-siglip.png"));
  // The same three files dropped together: weights, config and tokenizer.json.
  await app.image.dropFiles(["open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"].map((name) => ({ path: join(dir, name), name })));
  await app.header.waitForModel("open_clip_model.safetensors");
  expect(await app.model.info(), "model info after the drop").toContain("SigLIP: LeGrad only");
  await app.prompts.fill("a blue circle");
  await app.results.waitForCard("a blue circle");
  // Weights alone: the page says what is missing, and the SigLIP loaded before stays.
  await app.image.drop(join(dir, "open_clip_model.safetensors"), "open_clip_model.safetensors", "application/octet-stream");
  await app.model.waitForInfo("stopped");
  const err = await app.model.info();
  expect(err.includes("needs its config") && err.includes("still in use"), `after the weights alone: ${err}`).toBe(true);
});

test("a model switch while an explanation runs: the old answer is dropped, no error", async ({ app, native }) => {
  const url = native.urlModel();
  await app.open();
  // Any map shown while the new model loads would be the old model's answer.
  await app.page.evaluate(() => {
    window.__mapsWhileLoading = 0;
    new MutationObserver(() => {
      if (!document.querySelector('[data-testid="model-info"]') && document.querySelector('[data-testid="map-card"]')) window.__mapsWhileLoading++;
    }).observe(document.body, { childList: true, subtree: true });
  });
  await app.image.drop(join(root, "www/samples/scene-4.png"), "scene-4.png");
  await app.image.waitReady("scene-4.png");
  await app.settings.size("448");
  await app.settings.compare(true);
  await app.prompts.fill("a green star\na blue triangle");
  await app.results.waitWorking();
  await app.model.loadUrlNow(url);
  await app.header.waitForModel(url);
  await app.results.waitForCard("a green star");
  expect(await app.page.evaluate(() => window.__mapsWhileLoading), "maps shown while the new model loaded").toBe(0);
  expect(await app.status.anyError(), "an error shown").toBeNull();
});

test("a download cancelled while downloading, and while converting: nothing is kept, the model before stays", async ({ app, native }) => {
  native.urlModel();
  await app.open();
  // Downloading: a slow server.
  const slow = app.site.file("slow/url-model.safetensors");
  await app.model.loadUrl(slow);
  await app.status.cancelDuring("Download");
  let info = await app.model.info();
  expect(info.includes("stopped: cancelled during the download; nothing was kept") && info.includes("still in use"), `after cancelling the download: ${info}`).toBe(true);
  await app.screenshot(join(shots, "13-download-cancelled.png"));
  // Converting: a model large enough (about 90 MB in f32) to take a moment to convert.
  const bigConfig = join(work, "big-model.json");
  writeFileSync(bigConfig, JSON.stringify({ embed_dim: 256,
    vision_cfg: { image_size: 224, layers: 4, width: 384, head_width: 64, patch_size: 16 },
    text_cfg: { context_length: 77, vocab_size: 49408, width: 256, heads: 4, layers: 4 } }));
  native.run(["convert", "--model", `random:${bigConfig}:5`, "--format", "openclip", "--out", join(work, "big-model.safetensors")]);
  const big = app.site.file("big-model.safetensors");
  await app.model.loadUrl(big);
  await app.status.cancelDuring("Convert");
  info = await app.model.info();
  expect(info.includes("cancelled while converting") && info.includes("still in use"), `after cancelling the conversion: ${info}`).toBe(true);
  const cached = await app.model.storedUrls();
  expect(cached.includes(slow) || cached.includes(big), `cached after cancels: ${cached.join(", ")}`).toBe(false);
  // And the model before still explains.
  await app.image.dropScene();
  await app.prompts.fill("a green star");
  await app.results.waitForCard("a green star");
});

test("a download cancelled while storing: the entry just written is deleted, the model before stays", async ({ app, native }) => {
  copyFileSync(join(work, native.model("url-model.json", 3, "url-model.safetensors")), join(work, "store-model.safetensors"));
  await app.openWithScene("?backend=cpu");
  // Storing takes milliseconds: the test slows the worker's Cache API down (from outside, in
  // the worker's scope) so that the cancel lands while the model is being stored.
  await app.worker().evaluate(() => {
    const put = Cache.prototype.put;
    Cache.prototype.put = async function (...args) {
      await new Promise((r) => setTimeout(r, 3000));
      return put.apply(this, args);
    };
  });
  const store = app.site.file("store-model.safetensors");
  await app.model.loadUrl(store);
  await app.status.cancelDuring("Store");
  const info = await app.model.info();
  expect(info.includes("cancelled while storing") && info.includes("still in use"), `after cancelling while storing: ${info}`).toBe(true);
  expect(await app.model.storedUrls(), "the model stays out of the cache").not.toContain(store);
});

test("the Cache API full or missing: the model still loads, with a note", async ({ browser, native, site }) => {
  const url = native.urlModel();
  // Full: this origin's quota cut to 10 kB (Chromium's DevTools protocol), in a fresh context.
  const full = await browser.newContext();
  try {
    const app = new App(await full.newPage(), site);
    const cdp = await full.newCDPSession(app.page);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: site.base, quotaSize: 10_000 });
    await app.open("?backend=cpu");
    await app.model.loadUrl(url);
    await app.header.waitForModel(url);
    expect(await app.model.info(), "with a full cache").toContain("could not store the model");
    expect(await app.model.storedUrls(), "stored past the quota").toEqual([]);
    await app.screenshot(join(shots, "16-cache-full.png"));
  } finally {
    await full.close();
  }
  // Missing: the same site under a name that is not localhost, over plain HTTP.
  const plain = await browser.newContext();
  try {
    const page = await plain.newPage();
    const insecure = site.base.replace("127.0.0.1", "legrad-insecure.test");
    const app = new App(page, { ...site, url: (q = "") => insecure + site.sub + q });
    await app.open();
    expect(await page.evaluate(() => !window.isSecureContext && typeof caches === "undefined"), "the page is not a secure context").toBe(true);
    await app.model.loadUrl(`${insecure}/files/url-model.safetensors`);
    await page.waitForFunction(() => document.querySelector('[data-testid="model-name"]')?.textContent.includes("legrad-insecure.test"), null, { timeout: 300_000 });
    const info = await app.model.info();
    expect(info.includes("could not store the model") && info.includes("unavailable"), `without a Cache API: ${info}`).toBe(true);
    await app.image.dropScene();
    await app.prompts.fill("anything");
    await app.results.waitForCard("anything");
    await app.screenshot(join(shots, "17-no-cache-api.png"));
  } finally {
    await plain.close();
  }
});
