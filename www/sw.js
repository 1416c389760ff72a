// The app's service worker: after one visit the page opens, and explains, with the network off.
//
// Everything the site ships (the page, its JS and wasm, the engine's worker script, the default
// model, the samples, the manifest and icons) is cached at install in one cache per build,
// `legrad-shell-<VERSION>`, and served from it first. VERSION and FILES are written into the
// built copy of this file by tools/web/stamp-sw.mjs (a trunk post-build hook): VERSION is a hash
// of every file of the build, so a new build is a new service worker, which caches the new set
// whole and, once no page of the old version is open, takes over and deletes the old cache.
// There is no skipWaiting: a page of one build never gets the wasm of another. Models loaded by
// URL are kept by the app itself (its own Cache API entries, "legrad-web-models-v1"), never touched here.
const VERSION = "dev";
const FILES = [];
const SHELL = `legrad-shell-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES.map((f) => new Request(f, { cache: "reload" })))));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k.startsWith("legrad-shell-") && k !== SHELL).map((k) => caches.delete(k)))),
  );
});

const scope = new URL(self.registration.scope);
const shipped = new Set(FILES.map((f) => new URL(f, scope).pathname));

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== scope.origin) return;
  // The page itself under any query (?backend=cpu) or fragment; the build's files by path.
  const path = req.mode === "navigate" && url.pathname === scope.pathname ? new URL("index.html", scope).pathname : url.pathname;
  if (!shipped.has(path)) return;
  event.respondWith(
    caches.open(SHELL).then(async (cache) => (await cache.match(path)) ?? fetch(req)),
  );
});
