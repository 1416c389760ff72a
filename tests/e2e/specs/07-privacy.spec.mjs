// Nothing the user gives the page leaves it.

import { join } from "node:path";
import { App } from "../support/app.mjs";
import { test, expect } from "../support/fixtures.mjs";
import { root } from "../support/env.mjs";

test("nothing leaves the page: every request of a session (camera included) is the site's own or the model asked for", async ({ browser, native, site }) => {
  const modelUrl = native.urlModel();
  // A fresh context (empty cache), every request recorded twice: by the browser (the page, its
  // worker; Playwright reports both) and by the server (whatever reached it). The prompt and the
  // image's name are unusual strings, searched for in every URL, header and body.
  const ctx = await browser.newContext();
  const seen = [];
  // A request from a worker has no frame (the service worker's throws when asked for one).
  const noFrame = (r) => { try { return !r.frame(); } catch { return true; } };
  ctx.on("request", (r) => seen.push({ url: r.url(), method: r.method(), headers: r.headers(), body: r.postDataBuffer(), worker: noFrame(r) }));
  ctx.on("websocket", (w) => seen.push({ url: w.url(), method: "WEBSOCKET", headers: {}, body: null }));
  const from = site.served.length;
  const secretPrompt = "zebra-quartz-prompt-7731";
  const secretName = "private-photo-4411.png";
  try {
    const app = new App(await ctx.newPage(), site);
    await app.open();
    await app.image.sample();
    await app.image.waitReady();
    await app.image.drop(join(root, "www/samples/scene-3.png"), secretName);
    await app.image.waitReady(secretName);
    await app.prompts.fill(`a red circle\n${secretPrompt}`);
    await app.results.waitForCard(secretPrompt);
    await app.settings.compare(true);
    await app.results.waitForCount(2, ">");
    await app.settings.compare(false);
    for (const label of ["Overlay PNG", "Map PNG"]) await app.results.exportFirst(label);
    // The camera, a few frames explained with the secret prompt among the prompts.
    await ctx.grantPermissions(["camera"]);
    await app.camera.toggle();
    await app.camera.waitForFrames(3);
    await app.camera.toggle();
    await app.model.loadUrl(modelUrl);
    await app.header.waitForModel(modelUrl);
    await app.prompts.fill(secretPrompt);
    await app.results.waitForCard(secretPrompt);
  } finally {
    await ctx.close();
  }

  const own = site.url();
  const bad = [];
  const leaks = (r) => {
    const text = [r.url, JSON.stringify(r.headers ?? {}), r.body ? r.body.toString("latin1") : ""].join(" ");
    return [secretPrompt, encodeURIComponent(secretPrompt), secretName, encodeURIComponent(secretName)].some((s) => text.includes(s));
  };
  for (const r of seen) {
    if (r.url.startsWith("data:") || r.url.startsWith("blob:")) continue; // in the page's memory, never sent
    const allowed = (r.url.startsWith(own) || r.url === modelUrl) && r.method === "GET" && !r.body;
    if (!allowed || leaks(r)) bad.push(`${r.method} ${r.url}`);
  }
  for (const r of site.served.slice(from)) {
    const full = site.base + r.url;
    if (!(full.startsWith(own) || full === modelUrl) || r.method !== "GET" || leaks({ url: r.url, headers: r.headers })) {
      bad.push(`server saw ${r.method} ${r.url}`);
    }
  }
  expect(bad, "requests that should not be").toEqual([]);
  // The recorder sees the worker's fetches too (the model), so an empty list of bad ones means
  // something.
  const urls = seen.map((r) => r.url);
  expect(urls.some((u) => u.includes("models/default.safetensors")), `the default model's fetch was recorded: ${urls.join(", ")}`).toBe(true);
  expect(urls, "the URL model's fetch was recorded").toContain(modelUrl);
  console.log(`     ${seen.length} requests recorded by the browser, ${site.served.length - from} by the server; all the site's own or the model asked for`);
});
