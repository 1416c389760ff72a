// Browser benchmark (prints, asserts nothing): model load, warm-up, image encode and
// per-prompt update, in headless Chromium's WebGPU (SwiftShader on a machine without a GPU),
// for the default model and for a random ViT-B/16 (8-bit) at 448.
//
//   LEGRAD_DIST=dist LEGRAD_CLI=target/release/legrad node tests/e2e/bench.mjs [--skip-vit | --only-vit]
//
// LEGRAD_BENCH_VIT_PROMPTS=2 times two prompts instead of four for the ViT-B/16 (on SwiftShader
// each takes minutes): the first with its image encode, the second for the per-prompt update.
//
// Run by `cargo xtask bench-web`.

import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFileSync, existsSync, statSync, mkdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const dist = resolve(process.env.LEGRAD_DIST ?? join(root, "dist"));
const cli = resolve(process.env.LEGRAD_CLI ?? join(root, "target/release/legrad"));
const work = join(tmpdir(), "legrad-bench");
mkdirSync(work, { recursive: true });
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".png": "image/png" };
const server = createServer((req, res) => {
  const url = decodeURIComponent(req.url.split("?")[0]);
  let path = url.startsWith("/app/") ? join(dist, url.slice(5) || "index.html") : url.startsWith("/files/") ? join(work, url.slice(7)) : null;
  if (path && existsSync(path) && statSync(path).isDirectory()) path = join(path, "index.html");
  if (!path || !existsSync(path)) { res.writeHead(404); res.end(); return; }
  const body = readFileSync(path);
  res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream", "content-length": body.length });
  res.end(body);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"],
});
const T = +(process.env.LEGRAD_BENCH_TIMEOUT_MS ?? 1_800_000);

async function measure(label, loadModel, size, count = 4) {
  const page = await browser.newPage();
  await page.goto(`${base}/app/`);
  await page.waitForSelector('[data-testid="model-info"]', { timeout: T });
  const backend = await page.textContent('[data-testid="backend"]');
  if (loadModel) {
    await page.click("details summary");
    await page.fill('[data-testid="model-url"]', loadModel);
    await page.click('[data-testid="load-url"]');
    await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, loadModel, { timeout: T });
  }
  const info = await page.$eval('[data-testid="model-info"]', (e) => ({ load: +e.dataset.loadMs, warm: +e.dataset.warmupMs, text: e.textContent }));
  // Stages as they finish, so that a run stopped part-way still reports what it measured.
  console.error(`# ${label}: model load ${info.load.toFixed(0)} ms, warm-up ${info.warm.toFixed(0)} ms`);
  const bytes = Array.from(readFileSync(join(root, "www/samples/scene-1.png")));
  await page.evaluate(({ bytes }) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], "scene-1.png", { type: "image/png" }));
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, { bytes });
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: T });
  await page.selectOption('[data-testid="size"]', String(size));
  const timings = [];
  for (const prompt of ["a red circle", "a blue circle", "something green", "a yellow star"].slice(0, count)) {
    await page.fill('[data-testid="prompts"]', prompt);
    await page.waitForFunction((p) => [...document.querySelectorAll('[data-testid="map-card"]')].some((c) => c.dataset.prompt === p), prompt, { timeout: T });
    timings.push(await page.$eval('[data-testid="timing"]', (e) => ({ image: +e.dataset.imageMs, explain: +e.dataset.explainMs, traced: e.dataset.traced === "true" })));
    console.error(`# ${label}: "${prompt}": image ${timings.at(-1).image.toFixed(0)} ms, explain ${timings.at(-1).explain.toFixed(0)} ms`);
  }
  await page.close();
  const median = (v) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
  const perPrompt = median(timings.slice(1).map((t) => t.explain));
  console.log(`| ${label} | ${backend} | ${size} | ${info.load.toFixed(0)} ms | ${info.warm.toFixed(0)} ms | ${timings[0].image.toFixed(0)} ms | ${perPrompt.toFixed(0)} ms (${count > 2 ? `median of ${count - 1}` : "one prompt"}) |`);
}

console.log("| model | backend | size | model load | warm-up | image encode | per-prompt update (median of 3) |");
console.log("|---|---|---|---|---|---|---|");
if (!process.argv.includes("--only-vit")) await measure("default (synthetic scenes, q8)", null, 448);
if (!process.argv.includes("--skip-vit")) {
  const vit = join(work, "vit-b16-random-q8.safetensors");
  if (!existsSync(vit)) execFileSync(cli, ["convert", "--model", "random:ViT-B-16:0", "--quant", "q8", "--out", vit]);
  await measure("random ViT-B/16 (q8)", `${base}/files/vit-b16-random-q8.safetensors`, 448, +(process.env.LEGRAD_BENCH_VIT_PROMPTS ?? 4));
}
await browser.close();
server.close();
