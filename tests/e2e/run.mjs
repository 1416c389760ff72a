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
import { readFileSync, writeFileSync, existsSync, mkdirSync, statSync, readdirSync, rmSync } from "node:fs";
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
  ".png": "image/png", ".json": "application/json", ".safetensors": "application/octet-stream",
  ".webmanifest": "application/manifest+json" };
// Set by the offline test: the service worker served with another version, as a new build's.
let swVersion = null;

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
  let body = readFileSync(path);
  if (swVersion && url === SUB + "sw.js") body = Buffer.from(body.toString().replace(/^const VERSION = .*;$/m, `const VERSION = "${swVersion}";`));
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
// LEGRAD_E2E_ONLY=text runs only the tests whose name contains it ("a|b": either; those that
// build their own page and files; for working on one test).
const only = process.env.LEGRAD_E2E_ONLY;
async function test(name, fn) {
  if (only && !only.split("|").some((o) => name.includes(o))) return;
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

// The fake camera's video (Chromium plays it in a loop): a blue circle crossing a grey frame
// from left to right and back, 320x240, 10 frames/s, 80 frames (y4m, 4:2:0, full range).
const cameraFile = join(work, "camera.y4m");
{
  const [W, H, N] = [320, 240, 80];
  const yuv = (r, g, b) => [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b].map((v) => Math.max(0, Math.min(255, Math.round(v))));
  const bg = yuv(205, 205, 205), fg = yuv(31, 79, 224);
  const parts = [Buffer.from(`YUV4MPEG2 W${W} H${H} F10:1 Ip A1:1 C420jpeg\n`)];
  for (let f = 0; f < N; f++) {
    const t = f < N / 2 ? f / (N / 2 - 1) : (N - 1 - f) / (N / 2 - 1);
    const cx = 50 + t * (W - 100), cy = H / 2, r = 38;
    const y = Buffer.alloc(W * H), u = Buffer.alloc((W / 2) * (H / 2)), v = Buffer.alloc((W / 2) * (H / 2));
    for (let j = 0; j < H; j++) for (let i = 0; i < W; i++) y[j * W + i] = ((i - cx) ** 2 + (j - cy) ** 2 < r * r ? fg : bg)[0];
    for (let j = 0; j < H / 2; j++) for (let i = 0; i < W / 2; i++) {
      const c = (2 * i + 1 - cx) ** 2 + (2 * j + 1 - cy) ** 2 < r * r ? fg : bg;
      u[j * (W / 2) + i] = c[1]; v[j * (W / 2) + i] = c[2];
    }
    parts.push(Buffer.from("FRAME\n"), y, u, v);
  }
  writeFileSync(cameraFile, Buffer.concat(parts));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--disable-sync",
    // A name for the test server that is not localhost: served from it over plain HTTP, the page
    // is not a secure context (no Cache API, no WebGPU), as on a plain-HTTP host.
    "--host-resolver-rules=MAP legrad-insecure.test 127.0.0.1",
    // A camera that plays the file above (the permission is still the page's to get).
    "--use-fake-device-for-media-stream", `--use-file-for-fake-video-capture=${cameraFile}`],
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

/// Compare a card's canvas (or, with `selector`, that canvas) with a PNG, in the page: mean abs
/// difference and share of pixels off by more than 2 levels.
async function compareCanvas(prompt, pngUrl, selector = null) {
  return await page.evaluate(async ({ prompt, pngUrl, selector }) => {
    const card = [...document.querySelectorAll('[data-testid="map-card"]')].find((c) => c.dataset.prompt === prompt);
    if (!card && !selector) return { error: `no card for ${prompt}` };
    const canvas = selector ? document.querySelector(selector) : card.querySelector("canvas");
    if (!canvas) return { error: `no canvas ${selector}` };
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
  }, { prompt, pngUrl, selector });
}

/// Width and height of a PNG file (its IHDR) and its bit depth.
function pngInfo(path) {
  const b = readFileSync(path);
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20), depth: b[24] };
}

