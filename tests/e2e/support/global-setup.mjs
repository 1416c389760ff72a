// Before the browser starts: a clean screenshots folder, the work folder, the fake camera's video.

import { writeFileSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { cameraFile, shots, work, dist, cli } from "./env.mjs";

/// A blue circle crossing a grey frame from left to right and back, 320x240, 10 frames/s,
/// 80 frames (y4m, 4:2:0, full range); Chromium plays it in a loop as the camera.
function writeCameraVideo(path) {
  const [W, H, N] = [320, 240, 80];
  const yuv = (r, g, b) => [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b].map((v) => Math.max(0, Math.min(255, Math.round(v))));
  const bg = yuv(205, 205, 205), fg = yuv(31, 79, 224);
  const parts = [Buffer.from(`YUV4MPEG2 W${W} H${H} F10:1 Ip A1:1 C420jpeg\n`)];
  for (let f = 0; f < N; f++) {
    const t = f < N / 2 ? f / (N / 2 - 1) : (N - 1 - f) / (N / 2 - 1);
    const cx = 50 + t * (W - 100), cy = H / 2, r = 38;
    const y = Buffer.alloc(W * H), u = Buffer.alloc((W / 2) * (H / 2)), v = Buffer.alloc((W / 2) * (H / 2));
    for (let j = 0; j < H; j++) for (let i = 0; i < W; i++) y[j * W + i] = ((i - cx) ** 2 + (j - cy) ** 2 < r * r ? fg : bg)[0];
    for (let j = 0; j < H / 2; j++) for (let i = 0; i < W / 2; i++) {
      const c = (2 * i + 1 - cx) ** 2 + (2 * j + 1 - cy) ** 2 < r * r ? fg : bg;
      u[j * (W / 2) + i] = c[1]; v[j * (W / 2) + i] = c[2];
    }
    parts.push(Buffer.from("FRAME\n"), y, u, v);
  }
  writeFileSync(path, Buffer.concat(parts));
}

export default function globalSetup() {
  for (const [what, path] of [["the built site (LEGRAD_DIST)", dist], ["the native CLI (LEGRAD_CLI)", cli]]) {
    if (!existsSync(path)) throw new Error(`${what} is not at ${path}: run the suite with \`cargo xtask test\``);
  }
  rmSync(shots, { recursive: true, force: true });
  mkdirSync(shots, { recursive: true });
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  writeCameraVideo(cameraFile);
}
