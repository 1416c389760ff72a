// Browser benchmark (prints, asserts nothing), in headless Chromium (WebGPU on SwiftShader on a
// machine without a GPU), the built dist/ served from localhost. For the default model and a
// random ViT-B/16 (8-bit, loaded by URL), on each backend (`?backend=webgpu`, `?backend=cpu`)
// and on the app's own pick (no parameter), at 224 and 448:
//
//   * page open to ready for an image (the page's interface drawn: it takes an image and prompts
//     while the engine's module is still on its way; by the page's clock from the navigation's
//     start) and to model ready (from the test's call to open the page; a fresh browser context:
//     nothing cached),
//   * image encode (the page's timing of the trace),
//   * one new prompt with 0, 2 and 7 prompts already shown (the page's timing of the update),
//   * one prompt replaced by another, median of 4 (the page's timing),
//   * of each new prompt's timing, the engine's own split (issue 29): the text encoding, the
//     maps with presence, and its words, which follow the map in an answer of their own,
//   * for the ViT-B/16 on the page's pick (issue 28): the camera's frames/s at 224 (Chromium's
//     fake camera, the page's own count), and the resident memory of all the browser's
//     processes with the ViT-B/16 loaded from the browser's cache (a second visit) and one image
//     explained at 224, then another at 448, minus the same with the default model.
//
//   LEGRAD_DIST=dist LEGRAD_CLI=target/release/legrad node tests/e2e/bench.mjs [--full] [--only default|vit]
//       [--backends pick,webgpu,cpu,cpu1] [--sizes 224,448] [--no-camera] [--gallery N]     (cpu1: ?backend=cpu&threads=1;
//       --no-camera: the prompts alone, without the camera and memory steps; --gallery N: also
//       the gallery's images/s over N scenes, on the pick, each model)
//
// The ViT-B/16 on SwiftShader takes minutes per step (its image encode at 448 took 17.8 min
// on 2026-11-26): without --full it is measured at 224 only, for page open, image encode and
// the first prompt, and the other cells say "skipped". Run by `cargo xtask bench-web`.

import { chromium } from "@playwright/test";
import { startServer } from "./support/server.mjs";
import { chromiumArgs, chromiumPath, cli, dist, root } from "./support/env.mjs";
import { readFileSync, readdirSync, existsSync, mkdirSync, unlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { tmpdir } from "node:os";

const work = join(tmpdir(), "legrad-bench");
mkdirSync(work, { recursive: true });
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const full = process.argv.includes("--full");
const camera = !process.argv.includes("--no-camera");
const only = arg("--only", null);
const backends = arg("--backends", "pick,webgpu,cpu").split(",");
const sizes = arg("--sizes", "224,448").split(",").map(Number);

const server = await startServer({ dist, work, sub: "/app/" });
const base = server.base;
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: [...chromiumArgs, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
});
const T = +(process.env.LEGRAD_BENCH_TIMEOUT_MS ?? 3_600_000);
const PROMPTS = ["a red circle", "a blue circle", "something green", "a yellow star", "an orange ring",
  "a purple cross", "a green square", "a blue triangle", "a red star", "a yellow ring", "an orange square", "a purple circle"];

const ms = (v) => (v === undefined || Number.isNaN(v) ? "-" : `${Math.round(v)} ms`);
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

async function timing(page) {
  return await page.$eval('[data-testid="timing"]', (e) => ({ image: +e.dataset.imageMs, explain: +e.dataset.explainMs, words: +e.dataset.wordsMs, text: +e.dataset.textMs, traced: e.dataset.traced === "true" }));
}

/// Set the prompt box to `lines` and wait until every line has its card and nothing is pending,
/// then for the answer's words (they follow the maps; a build that sends none: LEGRAD_BENCH_NO_WORDS=1),
/// so that no step overlaps the one before.
async function show(page, lines) {
  await page.fill('[data-testid="prompts"]', lines.join("\n"));
  await page.waitForFunction((ps) => {
    const shown = [...document.querySelectorAll('[data-testid="map-card"]')].map((c) => c.dataset.prompt);
    return ps.every((p) => shown.includes(p)) && shown.length === ps.length && !document.querySelector('[data-testid="working"]');
  }, lines, { timeout: T });
  if (!process.env.LEGRAD_BENCH_NO_WORDS) {
    await page.waitForFunction(() => { const t = document.querySelector('[data-testid="timing"]'); return t.dataset.seq !== "" && t.dataset.wordsSeq === t.dataset.seq; }, null, { timeout: T });
  }
  return await timing(page);
}

