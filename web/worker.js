// Module Web Worker that owns one dpo-wgpu `Trainer` (WebAssembly + WebGPU).
// Started by web/dpo-trainer.js as `new Worker(url, { type: "module" })`; not meant to be used
// directly.
//
// Protocol (structured-clone messages):
//   page -> worker  { id, method, params }
//   worker -> page  { id, ok: true, result } | { id, ok: false, error: string }
//   worker -> page  { type: "fatal", error: string }   (unsolicited: a Rust panic / uncaught
//                                                       error; the instance is unusable after it)
// Methods:
//   init { jsUrl, wasmUrl, options, weights? } -> info   (loads the wasm, Trainer.create)
//   step -> StepReport
//   evaluate -> metrics | null
//   exportModel -> { [fileName]: Uint8Array }            (buffers are transferred)
//   info -> info
// Calls are answered in order; the page side sends one at a time.

let trainer = null;
let fatalError = null;
let lastConsoleError = "";
const inFlight = new Set();

// console_error_panic_hook reports a Rust panic through console.error just before the wasm
// traps with an uninformative "unreachable"; keep the text so the page gets the real reason.
const consoleError = console.error.bind(console);
console.error = (...args) => {
  lastConsoleError = args.map((a) => (a instanceof Error ? a.message : String(a))).join(" ");
  consoleError(...args);
};

function message(err) {
  if (err instanceof Error) return err.message || String(err);
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

function fail(err) {
  let text = message(err);
  if (/unreachable|RuntimeError/i.test(text) && lastConsoleError) {
    text = `${text} — ${lastConsoleError}`;
  }
  if (!fatalError) fatalError = `worker crashed: ${text}`;
  for (const id of inFlight) self.postMessage({ id, ok: false, error: fatalError });
  inFlight.clear();
  self.postMessage({ type: "fatal", error: fatalError });
}

self.addEventListener("error", (event) => {
  event.preventDefault();
  fail(event.error ?? event.message);
});
self.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  fail(event.reason);
});

function need() {
  if (!trainer) throw new Error("the trainer is not initialized (call init first)");
  return trainer;
}

const methods = {
  async init({ jsUrl, wasmUrl, options, weights }) {
    if (trainer) throw new Error("already initialized");
    if (!self.navigator.gpu) {
      throw new Error("WebGPU is not available in this worker (navigator.gpu is missing)");
    }
    const wasm = await import(jsUrl);
    await wasm.default({ module_or_path: wasmUrl });
    trainer = await wasm.Trainer.create(options ?? {}, weights ?? undefined);
    return trainer.info();
  },
  step: () => need().step(),
  evaluate: () => need().evaluate(),
  info: () => need().info(),
  async exportModel() {
    const files = await need().exportModel();
    const out = {};
    const transfer = [];
    for (const [name, bytes] of Object.entries(files)) {
      out[name] = bytes;
      transfer.push(bytes.buffer);
    }
    return { result: out, transfer };
  },
};

self.addEventListener("message", async (event) => {
  const { id, method, params } = event.data ?? {};
  if (fatalError) {
    self.postMessage({ id, ok: false, error: fatalError });
    return;
  }
  const fn = methods[method];
  if (!fn) {
    self.postMessage({ id, ok: false, error: `unknown method ${method}` });
    return;
  }
  inFlight.add(id);
  try {
    let result = await fn(params ?? {});
    let transfer = [];
    if (method === "exportModel") ({ result, transfer } = result);
    if (!inFlight.delete(id)) return; // already answered by fail()
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    if (err instanceof WebAssembly.RuntimeError) {
      fail(err); // a trap (Rust panic): the module's state is lost
      return;
    }
    if (!inFlight.delete(id)) return;
    let text = message(err);
    if (/unreachable/i.test(text) && lastConsoleError) text = `${text} — ${lastConsoleError}`;
    self.postMessage({ id, ok: false, error: text });
  }
});
