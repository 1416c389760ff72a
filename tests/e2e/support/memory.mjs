// Memory over a long session: samples of the worker's and the page's wasm memory, the page's
// JS heap after a collection and the GPU pools, and the check that they stay flat.

import { expect } from "@playwright/test";

/// Records the page's wasm instance when trunk starts it (before the page's scripts run), so
/// that its memory can be read later.
export async function watchPageWasm(page) {
  await page.addInitScript(() => addEventListener("TrunkApplicationStarted", (e) => { window.__uiWasm = e.detail.wasm; }));
}

/// One sample of everything measured, after a garbage collection (DevTools protocol).
export async function sampleMemory(app, cdp, step) {
  await cdp.send("HeapProfiler.collectGarbage");
  const heap = (await cdp.send("Runtime.getHeapUsage")).usedSize;
  const ui = await app.page.evaluate(() => window.__uiWasm?.memory?.buffer.byteLength ?? 0);
  const { worker, gpu } = await app.status.memory();
  return { step, worker, ui, heap, gpu };
}

/// No growth after warm-up beyond the bounds in MB (README, Reliability): the largest value
/// after the warm-up sample, minus that sample.
export function expectFlat(series, warmStep, bounds) {
  const warm = series.find((s) => s.step === warmStep) ?? series[0];
  const after = series.filter((s) => s.step >= warm.step);
  const parts = [];
  for (const [key, boundMb] of Object.entries(bounds)) {
    if (warm[key] === null) continue;
    const growth = Math.max(...after.map((s) => s[key])) - warm[key];
    parts.push(`${key} +${(growth / 1048576).toFixed(1)} MB (bound ${boundMb})`);
    expect(growth <= boundMb * 1048576, `${key} grew by ${(growth / 1048576).toFixed(1)} MB after warm-up (bound ${boundMb} MB)`).toBe(true);
  }
  console.log(`     after warm-up (${warm.step} edits): ${parts.join(", ")}`);
}

/// The series as a table on the test's output.
export function printSeries(series) {
  const mb = (b) => (b === null ? "-" : (b / 1048576).toFixed(1));
  console.log("     edits  worker wasm MB  page wasm MB  page JS heap MB  GPU pools MB");
  for (const s of series) {
    console.log(`     ${String(s.step).padStart(5)}  ${mb(s.worker).padStart(14)}  ${mb(s.ui).padStart(12)}  ${mb(s.heap).padStart(15)}  ${mb(s.gpu).padStart(12)}`);
  }
}