/// Load a model by URL in the model panel and wait until the header names it.
async function loadModel(page, url) {
  await page.click('[data-testid="other-model"] summary');
  await page.fill('[data-testid="model-url"]', url);
  await page.click('[data-testid="load-url"]');
  await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: T });
}

/// Drop the first sample scene on the page and wait until it is taken.
async function dropScene(page) {
  const bytes = Array.from(readFileSync(join(root, "www/samples/scene-1.png")));
  await page.evaluate(({ bytes }) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], "scene-1.png", { type: "image/png" }));
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, { bytes });
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: T });
}

async function measure(model, backend) {
  const context = await browser.newContext();
  const page = await context.newPage();
  // "cpu1": the CPU on one thread (no helper workers), for comparison.
  const query = backend === "pick" ? "" : backend === "cpu1" ? "?backend=cpu&threads=1" : `?backend=${backend}`;
  const t0 = Date.now();
  await page.goto(`${base}/app/${query}`, { waitUntil: "commit" });
  // By the page's own clock, from the navigation's start (polled each frame).
  const ready = await (await page.waitForFunction(() => document.querySelector('[data-testid="image-input"]') && performance.now(), null, { timeout: T, polling: "raf" })).jsonValue();
  await page.waitForSelector('[data-testid="model-info"]', { timeout: T });
  if (model.url) await loadModel(page, model.url);
  const open = Date.now() - t0;
  const badge = (await page.textContent('[data-testid="backend"]')).trim();
  const info = await page.$eval('[data-testid="model-info"]', (e) => ({ load: +e.dataset.loadMs, warm: +e.dataset.warmupMs }));
  console.error(`# ${model.label} / ${backend}: ${badge}; page open to ready for an image ${Math.round(ready)} ms (the page's clock from navigation start), to model ready ${open} ms (model load ${Math.round(info.load)} ms, warm-up ${Math.round(info.warm)} ms)`);
  const reason = await page.$eval('[data-testid="backend-reason"]', (e) => e.textContent.trim()).catch(() => "");
  if (reason) console.error(`#   why: ${reason}`);
  const software = /swiftshader|llvmpipe|lavapipe|warp/i.test(badge) && badge.startsWith("WebGPU");
  const rows = [];
  for (const size of sizes) {
    const row = { size, ready, open, badge, image: NaN, p0: NaN, p2: NaN, p7: NaN, replace: NaN, note: "", words: [] };
    rows.push(row);
    if (software && model.slowOnSoftware && !full && size !== 224) { row.note = "skipped (ViT-B/16 on SwiftShader; --full)"; continue; }
    await page.fill('[data-testid="prompts"]', "");
    await page.selectOption('[data-testid="size"]', String(size));
    await dropScene(page);
    // The first prompt traces the image: its timing splits into the encode and the update.
    const first = await show(page, PROMPTS.slice(0, 1));
    row.image = first.image;
    row.p0 = first.explain;
    row.words.push(first);
    console.error(`#   ${size}: image encode ${ms(row.image)}, first prompt ${ms(row.p0)}`);
    if (software && model.slowOnSoftware && !full) { row.note = "2 / 7 shown and replace skipped (--full)"; continue; }
    await show(page, PROMPTS.slice(0, 2));
    const p2 = await show(page, PROMPTS.slice(0, 3));
    row.p2 = p2.explain;
    await show(page, PROMPTS.slice(0, 7));
    const p7 = await show(page, PROMPTS.slice(0, 8));
    row.p7 = p7.explain;
    row.words.push(p2, p7);
    console.error(`#   ${size}: new prompt with 2 shown ${ms(row.p2)}, with 7 shown ${ms(row.p7)}`);
    const replaced = [];
    for (const p of PROMPTS.slice(8, 12)) {
      const t = await show(page, [p]);
      replaced.push(t.explain);
      row.words.push(t);
    }
    row.replace = median(replaced);
    console.error(`#   ${size}: one prompt replaced ${replaced.map(ms).join(", ")}`);
  }
  await context.close();
  for (const r of rows) {
    console.log(`| ${model.label} | ${backend} | ${r.badge} | ${r.size} | ${ms(r.ready)} | ${ms(r.open)} | ${ms(r.image)} | ${ms(r.p0)} | ${ms(r.p2)} | ${ms(r.p7)} | ${ms(r.replace)} | ${r.note} |`);
  }
  // Of each new prompt, the engine's own split: its maps (with presence and the text encoding),
  // then its words, which follow in an answer of their own (the map does not wait for them).
  for (const r of rows.filter((r) => r.words.length)) {
    const words = r.words.map((t) => t.words || 0);
    const share = r.words.map((t, i) => words[i] / t.explain);
    const each = r.words.map((t, i) => `${Math.round(t.explain)} (text ${t.text.toFixed(1)}, then words ${words[i].toFixed(1)})`).join(", ");
    const text = median(r.words.map((t) => t.text));
    const maps = median(r.words.map((t) => t.explain - t.text));
    wordLines.push(`${model.label}, ${backend}, ${r.size}: a new prompt's words, after its map, take ${(100 * median(share)).toFixed(1)}% of its map's time (median of ${share.length}; largest ${(100 * Math.max(...share)).toFixed(1)}%; median ${median(words).toFixed(1)} ms; each new prompt's map in ms: ${each}); medians: text ${text.toFixed(1)} ms, maps ${maps.toFixed(1)} ms`);
  }
}

