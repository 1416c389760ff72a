// Prompts typed into the page: each map equals the native engine's, the last edit wins, cards
// follow the prompts' order.

import { join } from "node:path";
import { test, expect, expectSamePicture } from "../support/fixtures.mjs";
import { scene, shots } from "../support/env.mjs";

test("drop an image, type a prompt: the map equals the native engine's", async ({ app, native }) => {
  await app.openWithScene("?backend=webgpu");
  expect(await app.prompts.emptyHintShown(), "a hint for the empty prompt").toBe(true);
  // The default model starts at its own size, and says what it knows once an image is in.
  expect(await app.settings.sizeValue(), "the default model's starting size").toBe("224");
  expect(await app.image.defaultModelHintShown(), "a word on what the default model knows").toBe(true);
  await app.screenshot(join(shots, "03-image-no-prompt.png"));
  await app.settings.size("448");
  await app.prompts.fill("a red circle");
  await app.results.waitForCard("a red circle");
  expectSamePicture(await app.results.compare("a red circle", native.explain(scene, "a red circle", "first")), "canvas vs native");
  await app.screenshot(join(shots, "04-heatmap.png"));
});

test("ten prompts typed quickly: the last one's map is shown", async ({ app, native, page }) => {
  await app.openWithScene();
  await app.settings.size("448");
  const words = ["circle", "square", "triangle", "star", "cross", "ring", "red thing", "blue", "green star", "a yellow triangle"];
  for (const w of words) {
    await app.prompts.box().fill(w);
    await page.waitForTimeout(30);
  }
  const last = words[words.length - 1];
  await app.results.waitForCard(last);
  await page.waitForTimeout(1500); // a stale answer arriving late would replace the map here
  expect(await app.results.prompts(), "the cards shown").toEqual([last]);
  expectSamePicture(await app.results.compare(last, native.explain(scene, last, "last")), "canvas vs native");
  await app.screenshot(join(shots, "05-last-prompt-wins.png"));
});

test("several prompts, one map each, and the method comparison", async ({ app, native }) => {
  await app.openWithScene();
  await app.settings.size("448");
  await app.prompts.fill("a red square\nsomething blue");
  await app.results.waitForCard("something blue");
  expect(await app.results.count(), "cards for 2 prompts").toBe(2);
  await app.settings.compare(true);
  await app.results.waitForCount(5);
  await app.screenshot(join(shots, "06-compare-methods.png"), true);
  await app.settings.compare(false);
  // Reordered, with one new prompt: the worker explains only the new one and reuses the maps it
  // has; every card must still be its own prompt's map.
  await app.prompts.fill("something blue\na green star\na red square");
  await app.results.waitForCard("a green star");
  const shown = await app.results.prompts();
  expect(shown, "the cards, in the prompts' order").toEqual(["something blue", "a green star", "a red square"]);
  for (const [i, p] of shown.entries()) {
    expectSamePicture(await app.results.compare(p, native.explain(scene, p, `several-${i}`)), `${p}: canvas vs native`);
  }
});