/// A 2-D f32 .npy as { shape, data }.
function readNpy(path) {
  const b = readFileSync(path);
  const len = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + len).toString("latin1");
  const shape = header.match(/shape': \(([^)]*)\)/)[1].split(",").filter((x) => x.trim()).map(Number);
  const data = new Float32Array(b.buffer.slice(b.byteOffset + 10 + len, b.byteOffset + b.length));
  return { shape, data };
}

/// The large view's canvas size and the input it shows.
async function mainView() {
  return await page.evaluate(() => {
    const v = document.querySelector('[data-testid="main-view"]');
    const c = document.querySelector('[data-testid="main-canvas"]');
    return { size: v?.dataset.size, input: v?.dataset.input, width: c?.width, height: c?.height,
      label: document.querySelector('[data-testid="main-label"]')?.textContent };
  });
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
  // One thread per core (the engine's worker and its helpers), at most 4: the map below is
  // computed with the rows shared out wherever there is more than one core.
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  const threads = Math.min(Math.max(cores, 1), 4);
  assert(backend.includes(threads === 1 ? "one thread" : `${threads} threads`), `backend is "${backend}" on ${cores} cores`);
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

await test("a photo keeps its shape: a 448x288 input for 451x300 (32-pixel patches), the map over the photo itself, exports at its size, the value under the cursor, the layer strip", async () => {
  const before = page;
  page = await context.newPage();
  await page.goto(base + SUB);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
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
  await dropFile(photo, "photo.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a blue circle\na red square");
  await waitForCard("a red square");
  let v = await mainView();
  assert(v.input === "448x288" && v.size === "451x300" && v.width === 451 && v.height === 300, `large view: ${JSON.stringify(v)}`);
  // The same map as the native engine's, on the input (the card) and over the photo (the view).
  const native = (tag, extra) => {
    execFileSync(cli, ["explain", "--model", defaultModel, "--image", photo, "--prompt", "a blue circle", "--size", "448",
      "--on-original", ...extra, "--out", join(work, tag)]);
    return { input: `${base}/files/${tag}/0.png`, original: `${base}/files/${tag}/0.original.png`, npy: join(work, tag, "0.original.npy") };
  };
  const kept = native("aspect", ["--keep-aspect"]);
  let r = await compareCanvas("a blue circle", kept.input);
  assert(!r.error && r.mean < 0.5 && r.off < 0.005, `card vs native (448x288): ${JSON.stringify(r)}`);
  r = await compareCanvas("a blue circle", kept.original, '[data-testid="main-canvas"]');
  assert(!r.error && r.mean < 0.5 && r.off < 0.005, `large view vs native over the photo: ${JSON.stringify(r)}`);
  await page.screenshot({ path: join(shots, "20-photo-large-view.png"), fullPage: true });
  // The value under the cursor is the map's there (over the photo, at its pixels).
  const box = await page.locator('[data-testid="main-canvas"]').boundingBox();
  await page.mouse.move(box.x + box.width * 0.75, box.y + box.height * 0.5);
  const hv = await page.$eval('[data-testid="cursor-value"]', (e) => ({ x: +e.dataset.x, y: +e.dataset.y, text: e.textContent }));
  const npy = readNpy(kept.npy);
  const want = npy.data[hv.y * npy.shape[1] + hv.x];
  const shownValue = parseFloat(hv.text.match(/value ([\d.]+)/)[1]);
  assert(Math.abs(shownValue - want) < 0.0015 && hv.x > 300 && hv.x < 360, `under the cursor: ${JSON.stringify(hv)}, native ${want}`);
  // Exports at the photo's size.
  for (const [label, depth] of [["Overlay PNG", 8], ["Map PNG", 16]]) {
    const download = page.waitForEvent("download", { timeout: 30_000 });
    await page.click(`[data-testid="main-view"] button:has-text("${label}")`);
    const info = pngInfo(await (await download).path());
    assert(info.width === 451 && info.height === 300 && info.depth === depth, `${label}: ${JSON.stringify(info)}`);
  }
  // Another card on the large view.
  await page.click('[data-testid="map-card"][data-prompt="a red square"] canvas');
  await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]')?.textContent.startsWith("a red square"), null, { timeout: TIMEOUT });
  await page.click('[data-testid="map-card"][data-prompt="a blue circle"] canvas');
  // The layer strip: the sum and each layer of the range (the last 2); a layer alone differs
  // from the sum; with a range of one layer, that layer is the sum.
  const pixels = () => page.$eval('[data-testid="main-canvas"]', (c) => Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 97 === 0)));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="layer"]').length === 3, null, { timeout: TIMEOUT });
  const sum = await pixels();
  const layers = await page.$$eval('[data-testid="layer"]', (bs) => bs.map((b) => b.dataset.layer));
  await page.click(`[data-testid="layer"][data-layer="${layers[1]}"]`);
  await page.waitForFunction((l) => document.querySelector('[data-testid="main-label"]').textContent.includes(`layer ${l}`), layers[1], { timeout: TIMEOUT });
  const one = await pixels();
  assert(one.some((p, i) => p !== sum[i]), "a layer alone looks like the sum");
  await page.screenshot({ path: join(shots, "21-layer-strip.png"), fullPage: true });
  await page.selectOption('[data-testid="layers"]', "-1");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="layer"]').length === 2, null, { timeout: TIMEOUT });
  await waitForCard("a blue circle");
  await page.click('[data-testid="layer"][data-layer="all"]');
  const sumOne = await pixels();
  const last = await page.$$eval('[data-testid="layer"]', (bs) => bs[1].dataset.layer);
  await page.click(`[data-testid="layer"][data-layer="${last}"]`);
  await page.waitForFunction((l) => document.querySelector('[data-testid="main-label"]').textContent.includes(`layer ${l}`), last, { timeout: TIMEOUT });
  const alone = await pixels();
  assert(alone.every((p, i) => Math.abs(p - sumOne[i]) <= 1), "a range of one layer: the layer differs from the sum");
  // Square, as the reference: the input is 448x448, still drawn over the photo's own shape.
  await page.selectOption('[data-testid="layers"]', "-2");
  await page.click('[data-testid="layer"][data-layer="all"]');
  await page.uncheck('[data-testid="keep-aspect"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="main-view"]')?.dataset.input === "448x448", null, { timeout: TIMEOUT });
  await waitForCard("a blue circle");
  v = await mainView();
  assert(v.width === 451 && v.height === 300, `square input, view ${JSON.stringify(v)}`);
  const square = native("square", []);
  r = await compareCanvas("a blue circle", square.input);
  assert(!r.error && r.mean < 0.5 && r.off < 0.005, `card vs native (square): ${JSON.stringify(r)}`);
  r = await compareCanvas("a blue circle", square.original, '[data-testid="main-canvas"]');
  assert(!r.error && r.mean < 0.5 && r.off < 0.005, `large view vs native (square) over the photo: ${JSON.stringify(r)}`);
  await page.close();
  page = before;
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

