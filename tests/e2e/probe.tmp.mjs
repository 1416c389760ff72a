import { chromium } from "@playwright/test";
import { startServer } from "./support/server.mjs";
import { chromiumArgs, chromiumPath, dist, root } from "./support/env.mjs";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
const work = join(tmpdir(), "legrad-bench");
const server = await startServer({ dist, work, sub: "/app/" });
const browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs });
const page = await (await browser.newContext()).newPage();
page.on("console", (m) => { const t = m.text(); if (t.includes("PROBE") || t.includes("HELPER") || t.includes("runs on the engine")) console.log(t); });
page.on("worker", (w) => w.on("console", (m) => { const t = m.text(); if (t.includes("PROBE") || t.includes("HELPER")) console.log("[w]", t); }));
await page.goto(`${server.base}/app/${process.argv[2] ?? ""}`);
await page.waitForSelector('[data-testid="model-info"]', { timeout: 600000 });
const url = `${server.base}/files/vit-b16-random-q8.safetensors`;
await page.click('[data-testid="other-model"] summary');
await page.fill('[data-testid="model-url"]', url);
await page.click('[data-testid="load-url"]');
await page.waitForFunction((u) => document.querySelector('[data-testid="model-name"]')?.textContent === u, url, { timeout: 600000 });
console.log("info:", await page.textContent('[data-testid="model-info"]'));
const bytes = Array.from(readFileSync(join(root, "www/samples/scene-1.png")));
for (const size of [224, 224, 224, 448]) {
  await page.fill('[data-testid="prompts"]', "");
  await page.selectOption('[data-testid="size"]', String(size));
  await page.evaluate(({ bytes }) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], "scene-1.png", { type: "image/png" }));
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, { bytes });
  await page.waitForSelector('[data-testid="image-ready"]', { timeout: 600000 });
  await page.fill('[data-testid="prompts"]', "a red circle " + Math.random());
  await page.waitForFunction(() => document.querySelector('[data-testid="map-card"]') && !document.querySelector('[data-testid="working"]'), null, { timeout: 600000 });
  const t = await page.$eval('[data-testid="timing"]', (e) => ({ image: +e.dataset.imageMs, explain: +e.dataset.explainMs }));
  console.log(size, JSON.stringify(t));
}
await browser.close();
await server.close?.();
process.exit(0);