/// Resident memory (MiB) of every process under this one: the browser's (`VmRSS`, summed).
function browserRssMiB() {
  return Object.values(browserRssByKind()).reduce((a, b) => a + b, 0);
}

/// The same, by the kind of process (Chromium's `--type=`: renderer, gpu-process, utility; the
/// browser's own process has none): where a difference lies.
function browserRssByKind() {
  const children = new Map();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = +stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1];
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(+d);
    } catch { /* gone */ }
  }
  const kinds = {};
  const todo = [...(children.get(process.pid) ?? [])];
  while (todo.length) {
    const pid = todo.pop();
    try {
      const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
      const kind = (readFileSync(`/proc/${pid}/cmdline`, "utf8").match(/--type=([a-z-]+)/) ?? [null, "browser"])[1];
      if (m) kinds[kind] = (kinds[kind] ?? 0) + +m[1] / 1024;
    } catch { /* gone */ }
    todo.push(...(children.get(pid) ?? []));
  }
  return kinds;
}

/// Collect garbage in every page and worker of the browser (DevTools' `HeapProfiler.collectGarbage`):
/// what the resident memory is once JavaScript's unreachable buffers (a model file read from the
/// cache, the helpers' shares on their way) are gone, as they go when the browser needs memory.
async function collectGarbage() {
  const cdp = await browser.newBrowserCDPSession();
  const { targetInfos } = await cdp.send("Target.getTargets");
  let id = 0;
  const pending = new Map();
  cdp.on("Target.receivedMessageFromTarget", (e) => {
    const m = JSON.parse(e.message);
    if (m.id && pending.has(m.id)) { pending.get(m.id)(); pending.delete(m.id); }
  });
  for (const t of targetInfos.filter((t) => t.type === "page" || t.type === "worker")) {
    const { sessionId } = await cdp.send("Target.attachToTarget", { targetId: t.targetId, flatten: false });
    await new Promise((resolve) => {
      const i = ++id;
      pending.set(i, resolve);
      cdp.send("Target.sendMessageToTarget", { sessionId, message: JSON.stringify({ id: i, method: "HeapProfiler.collectGarbage" }) });
      setTimeout(resolve, 5000);
    });
    await cdp.send("Target.detachFromTarget", { sessionId }).catch(() => {});
  }
  await cdp.detach();
  await new Promise((r) => setTimeout(r, 1000));
}

/// The engine worker's wasm memory (MiB) as its last maps reported it (a wasm memory never
/// shrinks: its high-water mark).
async function engineWasmMiB(page) {
  return +((await page.getAttribute('[data-testid="timing"]', "data-wasm-bytes")) ?? 0) / 1048576;
}

