// A phone: 390x844 CSS pixels, touch. The large view comes first and stays in sight while the
// prompt box has focus; a tap reads the value under the finger; a bad drop keeps the map; the
// dark scheme renders (the README's pictures are picked from its screenshots).

import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { test, expect } from "../support/fixtures.mjs";
import { here, shots, work } from "../support/env.mjs";

const PHONE = { viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true, deviceScaleFactor: 2 };

/// Where an element is against the viewport.
const box = (page, sel) => page.evaluate((sel) => {
  const r = document.querySelector(sel).getBoundingClientRect();
  return { top: r.top, bottom: r.bottom, height: r.height, inner: window.innerHeight };
}, sel);

test.describe("on a phone", () => {
  test.use(PHONE);

  test("on a phone the large view stays in sight above the prompt box while typing, and shows each new map", async ({ app, page }) => {
    await app.open();
    // The phone's order: the large view's place first, then the prompts, the image, settings and model closed.
    const order = await page.evaluate(() => ["placeholder", "prompt-panel", "image-panel"].map((c) => document.querySelector(`.${c}`).getBoundingClientRect().top));
    expect(order[0] < order[1] && order[1] < order[2], `placeholder, prompts, image from the top: ${order}`).toBe(true);
    expect(await page.evaluate(() => [...document.querySelectorAll(".disclosure")].map((d) => d.open)), "settings and model closed").toEqual([false, false]);
    // A sample by a tap, then the prompt box by a tap, as a thumb would.
    await page.tap(".sample >> nth=0");
    await app.image.waitReady();
    await page.tap('[data-testid="prompts"]');
    await page.keyboard.type("a red ring");
    await app.results.waitForCard("a red ring");
    await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]')?.textContent.startsWith("a red ring"), null, { timeout: 60_000 });
    const inSight = async (what) => {
      // Let the page's own scroll settle (it keeps the view above the box).
      await page.waitForTimeout(300);
      const v = await box(page, '[data-testid="main-view"]');
      const t = await box(page, '[data-testid="prompts"]');
      expect(v.top >= -1 && v.bottom <= v.inner + 1, `${what}: the large view ${JSON.stringify(v)} in the viewport`).toBe(true);
      expect(t.top >= v.bottom - 1 && t.top < t.inner, `${what}: the prompt box ${JSON.stringify(t)} under it, not covered`).toBe(true);
    };
    await inSight("first prompt");
    const first = await app.results.mainPixels();
    // The next prompt, typed where the first was: the view shows its map.
    await page.keyboard.press("Control+A");
    await page.keyboard.type("a blue circle");
    await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]')?.textContent.startsWith("a blue circle"), null, { timeout: 60_000 });
    await inSight("second prompt");
    expect(await app.results.mainPixels(), "the large view shows the new map").not.toEqual(first);
    await app.screenshot(join(shots, "30-phone.png"));
    // The cards scroll sideways: several prompts stay one row high.
    await page.keyboard.press("Control+A");
    await page.keyboard.type("a blue circle\na red ring\nan orange triangle\nsomething green");
    await app.results.waitForCard("something green");
    const rows = await page.evaluate(() => new Set([...document.querySelectorAll('[data-testid="map-card"]')].map((c) => Math.round(c.getBoundingClientRect().top))).size);
    expect(rows, "the cards in one row").toBe(1);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    expect(overflow, "the page itself does not scroll sideways").toBe(false);
  });

  test("on a phone a tap and a drag on the large view read the value under the finger", async ({ app, page }) => {
    await app.openWithScene();
    await app.prompts.fill("a blue circle");
    await app.results.waitForCard("a blue circle");
    // Out of the prompt box first: with it focused the view is pinned and the page scrolls under it.
    await page.evaluate(() => document.activeElement?.blur());
    await page.waitForTimeout(300);
    let c = await app.results.mainCanvas().boundingBox();
    await page.tap('[data-testid="main-canvas"]', { position: { x: c.width * 0.25, y: c.height * 0.5 } });
    const tapped = await app.results.cursorValue();
    expect(tapped.text.trim(), "a tap reads the value").toMatch(/^value \d\.\d{3} at \(\d+, \d+\)$/);
    // A drag: touch points moved across the canvas (CDP's touch events, as a finger's).
    const cdp = await page.context().newCDPSession(page);
    c = await app.results.mainCanvas().boundingBox();
    const at = (fx) => [{ x: c.x + c.width * fx, y: c.y + c.height * 0.5 }];
    await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: at(0.2) });
    for (const fx of [0.3, 0.5, 0.7]) await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: at(fx) });
    // The reading follows the finger (the page handles the moves as they come).
    await page.waitForFunction((x) => +document.querySelector('[data-testid="cursor-value"]').dataset.x > x + 10, tapped.x, { timeout: 10_000 });
    await page.waitForTimeout(200);
    const dragged = await app.results.cursorValue();
    await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
    await page.waitForTimeout(200);
    const kept = await app.results.cursorValue();
    expect(kept.text, "the value stays after the finger lifts").toEqual(dragged.text);
  });

  test("on a phone a bad drop leaves the previous map on screen", async ({ app, page }) => {
    await app.openWithScene();
    await app.prompts.fill("a blue circle");
    await app.results.waitForCard("a blue circle");
    const before = await app.results.mainPixels();
    const bad = join(work, "phone-page-saved-as.jpg");
    writeFileSync(bad, "<!DOCTYPE html><html><body>not a picture</body></html>");
    await page.setInputFiles('[data-testid="image-input"]', bad);
    const msg = await app.image.error();
    expect(msg.includes("still in use"), `message: ${msg}`).toBe(true);
    expect(await app.results.mainPixels(), "the large view after the bad file").toEqual(before);
    const v = await page.$eval('[data-testid="main-canvas"]', (e) => e.getBoundingClientRect().height);
    expect(v > 100, "the large view is still drawn").toBe(true);
  });
});

