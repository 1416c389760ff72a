// trunk post-build hook (Trunk.toml): write the engine module's size into worker.js (its
// download progress), then the build's version and file list into sw.js.
//
// VERSION is the first 16 hex digits of a SHA-256 over every file's path and bytes (sw.js
// itself left out), so that any change to the build is a new service worker (www/sw.js).
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative, sep } from "node:path";

const dir = process.env.TRUNK_STAGING_DIR;
if (!dir) throw new Error("TRUNK_STAGING_DIR is not set: run this as trunk's post_build hook");
const files = [];
const walk = (d) => {
  for (const name of readdirSync(d).sort()) {
    const p = join(d, name);
    if (statSync(p).isDirectory()) walk(p);
    else files.push(relative(dir, p).split(sep).join("/"));
  }
};
walk(dir);
const engine = join(dir, "legrad-web-engine_bg.wasm");
const worker = join(dir, "worker.js");
const workerSrc = readFileSync(worker, "utf8");
const stamped = workerSrc.replace(/^const ENGINE_BYTES = .*;$/m, `const ENGINE_BYTES = ${statSync(engine).size};`);
if (stamped === workerSrc) throw new Error("worker.js has no ENGINE_BYTES line to fill in");
writeFileSync(worker, stamped);
const shipped = files.filter((f) => f !== "sw.js");
const hash = createHash("sha256");
for (const f of shipped) {
  hash.update(f + "\0");
  hash.update(readFileSync(join(dir, f)));
}
const version = hash.digest("hex").slice(0, 16);
const sw = join(dir, "sw.js");
const src = readFileSync(sw, "utf8");
const list = shipped.map((f) => `./${f}`);
const out = src
  .replace(/^const VERSION = .*;$/m, `const VERSION = ${JSON.stringify(version)};`)
  .replace(/^const FILES = .*;$/m, `const FILES = ${JSON.stringify(list)};`);
if (out === src) throw new Error("sw.js has no VERSION/FILES lines to fill in");
writeFileSync(sw, out);
console.log(`sw.js: version ${version}, ${list.length} files`);
