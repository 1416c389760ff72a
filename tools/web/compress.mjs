// Precompressed copies for static hosts that serve them (`cargo xtask dist`): beside each file
// of the site that compresses by a tenth or more, `NAME.br` (brotli, quality 11) and `NAME.gz`
// (gzip -9). A host that does not serve them ignores them; the page is the same either way.
//
//   node tools/web/compress.mjs dist
import { brotliCompressSync, gzipSync, constants } from "node:zlib";
import { readFileSync, readdirSync, statSync, writeFileSync, rmSync } from "node:fs";
import { join, extname, relative } from "node:path";

const dir = process.argv[2];
if (!dir) throw new Error("usage: node compress.mjs DIR");
const kinds = new Set([".html", ".js", ".mjs", ".css", ".wasm", ".json", ".webmanifest", ".svg", ".safetensors"]);
const walk = (d) => readdirSync(d).flatMap((n) => {
  const p = join(d, n);
  return statSync(p).isDirectory() ? walk(p) : [p];
});
let raw = 0, br = 0, gz = 0;
for (const path of walk(dir)) {
  if (path.endsWith(".br") || path.endsWith(".gz")) { rmSync(path); continue; }
  if (!kinds.has(extname(path)) || statSync(path).size < 1024) continue;
  const body = readFileSync(path);
  const b = brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: body.length } });
  const g = gzipSync(body, { level: 9 });
  if (Math.min(b.length, g.length) > 0.9 * body.length) continue;
  writeFileSync(path + ".br", b);
  writeFileSync(path + ".gz", g);
  raw += body.length; br += b.length; gz += g.length;
  console.log(`${String(body.length).padStart(12)} ${String(g.length).padStart(12)} gz ${String(b.length).padStart(12)} br  ${relative(dir, path)}`);
}
console.log(`${String(raw).padStart(12)} ${String(gz).padStart(12)} gz ${String(br).padStart(12)} br  compressed in all`);
