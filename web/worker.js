// Module Web Worker that owns one dpo-wgpu `Trainer` (WebAssembly + WebGPU).
// Started by web/dpo-trainer.js as `new Worker(url, { type: "module" })`; not meant to be used
// directly.
//
// Protocol (structured-clone messages):
//   page -> worker  { id, method, params }
//   page -> worker  { type: "cancel", target: id }      (unanswered: asks the call `id` to stop:
//                                                       a generation after the token in progress,
//                                                       a download at once)
//   worker -> page  { id, ok: true, result } | { id, ok: false, error: string }
//   worker -> page  { type: "progress", id, file, url, loaded, total }   (during init, while model
//                                                       files download or are read; total is null
//                                                       when unknown)
//   worker -> page  { type: "token", id, delta, token }  (during generate, one per new token)
//   worker -> page  { type: "fatal", error: string }   (unsolicited: a Rust panic / uncaught
//                                                       error; the instance is unusable after it)
// Methods:
//   init { jsUrl, wasmUrl, source, resumeFrom? } -> info   loads the wasm, fetches or reads the
//        model (source: { options, modelUrl?, modelFiles?, weights?, refModelUrl?, refWeights?,
//        loraAdapter? }), Trainer.create
//   initSaved { jsUrl, wasmUrl, name } -> info   the same from a run saved in OPFS
//   step -> StepReport;  evaluate -> metrics | null;  info -> info
//   generate { prompt, options } -> { text, promptTokens, newTokens, seconds, tokensPerSecond }
//   exportModel { options } -> { [fileName]: Uint8Array }  (buffers are transferred)
//   checkpoint -> { [fileName]: Uint8Array }               (buffers are transferred)
//   addPairs { rows, settings } -> info                   a new round from the current model
//   saveToOpfs { name, extra } -> { name, step, totalSteps, savedAt, extra }
// Calls are answered in order; the page side sends one at a time.

import { NotFound, fetchModel, modelFromFiles, optionKey } from "./model-source.js";
import { loadRun, saveRun } from "./opfs-store.js";

let trainer = null;
let wasm = null;
// How to rebuild the run (for OPFS saves): create options and where the weights came from. A
// new round (addPairs) replaces it with the round's start model; sourceId counts the changes.
let source = null;
let sourceId = 0;
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

/** Reads one local File (a model from disk), reporting progress like a download. */
async function readLocal(file, name, onProgress, { text = false } = {}) {
  const total = file.size;
  onProgress({ file: name, url: null, loaded: 0, total });
  const bytes = new Uint8Array(await file.arrayBuffer());
  onProgress({ file: name, url: null, loaded: total, total });
  return text ? new TextDecoder().decode(bytes) : bytes;
}

function asBytes(w) {
  if (w instanceof ArrayBuffer) return new Uint8Array(w);
  if (ArrayBuffer.isView(w) && !(w instanceof Uint8Array)) {
    return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  }
  if (w != null && !(w instanceof Uint8Array) && typeof w === "object") {
    // safetensors shards or adapter files: { fileName: bytes }
    return Object.fromEntries(Object.entries(w).map(([name, b]) => [name, asBytes(b)]));
  }
  return w;
}

/** A model as { model: texts, weights }: fetched from a URL, read from Files, or as given. */
async function obtainModel({ url, files, weights, texts }, progress) {
  let fetched = null;
  if (url) {
    fetched = await fetchModel(url, (u, file, opts) => download(u, file, progress, opts));
  } else if (files?.length) {
    fetched = await modelFromFiles(files, (file, name, opts) => readLocal(file, name, progress, opts));
  }
  if (!fetched) return { texts, weights: asBytes(weights) };
  // Texts given in options (e.g. a chatTemplate) take precedence over fetched ones.
  return {
    texts: fetched.model ? { ...fetched.model, ...(texts ?? {}) } : texts,
    weights: fetched.weights,
  };
}

