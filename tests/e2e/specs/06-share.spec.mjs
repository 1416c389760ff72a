// A shared link: the prompts and settings travel, the image never does.

import { join } from "node:path";
import { test, expect } from "../support/fixtures.mjs";
import { shots } from "../support/env.mjs";

test("a copied link restores the prompts and settings, never the image", async ({ app, native }) => {
  await app.openWithScene("?backend=cpu");
  await app.prompts.fill("a red ring\nsomething blue");
  await app.settings.size("336");
  await app.settings.method("GradCAM");
  await app.settings.layers("-3");
  await app.prompts.template(false);
  await app.results.waitForCard("something blue");
  await app.prompts.copyLink();
  const link = await app.page.evaluate(() => location.href);
  expect(link.includes("#") && link.includes("prompts="), `the page's URL: ${link}`).toBe(true);
  expect(link, "the image is not named in the link").not.toContain("scene-1");
  const opened = await app.another();
  await opened.page.goto(link);
  await opened.ready();
  expect(await opened.prompts.value(), "prompts restored").toBe("a red ring\nsomething blue");
  expect(await opened.settings.values(), "settings restored").toEqual({ size: "336", method: "GradCAM", layers: "-3", template: false });
  expect(await opened.prompts.sharedNote(), "the note on the image").toContain("drop it again");
  await opened.screenshot(join(shots, "19-opened-from-link.png"));
  await opened.page.close();
  // A link with a model URL loads that model.
  const url = native.urlModel();
  const withModel = await app.another();
  await withModel.page.goto(app.site.url(`?backend=cpu#prompts=a+cat&model=${encodeURIComponent(url)}`));
  await withModel.header.waitForModel(url);
  expect(await withModel.prompts.value(), "prompt from the link with a model").toBe("a cat");
});
