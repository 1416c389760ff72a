// Page objects: one per panel of the page (src/components/), reached from `App`. They hold the
// selectors and the waits; the tests say what a user does and what must be seen.

import { readFileSync } from "node:fs";
import { TIMEOUT, scene } from "./env.mjs";

const id = (name) => `[data-testid="${name}"]`;

/// Drop files on the page as a user's drag and drop does. `files`: [{ name, bytes, type }].
async function dropOn(page, files) {
  await page.evaluate(async (files) => {
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(new File([new Uint8Array(f.bytes)], f.name, f.type ? { type: f.type } : {}));
    for (const type of ["dragenter", "dragover", "drop"]) {
      document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  }, files);
}

/// The header: the backend, why it was picked, the model's name.
export class Header {
  constructor(page) { this.page = page; }
  backend() { return this.page.textContent(id("backend")); }
  reason() { return this.page.textContent(id("backend-reason")); }
  modelName() { return this.page.textContent(id("model-name")); }
  /// Until the model named `name` (a URL or a file's name) is the one in use.
  async waitForModel(name) {
    await this.page.waitForFunction(({ sel, name }) => document.querySelector(sel)?.textContent === name,
      { sel: id("model-name"), name }, { timeout: TIMEOUT });
  }
  async waitForReason(text) {
    await this.page.waitForFunction(({ sel, text }) => document.querySelector(sel)?.textContent.includes(text),
      { sel: id("backend-reason"), text }, { timeout: TIMEOUT });
  }
}

/// The image panel: drops, the file picker, the samples, what it says about the image.
export class ImagePanel {
  constructor(page) { this.page = page; }
  /// Drop a file from disk under another name.
  async drop(path, name, type = "image/png") {
    await dropOn(this.page, [{ name, bytes: Array.from(readFileSync(path)), type }]);
  }
  /// Drop several files together (a model's weights, config and tokenizer).
  async dropFiles(files) {
    await dropOn(this.page, files.map(({ path, name, type }) => ({ name, bytes: Array.from(readFileSync(path)), type })));
  }
  /// Drop a picture drawn in the page: a fill and, optionally, a circle (centre and radius as
  /// shares of the size), encoded as `type`.
  async dropDrawn({ name, width, height, type, quality = 0.85, fill, circle }) {
    await this.page.evaluate(async ({ name, width, height, type, quality, fill, circle }) => {
      const canvas = new OffscreenCanvas(width, height);
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = fill; ctx.fillRect(0, 0, width, height);
      if (circle) { ctx.fillStyle = circle.colour; ctx.beginPath(); ctx.arc(circle.x * width, circle.y * height, circle.r * Math.min(width, height), 0, 7); ctx.fill(); }
      const blob = await canvas.convertToBlob({ type, quality });
      const dt = new DataTransfer();
      dt.items.add(new File([blob], name, { type }));
      for (const t of ["dragenter", "dragover", "drop"]) document.body.dispatchEvent(new DragEvent(t, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, { name, width, height, type, quality, fill, circle });
  }
  /// Drop the first sample scene and wait until it is encoded.
  async dropScene() {
    await this.drop(scene, "scene-1.png");
    await this.waitReady();
  }
  /// Until an image is encoded (with `name`: that one).
  async waitReady(name = null) {
    const sel = name ? `${id("image-ready")}:has-text("${name}")` : id("image-ready");
    await this.page.waitForSelector(sel, { timeout: TIMEOUT });
  }
  async error() {
    await this.page.waitForSelector(id("image-error"), { timeout: TIMEOUT });
    return this.page.textContent(id("image-error"));
  }
  defaultModelHintShown() { return this.page.isVisible(id("default-model-hint")); }
  async sample() { await this.page.click("button.sample"); }
}

/// The prompts: the box, the template, the link, the hints.
export class PromptPanel {
  constructor(page) { this.page = page; }
  box() { return this.page.locator(id("prompts")); }
  async fill(text) { await this.page.fill(id("prompts"), text); }
  value() { return this.page.$eval(id("prompts"), (e) => e.value); }
  emptyHintShown() { return this.page.isVisible(id("empty-hint")); }
  async template(on) { await this.page.setChecked(id("template"), on); }
  async copyLink() { await this.page.click(id("copy-link")); }
  sharedNote() { return this.page.evaluate((sel) => document.querySelector(sel)?.textContent ?? "", id("shared-note")); }
}

/// The settings: method, comparison, size, aspect, layers, opacity, colour map.
export class Settings {
  constructor(page) { this.page = page; }
  async size(v) { await this.page.selectOption(id("size"), v); }
  sizeValue() { return this.page.$eval(id("size"), (e) => e.value); }
  async method(v) { await this.page.selectOption(id("method"), v); }
  async compare(on) { await this.page.setChecked(id("compare"), on); }
  async keepAspect(on) { await this.page.setChecked(id("keep-aspect"), on); }
  async layers(v) { await this.page.selectOption(id("layers"), v); }
  async opacity(v) {
    await this.page.evaluate(({ sel, v }) => { const e = document.querySelector(sel); e.value = v; e.dispatchEvent(new Event("input", { bubbles: true })); },
      { sel: id("opacity"), v: String(v) });
  }
  /// What the controls hold (for a restored link).
  values() {
    return this.page.evaluate(() => ({
      size: document.querySelector('[data-testid="size"]').value,
      method: document.querySelector('[data-testid="method"]').value,
      layers: document.querySelector('[data-testid="layers"]').value,
      template: document.querySelector('[data-testid="template"]').checked,
    }));
  }
}

/// The model panel ("Use another model"): by URL, by file, what is loaded, its progress.
export class ModelPanel {
  constructor(page) { this.page = page; }
  /// Open the disclosure (a click on its summary would close it if open).
  async open() { await this.page.evaluate(() => { document.querySelector('[data-testid="other-model"]').open = true; }); }
  async loadUrl(url) {
    await this.open();
    await this.page.fill(id("model-url"), url);
    await this.page.click(id("load-url"));
  }
  /// The same, by script: works while the panel is hidden (a model is loading).
  async loadUrlNow(url) {
    await this.page.evaluate(({ url }) => {
      const input = document.querySelector('[data-testid="model-url"]');
      input.value = url;
      input.dispatchEvent(new Event("input", { bubbles: true }));
      document.querySelector('[data-testid="load-url"]').click();
    }, { url });
  }
  async backToDefault() {
    await this.open();
    await this.page.click('button:has-text("Back to the default model")');
  }
  /// The panel's text once a model is ready (notes included).
  async info() {
    await this.page.waitForSelector(id("model-info"), { timeout: TIMEOUT });
    return this.page.textContent(id("model-info"));
  }
  async waitForInfo(text) {
    await this.page.waitForFunction(({ sel, text }) => document.querySelector(sel)?.textContent.includes(text),
      { sel: id("model-info"), text }, { timeout: TIMEOUT });
  }
  /// The URLs the app keeps in the Cache API.
  storedUrls() {
    return this.page.evaluate(async () => (await (await caches.open("legrad-web-models-v1")).keys()).map((r) => r.url));
  }
}

/// The results: the cards, the large view, its layer strip, the value under the cursor, exports.
export class Results {
  constructor(page) { this.page = page; }
  card(prompt) { return `${id("map-card")}[data-prompt="${prompt}"]`; }
  prompts() { return this.page.$$eval(id("map-card"), (cs) => cs.map((c) => c.dataset.prompt)); }
  count() { return this.page.$$eval(id("map-card"), (cs) => cs.length); }
  async waitForCount(n, cmp = "==") {
    await this.page.waitForFunction(({ sel, n, cmp }) => { const k = document.querySelectorAll(sel).length; return cmp === ">" ? k > n : k === n; },
      { sel: id("map-card"), n, cmp }, { timeout: TIMEOUT });
    await this.waitIdle();
  }
  /// Until `prompt` has a card and nothing is being computed.
  async waitForCard(prompt) {
    await this.page.waitForFunction(({ sel, p }) => [...document.querySelectorAll(sel)].some((c) => c.dataset.prompt === p),
      { sel: id("map-card"), p: prompt }, { timeout: TIMEOUT });
    await this.waitIdle();
  }
  async waitIdle() {
    await this.page.waitForFunction((sel) => !document.querySelector(sel), id("working"), { timeout: TIMEOUT });
  }
  async waitWorking() { await this.page.waitForSelector(id("working"), { timeout: TIMEOUT }); }
  /// Until the shown answer's own words have come (they follow its maps).
  async waitForWords() {
    await this.page.waitForFunction((sel) => { const t = document.querySelector(sel); return t && t.dataset.seq !== "" && t.dataset.wordsSeq === t.dataset.seq; },
      id("timing"), { timeout: TIMEOUT });
  }
  async openCard(prompt) { await this.page.click(`${this.card(prompt)} canvas`); }
  score() { return this.page.textContent(id("score")); }
  async waitForAnnouncement(re) {
    await this.page.waitForFunction(({ sel, src }) => new RegExp(src).test(document.querySelector(sel).textContent),
      { sel: id("announce"), src: re.source }, { timeout: TIMEOUT });
  }

  /// Compare a card's canvas (or, with `selector`, that canvas) with a PNG, in the page: mean
  /// abs difference and share of pixels off by more than 2 levels.
  async compare(prompt, pngUrl, selector = null) {
    return await this.page.evaluate(async ({ prompt, pngUrl, selector }) => {
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
  /// The same, for the large view's canvas.
  compareMain(pngUrl) { return this.compare(null, pngUrl, id("main-canvas")); }

  /// The large view's canvas size and the input it shows.
  mainView() {
    return this.page.evaluate(() => {
      const v = document.querySelector('[data-testid="main-view"]');
      const c = document.querySelector('[data-testid="main-canvas"]');
      return { size: v?.dataset.size, input: v?.dataset.input, width: c?.width, height: c?.height,
        label: document.querySelector('[data-testid="main-label"]')?.textContent };
    });
  }
  async waitForMain(predicate, arg = null) {
    await this.page.waitForFunction(predicate, arg, { timeout: TIMEOUT });
  }
  async waitForLabel(prefixOrLayer) {
    await this.page.waitForFunction((t) => document.querySelector('[data-testid="main-label"]')?.textContent.includes(t), prefixOrLayer, { timeout: TIMEOUT });
  }
  mainCanvas() { return this.page.locator(id("main-canvas")); }
  /// Every 97th value of the large view's pixels (enough to tell two maps apart).
  mainPixels() {
    return this.page.$eval(id("main-canvas"), (c) => Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 97 === 0)));
  }
  cursorValue() {
    return this.page.$eval(id("cursor-value"), (e) => ({ x: +e.dataset.x, y: +e.dataset.y, text: e.textContent }));
  }
  /// The layer strip's buttons ("all", then each layer of the range).
  layerButtons() { return this.page.$$eval(id("layer"), (bs) => bs.map((b) => b.dataset.layer)); }
  async waitForLayerButtons(n) {
    await this.page.waitForFunction(({ sel, n }) => document.querySelectorAll(sel).length === n, { sel: id("layer"), n }, { timeout: TIMEOUT });
  }
  async showLayer(layer) { await this.page.click(`${id("layer")}[data-layer="${layer}"]`); }
  /// Download one of the large view's exports ("Overlay PNG", "Map PNG"); its path.
  async exportMain(label) {
    const download = this.page.waitForEvent("download", { timeout: 30_000 });
    await this.page.click(`${id("main-view")} button:has-text("${label}")`);
    return (await download).path();
  }
  /// The first export button of that label on the page.
  async exportFirst(label) {
    const download = this.page.waitForEvent("download", { timeout: 30_000 });
    await this.page.click(`button:has-text("${label}") >> nth=0`);
    await download;
  }
}

/// The status line: progress with its cancel button, timings, errors.
export class Status {
  constructor(page) { this.page = page; }
  async cancelDuring(stage) {
    const sel = `${id("progress")}[data-stage="${stage}"] ${id("cancel")}`;
    await this.page.waitForSelector(sel, { timeout: TIMEOUT });
    await this.page.click(id("cancel"));
  }
  /// The worker's wasm memory and the GPU pools' bytes, as reported with each answer.
  async memory() {
    const t = await this.page.$(id("timing"));
    const gpu = (await t.getAttribute("data-gpu-bytes")) || null;
    return { worker: Number(await t.getAttribute("data-wasm-bytes")), gpu: gpu === null ? null : Number(gpu) };
  }
  /// The text of any error shown (explain, engine, model), or null.
  async anyError() {
    for (const e of ["explain-error", "engine-error", "model-error"]) {
      if (await this.page.$(id(e))) return `${e}: ${await this.page.textContent(id(e)).catch(() => "")}`;
    }
    return null;
  }
}

/// The camera: on/off, pause, its choice of device, frames/s and latency.
export class Camera {
  constructor(page) { this.page = page; }
  async toggle() { await this.page.click(id("camera")); }
  async pause() { await this.page.click(id("camera-pause")); }
  async pressed() { return this.page.getAttribute(id("camera"), "aria-pressed"); }
  async frames() { return Number(await this.page.getAttribute(id("camera-stats"), "data-frames").catch(() => 0)); }
  async waitForFrames(n) {
    await this.page.waitForFunction(({ sel, n }) => Number(document.querySelector(sel)?.dataset.frames) >= n,
      { sel: id("camera-stats"), n }, { timeout: TIMEOUT });
  }
  stats() { return this.page.textContent(id("camera-stats")); }
  choices() { return this.page.$$eval(`${id("camera-choice")} option`, (o) => o.length); }
  async error() {
    await this.page.waitForSelector(id("camera-error"), { timeout: 30_000 });
    return this.page.textContent(id("camera-error"));
  }
  async waitStopped() { await this.page.waitForSelector(id("camera-pause"), { state: "detached", timeout: 10_000 }); }
}

/// The gallery: many images, one prompt; its progress, order, filter and ZIP.
export class Gallery {
  constructor(page) { this.page = page; }
  /// Pick files (or a folder: its path) with the gallery's folder picker.
  async pickFolder(path) { await this.page.setInputFiles(id("gallery-folder"), path); }
  /// Pick several files with the image panel's picker.
  async pickFiles(paths) { await this.page.setInputFiles(id("image-input"), paths); }
  /// Until every image of the run is answered; the progress line's numbers.
  async waitDone(total) {
    await this.page.waitForFunction(({ sel, total }) => {
      const p = document.querySelector(sel);
      return p && +p.dataset.total === total && +p.dataset.done === total && p.dataset.running === "false";
    }, { sel: id("gallery-progress"), total }, { timeout: TIMEOUT, polling: 250 });
    return this.progress();
  }
  progress() {
    return this.page.$eval(id("gallery-progress"), (p) => ({ done: +p.dataset.done, total: +p.dataset.total, perS: +p.dataset.perS,
      running: p.dataset.running === "true", engineWasm: +p.dataset.engineWasm, text: p.textContent }));
  }
  async sort(key) { await this.page.selectOption(id("gallery-sort"), key); }
  async prompt(p) { await this.page.selectOption(id("gallery-prompt"), p); }
  async filter(text) { await this.page.fill(id("gallery-filter"), text); }
  /// The cards shown, in order.
  cards() {
    return this.page.$$eval(id("gallery-card"), (cs) => cs.map((c) => ({ name: c.dataset.name, state: c.dataset.state,
      score: c.dataset.score === "" ? null : +c.dataset.score, presence: c.dataset.presence === "" ? null : +c.dataset.presence,
      text: c.textContent })));
  }
  async exportZip() {
    const [download] = await Promise.all([this.page.waitForEvent("download", { timeout: TIMEOUT }), this.page.click(id("gallery-export"))]);
    return download;
  }
  async open(name) { await this.page.click(`${id("gallery-card")}[data-name="${name}"] button`); }
}

/// The page, by its panels.
export class App {
  constructor(page, site) {
    this.page = page;
    this.site = site;
    this.header = new Header(page);
    this.image = new ImagePanel(page);
    this.prompts = new PromptPanel(page);
    this.settings = new Settings(page);
    this.model = new ModelPanel(page);
    this.results = new Results(page);
    this.status = new Status(page);
    this.camera = new Camera(page);
    this.gallery = new Gallery(page);
  }
  /// Open the site (with a query: `?backend=cpu`, `#prompts=…`) and wait for its model.
  async open(query = "") {
    await this.page.goto(this.site.url(query));
    await this.ready();
    return this;
  }
  /// The model is ready (its panel may be closed: a phone keeps it behind a disclosure).
  async ready() { await this.page.waitForSelector(id("model-info"), { state: "attached", timeout: TIMEOUT }); }
  /// Open the site and drop the first sample scene.
  async openWithScene(query = "") {
    await this.open(query);
    await this.image.dropScene();
    return this;
  }
  /// A new visit in the same browser context (its Cache API and service worker are kept).
  async another() { return new App(await this.page.context().newPage(), this.site); }
  /// The engine's worker (www/worker.js), for what only it can reach.
  worker() { return this.page.workers()[0]; }
  screenshot(path, fullPage = false) { return this.page.screenshot({ path, fullPage }); }
}
