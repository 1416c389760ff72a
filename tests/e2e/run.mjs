// End-to-end tests of the built site (dist/) in headless Chromium with WebGPU (SwiftShader).
//
//   LEGRAD_DIST=dist LEGRAD_CLI=target/release/legrad node tests/e2e/run.mjs
//
// The site is served by a plain static file server from a sub-path (/legrad-web/), as on a
// static host. Maps shown in the page are checked pixel by pixel against the native engine's
// (`legrad explain`, same model, image, prompt and size). Screenshots of each state go to
// tests/e2e/screenshots/.

import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFileSync, existsSync, mkdirSync, statSync, readdirSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const dist = resolve(process.env.LEGRAD_DIST ?? join(root, "dist"));
const cli = resolve(process.env.LEGRAD_CLI ?? join(root, "target/release/legrad"));
const shots = join(here, "screenshots");
const work = join(tmpdir(), "legrad-e2e");
rmSync(shots, { recursive: true, force: true });
mkdirSync(shots, { recursive: true });
mkdirSync(work, { recursive: true });

const SUB = "/legrad-web/";
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
  ".png": "image/png", ".json": "application/json", ".safetensors": "application/octet-stream" };

// A plain static server: the site under /legrad-web/, extra files (models for the URL test,
// the native engine's overlays) under /files/.
const served = [];
const server = createServer((req, res) => {
  served.push({ method: req.method, url: req.url, headers: req.headers });
  const url = decodeURIComponent(req.url.split("?")[0]);
  let path = null;
  if (url.startsWith(SUB)) path = join(dist, url.slice(SUB.length) || "index.html");
  else if (url.startsWith("/files/slow/")) path = join(work, url.slice(12));
  else if (url.startsWith("/files/")) path = join(work, url.slice(7));
  if (!path || !existsSync(path) || statSync(path).isDirectory()) {
    if (path && existsSync(join(path, "index.html"))) path = join(path, "index.html");
    else { res.writeHead(404); res.end("not found"); return; }
  }
  const body = readFileSync(path);
  res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream", "content-length": body.length });
  if (!url.startsWith("/files/slow/")) { res.end(body); return; }
  // A slow connection: 64 KB every 100 ms, so that a test can cancel mid-download.
  let at = 0;
  const tick = setInterval(() => {
    if (res.destroyed || at >= body.length) { clearInterval(tick); res.end(); return; }
    res.write(body.subarray(at, at + 65536));
    at += 65536;
  }, 100);
  res.on("close", () => clearInterval(tick));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;

let failures = 0;
const results = [];
// LEGRAD_E2E_ONLY=text runs only the tests whose name contains it (those that build their own
// page and files; for working on one test).
const only = process.env.LEGRAD_E2E_ONLY;
async function test(name, fn) {
  if (only && !name.includes(only)) return;
  const t0 = Date.now();
  try {
    await fn();
    results.push(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failures++;
    results.push(`FAIL ${name}: ${e.message}`);
    await page.screenshot({ path: join(shots, `failed-${name.replace(/\W+/g, "-")}.png`), fullPage: true }).catch(() => {});
  }
  console.log(results[results.length - 1]);
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--disable-sync",
    // A name for the test server that is not localhost: served from it over plain HTTP, the page
    // is not a secure context (no Cache API, no WebGPU), as on a plain-HTTP host.
    "--host-resolver-rules=MAP legrad-insecure.test 127.0.0.1"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
let page = await context.newPage();
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const TIMEOUT = 300_000;
const defaultModel = join(root, "www/models/default.safetensors");
const scene = join(root, "www/samples/scene-1.png");

async function dropFile(path, name, mime = "image/png") {
  const bytes = Array.from(readFileSync(path));
  await page.evaluate(async ({ bytes, name, mime }) => {
    const file = new File([new Uint8Array(bytes)], name, { type: mime });
    const dt = new DataTransfer();
    dt.items.add(file);
    for (const type of ["dragenter", "dragover", "drop"]) {
      document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  }, { bytes, name, mime });
}

/// The native engine's overlay for the same inputs, served to the page for comparison.
function nativeOverlay(image, prompt, tag) {
  const out = join(work, tag);
  execFileSync(cli, ["explain", "--model", defaultModel, "--image", image, "--prompt", prompt, "--size", "448", "--out", out]);
  return `${base}/files/${tag}/0.png`;
}

/// Compare a card's canvas with a PNG, in the page: mean abs difference and share of pixels
/// off by more than 2 levels.
async function compareCanvas(prompt, pngUrl) {
  return await page.evaluate(async ({ prompt, pngUrl }) => {
    const card = [...document.querySelectorAll('[data-testid="map-card"]')].find((c) => c.dataset.prompt === prompt);
    if (!card) return { error: `no card for ${prompt}` };
    const canvas = card.querySelector("canvas");
    const a = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const img = new Image();
    img.src = pngUrl;
    await img.decode();
    const c2 = new OffscreenCanvas(img.width, img.height);
    const ctx = c2.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const b = ctx.getImageData(0, 0, img.width, img.height).data;
    if (a.length !== b.length) return { error: `size ${canvas.width}x${canvas.height} vs ${img.width}x${img.height}` };
    let sum = 0, off = 0, n = 0;
    for (let i = 0; i < a.length; i += 4) {
      for (let c = 0; c < 3; c++) { const d = Math.abs(a[i + c] - b[i + c]); sum += d; if (d > 2) off++; n++; }
    }
    return { mean: sum / n, off: off / n };
  }, { prompt, pngUrl });
}

/// Ask the page for a model by URL (the model panel's field and button).
/// Open the model panel's "Use another model" (a click on its summary would close it again).
async function openModelPanel() {
  await page.evaluate(() => { document.querySelector("details").open = true; });
}

async function loadModelUrl(url) {
  await openModelPanel();
  await page.fill('[data-testid="model-url"]', url);
  await page.click('[data-testid="load-url"]');
}

/// A new visit (a new page in the same browser context: its Cache API is kept), asking for a
/// model by URL once the default one is ready.
async function freshPageLoading(query, url) {
  page = await context.newPage();
  await page.goto(base + SUB + query);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await loadModelUrl(url);
}

/// A new page (same context) with the default model ready and the first sample scene in.
async function newPageWithScene(query) {
  page = await context.newPage();
  await page.goto(base + SUB + query);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
}

async function waitForCard(prompt) {
  await page.waitForFunction((p) => [...document.querySelectorAll('[data-testid="map-card"]')].some((c) => c.dataset.prompt === p),
    prompt, { timeout: TIMEOUT });
  await page.waitForFunction(() => !document.querySelector('[data-testid="working"]'), null, { timeout: TIMEOUT });
}

await test("on a software WebGPU adapter the page picks the CPU and says why", async () => {
  await page.goto(base + SUB);
  await page.screenshot({ path: join(shots, "01-loading.png") });
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const backend = await page.textContent('[data-testid="backend"]');
  assert(backend.startsWith("CPU"), `backend is "${backend}"`);
  const reason = await page.textContent('[data-testid="backend-reason"]');
  assert(/software adapter/.test(reason) && /swiftshader/i.test(reason), `reason: ${reason}`);
  assert(reason.includes("?backend=webgpu"), `the reason does not say how to force WebGPU: ${reason}`);
  await page.screenshot({ path: join(shots, "02-model-ready-cpu.png") });
  // The CPU path's map equals the native engine's.
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a blue circle");
  await waitForCard("a blue circle");
  const r = await compareCanvas("a blue circle", nativeOverlay(scene, "a blue circle", "auto-cpu"));
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `canvas vs native: mean abs diff ${r.mean}, ${(100 * r.off).toFixed(2)}% off by > 2`);
});

await test("?backend=webgpu loads the default model on WebGPU", async () => {
  await page.goto(base + SUB + "?backend=webgpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const backend = await page.textContent('[data-testid="backend"]');
  assert(backend.startsWith("WebGPU"), `backend is "${backend}"`);
  await page.screenshot({ path: join(shots, "02-model-ready.png") });
});

await test("drop an image, type a prompt: the map equals the native engine's", async () => {
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  assert(await page.isVisible('[data-testid="empty-hint"]'), "no hint for the empty prompt");
  // The default model starts at its own size, and says what it knows once an image is in.
  const size = await page.$eval('[data-testid="size"]', (e) => e.value);
  assert(size === "224", `the default model starts at ${size}`);
  assert(await page.isVisible('[data-testid="default-model-hint"]'), "no word on what the default model knows");
  await page.screenshot({ path: join(shots, "03-image-no-prompt.png") });
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  const r = await compareCanvas("a red circle", nativeOverlay(scene, "a red circle", "first"));
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `canvas vs native: mean abs diff ${r.mean}, ${(100 * r.off).toFixed(2)}% off by > 2`);
  await page.screenshot({ path: join(shots, "04-heatmap.png") });
});

await test("ten prompts typed quickly: the last one's map is shown", async () => {
  const words = ["circle", "square", "triangle", "star", "cross", "ring", "red thing", "blue", "green star", "a yellow triangle"];
  const box = page.locator('[data-testid="prompts"]');
  for (const w of words) {
    await box.fill(w);
    await page.waitForTimeout(30);
  }
  const last = words[words.length - 1];
  await waitForCard(last);
  await page.waitForTimeout(1500); // a stale answer arriving late would replace the map here
  const shown = await page.$$eval('[data-testid="map-card"]', (cs) => cs.map((c) => c.dataset.prompt));
  assert(shown.length === 1 && shown[0] === last, `cards shown: ${JSON.stringify(shown)}`);
  const r = await compareCanvas(last, nativeOverlay(scene, last, "last"));
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `canvas vs native: mean ${r.mean}, off ${r.off}`);
  await page.screenshot({ path: join(shots, "05-last-prompt-wins.png") });
});

await test("several prompts, one map each, and the method comparison", async () => {
  await page.fill('[data-testid="prompts"]', "a red square\nsomething blue");
  await waitForCard("something blue");
  const n = await page.$$eval('[data-testid="map-card"]', (cs) => cs.length);
  assert(n === 2, `${n} cards for 2 prompts`);
  await page.check('[data-testid="compare"]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="map-card"]').length === 5, null, { timeout: TIMEOUT });
  await page.waitForFunction(() => !document.querySelector('[data-testid="working"]'), null, { timeout: TIMEOUT });
  await page.screenshot({ path: join(shots, "06-compare-methods.png"), fullPage: true });
  await page.uncheck('[data-testid="compare"]');
  // Reordered, with one new prompt: the worker explains only the new one and reuses the maps it
  // has; every card must still be its own prompt's map.
  await page.fill('[data-testid="prompts"]', "something blue\na green star\na red square");
  await waitForCard("a green star");
  const shown = await page.$$eval('[data-testid="map-card"]', (cs) => cs.map((c) => c.dataset.prompt));
  assert(JSON.stringify(shown) === JSON.stringify(["something blue", "a green star", "a red square"]), `cards: ${JSON.stringify(shown)}`);
  for (const [i, p] of shown.entries()) {
    const r = await compareCanvas(p, nativeOverlay(scene, p, `several-${i}`));
    assert(!r.error, r.error);
    assert(r.mean < 0.5 && r.off < 0.005, `${p}: canvas vs native: mean ${r.mean}, off ${r.off}`);
  }
});

await test("a corrupt file gives a message, and the next image still works", async () => {
  const broken = join(work, "broken.png");
  const bytes = Buffer.from("\x89PNG\r\n\x1a\nthis is not really a png", "binary");
  (await import("node:fs")).writeFileSync(broken, bytes);
  await dropFile(broken, "broken.png");
  await page.waitForSelector('[data-testid="image-error"]', { timeout: TIMEOUT });
  const msg = await page.textContent('[data-testid="image-error"]');
  assert(msg.includes("broken.png"), `message: ${msg}`);
  await page.screenshot({ path: join(shots, "07-corrupt-file.png") });
  await dropFile(join(root, "www/samples/scene-2.png"), "scene-2.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  await page.screenshot({ path: join(shots, "08-recovered.png") });
});

await test("a model by URL from localhost: downloaded, converted to 8-bit, kept for the next visit", async () => {
  const model = join(work, "url-model.safetensors");
  execFileSync(cli, ["convert", "--model", `random:${join(here, "url-model.json")}:3`, "--format", "openclip", "--out", model]);
  const url = `${base}/files/url-model.safetensors`;
  await loadModelUrl(url);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  const info = await page.textContent('[data-testid="model-info"]');
  assert(info.includes("converted to 8-bit"), `model info: ${info}`);
  assert(info.includes("downloaded"), `model info: ${info}`);
  await page.screenshot({ path: join(shots, "09-model-from-url.png") });
  // A new visit: the model comes from the Cache API, not the network.
  await freshPageLoading("?backend=webgpu", url);
  await page.waitForFunction(() => document.querySelector('[data-testid="model-info"]')?.textContent.includes("from this browser's storage"), null, { timeout: TIMEOUT });
  const urlSize = await page.$eval('[data-testid="size"]', (e) => e.value);
  assert(urlSize === "448", `an OpenCLIP checkpoint starts at ${urlSize}, not the reference demo's 448`);
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', "anything");
  await waitForCard("anything");
  await page.screenshot({ path: join(shots, "10-url-model-cached.png") });
  // One bit flipped in the stored model's last tensor byte: the checksum catches it, the entry
  // is ignored and the model downloaded again.
  const damaged = await page.evaluate(async () => {
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
  assert(damaged === 1, `${damaged} cached models`);
  await freshPageLoading("?backend=cpu", url);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  const again = await page.textContent('[data-testid="model-info"]');
  assert(again.includes("downloaded") && !again.includes("from this browser's storage"), `model info after damage: ${again}`);
});

await test("?backend=cpu runs on the CPU, says so, and explains", async () => {
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const backend = await page.textContent('[data-testid="backend"]');
  assert(backend.startsWith("CPU"), `backend is "${backend}"`);
  const reason = await page.textContent('[data-testid="backend-reason"]');
  assert(reason.includes("as asked"), `reason: ${reason}`);
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "224");
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  await page.screenshot({ path: join(shots, "11-cpu-fallback.png") });
});

/// The URLs the app keeps in the Cache API.
async function cachedUrls() {
  return await page.evaluate(async () => {
    const cache = await caches.open("legrad-web-models-v1");
    return (await cache.keys()).map((r) => r.url);
  });
}

/// The model panel's text once the model is ready again (notes included).
async function modelInfoWhenReady() {
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  return await page.textContent('[data-testid="model-info"]');
}

await test("a model switch while an explanation runs: the old answer is dropped, no error", async () => {
  // Any map shown while the new model loads would be the old model's answer.
  await page.evaluate(() => {
    window.__mapsWhileLoading = 0;
    new MutationObserver(() => {
      if (!document.querySelector('[data-testid="model-info"]') && document.querySelector('[data-testid="map-card"]')) window.__mapsWhileLoading++;
    }).observe(document.body, { childList: true, subtree: true });
  });
  await dropFile(join(root, "www/samples/scene-4.png"), "scene-4.png");
  await page.waitForSelector('[data-testid="image-ready"]:has-text("scene-4.png")', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "448");
  await page.check('[data-testid="compare"]');
  await page.fill('[data-testid="prompts"]', "a green star\na blue triangle");
  await page.waitForSelector('[data-testid="working"]', { timeout: TIMEOUT });
  await page.evaluate((u) => {
    const input = document.querySelector('[data-testid="model-url"]');
    input.value = u;
    input.dispatchEvent(new Event("input", { bubbles: true }));
    document.querySelector('[data-testid="load-url"]').click();
  }, `${base}/files/url-model.safetensors`);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, `${base}/files/url-model.safetensors`, { timeout: TIMEOUT });
  await waitForCard("a green star");
  const shownWhileLoading = await page.evaluate(() => window.__mapsWhileLoading);
  assert(shownWhileLoading === 0, `${shownWhileLoading} map(s) shown while the new model loaded`);
  for (const id of ["explain-error", "engine-error", "model-error"]) {
    assert(!(await page.$(`[data-testid="${id}"]`)), `${id}: ${await page.textContent(`[data-testid="${id}"]`).catch(() => "")}`);
  }
  await page.uncheck('[data-testid="compare"]');
});

await test("a download cancelled while downloading, and while converting: nothing is kept, the model before stays", async () => {
  // Downloading: a slow server.
  const slow = `${base}/files/slow/url-model.safetensors`;
  await loadModelUrl(slow);
  await page.waitForSelector('[data-testid="progress"][data-stage="Download"] [data-testid="cancel"]', { timeout: TIMEOUT });
  await page.click('[data-testid="cancel"]');
  let info = await modelInfoWhenReady();
  assert(info.includes("stopped: cancelled during the download; nothing was kept") && info.includes("still in use"), `after cancelling the download: ${info}`);
  await page.screenshot({ path: join(shots, "13-download-cancelled.png") });
  // Converting: a model large enough (about 90 MB in f32) to take a moment to convert.
  const bigConfig = join(work, "big-model.json");
  (await import("node:fs")).writeFileSync(bigConfig, JSON.stringify({ embed_dim: 256,
    vision_cfg: { image_size: 224, layers: 4, width: 384, head_width: 64, patch_size: 16 },
    text_cfg: { context_length: 77, vocab_size: 49408, width: 256, heads: 4, layers: 4 } }));
  execFileSync(cli, ["convert", "--model", `random:${bigConfig}:5`, "--format", "openclip", "--out", join(work, "big-model.safetensors")]);
  const big = `${base}/files/big-model.safetensors`;
  await loadModelUrl(big);
  await page.waitForSelector('[data-testid="progress"][data-stage="Convert"] [data-testid="cancel"]', { timeout: TIMEOUT });
  await page.click('[data-testid="cancel"]');
  info = await modelInfoWhenReady();
  assert(info.includes("cancelled while converting") && info.includes("still in use"), `after cancelling the conversion: ${info}`);
  const cached = await cachedUrls();
  assert(!cached.includes(slow) && !cached.includes(big), `cached after cancels: ${cached.join(", ")}`);
  // And the model before still explains.
  await page.fill('[data-testid="prompts"]', "a green star");
  await waitForCard("a green star");
});

await test("a download cancelled while storing: the entry just written is deleted, the model before stays", async () => {
  // Storing takes milliseconds: the test slows the worker's Cache API down (from outside, in
  // the worker's scope) so that the cancel lands while the model is being stored.
  await newPageWithScene("?backend=cpu");
  await page.workers()[0].evaluate(() => {
    const put = Cache.prototype.put;
    Cache.prototype.put = async function (...args) {
      await new Promise((r) => setTimeout(r, 3000));
      return put.apply(this, args);
    };
  });
  (await import("node:fs")).copyFileSync(join(work, "url-model.safetensors"), join(work, "store-model.safetensors"));
  const store = `${base}/files/store-model.safetensors`;
  await loadModelUrl(store);
  await page.waitForSelector('[data-testid="progress"][data-stage="Store"] [data-testid="cancel"]', { timeout: TIMEOUT });
  await page.click('[data-testid="cancel"]');
  const info = await modelInfoWhenReady();
  assert(info.includes("cancelled while storing") && info.includes("still in use"), `after cancelling while storing: ${info}`);
  assert(!(await cachedUrls()).includes(store), "the model stayed in the cache despite the cancel");
  await page.close();
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
});

await test("a 12000x9000 JPEG is refused in words, and the page goes on", async () => {
  await page.evaluate(async () => {
    const canvas = new OffscreenCanvas(12000, 9000);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#3a7"; ctx.fillRect(0, 0, 12000, 9000);
    ctx.fillStyle = "#d33"; ctx.fillRect(3000, 2000, 4000, 3000);
    const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: 0.8 });
    const dt = new DataTransfer();
    dt.items.add(new File([blob], "huge.jpg", { type: "image/jpeg" }));
    for (const type of ["dragenter", "dragover", "drop"]) {
      document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  });
  await page.waitForSelector('[data-testid="image-error"]', { timeout: TIMEOUT });
  const msg = await page.textContent('[data-testid="image-error"]');
  assert(msg.includes("huge.jpg") && msg.includes("12000") && msg.includes("9000"), `message: ${msg}`);
  await page.screenshot({ path: join(shots, "14-huge-jpeg.png") });
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]:has-text("scene-1.png")', { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', "a red ring");
  await waitForCard("a red ring");
});

