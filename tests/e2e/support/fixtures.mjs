// The suite's fixtures: the static server and the native CLI once per worker, a fresh context
// and page per test (Playwright's own), the page objects over it.

import { test as base, expect } from "@playwright/test";
import { execFileSync } from "node:child_process";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { App } from "./app.mjs";
import { startServer } from "./server.mjs";
import { SUB, cli, defaultModel, dist, here, work } from "./env.mjs";

/// The native engine, whose outputs the page's maps are compared with.
class Native {
  constructor(site) { this.site = site; this.made = new Set(); }
  run(args) { return execFileSync(cli, args); }
  /// `legrad explain` into work/<tag>/ (the default model, 448, unless `extra` says otherwise);
  /// the URL of its overlay.
  explain(image, prompt, tag, extra = []) {
    this.run(["explain", "--model", defaultModel, "--image", image, "--prompt", prompt, "--size", "448", ...extra, "--out", join(work, tag)]);
    return this.site.file(`${tag}/0.png`);
  }
  /// A random model (tests/e2e/<config>.json, that seed) written as an OpenCLIP checkpoint under
  /// work/, once per run; its file name.
  model(config, seed, name) {
    const out = join(work, name);
    if (!this.made.has(out) || !existsSync(out)) {
      this.run(["convert", "--model", `random:${join(here, config)}:${seed}`, "--format", "openclip", "--out", out]);
      this.made.add(out);
    }
    return name;
  }
  /// The small random ViT the URL tests load; its URL.
  urlModel() { return this.site.file(this.model("url-model.json", 3, "url-model.safetensors")); }
}

/// Reads a 2-D f32 .npy as { shape, data }.
export function readNpy(path) {
  const b = readFileSync(path);
  const len = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + len).toString("latin1");
  const shape = header.match(/shape': \(([^)]*)\)/)[1].split(",").filter((x) => x.trim()).map(Number);
  const data = new Float32Array(b.buffer.slice(b.byteOffset + 10 + len, b.byteOffset + b.length));
  return { shape, data };
}

/// Width, height and bit depth of a PNG file (its IHDR).
export function pngInfo(path) {
  const b = readFileSync(path);
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20), depth: b[24] };
}

/// A canvas comparison's verdict: the same picture as the native engine's, within rounding.
export function expectSamePicture(r, what) {
  expect(r.error, `${what}: ${r.error}`).toBeUndefined();
  expect(r.mean < 0.5 && r.off < 0.005, `${what}: mean abs diff ${r.mean}, ${(100 * r.off).toFixed(2)}% off by > 2`).toBe(true);
}

export const test = base.extend({
  site: [async ({}, use) => {
    const server = await startServer({ dist, work, sub: SUB });
    await use({
      ...server,
      sub: SUB,
      /// The site's URL with a query (`?backend=cpu`).
      url: (query = "") => server.base + SUB + query,
      /// A file under work/, as served.
      file: (name) => `${server.base}/files/${name}`,
    });
    await server.close();
  }, { scope: "worker" }],
  native: [async ({ site }, use) => { await use(new Native(site)); }, { scope: "worker" }],
  /// The page objects over the test's fresh page; uncaught errors in the page are printed.
  app: async ({ page, site }, use, testInfo) => {
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await use(new App(page, site));
    if (errors.length) console.log(`page errors in "${testInfo.title}":\n${errors.join("\n")}`);
  },
});

export { expect };
