// Module Web Worker that owns one dpo-wgpu `Trainer` (WebAssembly + WebGPU).
// Started by web/dpo-trainer.js as `new Worker(url, { type: "module" })`; not meant to be used
// directly.
//
// Protocol (structured-clone messages):
//   page -> worker  { id, method, params }
//   page -> worker  { type: "cancel", target: id }      (unanswered: asks the generate call `id`
//                                                       to stop after the token in progress)
//   worker -> page  { id, ok: true, result } | { id, ok: false, error: string }
//   worker -> page  { type: "progress", id, file, url, loaded, total }   (during init with a
//                                                       modelUrl; total is null when unknown)
//   worker -> page  { type: "token", id, delta, token }  (during generate, one per new token)
//   worker -> page  { type: "fatal", error: string }   (unsolicited: a Rust panic / uncaught
//                                                       error; the instance is unusable after it)
// Methods:
//   init { jsUrl, wasmUrl, options, weights?, modelUrl? } -> info   (loads the wasm, fetches the
//        model files when modelUrl is given, Trainer.create)
//   step -> StepReport
//   evaluate -> metrics | null
//   generate { prompt, options } -> { text, promptTokens, newTokens, seconds, tokensPerSecond }
//   exportModel -> { [fileName]: Uint8Array }            (buffers are transferred)
//   info -> info
// Calls are answered in order; the page side sends one at a time.

import { NotFound, fetchModel } from "./model-source.js";

let trainer = null;
let fatalError = null;
let lastConsoleError = "";
const inFlight = new Set();
const cancelled = new Set();

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

// ---------------------------------------------------------------------------------------------
// HTTP downloads for model files (which files: web/model-source.js).

/**
 * GETs `url` into a Uint8Array (or text), reporting progress. A 404 throws NotFound; other
 * failures throw an Error naming the URL.
 */
async function download(url, file, onProgress, { text = false } = {}) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(
      `could not fetch ${url}: ${message(err)} (network error, or the server does not allow ` +
        "cross-origin requests (CORS))",
    );
  }
  if (response.status === 404) {
    response.body?.cancel().catch(() => {});
    throw new NotFound(`${url}: 404 Not Found`);
  }
  if (!response.ok) {
    response.body?.cancel().catch(() => {});
    const hint =
      response.status === 401 || response.status === 403
        ? " (on huggingface.co: the repository or file does not exist, is private, or is gated; " +
          "the browser sends no access token)"
        : "";
    throw new Error(`could not fetch ${url}: HTTP ${response.status} ${response.statusText}${hint}`);
  }
  const header = Number(response.headers.get("content-length"));
  // With a Content-Encoding the header counts compressed bytes: it is only a size hint.
  let total = Number.isFinite(header) && header > 0 ? header : null;
  let buffer = new Uint8Array(total ?? 1 << 20);
  let loaded = 0;
  let lastReport = 0;
  const report = (force) => {
    const now = Date.now();
    if (!force && now - lastReport < 100) return;
    lastReport = now;
    onProgress({ file, url, loaded, total });
  };
  report(true);
  if (response.body) {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (loaded + value.length > buffer.length) {
        // More bytes than announced (or no announcement): grow geometrically.
        const grown = new Uint8Array(Math.max(loaded + value.length, buffer.length * 2));
        grown.set(buffer.subarray(0, loaded));
        buffer = grown;
        if (total !== null && loaded + value.length > total) total = null;
      }
      buffer.set(value, loaded);
      loaded += value.length;
      report(false);
    }
  } else {
    const bytes = new Uint8Array(await response.arrayBuffer());
    buffer = bytes;
    loaded = bytes.length;
  }
  total = loaded;
  report(true);
  if (loaded !== buffer.length) buffer = buffer.slice(0, loaded);
  return text ? new TextDecoder().decode(buffer) : buffer;
}

// ---------------------------------------------------------------------------------------------

const methods = {
  async init({ jsUrl, wasmUrl, options, weights, modelUrl }, id) {
    if (trainer) throw new Error("already initialized");
    if (!self.navigator.gpu) {
      throw new Error("WebGPU is not available in this worker (navigator.gpu is missing)");
    }
    const wasm = await import(jsUrl);
    // Compile the module while the model downloads.
    const [fetched] = await Promise.all([
      modelUrl
        ? fetchModel(modelUrl, (url, file, opts) =>
            download(url, file, (p) => self.postMessage({ type: "progress", id, ...p }), opts),
          )
        : Promise.resolve(null),
      wasm.default({ module_or_path: wasmUrl }),
    ]);
    let opts = options ?? {};
    if (fetched) {
      // Texts given in options.model (e.g. a chatTemplate) take precedence over fetched ones.
      opts = fetched.model ? { ...opts, model: { ...fetched.model, ...(opts.model ?? {}) } } : opts;
      weights = fetched.weights;
    }
    const asBytes = (w) => {
      if (w instanceof ArrayBuffer) return new Uint8Array(w);
      if (ArrayBuffer.isView(w) && !(w instanceof Uint8Array)) {
        return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
      }
      return w;
    };
    weights = asBytes(weights);
    if (weights != null && !(weights instanceof Uint8Array) && typeof weights === "object") {
      // safetensors shards: { fileName: bytes }
      weights = Object.fromEntries(Object.entries(weights).map(([name, w]) => [name, asBytes(w)]));
    }
    trainer = await wasm.Trainer.create(opts, weights ?? undefined);
    return trainer.info();
  },
  step: () => need().step(),
  evaluate: () => need().evaluate(),
  info: () => need().info(),
  async generate({ prompt, options }, id) {
    // The wasm calls onToken synchronously for each new token: post it at once. Answering false
    // (the page cancelled this call) asks Trainer.generate to stop after this token.
    const onToken = (delta, token) => {
      self.postMessage({ type: "token", id, delta, token });
      return !cancelled.has(id);
    };
    try {
      return await need().generate(String(prompt ?? ""), options ?? {}, onToken);
    } finally {
      cancelled.delete(id);
    }
  },
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
  const data = event.data ?? {};
  if (data.type === "cancel") {
    if (inFlight.has(data.target)) cancelled.add(data.target);
    return;
  }
  const { id, method, params } = data;
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
    let result = await fn(params ?? {}, id);
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