test("the dark scheme renders: dark page, readable text (axe), the maps and their legend unchanged in colour", async ({ browser, site }) => {
  const colours = {};
  for (const [scheme, options, shot] of [
    ["dark", { viewport: { width: 1280, height: 900 } }, "31-dark.png"],
    ["dark", PHONE, "32-phone-dark.png"],
    ["light", { viewport: { width: 1280, height: 900 } }, null],
  ]) {
    const context = await browser.newContext({ ...options, colorScheme: scheme });
    const page = await context.newPage();
    const { App } = await import("../support/app.mjs");
    const app = new App(page, site);
    await app.openWithScene();
    await app.prompts.fill("a red ring\na blue circle");
    await app.results.waitForCard("a blue circle");
    await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]')?.textContent.startsWith("a red ring"), null, { timeout: 60_000 });
    const seen = await page.evaluate(() => {
      const lum = (c) => {
        const [r, g, b] = c.match(/\d+/g).map(Number);
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
      };
      const legend = document.querySelector('[data-testid="legend"] canvas');
      const px = legend.getContext("2d").getImageData(0, 0, 128, 1).data;
      return {
        body: lum(getComputedStyle(document.body).backgroundColor),
        text: lum(getComputedStyle(document.body).color),
        legend: [px[0], px[1], px[2], px[508], px[509], px[510]],
      };
    });
    colours[`${scheme} ${options.viewport.width}`] = seen;
    await page.addScriptTag({ path: join(here, "node_modules/axe-core/axe.min.js") });
    const contrast = await page.evaluate(async () => (await axe.run(document, { runOnly: ["color-contrast"], resultTypes: ["violations"] })).violations
      .flatMap((v) => v.nodes.map((n) => n.target.join(" "))));
    expect(contrast, `${scheme} at ${options.viewport.width}: text below the contrast bar`).toEqual([]);
    if (shot) await page.screenshot({ path: join(shots, shot) });
    await context.close();
  }
  const dark = colours["dark 1280"], light = colours["light 1280"];
  expect(dark.body < 0.15 && dark.text > 0.75, `dark: ${JSON.stringify(dark)}`).toBe(true);
  expect(light.body > 0.9 && light.text < 0.2, `light: ${JSON.stringify(light)}`).toBe(true);
  expect(dark.legend, "the legend's colours are the map's, whatever the scheme").toEqual(light.legend);
});