await test("the GPU device lost mid-explanation: the page says so, moves to the CPU, the next prompt works", async () => {
  await newPageWithScene("?backend=webgpu");
  await page.selectOption('[data-testid="size"]', "224");
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  // Taken away while the next explanation runs (www/worker.js keeps the engine's devices).
  await page.fill('[data-testid="prompts"]', "a blue circle\na red ring");
  await page.waitForSelector('[data-testid="working"]', { timeout: TIMEOUT });
  const destroyed = await page.workers()[0].evaluate(() => { self.legradGpuDevices.forEach((d) => d.destroy()); return self.legradGpuDevices.length; });
  assert(destroyed >= 1, "no GPU device to take away");
  await page.waitForFunction(() => document.querySelector('[data-testid="backend-reason"]')?.textContent.includes("lost"), null, { timeout: TIMEOUT });
  await waitForCard("a red ring");
  const backend = await page.textContent('[data-testid="backend"]');
  assert(backend.startsWith("CPU"), `backend after the loss: ${backend}`);
  assert(!(await page.$('[data-testid="explain-error"]')), `explain error: ${await page.textContent('[data-testid="explain-error"]').catch(() => "")}`);
  await page.screenshot({ path: join(shots, "15-gpu-lost.png") });
  // The next prompt, at 448: the native engine's map, pixel for pixel.
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a green star");
  await waitForCard("a green star");
  const r = await compareCanvas("a green star", nativeOverlay(scene, "a green star", "after-gpu-loss"));
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `after the loss: canvas vs native: mean ${r.mean}, off ${r.off}`);
  await page.close();
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
});

