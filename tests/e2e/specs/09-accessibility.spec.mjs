// Keyboard, screen readers, axe-core; narrow screens.

import { join } from "node:path";
import { test, expect } from "../support/fixtures.mjs";
import { here, shots } from "../support/env.mjs";

test("accessible: every control by keyboard with its focus shown, results announced, no serious or critical axe violation", async ({ app, page }) => {
  await app.openWithScene();
  await app.prompts.fill("a blue circle\na red ring");
  await app.results.waitForCard("a red ring");
  await app.results.waitForAnnouncement(/Heatmaps ready for 2 prompts/);
  await app.model.open();
  // axe-core (npm, pinned) on the whole page: the results, the large view, the model panel.
  await page.addScriptTag({ path: join(here, "node_modules/axe-core/axe.min.js") });
  const violations = await page.evaluate(async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`));
  expect(violations, "axe: serious or critical").toEqual([]);
  // Tab through the page: every control is reached, and shows where the focus is.
  await page.evaluate(() => document.activeElement?.blur());
  const reached = new Map();
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press("Tab");
    const f = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const style = getComputedStyle(e);
      const name = e.dataset.testid ?? (e.tagName === "SUMMARY" ? "summary" : e.classList.contains("sample") ? "sample" : e.textContent.trim().slice(0, 20));
      return { name, shown: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2 };
    });
    if (f) reached.set(f.name, (reached.get(f.name) ?? true) && f.shown);
  }
  const want = ["image-input", "sample", "prompts", "template", "copy-link", "method", "compare", "size", "keep-aspect", "layers",
    "opacity", "colormap", "summary", "model-url", "load-url", "main-canvas", "Overlay PNG", "Map PNG", "layer", "heatmap"];
  expect(want.filter((w) => !reached.has(w)), `not reached by Tab; reached: ${[...reached.keys()]}`).toEqual([]);
  expect([...reached].filter(([, shown]) => !shown).map(([n]) => n), "focus not shown on").toEqual([]);
  // And usable: a card by Enter, the large view's value by the arrow keys.
  await page.focus(`${app.results.card("a red ring")} canvas`);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector('[data-testid="main-label"]').textContent.startsWith("a red ring"), null, { timeout: 10_000 });
  await page.focus('[data-testid="main-canvas"]');
  await page.keyboard.press("ArrowRight");
  expect((await app.results.cursorValue()).text.trim(), "value by keyboard").toMatch(/^value \d\.\d{3} at \(\d+, \d+\)$/);
  await page.focus('[data-testid="layer"][data-layer="all"]');
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /layer \d+$/.test(document.querySelector('[data-testid="main-label"]').textContent), null, { timeout: 10_000 });
  await app.screenshot(join(shots, "23-keyboard.png"));
});

test("narrow screen", async ({ app, page }) => {
  await app.open("?backend=cpu");
  await page.setViewportSize({ width: 390, height: 844 });
  await app.screenshot(join(shots, "20-narrow.png"), true);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  expect(overflow, "the page scrolls sideways on a narrow screen").toBe(false);
});
