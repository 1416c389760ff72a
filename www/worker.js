// The engine's Web Worker: the same wasm module as the page, started in a worker scope, where
// its start function installs the engine's message handler instead of mounting the UI.
// Messages that arrive while the module loads are kept and replayed.
const pending = [];
self.onmessage = (event) => pending.push(event);

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

const { default: init } = await import("./legrad-web.js");
await init({ module_or_path: new URL("./legrad-web_bg.wasm", import.meta.url) });
for (const event of pending) self.onmessage(event);