await test("a model large enough for the CPU's 16-bit integer products: the map equals the native engine's, in f32 and in the same integers", async () => {
  // 512 wide, 2048 hidden: a layer at 448 (785 tokens) is 823 M multiply-adds, over the 200 M
  // from which the browser's CPU path takes LeGrad's products in 16-bit integers (explain::int16).
  const model = join(work, "int16-model.safetensors");
  execFileSync(cli, ["convert", "--model", `random:${join(here, "int16-model.json")}:7`, "--format", "openclip", "--out", model]);
  const q8 = join(work, "int16-model-q8.safetensors");
  execFileSync(cli, ["convert", "--model", model, "--quant", "q8", "--out", q8]);
  const url = `${base}/files/int16-model.safetensors`;
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await loadModelUrl(url);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "448");
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  // The native engine on the same 8-bit file, with f32 products and with the same integer ones.
  for (const [tag, int16] of [["int16-native-f32", "never"], ["int16-native-int16", "large"]]) {
    execFileSync(cli, ["explain", "--model", q8, "--image", scene, "--prompt", "a red circle", "--size", "448",
      "--int16", int16, "--out", join(work, tag)]);
    const r = await compareCanvas("a red circle", `${base}/files/${tag}/0.png`);
    assert(!r.error && r.mean < 0.5 && r.off < 0.005, `${tag}: canvas vs native: ${JSON.stringify(r)}`);
  }
  // Natively the two paths differ (the integer one ran), by far less than a pixel level.
  const f = readNpy(join(work, "int16-native-f32/0.npy")).data, q = readNpy(join(work, "int16-native-int16/0.npy")).data;
  let worst = 0;
  for (let i = 0; i < f.length; i++) worst = Math.max(worst, Math.abs(f[i] - q[i]));
  assert(f.length === q.length && worst > 0 && worst < 1e-3, `native f32 vs integer products: max abs diff ${worst}`);
  console.log(`     native maps, f32 vs 16-bit integer products: max abs diff ${worst.toExponential(2)}`);
});