await test("the Cache API full or missing: the model still loads, with a note", async () => {
  // Full: this origin's quota cut to 10 kB (Chromium's DevTools protocol), in a fresh context.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const p = await ctx.newPage();
  const cdp = await ctx.newCDPSession(p);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: base, quotaSize: 10_000 });
  const saved = page;
  page = p;
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const url = `${base}/files/url-model.safetensors`;
  await loadModelUrl(url);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  let info = await page.textContent('[data-testid="model-info"]');
  assert(info.includes("could not store the model"), `with a full cache: ${info}`);
  assert((await cachedUrls()).length === 0, "something was stored past the quota");
  await page.screenshot({ path: join(shots, "16-cache-full.png") });
  await ctx.close();
  // Missing: the same site under a name that is not localhost, over plain HTTP.
  page = await context.newPage();
  const insecure = base.replace("127.0.0.1", "legrad-insecure.test");
  await page.goto(insecure + SUB);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  assert(await page.evaluate(() => !window.isSecureContext && typeof caches === "undefined"), "the page is a secure context");
  await loadModelUrl(`${insecure}/files/url-model.safetensors`);
  await page.waitForFunction(() => document.querySelector('[data-testid="model-name"]')?.textContent.includes("legrad-insecure.test"), null, { timeout: TIMEOUT });
  info = await page.textContent('[data-testid="model-info"]');
  assert(info.includes("could not store the model") && info.includes("unavailable"), `without a Cache API: ${info}`);
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', "anything");
  await waitForCard("anything");
  await page.screenshot({ path: join(shots, "17-no-cache-api.png") });
  await page.close();
  page = saved;
});

