// Beyond the heatmap (issue 29): presence, the prompt's words, masks and the segmentation,
// each against the native engine's outputs (`legrad explain --masks`), by keyboard, in the link.

import { join } from "node:path";
import { readFileSync } from "node:fs";
import { test, expect } from "../support/fixtures.mjs";
import { defaultModel, scene, shots, work } from "../support/env.mjs";

const PROMPTS = ["blue circle", "orange triangle", "red ring", "green star"];

test("presence, words, masks and the segmentation match the native engine's; the threshold moves by keyboard and travels in the link", async ({ app, native, page }) => {
  await app.openWithScene();
  await app.settings.size("448");
  await app.prompts.fill(PROMPTS.join("\n"));
  await app.results.waitForCard("green star");
  await app.results.waitForWords();
  const dir = join(work, "masks");
  native.run(["explain", "--model", defaultModel, "--image", scene, ...PROMPTS.flatMap((p) => ["--prompt", p]), "--size", "448", "--masks", "--out", dir]);
  const scores = JSON.parse(readFileSync(join(dir, "scores.json"), "utf8")).prompts;
  const words = JSON.parse(readFileSync(join(dir, "words.json"), "utf8"));

  // Presence: the native value on every card; the absent shape is said to be so and dimmed.
  const cards = await page.$$eval('[data-testid="map-card"]', (cs) => cs.map((c) => ({
    prompt: c.dataset.prompt, presence: parseFloat(c.dataset.presence), absent: c.classList.contains("absent"),
    text: c.querySelector('[data-testid="presence"]').textContent,
    words: [...c.querySelectorAll('[data-testid="word"]')].map((w) => ({ word: w.textContent, relevance: parseFloat(w.dataset.relevance) })),
    label: c.querySelector('[data-testid="words"]')?.getAttribute("aria-label") ?? "",
  })));
  for (const s of scores) {
    const c = cards.find((c) => c.prompt === s.prompt);
    expect(Math.abs(c.presence - s.presence) < 2e-3, `${s.prompt}: presence ${c.presence}, native ${s.presence}`).toBe(true);
    expect(c.absent, `${s.prompt}: dimmed`).toBe(s.likely_absent);
    expect(c.text.includes("likely absent"), `${s.prompt}: "${c.text}"`).toBe(s.likely_absent);
  }
  expect(scores.find((s) => s.prompt === "green star").likely_absent, "no green star in the scene").toBe(true);
  expect(scores.filter((s) => s.likely_absent).length, "the three shapes there are present").toBe(1);
  // Words: the native relevance, word by word (what the shading and the hover title show), and
  // the values for screen readers.
  for (const w of words) {
    const c = cards.find((c) => c.prompt === w.prompt);
    expect(c.words.map((x) => x.word), w.prompt).toEqual(w.words.map((x) => x.word));
    const max = Math.max(...w.words.map((x) => x.relevance), 1e-6);
    for (const [i, x] of w.words.entries()) {
      const diff = Math.abs(c.words[i].relevance - x.relevance);
      expect(diff <= 2e-3 * max, `${w.prompt} / ${x.word}: ${c.words[i].relevance} vs native ${x.relevance}`).toBe(true);
    }
    expect(c.label, `${w.prompt}: read aloud`).toMatch(/^Word relevance: .*%/);
  }

  // The segmentation, reached by keyboard; its labels at the photo's size against the native
  // label image (within the resampling's rounding: under 1% of pixels differ).
  await page.focus('[data-testid="view-heatmap"]');
  await page.keyboard.press("ArrowRight"); // radio group: the next mode (mask)
  await page.keyboard.press("ArrowRight"); // segmentation
  await page.waitForSelector('[data-testid="main-view"][data-mode="segments"]');
  const legend = await page.$$eval('[data-testid="segment-legend-entry"]', (es) => es.map((e) => e.textContent));
  expect(legend.length, `legend: ${legend}`).toBe(4);
  expect(legend.find((l) => l.startsWith("green star")), "the legend says which is likely absent").toContain("likely absent");
  await app.screenshot(join(shots, "40-segmentation.png"), true);
  const downloads = [];
  page.on("download", (d) => downloads.push(d));
  await page.click('[data-testid="export-labels"]');
  await expect.poll(() => downloads.length, { timeout: 30_000 }).toBe(2);
  const png = downloads.find((d) => d.suggestedFilename().endsWith(".png"));
  const json = downloads.find((d) => d.suggestedFilename().endsWith(".json"));
  const legendJson = JSON.parse(readFileSync(await json.path(), "utf8"));
  const nativeLegend = JSON.parse(readFileSync(join(dir, "labels.json"), "utf8"));
  expect(legendJson.labels.map((l) => [l.label, l.prompt, l.color])).toEqual(nativeLegend.labels.map((l) => [l.label, l.prompt, l.color]));
  expect(legendJson.size).toEqual(nativeLegend.size);
  const compare = await page.evaluate(async ([a, b]) => {
    const pixels = async (bytes) => {
      const bmp = await createImageBitmap(new Blob([new Uint8Array(bytes)], { type: "image/png" }));
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      const g = c.getContext("2d");
      g.drawImage(bmp, 0, 0);
      return { w: bmp.width, h: bmp.height, d: g.getImageData(0, 0, bmp.width, bmp.height).data };
    };
    const [x, y] = [await pixels(a), await pixels(b)];
    if (x.w !== y.w || x.h !== y.h) return { error: `${x.w}x${x.h} vs ${y.w}x${y.h}` };
    let off = 0, labelled = 0;
    for (let i = 0; i < x.d.length; i += 4) { off += x.d[i] !== y.d[i]; labelled += y.d[i] > 0; }
    return { off: off / (x.w * x.h), labelled: labelled / (x.w * x.h) };
  }, [[...readFileSync(await png.path())], [...readFileSync(join(dir, "labels.png"))]]);
  expect(compare.error, compare.error).toBeUndefined();
  expect(compare.off < 0.01 && compare.labelled > 0.05, `labels vs native: ${JSON.stringify(compare)}`).toBe(true);

  // The threshold: a slider, by keyboard; what the view draws changes, nothing is recomputed;
  // the link carries it with the view.
  const before = await app.results.mainPixels();
  const seq = await page.getAttribute('[data-testid="results"]', "data-seq");
  await page.focus('[data-testid="mask-threshold"]');
  for (let i = 0; i < 4; i++) await page.keyboard.press("ArrowRight");
  await expect(page.locator('[data-testid="mask-threshold-value"]')).toHaveText("0.70");
  const after = await app.results.mainPixels();
  expect(after.some((p, i) => p !== before[i]), "a higher threshold draws smaller masks").toBe(true);
  expect(await page.getAttribute('[data-testid="results"]', "data-seq"), "no new explanation").toBe(seq);
  await app.prompts.copyLink();
  const link = await page.evaluate(() => location.href);
  expect(link, link).toContain("view=segments");
  expect(link, link).toContain("threshold=0.70");
  const opened = await app.another();
  await opened.page.goto(link);
  await opened.ready();
  await opened.image.dropScene();
  await opened.results.waitForCard("green star");
  await expect(opened.page.locator('[data-testid="view-segments"]')).toBeChecked();
  await expect(opened.page.locator('[data-testid="mask-threshold-value"]')).toHaveText("0.70");
  await opened.page.close();

  // Fewer prompts than shown (the words come after the maps; the cards of the longer answer go
  // before they hear of the shorter one): one card, its own words, the page still answering.
  await app.prompts.fill("red ring");
  await app.results.waitForCount(1);
  await app.results.waitForWords();
  const ring = words.find((w) => w.prompt === "red ring");
  const shown = await page.$$eval('[data-testid="map-card"] [data-testid="word"]', (ws) => ws.map((w) => w.textContent));
  expect(shown).toEqual(ring.words.map((x) => x.word));
  await app.prompts.fill("red ring\nblue circle");
  await app.results.waitForCount(2);
  await app.results.waitForWords();
});
