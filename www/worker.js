// The engine's Web Worker: loads the engine's own wasm module (crates/legrad-web-engine), whose
// start function installs the engine's message handler (or a helper's, in a worker named
// "legrad-helper"). Messages that arrive while the module loads are kept and replayed.
//
// While the module downloads, the page is told how far it is: `{ legradEngineLoad: { done,
// total } }` (bytes of the module as built; `total` is stamped by tools/web/stamp-sw.mjs, 0 when
// unknown), which the page's bridge turns into progress. Helpers stay quiet.
const ENGINE_BYTES = 0;
const pending = [];
self.onmessage = (event) => pending.push(event);
const helper = self.name === "legrad-helper";

// Every GPU device the engine asks for, and whether one was lost (a driver reset, the browser
// reclaiming it, `destroy()`): a lost device answers reads with zeros or errors, so the engine
// checks `legradGpuLost` after each step on the GPU. Tests take the device away by calling
// `destroy()` on `legradGpuDevices`.
self.legradGpuDevices = [];
self.legradGpuLost = null;
if (self.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    self.legradGpuDevices.push(device);
    device.lost.then((info) => { self.legradGpuLost = info.message || String(info.reason) || "lost"; });
    return device;
  };
}

/// The module's response, its bytes counted as they arrive (and still compiled as they stream).
async function counted(url) {
  if (!helper) self.postMessage({ legradEngineLoad: { done: 0, total: ENGINE_BYTES } });
  const response = await fetch(url);
  if (!response.ok || !response.body || helper) return response;
  let done = 0;
  let last = 0;
  const report = (force) => {
    const now = performance.now();
    if (force || now - last > 100) {
      last = now;
      self.postMessage({ legradEngineLoad: { done, total: ENGINE_BYTES } });
    }
  };
  report(true);
  const counter = new TransformStream({
    transform(chunk, controller) {
      done += chunk.byteLength;
      report(false);
      controller.enqueue(chunk);
    },
    flush() { report(true); },
  });
  return new Response(response.body.pipeThrough(counter), { headers: { "content-type": "application/wasm" } });
}

const { default: init } = await import("./legrad-web-engine.js");
await init({ module_or_path: counted(new URL("./legrad-web-engine_bg.wasm", import.meta.url)) });
for (const event of pending) self.onmessage(event);
