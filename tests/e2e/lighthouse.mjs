// Lighthouse (npm, pinned in package.json) on the built site, served as a compressing static
// host serves it (support/server.mjs with `compress`: the precompressed `.br`/`.gz` files that
// `cargo xtask dist` writes, or gzip on the fly), in the system's Chromium, with Lighthouse's
// default (simulated) throttling. Prints each form factor's scores and metrics; asserts nothing.
//
//   LEGRAD_DIST=dist node tests/e2e/lighthouse.mjs [--form-factors mobile,desktop] [--runs N]
//       [--label TEXT] [--json FILE] [--save-lhr DIR]
//
// With --runs N each form factor is run N times and the median run (by performance score) is
// printed. Run by `cargo xtask bench-web --lighthouse`.

import lighthouse from "lighthouse";
import desktopConfig from "lighthouse/core/config/desktop-config.js";
import * as chromeLauncher from "chrome-launcher";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { startServer } from "./support/server.mjs";
import { chromiumPath, dist } from "./support/env.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const formFactors = arg("--form-factors", "mobile,desktop").split(",");
const runs = +arg("--runs", "1");
const label = arg("--label", dist);
const jsonOut = arg("--json", null);
const lhrDir = arg("--save-lhr", null);

const work = join(tmpdir(), "legrad-lighthouse");
mkdirSync(work, { recursive: true });
const server = await startServer({ dist, work, sub: "/app/", compress: true });
const url = `${server.base}/app/`;
const flags = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-dev-shm-usage", "--no-first-run"];

const METRICS = [
  ["first-contentful-paint", "FCP", "ms"],
  ["largest-contentful-paint", "LCP", "ms"],
  ["total-blocking-time", "TBT", "ms"],
  ["cumulative-layout-shift", "CLS", ""],
  ["speed-index", "SI", "ms"],
  ["interactive", "TTI", "ms"],
];
const CATEGORIES = ["performance", "accessibility", "best-practices", "seo"];

async function once(formFactor) {
  const chrome = await chromeLauncher.launch({ chromePath: chromiumPath, chromeFlags: flags });
  try {
    const config = formFactor === "desktop" ? desktopConfig : undefined;
    const result = await lighthouse(url, { port: chrome.port, output: "json", logLevel: "error", formFactor: formFactor === "desktop" ? "desktop" : "mobile" }, config);
    const lhr = result.lhr;
    if (lhrDir) writeFileSync(join(lhrDir, `lhr-${formFactor}.json`), JSON.stringify(lhr));
    if (lhr.runtimeError) throw new Error(`Lighthouse: ${lhr.runtimeError.code}: ${lhr.runtimeError.message}`);
    const scores = Object.fromEntries(CATEGORIES.map((c) => [c, lhr.categories[c]?.score ?? null]));
    const metrics = Object.fromEntries(METRICS.map(([id]) => [id, lhr.audits[id]?.numericValue ?? null]));
    const failing = Object.values(lhr.audits)
      .filter((a) => a.score !== null && a.score < 1 && ["binary", "numeric"].includes(a.scoreDisplayMode) && !METRICS.some(([id]) => id === a.id))
      .map((a) => `${a.id} (${a.score})`);
    const lcpItems = lhr.audits["largest-contentful-paint-element"]?.details?.items ?? [];
    const lcpElement = lcpItems.flatMap((i) => i.items ?? []).find((i) => i.node)?.node?.snippet ?? null;
    return { formFactor, scores, metrics, failing, lcpElement };
  } finally {
    await chrome.kill();
  }
}

const fmt = (v, unit) => (v === null ? "-" : unit === "ms" ? `${(v / 1000).toFixed(2)} s` : v.toFixed(3));
const all = [];
try {
  for (const ff of formFactors) {
    const results = [];
    for (let i = 0; i < runs; i++) results.push(await once(ff));
    results.sort((a, b) => a.scores.performance - b.scores.performance);
    const r = results[Math.floor(results.length / 2)];
    all.push({ ...r, runs: results.map((x) => x.scores.performance) });
    console.log(`lighthouse ${label} ${ff}: ` + CATEGORIES.map((c) => `${c} ${r.scores[c]}`).join(", ")
      + (runs > 1 ? ` (performance over ${runs} runs: ${results.map((x) => x.scores.performance).join(" ")})` : ""));
    console.log(`lighthouse ${label} ${ff}: ` + METRICS.map(([id, name, unit]) => `${name} ${fmt(r.metrics[id], unit)}`).join(", "));
    if (r.lcpElement) console.log(`lighthouse ${label} ${ff}: LCP element ${r.lcpElement}`);
    if (r.failing.length) console.log(`lighthouse ${label} ${ff}: audits below 1: ${r.failing.join(", ")}`);
  }
} finally {
  await server.close();
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify(all, null, 2));