await test("a SigLIP model by URL, its config and tokenizer found beside it: converted, LeGrad only, the map equals the native engine's", async () => {
  // The Hugging Face Hub's layout (timm/ViT-B-16-SigLIP): the weights, open_clip_config.json
  // and tokenizer.json in one directory; here the tiny random SigLIP the parity tests use.
  const dir = join(work, "siglip");
  mkdirSync(dir, { recursive: true });
  const fx = join(root, "tests/fixtures/siglip");
  const fs = await import("node:fs");
  fs.copyFileSync(join(fx, "tiny-siglip-p16.safetensors"), join(dir, "open_clip_model.safetensors"));
  fs.copyFileSync(join(fx, "tiny-siglip-p16.json"), join(dir, "open_clip_config.json"));
  fs.copyFileSync(join(fx, "tokenizer/tokenizer.json"), join(dir, "tokenizer.json"));
  const url = `${base}/files/siglip/open_clip_model.safetensors`;
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await loadModelUrl(url);
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: TIMEOUT });
  const info = await page.textContent('[data-testid="model-info"]');
  assert(info.includes("converted to 8-bit") && info.includes("SigLIP: LeGrad only"), `model info: ${info}`);
  for (const f of ["open_clip_config.json", "tokenizer.json"]) {
    assert(served.some((r) => r.url === `/files/siglip/${f}`), `${f} was not fetched`);
  }
  // The native engine on the same 8-bit file (the CLI's convert rounds as the page does).
  const q8 = join(work, "siglip-q8.safetensors");
  execFileSync(cli, ["convert", "--model", join(dir, "open_clip_model.safetensors"), "--quant", "q8", "--out", q8]);
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  const size = await page.$eval('[data-testid="size"]', (e) => e.value);
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  const out = join(work, "siglip-native");
  execFileSync(cli, ["explain", "--model", q8, "--image", scene, "--prompt", "a red circle", "--size", size, "--out", out]);
  const r = await compareCanvas("a red circle", `${base}/files/siglip-native/0.png`);
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `canvas vs native: mean abs diff ${r.mean}, ${(100 * r.off).toFixed(2)}% off by > 2`);
  // The score shown is SigLIP's sigmoid probability, named so, and the native engine's.
  const score = await page.textContent('[data-testid="score"]');
  const native = JSON.parse(readFileSync(join(out, "scores.json"), "utf8")).prompts[0].score;
  assert(score.startsWith("probability ") && Math.abs(parseFloat(score.split(" ")[1]) - native) < 0.002, `score "${score}", native ${native}`);
  await page.screenshot({ path: join(shots, "25-siglip.png") });
  // The same three files dropped together: weights, config and tokenizer.json.
  const files = ["open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"]
    .map((n) => ({ name: n, bytes: Array.from(readFileSync(join(dir, n))) }));
  await page.evaluate(async (files) => {
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(new File([new Uint8Array(f.bytes)], f.name));
    for (const type of ["dragenter", "dragover", "drop"]) {
      document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  }, files);
  await page.waitForFunction(() => document.querySelector('[data-testid="model-name"]')?.textContent === "open_clip_model.safetensors", null, { timeout: TIMEOUT });
  const dropped = await page.textContent('[data-testid="model-info"]');
  assert(dropped.includes("SigLIP: LeGrad only"), `model info after the drop: ${dropped}`);
  await page.fill('[data-testid="prompts"]', "a blue circle");
  await waitForCard("a blue circle");
  // Weights alone: the page says what is missing, and the SigLIP loaded before stays.
  await dropFile(join(dir, "open_clip_model.safetensors"), "open_clip_model.safetensors", "application/octet-stream");
  await page.waitForFunction(() => document.querySelector('[data-testid="model-info"]')?.textContent.includes("stopped"), null, { timeout: TIMEOUT });
  const err = await page.textContent('[data-testid="model-info"]');
  assert(err.includes("needs its config") && err.includes("still in use"), `after the weights alone: ${err}`);
  // Later tests count the stored models: this one goes.
  await page.evaluate(async (u) => (await caches.open("legrad-web-models-v1")).delete(u), url);
  await page.close();
  page = await context.newPage();
  await page.goto(base + SUB);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
});