await test("a copied link restores the prompts and settings, never the image", async () => {
  await newPageWithScene("?backend=cpu");
  await page.fill('[data-testid="prompts"]', "a red ring\nsomething blue");
  await page.selectOption('[data-testid="size"]', "336");
  await page.selectOption('[data-testid="method"]', "GradCAM");
  await page.selectOption('[data-testid="layers"]', "-3");
  await page.uncheck('[data-testid="template"]');
  await waitForCard("something blue");
  await page.click('[data-testid="copy-link"]');
  const link = await page.evaluate(() => location.href);
  assert(link.includes("#") && link.includes("prompts="), `the page's URL: ${link}`);
  assert(!link.includes("scene-1"), `the image is named in the link: ${link}`);
  const opened = await context.newPage();
  await opened.goto(link);
  await opened.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const got = await opened.evaluate(() => ({
    prompts: document.querySelector('[data-testid="prompts"]').value,
    size: document.querySelector('[data-testid="size"]').value,
    method: document.querySelector('[data-testid="method"]').value,
    layers: document.querySelector('[data-testid="layers"]').value,
    template: document.querySelector('[data-testid="template"]').checked,
    note: document.querySelector('[data-testid="shared-note"]')?.textContent ?? "",
  }));
  const want = { prompts: "a red ring\nsomething blue", size: "336", method: "GradCAM", layers: "-3", template: false };
  for (const [k, v] of Object.entries(want)) assert(got[k] === v, `${k} restored as ${JSON.stringify(got[k])}, not ${JSON.stringify(v)}`);
  assert(got.note.includes("drop it again"), `note: ${got.note}`);
  await opened.screenshot({ path: join(shots, "19-opened-from-link.png") });
  await opened.close();
  // A link with a model URL loads that model.
  const url = `${base}/files/url-model.safetensors`;
  const withModel = await context.newPage();
  await withModel.goto(`${base}${SUB}?backend=cpu#prompts=a+cat&model=${encodeURIComponent(url)}`);
  await withModel.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  assert((await withModel.$eval('[data-testid="prompts"]', (e) => e.value)) === "a cat", "prompt from the link with a model");
  await withModel.close();
});

