// The e2e suite: the built site (dist/) in the system's headless Chromium, WebGPU on SwiftShader.
// Run by `cargo xtask test` (which builds the site and the CLI first); by hand:
//
//   LEGRAD_DIST=dist LEGRAD_CLI=$CARGO_TARGET_DIR/release/legrad npx playwright test [-g "name"]
//
// One worker: the machine has two cores, and the engine in the page uses both.

import { defineConfig } from "@playwright/test";
import { cameraFile, chromiumArgs, chromiumPath } from "./support/env.mjs";

export default defineConfig({
  testDir: "specs",
  testMatch: /.*\.spec\.mjs$/,
  globalSetup: "./support/global-setup.mjs",
  workers: 1,
  fullyParallel: false,
  retries: 0,
  forbidOnly: true,
  // The soak is the longest test (minutes on this machine; README, Reliability).
  timeout: 30 * 60_000,
  reporter: [["list"]],
  reportSlowTests: null,
  outputDir: "test-results",
  use: {
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    screenshot: "only-on-failure",
    launchOptions: {
      executablePath: chromiumPath,
      args: [...chromiumArgs,
        // A name for the test server that is not localhost: served from it over plain HTTP, the
        // page is not a secure context (no Cache API, no WebGPU), as on a plain-HTTP host.
        "--host-resolver-rules=MAP legrad-insecure.test 127.0.0.1",
        // A camera that plays the global setup's video (the permission is still the page's to get).
        "--use-fake-device-for-media-stream", `--use-file-for-fake-video-capture=${cameraFile}`],
    },
  },
});
