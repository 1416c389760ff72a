// A plain static file server, as a static host: the built site under a sub-path, extra files
// (models for the URL tests, the native engine's outputs) under /files/, and the same files
// under /files/slow/ at 64 KB every 100 ms (so that a test can cancel mid-download). Used by the
// e2e fixtures and by the browser benchmark.

import { createServer } from "node:http";
import { readFileSync, existsSync, statSync } from "node:fs";
import { join, extname } from "node:path";
import { gzipSync } from "node:zlib";

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
  ".png": "image/png", ".json": "application/json", ".safetensors": "application/octet-stream",
  ".webmanifest": "application/manifest+json" };

const compressible = new Set([".html", ".js", ".wasm", ".css", ".json", ".webmanifest", ".svg"]);

/// Serves `dist` under `sub` and `work` under /files/. Returns { base, served, setSwVersion, close }:
/// `served` records every request that reached the server; `setSwVersion(v)` serves the service
/// worker with another version, as a new build's (null: as built). With `compress`, the site is
/// served as a compressing host serves it: a precompressed `.br` or `.gz` beside a file when the
/// browser accepts it (`cargo xtask dist` writes them), otherwise text and wasm gzipped on the fly.
export async function startServer({ dist, work, sub, compress = false }) {
  const served = [];
  let swVersion = null;
  const server = createServer((req, res) => {
    served.push({ method: req.method, url: req.url, headers: req.headers });
    const url = decodeURIComponent(req.url.split("?")[0]);
    let path = null;
    if (url.startsWith(sub)) path = join(dist, url.slice(sub.length) || "index.html");
    else if (url.startsWith("/files/slow/")) path = join(work, url.slice(12));
    else if (url.startsWith("/files/")) path = join(work, url.slice(7));
    if (!path || !existsSync(path) || statSync(path).isDirectory()) {
      if (path && existsSync(join(path, "index.html"))) path = join(path, "index.html");
      else { res.writeHead(404); res.end("not found"); return; }
    }
    let body = readFileSync(path);
    if (swVersion && url === sub + "sw.js") body = Buffer.from(body.toString().replace(/^const VERSION = .*;$/m, `const VERSION = "${swVersion}";`));
    const headers = { "content-type": types[extname(path)] ?? "application/octet-stream" };
    if (compress && url.startsWith(sub) && compressible.has(extname(path))) {
      const accepts = String(req.headers["accept-encoding"] ?? "");
      headers["vary"] = "Accept-Encoding";
      if (/\bbr\b/.test(accepts) && existsSync(path + ".br")) {
        body = readFileSync(path + ".br");
        headers["content-encoding"] = "br";
      } else if (/\bgzip\b/.test(accepts)) {
        body = existsSync(path + ".gz") ? readFileSync(path + ".gz") : gzipSync(body, { level: 9 });
        headers["content-encoding"] = "gzip";
      }
    }
    headers["content-length"] = body.length;
    res.writeHead(200, headers);
    if (!url.startsWith("/files/slow/")) { res.end(body); return; }
    let at = 0;
    const tick = setInterval(() => {
      if (res.destroyed || at >= body.length) { clearInterval(tick); res.end(); return; }
      res.write(body.subarray(at, at + 65536));
      at += 65536;
    }, 100);
    res.on("close", () => clearInterval(tick));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    served,
    setSwVersion: (v) => { swVersion = v; },
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}
