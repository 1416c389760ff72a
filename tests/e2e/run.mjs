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
const server = createServer((req, res) => {
  const url = decodeURIComponent(req.url.split("?")[0]);
  let path = null;
  if (url.startsWith(SUB)) path = join(dist, url.slice(SUB.length) || "index.html");
  else if (url.startsWith("/files/")) path = join(work, url.slice(7));
  if (!path || !existsSync(path) || statSync(path).isDirectory()) {
    if (path && existsSync(join(path, "index.html"))) path = join(path, "index.html");
    else { res.writeHead(404); res.end("not found"); return; }
  }
  const body = readFileSync(path);
  res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream", "content-length": body.length });
  res.end(body);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;

let failures = 0;
const results = [];
async function test(name, fn) {
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
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--disable-sync"],
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
async function loadModelUrl(url) {
  await page.click("details summary");
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
  await page.screenshot({ path: join(shots, "03-image-no-prompt.png") });
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

await test("narrow screen", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, "12-narrow.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  assert(!overflow, "the page scrolls sideways on a narrow screen");
});

await browser.close();
server.close();
if (consoleErrors.length) console.log("page errors:\n" + consoleErrors.join("\n"));
console.log(`\n${results.length - failures} passed, ${failures} failed; screenshots in ${shots}`);
process.exit(failures ? 1 : 0);