/// Issue 28's other page numbers for a model loaded by URL, on the page's pick, at 224: the
/// camera's frames/s, and the browser's resident memory against the default model's (one
/// context: the first page fills the browser's cache, the later ones read it).
async function cameraAndMemory(model) {
  const context = await browser.newContext({ permissions: ["camera"] });
  const visit = async (withModel, camera) => {
    const page = await context.newPage();
    await page.goto(`${base}/app/`, { waitUntil: "commit" });
    await page.waitForSelector('[data-testid="model-info"]', { timeout: T });
    if (withModel) await loadModel(page, model.url);
    await page.selectOption('[data-testid="size"]', "224");
    await dropScene(page);
    await show(page, PROMPTS.slice(0, 1));
    await page.waitForTimeout(2000);
    const rss = browserRssMiB();
    await collectGarbage();
    const rssGc = browserRssMiB();
    const engine = await engineWasmMiB(page);
    let fps = NaN;
    if (camera) {
      await page.click('[data-testid="camera"]');
      const frames = async () => +(await page.getAttribute('[data-testid="camera-stats"]', "data-frames").catch(() => "0"));
      await page.waitForFunction(() => +(document.querySelector('[data-testid="camera-stats"]')?.dataset.frames ?? 0) >= 3, null, { timeout: T });
      const [f0, t0] = [await frames(), Date.now()];
      await page.waitForFunction((f) => +(document.querySelector('[data-testid="camera-stats"]')?.dataset.frames ?? 0) >= f + 8, f0, { timeout: T });
      fps = (await frames() - f0) / ((Date.now() - t0) / 1000);
      console.error(`#   camera at 224: ${fps.toFixed(2)} frames/s by the test's clock; the page says "${(await page.textContent('[data-testid="camera-stats"]')).trim()}"`);
      await page.click('[data-testid="camera"]');
    }
    // Then an image at 448 (a ViT-B/16's default size in the page; its image step is shared
    // with the helpers, which then hold their shares of the tower).
    await page.selectOption('[data-testid="size"]', "448");
    await dropScene(page);
    await show(page, PROMPTS.slice(1, 2));
    await page.waitForTimeout(2000);
    const rss448 = browserRssMiB();
    await collectGarbage();
    const rss448Gc = browserRssMiB();
    const engine448 = await engineWasmMiB(page);
    const kinds = Object.entries(browserRssByKind()).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ");
    console.error(`#   ${withModel ? "with the model" : "default model"}, after 448 and garbage collection: resident MiB by process kind: ${kinds}`);
    await page.close();
    return { rss, rssGc, rss448, rss448Gc, fps, engine, engine448 };
  };
  await visit(true, false); // fills the cache
  // The default model's visit runs the camera too: the camera's capture service (a utility
  // process of about 90 MB that stays after the camera stops) is then in both.
  const plain = await visit(false, true);
  const cached = await visit(true, true);
  await context.close();
  const gc = (a, b) => `; after collecting garbage in every page and worker, ${Math.round(a)} against ${Math.round(b)} MiB: ${Math.round(a - b)} MiB more`;
  console.log(`${model.label}, the page's pick, 224: camera ${cached.fps.toFixed(2)} frames/s; the browser's processes resident ${Math.round(cached.rss)} MiB with it (from the cache, one image explained) against ${Math.round(plain.rss)} MiB with the default model: ${Math.round(cached.rss - plain.rss)} MiB more${gc(cached.rssGc, plain.rssGc)}; the engine's wasm memory ${Math.round(cached.engine)} MiB against ${Math.round(plain.engine)}`);
  console.log(`${model.label}, the page's pick, then an image at 448: resident ${Math.round(cached.rss448)} MiB against ${Math.round(plain.rss448)} MiB with the default model: ${Math.round(cached.rss448 - plain.rss448)} MiB more${gc(cached.rss448Gc, plain.rss448Gc)}; the engine's wasm memory ${Math.round(cached.engine448)} MiB against ${Math.round(plain.engine448)}`);
}