await test("?backend=cpu&threads=1 runs on the CPU in one thread, says so, and explains as the native engine", async () => {
  page = await context.newPage();
  await page.goto(base + SUB + "?backend=cpu&threads=1");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  const backend = await page.textContent('[data-testid="backend"]');
  assert(backend.startsWith("CPU") && backend.includes("one thread"), `backend is "${backend}"`);
  const reason = await page.textContent('[data-testid="backend-reason"]');
  assert(reason.includes("as asked"), `reason: ${reason}`);
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "224");
  await page.fill('[data-testid="prompts"]', "a red circle");
  await waitForCard("a red circle");
  await page.screenshot({ path: join(shots, "11-cpu-fallback.png") });
  // No helper workers: the same map as the native engine (and as the first test's, with them).
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a blue circle");
  await waitForCard("a blue circle");
  const r = await compareCanvas("a blue circle", nativeOverlay(scene, "a blue circle", "cpu-one-thread"));
  assert(!r.error, r.error);
  assert(r.mean < 0.5 && r.off < 0.005, `canvas vs native: mean abs diff ${r.mean}, ${(100 * r.off).toFixed(2)}% off by > 2`);
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

await test("nothing leaves the page: every request of a session (camera included) is the site's own or the model asked for", async () => {
  // A fresh context (empty cache), every request recorded twice: by the browser (the page, its
  // worker; Playwright reports both) and by the server (whatever reached it). The prompt and the
  // image's name are unusual strings, searched for in every URL, header and body.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const seen = [];
  // A request from a worker has no frame (the service worker's throws when asked for one).
  const noFrame = (r) => { try { return !r.frame(); } catch { return true; } };
  ctx.on("request", (r) => seen.push({ url: r.url(), method: r.method(), headers: r.headers(), body: r.postDataBuffer(),
    worker: noFrame(r) }));
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
  // The camera, a few frames explained with the secret prompt among the prompts.
  await ctx.grantPermissions(["camera"]);
  await page.click('[data-testid="camera"]');
  await page.waitForFunction(() => Number(document.querySelector('[data-testid="camera-stats"]')?.dataset.frames) >= 3, null, { timeout: TIMEOUT });
  await page.click('[data-testid="camera"]');
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

await test("camera: the map's peak follows a moving object, frames/s and latency shown, pause freezes, 200 frames leave memory flat; refused in words", async () => {
  const before = page;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, permissions: ["camera"] });
  page = await ctx.newPage();
  try {
    await page.addInitScript(() => addEventListener("TrunkApplicationStarted", (e) => { window.__uiWasm = e.detail.wasm; }));
    await page.goto(base + SUB);
    await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
    await page.fill('[data-testid="prompts"]', "a blue circle");
    await page.click('[data-testid="camera"]');
    const frames = async () => Number(await page.getAttribute('[data-testid="camera-stats"]', "data-frames").catch(() => 0));
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="camera-stats"]')?.dataset.frames) >= 5, null, { timeout: TIMEOUT });
    const stats = await page.textContent('[data-testid="camera-stats"]');
    assert(/^[\d.]+ frames\/s · \d+ ms from frame to map$/.test(stats.trim()), `camera stats: ${stats}`);
    assert((await page.$$eval('[data-testid="camera-choice"] option', (o) => o.length)) >= 1, "no camera to choose");
    // Drawn over the frame itself (320x240), not over the model's input.
    const cv = await mainView();
    assert(cv.size === "320x240" && cv.width === 320 && cv.height === 240, `camera view: ${JSON.stringify(cv)}`);
    await page.screenshot({ path: join(shots, "24-camera.png"), fullPage: true });
    // The peak of each shown map against the circle in the frame it was drawn over (opacity 0:
    // the canvas is the frame), read together.
    await page.evaluate(() => { const e = document.querySelector('[data-testid="opacity"]'); e.value = "0"; e.dispatchEvent(new Event("input", { bubbles: true })); });
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
    assert(samples.length >= 8 && near >= samples.length - Math.ceil(samples.length / 10) && Math.max(...xs) - Math.min(...xs) > 120,
      `peak vs circle: ${JSON.stringify(samples.map((s) => [Math.round(s.blob), s.peak]))}`);
    // Prompts can change while it runs; pause freezes the frame.
    await page.fill('[data-testid="prompts"]', "a blue circle\na red square");
    await waitForCard("a red square");
    await page.click('[data-testid="camera-pause"]');
    await page.waitForTimeout(500);
    const frozen = await frames();
    await page.waitForTimeout(1500);
    assert((await frames()) === frozen, "frames kept coming while paused");
    await page.click('[data-testid="camera-pause"]');
    // 200 frames: memory flat after warm-up (bounds as the soak's).
    const cdp = await ctx.newCDPSession(page);
    const mem = async () => {
      await cdp.send("HeapProfiler.collectGarbage");
      return { worker: Number(await page.getAttribute('[data-testid="timing"]', "data-wasm-bytes")),
        ui: await page.evaluate(() => window.__uiWasm?.memory?.buffer.byteLength ?? 0),
        heap: (await cdp.send("Runtime.getHeapUsage")).usedSize, gpu: null };
    };
    const start = await frames();
    const series = [];
    for (let step = 0; step <= 200; step += 40) {
      await page.waitForFunction((n) => Number(document.querySelector('[data-testid="camera-stats"]').dataset.frames) >= n, start + step, { timeout: TIMEOUT });
      series.push({ step, ...(await mem()) });
    }
    const mb = (b) => (b / 1048576).toFixed(1);
    console.log(`     camera frames: ${series.map((s) => `${s.step}: worker ${mb(s.worker)} / page ${mb(s.ui)} / heap ${mb(s.heap)} MB`).join("; ")}; ${await page.textContent('[data-testid="camera-stats"]')}`);
    assertFlat(series, 40, { worker: 32, ui: 16, heap: 8 });
    await page.click('[data-testid="camera"]');
    await page.waitForSelector('[data-testid="camera-pause"]', { state: "detached", timeout: 10_000 });
    // Stopped: the last frame stays the image, and a new prompt is explained on it.
    await page.fill('[data-testid="prompts"]', "a blue circle\na green star");
    await waitForCard("a green star");
  } finally {
    await ctx.close();
  }
  // Refused: a context without the camera permission.
  const denied = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await denied.newPage();
  try {
    await page.goto(base + SUB);
    await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
    page.on("dialog", (d) => d.dismiss());
    await page.click('[data-testid="camera"]');
    await page.waitForSelector('[data-testid="camera-error"]', { timeout: 30_000 });
    const msg = await page.textContent('[data-testid="camera-error"]');
    assert(/refused|No camera/.test(msg), `camera refused: ${msg}`);
    assert((await page.getAttribute('[data-testid="camera"]', "aria-pressed")) === "false", "the camera looks on after a refusal");
  } finally {
    await denied.close();
    page = before;
  }
});