await test("nothing leaves the page: every request of a session is the site's own or the model asked for", async () => {
  // A fresh context (empty cache), every request recorded twice: by the browser (the page, its
  // worker; Playwright reports both) and by the server (whatever reached it). The prompt and the
  // image's name are unusual strings, searched for in every URL, header and body.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const seen = [];
  ctx.on("request", (r) => seen.push({ url: r.url(), method: r.method(), headers: r.headers(), body: r.postDataBuffer(),
    worker: !r.frame?.() }));
  ctx.on("websocket", (w) => seen.push({ url: w.url(), method: "WEBSOCKET", headers: {}, body: null }));
  const from = served.length;
  page = await ctx.newPage();
  const secretPrompt = "zebra-quartz-prompt-7731";
  const secretName = "private-photo-4411.png";
  await page.goto(base + SUB);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await page.click("button.sample");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await dropFile(join(root, "www/samples/scene-3.png"), secretName);
  await page.waitForSelector(`[data-testid="image-ready"]:has-text("${secretName}")`, { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', `a red circle\n${secretPrompt}`);
  await waitForCard(secretPrompt);
  await page.check('[data-testid="compare"]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="map-card"]').length > 2, null, { timeout: TIMEOUT });
  await page.waitForFunction(() => !document.querySelector('[data-testid="working"]'), null, { timeout: TIMEOUT });
  await page.uncheck('[data-testid="compare"]');
  for (const label of ["Overlay PNG", "Map PNG"]) {
    const download = page.waitForEvent("download", { timeout: 30_000 });
    await page.click(`button:has-text("${label}") >> nth=0`);
    await download;
  }
  const modelUrl = `${base}/files/url-model.safetensors`;
  await loadModelUrl(modelUrl);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, modelUrl, { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', secretPrompt);
  await waitForCard(secretPrompt);
  await page.close();
  await ctx.close();

  const own = base + SUB;
  const bad = [];
  const leaks = (r) => {
    const text = [r.url, JSON.stringify(r.headers ?? {}), r.body ? r.body.toString("latin1") : ""].join(" ");
    return [secretPrompt, encodeURIComponent(secretPrompt), secretName, encodeURIComponent(secretName)].some((s) => text.includes(s));
  };
  for (const r of seen) {
    if (r.url.startsWith("data:") || r.url.startsWith("blob:")) continue; // in the page's memory, never sent
    const allowed = (r.url.startsWith(own) || r.url === modelUrl) && r.method === "GET" && !r.body;
    if (!allowed || leaks(r)) bad.push(`${r.method} ${r.url}`);
  }
  for (const r of served.slice(from)) {
    const full = base + r.url;
    if (!(full.startsWith(own) || full === modelUrl) || r.method !== "GET" || leaks({ url: r.url, headers: r.headers })) {
      bad.push(`server saw ${r.method} ${r.url}`);
    }
  }
  assert(bad.length === 0, `requests that should not be: ${bad.join(", ")}`);
  // The recorder sees the worker's fetches too (the model), so an empty list of bad ones means
  // something.
  const urls = seen.map((r) => r.url);
  assert(urls.some((u) => u.includes("models/default.safetensors")), `the default model's fetch was not recorded: ${urls.join(", ")}`);
  assert(urls.includes(modelUrl), "the URL model's fetch was not recorded");
  console.log(`     ${seen.length} requests recorded by the browser, ${served.length - from} by the server; all the site's own or the model asked for`);
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
});

/// Soak: `edits` prompt edits, an image swap every 10 (files from disk: PNG of every kind and
/// JPEG; drawn in the page: JPEG and WebP, 256 to 2048 px) and, with `switchModels`, a model
/// switch every 100 (the default model and the small random ViT of the URL test, from the Cache
/// API, by turns). Every 50 edits: the worker's wasm memory and the GPU pools' bytes (reported
/// with each answer), the page's own wasm memory and its JS heap after a collection (DevTools
/// protocol). Returns the series.
async function soak(query, edits, switchModels, numbered = true) {
  page = await context.newPage();
  await page.addInitScript(() => addEventListener("TrunkApplicationStarted", (e) => { window.__uiWasm = e.detail.wasm; }));
  await page.goto(base + SUB + query);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "224");
  const cdp = await context.newCDPSession(page);
  const files = [...readdirSync(join(root, "tests/fixtures/images")).map((f) => join(root, "tests/fixtures/images", f)),
    ...readdirSync(join(root, "www/samples")).map((f) => join(root, "www/samples", f))];
  const colours = ["red", "green", "blue", "yellow", "purple", "orange"];
  const shapes = ["circle", "square", "triangle", "star", "cross", "ring"];
  let seed = 12345;
  const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
  const models = [null, `${base}/files/url-model.safetensors`];
  const series = [];
  let imageNo = 0;
  let lastPrompts = "";
  const sample = async (step) => {
    await cdp.send("HeapProfiler.collectGarbage");
    const heap = (await cdp.send("Runtime.getHeapUsage")).usedSize;
    const ui = await page.evaluate(() => window.__uiWasm?.memory?.buffer.byteLength ?? 0);
    const t = await page.$('[data-testid="timing"]');
    const worker = Number(await t.getAttribute("data-wasm-bytes"));
    const gpu = (await t.getAttribute("data-gpu-bytes")) || null;
    series.push({ step, worker, ui, heap, gpu: gpu === null ? null : Number(gpu) });
  };
  const swapImage = async () => {
    imageNo++;
    if (imageNo % 2) {
      const f = files[rand(files.length)];
      await dropFile(f, `soak-${imageNo}${extname(f)}`, extname(f) === ".jpg" ? "image/jpeg" : "image/png");
    } else {
      await page.evaluate(async ({ n, w, h, type }) => {
        const canvas = new OffscreenCanvas(w, h);
        const ctx = canvas.getContext("2d");
        ctx.fillStyle = `hsl(${(n * 47) % 360} 60% 50%)`; ctx.fillRect(0, 0, w, h);
        ctx.fillStyle = "#c22"; ctx.beginPath(); ctx.arc(w * 0.3, h * 0.6, Math.min(w, h) / 5, 0, 7); ctx.fill();
        const blob = await canvas.convertToBlob({ type, quality: 0.85 });
        const dt = new DataTransfer();
        dt.items.add(new File([blob], `soak-${n}.${type.split("/")[1]}`, { type }));
        for (const t of ["dragenter", "dragover", "drop"]) document.body.dispatchEvent(new DragEvent(t, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }, { n: imageNo, w: [256, 640, 1024, 2048][rand(4)], h: [256, 480, 768, 1536][rand(4)], type: ["image/jpeg", "image/webp"][rand(2)] });
    }
    await page.waitForSelector(`[data-testid="image-ready"]:has-text("soak-${imageNo}.")`, { timeout: TIMEOUT });
  };
  await swapImage();
  for (let i = 0; i < edits; i++) {
    if (switchModels && i % 100 === 50) {
      const url = models[(Math.floor(i / 100) + 1) % 2];
      if (url) await loadModelUrl(url);
      else {
        await openModelPanel();
        await page.click('button:has-text("Back to the default model")');
      }
      await page.waitForFunction((u) => { const n = document.querySelector('[data-testid="model-name"]')?.textContent; return u ? n === u : n && !n.startsWith("http"); },
        url, { timeout: TIMEOUT });
    }
    if (i % 10 === 5) await swapImage();
    let prompts;
    do {
      const n = 1 + rand(3);
      prompts = Array.from({ length: n }, () => `a ${colours[rand(6)]} ${shapes[rand(6)]}${numbered && rand(4) === 0 ? ` ${rand(1000)}` : ""}`).join("\n");
    } while (prompts === lastPrompts);
    lastPrompts = prompts;
    await page.fill('[data-testid="prompts"]', prompts);
    await waitForCard(prompts.split("\n").pop());
    if ((i + 1) % 50 === 0) await sample(i + 1);
  }
  const mb = (b) => (b === null ? "-" : (b / 1048576).toFixed(1));
  console.log("     edits  worker wasm MB  page wasm MB  page JS heap MB  GPU pools MB");
  for (const s of series) {
    console.log(`     ${String(s.step).padStart(5)}  ${mb(s.worker).padStart(14)}  ${mb(s.ui).padStart(12)}  ${mb(s.heap).padStart(15)}  ${mb(s.gpu).padStart(12)}`);
  }
  return series;
}

/// No growth after warm-up beyond the bounds (README, Reliability): the largest value after
/// the warm-up sample, minus that sample.
function assertFlat(series, warmStep, bounds) {
  const warm = series.find((s) => s.step === warmStep) ?? series[0];
  const after = series.filter((s) => s.step >= warm.step);
  const parts = [];
  for (const [key, boundMb] of Object.entries(bounds)) {
    if (warm[key] === null) continue;
    const growth = Math.max(...after.map((s) => s[key])) - warm[key];
    parts.push(`${key} +${(growth / 1048576).toFixed(1)} MB (bound ${boundMb})`);
    assert(growth <= boundMb * 1048576, `${key} grew by ${(growth / 1048576).toFixed(1)} MB after warm-up (bound ${boundMb} MB)`);
  }
  console.log(`     after warm-up (${warm.step} edits): ${parts.join(", ")}`);
}

await test("soak: 1,000 prompt edits, 100 image swaps, 10 model switches; memory flat after warm-up", async () => {
  const edits = Number(process.env.LEGRAD_SOAK_EDITS ?? 1000);
  // Warm-up: 200 edits (both models loaded twice, every kind of image seen).
  const series = await soak("", edits, true);
  assertFlat(series, Math.min(200, edits), { worker: 32, ui: 16, heap: 8 });
  await page.screenshot({ path: join(shots, "18-after-soak.png") });
  await page.close();
});

await test("soak on WebGPU: 150 prompt edits, 15 image swaps; GPU pools flat after warm-up", async () => {
  // The 36 colour-shape names only: the engine keeps up to 512 text embeddings on purpose
  // (GPU memory that grows with new prompts until the cache is full); with a fixed set of names
  // that cache fills during warm-up, so growth after it is what the per-edit path leaves.
  const series = await soak("?backend=webgpu", Number(process.env.LEGRAD_SOAK_GPU_EDITS ?? 150), false, false);
  assert(series.every((s) => s.gpu > 0), "the engine reported no GPU memory on WebGPU");
  assertFlat(series, 50, { worker: 32, ui: 16, heap: 8, gpu: 32 });
  await page.close();
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
});

await test("narrow screen", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, "20-narrow.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  assert(!overflow, "the page scrolls sideways on a narrow screen");
});

await browser.close();
server.close();
if (consoleErrors.length) console.log("page errors:\n" + consoleErrors.join("\n"));
console.log(`\n${results.length - failures} passed, ${failures} failed; screenshots in ${shots}`);
process.exit(failures ? 1 : 0);
