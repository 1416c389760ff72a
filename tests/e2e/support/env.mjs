// Where things are, for the e2e suite and the browser benchmark.
//
//   LEGRAD_DIST  the built site (default dist/)
//   LEGRAD_CLI   the native CLI whose outputs the page's maps are compared with
//   CHROMIUM     the browser (default /usr/bin/chromium, Debian's)

import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";

export const here = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const root = resolve(here, "../..");
export const dist = resolve(process.env.LEGRAD_DIST ?? join(root, "dist"));
export const cli = resolve(process.env.LEGRAD_CLI ?? join(root, "target/release/legrad"));
export const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
/// Screenshots of each state (the README's pictures are picked from here by hand).
export const shots = join(here, "screenshots");
/// Files made during the run (models, native outputs), served under /files/.
export const work = join(tmpdir(), "legrad-e2e");
/// The fake camera's video, written by the global setup before the browser starts.
export const cameraFile = join(work, "camera.y4m");
/// The site is served from a sub-path, as on a static host.
export const SUB = "/legrad-web/";
/// The longest wait for one step of the page (SwiftShader is slow).
export const TIMEOUT = 300_000;
export const defaultModel = join(root, "www/models/default.safetensors");
export const scene = join(root, "www/samples/scene-1.png");

/// Chromium's flags for the suite and the benchmark: WebGPU on (SwiftShader without a GPU), no
/// background traffic (the privacy test counts requests).
export const chromiumArgs = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--disable-sync"];