await test("accessible: every control by keyboard with its focus shown, results announced, no serious or critical axe violation", async () => {
  const before = page;
  page = await context.newPage();
  try {
    await page.goto(base + SUB);
    await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
    await dropFile(scene, "scene-1.png");
    await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
    await page.fill('[data-testid="prompts"]', "a blue circle\na red ring");
    await waitForCard("a red ring");
    await page.waitForFunction(() => /Heatmaps ready for 2 prompts/.test(document.querySelector('[data-testid="announce"]').textContent), null, { timeout: TIMEOUT });
    await openModelPanel();
    // axe-core (npm, pinned) on the whole page: the results, the large view, the model panel.
    await page.addScriptTag({ path: join(here, "node_modules/axe-core/axe.min.js") });
    const violations = await page.evaluate(async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`));
    assert(violations.length === 0, `axe: ${violations.join("; ")}`);
    // Tab through the page: every control is reached, and shows where the focus is.
    await page.evaluate(() => document.activeElement?.blur());
    const reached = new Map();
    for (let i = 0; i < 80; i++) {
      await page.keyboard.press("Tab");
      const f = await page.evaluate(() => {
        const e = document.activeElement;
        if (!e || e === document.body) return null;
        const style = getComputedStyle(e);
        const name = e.dataset.testid ?? (e.tagName === "SUMMARY" ? "summary" : e.classList.contains("sample") ? "sample" : e.textContent.trim().slice(0, 20));
        return { name, shown: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2 };
      });
      if (f) reached.set(f.name, (reached.get(f.name) ?? true) && f.shown);
    }
    const want = ["image-input", "sample", "prompts", "template", "copy-link", "method", "compare", "size", "keep-aspect", "layers",
      "opacity", "colormap", "summary", "model-url", "load-url", "main-canvas", "Overlay PNG", "Map PNG", "layer", "heatmap"];
    const missing = want.filter((w) => !reached.has(w));
    assert(missing.length === 0, `not reached by Tab: ${missing}; reached: ${[...reached.keys()]}`);
    const unseen = [...reached].filter(([, shown]) => !shown).map(([n]) => n);
    assert(unseen.length === 0, `focus not shown on: ${unseen}`);
    // And usable: a card by Enter, the large view's value by the arrow keys.
    await page.focus('[data-testid="map-card"][data-prompt="a red ring"] canvas');
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]').textContent.startsWith("a red ring"), null, { timeout: 10_000 });
    await page.focus('[data-testid="main-canvas"]');
    await page.keyboard.press("ArrowRight");
    const value = await page.textContent('[data-testid="cursor-value"]');
    assert(/^value \d\.\d{3} at \(\d+, \d+\)$/.test(value.trim()), `value by keyboard: ${value}`);
    await page.focus('[data-testid="layer"][data-layer="all"]');
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => /layer \d+$/.test(document.querySelector('[data-testid="main-label"]').textContent), null, { timeout: 10_000 });
    await page.screenshot({ path: join(shots, "23-keyboard.png") });
  } finally {
    await page.close();
    page = before;
  }
});

await test("after one visit the page opens and explains offline; installable; a new build replaces the old cache", async () => {
  const before = page;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const shellCaches = () => page.evaluate(async () => (await caches.keys()).filter((k) => k.startsWith("legrad-shell-")));
  page = await ctx.newPage();
  await page.goto(base + SUB);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  // The service worker is active once everything the site ships is in its cache.
  const cached = await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
    const keys = (await caches.keys()).filter((k) => k.startsWith("legrad-shell-"));
    const cache = await caches.open(keys[0]);
    return { keys, files: (await cache.keys()).map((r) => new URL(r.url).pathname) };
  });
  const oldShell = cached.keys[0];
  assert(cached.keys.length === 1 && /^legrad-shell-[0-9a-f]{16}$/.test(oldShell), `shell caches: ${cached.keys}`);
  for (const f of ["index.html", "legrad-web.js", "legrad-web_bg.wasm", "worker.js", "models/default.safetensors", "samples/scene-1.png", "manifest.webmanifest", "icons/icon-512.png"]) {
    assert(cached.files.includes(SUB + f), `${f} is not cached: ${cached.files}`);
  }
  // Installable: a manifest with a name, a start URL, standalone display and icons that load.
  const manifest = await page.evaluate(async () => {
    const href = document.querySelector('link[rel="manifest"]').href;
    const m = await (await fetch(href)).json();
    const icons = await Promise.all(m.icons.map(async (i) => (await fetch(new URL(i.src, href))).ok));
    return { ...m, iconsOk: icons };
  });
  assert(manifest.name === "LeGrad Web" && manifest.start_url && manifest.display === "standalone"
    && manifest.icons.some((i) => i.sizes === "512x512") && manifest.iconsOk.every(Boolean), `manifest: ${JSON.stringify(manifest)}`);
  await page.close();
  // Offline: the page opens, loads the default model, explains; the server sees nothing.
  await ctx.setOffline(true);
  const seen = served.length;
  page = await ctx.newPage();
  await page.goto(base + SUB + "?backend=cpu");
  await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  await dropFile(scene, "scene-1.png");
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: TIMEOUT });
  await page.selectOption('[data-testid="size"]', "448");
  await page.fill('[data-testid="prompts"]', "a blue circle");
  await waitForCard("a blue circle");
  // Nothing the page asks for reaches the server. The one request allowed is Chromium's own
  // update check of the service worker's script: creating the engine's helper workers (new
  // clients of the service worker) triggers it from the browser process, which Playwright's
  // offline emulation does not cover; with the network really off it fails, and the installed
  // worker stays (checked: with `?threads=1`, no helpers, nothing reaches the server at all).
  const asked = served.slice(seen).map((q) => q.url).filter((u) => !u.endsWith(SUB + "sw.js"));
  assert(asked.length === 0, `offline, the server got ${asked}`);
  await page.screenshot({ path: join(shots, "22-offline.png") });
  // The map made offline is the native engine's (compared once the network is back, to fetch it).
  await ctx.setOffline(false);
  const r = await compareCanvas("a blue circle", nativeOverlay(scene, "a blue circle", "offline"));
  assert(!r.error && r.mean < 0.5 && r.off < 0.005, `offline map vs native: ${JSON.stringify(r)}`);
  await page.close();
  // A new build (the service worker's version changes): once no page of the old one is open,
  // the new one takes over and the old cache is gone.
  swVersion = "0123456789abcdef";
  try {
    page = await ctx.newPage();
    await page.goto(base + SUB);
    await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()).update());
    await page.waitForFunction(async () => !!(await navigator.serviceWorker.getRegistration()).waiting
      || (await caches.keys()).includes("legrad-shell-0123456789abcdef"), null, { timeout: TIMEOUT, polling: 200 });
    await page.close();
    page = await ctx.newPage();
    await page.goto(base + SUB);
    await page.waitForFunction(async () => {
      const keys = (await caches.keys()).filter((k) => k.startsWith("legrad-shell-"));
      return keys.length === 1 && keys[0] === "legrad-shell-0123456789abcdef";
    }, null, { timeout: 60_000, polling: 250 }).catch(async () => { throw new Error(`shell caches after the update: ${await shellCaches()} (old ${oldShell})`); });
    await page.waitForSelector('[data-testid="model-info"]', { timeout: TIMEOUT });
  } finally {
    swVersion = null;
    await ctx.close();
    page = before;
  }
});

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