async function start({ jsUrl, wasmUrl, source: given, resumeFrom }, id) {
  if (trainer) throw new Error("already initialized");
  if (!self.navigator.gpu) {
    throw new Error("WebGPU is not available in this worker (navigator.gpu is missing)");
  }
  const glue = await import(jsUrl);
  const progress = (p) => self.postMessage({ type: "progress", id, ...p });
  const options = { ...(given.options ?? {}) };
  // Compile the module while the models download.
  const [model, reference] = await Promise.all([
    obtainModel(
      { url: given.modelUrl, files: given.modelFiles, weights: given.weights, texts: options.model },
      progress,
    ),
    given.refModelUrl || given.refWeights
      ? obtainModel({ url: given.refModelUrl, weights: given.refWeights, texts: options.refModel }, progress)
      : Promise.resolve(null),
    glue.default({ module_or_path: wasmUrl }),
  ]);
  if (model.texts) options.model = model.texts;
  if (reference?.texts) options.refModel = reference.texts;
  // The biggest buffer this device binds (wgpu asks the adapter for all it has): a model that
  // needs more is refused before its weights are loaded, instead of failing on the GPU.
  // (Not saved with the run: a resumed run gets the limits of the device it resumes on.)
  const limits = (await self.navigator.gpu.requestAdapter())?.limits;
  const maxBuffer = limits ? Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) : undefined;
  const createOptions = { ...options, memoryLimits: { maxBuffer, ...(options.memoryLimits ?? {}) } };
  const created = await glue.Trainer.create(createOptions, model.weights ?? undefined, {
    refWeights: reference?.weights ?? undefined,
    resumeFrom: asBytes(resumeFrom) ?? undefined,
    loraAdapter: asBytes(given.loraAdapter) ?? undefined,
  });
  wasm = glue;
  trainer = created;
  // What a save needs to rebuild this run: the texts and bytes as loaded (a URL is kept as a
  // URL: resuming downloads it again).
  source = {
    options: given.modelUrl ? { ...options, model: given.options?.model } : options,
    modelUrl: given.modelUrl ?? null,
    weights: given.modelUrl ? null : model.weights ?? null,
    refModelUrl: given.refModelUrl ?? null,
    refWeights: given.refModelUrl ? null : reference?.weights ?? null,
    loraAdapter: asBytes(given.loraAdapter) ?? null,
  };
  if (!source.options.model) delete source.options.model;
  if (!source.options.refModel || given.refModelUrl) delete source.options.refModel;
  sourceId += 1;
  return trainer.info();
}

/** Transfers the buffers of a { fileName: Uint8Array } answer instead of copying them. */
function transferFiles(files) {
  return { result: files, transfer: Object.values(files).map((bytes) => bytes.buffer) };
}

const methods = {
  init: (params, id) => start(params, id),
  async initSaved({ jsUrl, wasmUrl, name }, id) {
    const saved = await loadRun(name);
    return start({ jsUrl, wasmUrl, source: saved.source, resumeFrom: saved.checkpoint }, id);
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
  async exportModel({ options }) {
    return transferFiles(await need().exportModel(options ?? {}));
  },
  async checkpoint() {
    return transferFiles(await need().checkpoint());
  },
  async addPairs({ rows, settings }) {
    const info = need().info();
    // The round starts from the model as it is now: that is what a save must rebuild.
    const start = await need().exportModel({ merge: false });
    const roundInfo = await need().addPairs(rows, settings ?? {});
    const options = { ...source.options, ...(settings ?? {}), trainData: rows };
    delete options.evalData;
    delete options.valSplit;
    if (info.lora) {
      const { "adapter_config.json": config, "adapter_model.safetensors": weights } = start;
      source = { ...source, options, loraAdapter: { "adapter_config.json": config, "adapter_model.safetensors": weights } };
      delete source.options.loraRank;
    } else {
      const text = (name) => (start[name] ? new TextDecoder().decode(start[name]) : undefined);
      const texts = {};
      for (const name of Object.keys(start)) {
        if (name !== "model.safetensors") texts[optionKey(name)] = text(name);
      }
      source = { ...source, options: { ...options, model: texts }, modelUrl: null, weights: start["model.safetensors"] };
    }
    sourceId += 1;
    return roundInfo;
  },
  async saveToOpfs({ name, extra }) {
    const info = need().info();
    const checkpoint = await need().checkpoint();
    return saveRun(name, { source, sourceId, checkpoint, info, extra });
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
    if (method === "exportModel" || method === "checkpoint") ({ result, transfer } = result);
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
