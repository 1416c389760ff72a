// The sample buttons' pictures (www/samples/thumbs/): each sample scaled to 112x112 (two device
// pixels per CSS pixel of the 56-pixel button) and encoded as WebP in headless Chromium, so that
// the page's first visit fetches a few kilobytes for them instead of the full samples (one is
// 580 KB of noise); a sample itself is fetched when it is picked. Run once when a sample changes:
//
//   node tools/web/make-thumbs.mjs      (needs tests/e2e's npm packages: cargo xtask setup)
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const { chromium } = await import(join(root, "tests/e2e/node_modules/@playwright/test/index.mjs"));
const dir = join(root, "www/samples");
mkdirSync(join(dir, "thumbs"), { recursive: true });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--headless=new", "--no-sandbox"] });
const page = await browser.newPage();
for (const name of readdirSync(dir).filter((n) => n.endsWith(".png"))) {
  const b64 = readFileSync(join(dir, name)).toString("base64");
  const webp = await page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes]), { resizeWidth: 112, resizeHeight: 112, resizeQuality: "high" });
    const canvas = new OffscreenCanvas(112, 112);
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    const blob = await canvas.convertToBlob({ type: "image/webp", quality: 0.85 });
    return btoa(String.fromCharCode(...new Uint8Array(await blob.arrayBuffer())));
  }, b64);
  const out = join(dir, "thumbs", name.replace(/\.png$/, ".webp"));
  writeFileSync(out, Buffer.from(webp, "base64"));
  console.log(out, Buffer.from(webp, "base64").length, "bytes");
}
await browser.close();