/// Issue 30: the gallery's throughput on the page's pick, at 224: `count` scenes (448 px, as
/// photos come larger than the input) picked as a folder, one prompt; images/s by the page.
async function gallery(model, count) {
  const dir = join(work, `gallery-${count}`);
  if (!existsSync(dir)) {
    execFileSync(cli, ["scenes", "--seed", "45", "--count", String(count), "--size", "448", "--out", dir]);
    for (const f of readdirSync(dir).filter((f) => f.includes(".mask"))) unlinkSync(join(dir, f));
  }
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/app/`, { waitUntil: "commit" });
  await page.waitForSelector('[data-testid="model-info"]', { timeout: T });
  if (model.url) await loadModel(page, model.url);
  await page.selectOption('[data-testid="size"]', "224");
  await page.fill('[data-testid="prompts"]', PROMPTS[0]);
  const images = readdirSync(dir).filter((f) => f.endsWith(".png")).length;
  const t0 = Date.now();
  await page.setInputFiles('[data-testid="gallery-folder"]', dir);
  await page.waitForFunction((n) => {
    const p = document.querySelector('[data-testid="gallery-progress"]');
    return p && +p.dataset.done === n && p.dataset.running === "false";
  }, images, { timeout: T, polling: 250 });
  const p = await page.$eval('[data-testid="gallery-progress"]', (e) => ({ perS: +e.dataset.perS, engine: +e.dataset.engineWasm }));
  console.log(`${model.label}, the page's pick, 224, gallery of ${images} scenes (448 px): ${p.perS.toFixed(2)} images/s by the page (${((Date.now() - t0) / 1000).toFixed(0)} s from the pick to the last map by the test's clock); engine wasm memory after ${(p.engine / 1048576).toFixed(0)} MiB`);
  await context.close();
}

// The modules themselves: download, compile, instantiate and start (the page's own in the page;
// the engine's in the engine's worker and each helper).
for (const name of ["legrad-web", "legrad-web-engine"].filter((n) => existsSync(join(dist, `${n}_bg.wasm`)))) {
  writeFileSync(join(work, "blank.html"), "<!DOCTYPE html><html><body></body></html>");
  const samples = [];
  for (let run = 0; run < 3; run++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${base}/files/blank.html`);
    samples.push(await page.evaluate(async (name) => {
      const t0 = performance.now();
      const bytes = await (await fetch(`/app/${name}_bg.wasm`)).arrayBuffer();
      const t1 = performance.now();
      const module = await WebAssembly.compile(bytes);
      const t2 = performance.now();
      const glue = await import(`/app/${name}.js`);
      await glue.default({ module_or_path: module });
      const t3 = performance.now();
      return { fetch: t1 - t0, compile: t2 - t1, instantiate: t3 - t2, bytes: bytes.byteLength };
    }, name));
    await context.close();
  }
  const m = (k) => median(samples.map((s) => s[k]));
  console.log(`${name}_bg.wasm: ${samples[0].bytes} bytes; fetch ${ms(m("fetch"))}, compile ${ms(m("compile"))}, instantiate and start ${ms(m("instantiate"))} (median of 3, fresh contexts)`);
}
console.log("");

console.log("| model | asked | backend used | size | page open to ready for an image | to model ready | image encode | new prompt, 0 shown | 2 shown | 7 shown | one replaced (median of 4) | note |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
const models = [];
if (only !== "vit") models.push({ label: "default (q8)", url: null });
if (only !== "default") {
  const vit = join(work, "vit-b16-random-q8.safetensors");
  if (!existsSync(vit)) execFileSync(cli, ["convert", "--model", "random:ViT-B-16:0", "--quant", "q8", "--out", vit]);
  models.push({ label: "random ViT-B/16 (q8)", url: `${base}/files/vit-b16-random-q8.safetensors`, slowOnSoftware: true });
}
const wordLines = [];
for (const model of models) for (const backend of backends) await measure(model, backend);
console.log("");
for (const w of wordLines) console.log(w);
for (const model of models.filter((m) => m.url)) if (camera && backends.includes("pick")) await cameraAndMemory(model);
const galleryCount = +arg("--gallery", "0");
if (galleryCount > 0) for (const model of models) await gallery(model, galleryCount);
await browser.close();
await server.close();
