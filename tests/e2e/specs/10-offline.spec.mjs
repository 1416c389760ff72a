// The service worker: offline after one visit, installable, replaced by a new build.

import { join } from "node:path";
import { test, expect, expectSamePicture } from "../support/fixtures.mjs";
import { SUB, scene, shots } from "../support/env.mjs";

test("after one visit the page opens and explains offline; installable; a new build replaces the old cache", async ({ app, context, native, site }) => {
  await app.open();
  // The service worker is active once everything the site ships is in its cache.
  const cached = await app.page.evaluate(async () => {
    await navigator.serviceWorker.ready;
    const keys = (await caches.keys()).filter((k) => k.startsWith("legrad-shell-"));
    const cache = await caches.open(keys[0]);
    return { keys, files: (await cache.keys()).map((r) => new URL(r.url).pathname) };
  });
  const oldShell = cached.keys[0];
  expect(cached.keys.length === 1 && /^legrad-shell-[0-9a-f]{16}$/.test(oldShell), `shell caches: ${cached.keys}`).toBe(true);
  for (const f of ["index.html", "legrad-web.js", "legrad-web_bg.wasm", "legrad-web-engine.js", "legrad-web-engine_bg.wasm", "worker.js", "models/default.safetensors", "samples/scene-1.png", "manifest.webmanifest", "icons/icon-512.png"]) {
    expect(cached.files, `${f} is cached`).toContain(SUB + f);
  }
  // Installable: a manifest with a name, a start URL, standalone display and icons that load.
  const manifest = await app.page.evaluate(async () => {
    const href = document.querySelector('link[rel="manifest"]').href;
    const m = await (await fetch(href)).json();
    const icons = await Promise.all(m.icons.map(async (i) => (await fetch(new URL(i.src, href))).ok));
    return { ...m, iconsOk: icons };
  });
  expect(manifest.name === "LeGrad Web" && manifest.start_url && manifest.display === "standalone"
    && manifest.icons.some((i) => i.sizes === "512x512") && manifest.iconsOk.every(Boolean), `manifest: ${JSON.stringify(manifest)}`).toBe(true);
  await app.page.close();
  // Offline: the page opens, loads the default model, explains; the server sees nothing.
  await context.setOffline(true);
  const seen = site.served.length;
  const offline = await app.another();
  await offline.openWithScene("?backend=cpu");
  await offline.settings.size("448");
  await offline.prompts.fill("a blue circle");
  await offline.results.waitForCard("a blue circle");
  // Nothing the page asks for reaches the server. The one request allowed is Chromium's own
  // update check of the service worker's script: creating the engine's helper workers (new
  // clients of the service worker) triggers it from the browser process, which Playwright's
  // offline emulation does not cover; with the network really off it fails, and the installed
  // worker stays (checked: with `?threads=1`, no helpers, nothing reaches the server at all).
  const asked = site.served.slice(seen).map((q) => q.url).filter((u) => !u.endsWith(SUB + "sw.js"));
  expect(asked, "offline, what the server got").toEqual([]);
  await offline.screenshot(join(shots, "22-offline.png"));
  // The map made offline is the native engine's (compared once the network is back, to fetch it).
  await context.setOffline(false);
  expectSamePicture(await offline.results.compare("a blue circle", native.explain(scene, "a blue circle", "offline")), "offline map vs native");
  await offline.page.close();
  // A new build (the service worker's version changes): once no page of the old one is open,
  // the new one takes over and the old cache is gone.
  site.setSwVersion("0123456789abcdef");
  try {
    let page = await context.newPage();
    await page.goto(site.url());
    await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()).update());
    await page.waitForFunction(async () => !!(await navigator.serviceWorker.getRegistration()).waiting
      || (await caches.keys()).includes("legrad-shell-0123456789abcdef"), null, { timeout: 300_000, polling: 200 });
    await page.close();
    const next = await app.another();
    page = next.page;
    await page.goto(site.url());
    const shellCaches = () => page.evaluate(async () => (await caches.keys()).filter((k) => k.startsWith("legrad-shell-")));
    await page.waitForFunction(async () => {
      const keys = (await caches.keys()).filter((k) => k.startsWith("legrad-shell-"));
      return keys.length === 1 && keys[0] === "legrad-shell-0123456789abcdef";
    }, null, { timeout: 60_000, polling: 250 }).catch(async () => { throw new Error(`shell caches after the update: ${await shellCaches()} (old ${oldShell})`); });
    await next.ready();
  } finally {
    site.setSwVersion(null);
  }
});
