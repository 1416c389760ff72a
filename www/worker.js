// The engine's Web Worker: the same wasm module as the page, started in a worker scope, where
// its start function installs the engine's message handler instead of mounting the UI.
// Messages that arrive while the module loads are kept and replayed.
const pending = [];
self.onmessage = (event) => pending.push(event);
const { default: init } = await import("./legrad-web.js");
await init({ module_or_path: new URL("./legrad-web_bg.wasm", import.meta.url) });
for (const event of pending) self.onmessage(event);
