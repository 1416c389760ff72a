// The suite's fixtures: the static server and the native CLI once per worker, a fresh context
// and page per test (Playwright's own), the page objects over it.

import { test as base, expect } from "@playwright/test";
import { execFileSync } from "node:child_process";
import { readFileSync, existsSync } from "node:fs";
import { inflateSync } from "node:zlib";
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

/// A 16-bit greyscale PNG's values as 0..1 (the maps' export): { width, height, data }.
export function readPng16(path) {
  const b = readFileSync(path);
  const [width, height, depth, colour] = [b.readUInt32BE(16), b.readUInt32BE(20), b[24], b[25]];
  if (depth !== 16 || colour !== 0) throw new Error(`${path}: not a 16-bit greyscale PNG (depth ${depth}, colour ${colour})`);
  const idat = [];
  for (let at = 8; at < b.length;) {
    const len = b.readUInt32BE(at);
    if (b.toString("latin1", at + 4, at + 8) === "IDAT") idat.push(b.subarray(at + 8, at + 8 + len));
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 2;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= 2 ? out[y * stride + x - 2] : 0;
      const up = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= 2 && y > 0 ? out[(y - 1) * stride + x - 2] : 0;
      const p = a + up - c;
      const pred = [0, a, up, (a + up) >> 1, Math.abs(p - a) <= Math.abs(p - up) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - up) <= Math.abs(p - c) ? up : c][filter];
      out[y * stride + x] = (line[x] + pred) & 0xff;
    }
  }
  const data = new Float32Array(width * height);
  for (let i = 0; i < data.length; i++) data[i] = out.readUInt16BE(2 * i) / 65535;
  return { width, height, data };
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
