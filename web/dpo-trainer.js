/**
 * dpo-trainer.js — DPO (Direct Preference Optimization) fine-tuning on WebGPU, in a Web Worker.
 *
 * An ES module with no dependencies. It spawns `worker.js` (next to this file) as a module
 * worker; the worker loads `dpo-wgpu.js` + `dpo-wgpu_bg.wasm` (by default from the folder above
 * this file, i.e. the root of trunk's `dist/`) and runs all training off the main thread.
 *
 * @example
 * import { DpoTrainer } from "https://example.org/dpo/web/dpo-trainer.js";
 *
 * // No model and no trainData: the built-in demo (a tiny Llama + a word-level preference task).
 * const trainer = await DpoTrainer.create({ lr: 3e-3, maxSteps: 20 });
 * const before = await trainer.evaluate();              // held-out metrics (TRL names) or null
 * const reports = await trainer.train({
 *   steps: 20,
 *   onStep: (r) => console.log(r.step, r.loss, r["rewards/accuracies"]),
 *   signal: abortController.signal,                    // optional: stop between steps
 * });
 * const after = await trainer.evaluate();
 * const files = await trainer.exportModel();           // { "config.json": Uint8Array, ... }
 * trainer.terminate();
 *
 * // Your own model: Hugging Face texts + safetensors bytes, and preference pairs.
 * const t2 = await DpoTrainer.create({
 *   model: { config: configJsonText, tokenizer: tokenizerJsonText, tokenizerConfig: tokCfgText },
 *   weights: safetensorsUint8Array,                      // copied to the worker
 *   trainData: jsonlText,                                // or [{ prompt, chosen, rejected }, ...]
 *   evalData: evalJsonlText,
 *   optimizer: "adamw", lr: 5e-6, lrScheduler: "linear", warmupSteps: 0, batchSize: 4,
 *   epochs: 1, maxSteps: 100, beta: 0.1, maxLength: 256, seed: 42, maxGradNorm: 1,
 *   weightDecay: 0, evalBatchSize: 8,
 * });
 *
 * Where the files are (all optional; relative URLs resolve against the embedding document):
 *   baseUrl   folder holding dpo-wgpu.js and dpo-wgpu_bg.wasm (default: new URL("../", import.meta.url))
 *   jsUrl     the wasm-bindgen glue (default: baseUrl + "dpo-wgpu.js")
 *   wasmUrl   the module (default: baseUrl + "dpo-wgpu_bg.wasm")
 *   workerUrl the worker script (default: new URL("./worker.js", import.meta.url)); a worker on
 *             another origin is started through a same-origin blob: shim (needs CORS on that host)
 *
 * API
 *   DpoTrainer.create(options) -> Promise<DpoTrainer>   rejects with a WebGpuUnavailableError when
 *                                                       navigator.gpu is missing or no adapter exists
 *   trainer.train({ steps?, onStep?, signal? }) -> Promise<StepReport[]>
 *       runs up to `steps` steps (default and cap: the steps left in the schedule), awaiting
 *       onStep(report) after each; an aborted `signal` stops between steps and the promise resolves
 *       with the reports done so far
 *   trainer.step() -> Promise<StepReport>   one step: { step, total_steps, epoch, loss,
 *       "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
 *       "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", grad_norm,
 *       learning_rate, seconds }
 *   trainer.evaluate() -> Promise<metrics | null>        (null without evaluation data)
 *   trainer.exportModel() -> Promise<{ [fileName]: Uint8Array }>  config.json, model.safetensors,
 *       tokenizer.json, ...
 *   trainer.info() -> Promise<{ device, family, demo, trainPairs, evalPairs, totalSteps,
 *       stepsDone, options }>
 *   trainer.terminate()                                  stops the worker; later calls reject
 *   checkWebGPU() -> Promise<{ ok: true, adapter } | { ok: false, reason }>
 *
 * Calls are queued: one runs at a time in the worker. After a crash in the worker (a Rust panic)
 * every pending and later call rejects with the crash message.
 */

/** Thrown by DpoTrainer.create (and returned by checkWebGPU) when WebGPU cannot be used. */
export class WebGpuUnavailableError extends Error {
  constructor(reason) {
    super(`WebGPU is not available: ${reason}`);
    this.name = "WebGpuUnavailableError";
    this.reason = reason;
  }
}

/**
 * Checks for a usable WebGPU adapter on the calling thread.
 * @returns {Promise<{ok: true, adapter: object} | {ok: false, reason: string}>}
 */
export async function checkWebGPU() {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    return {
      ok: false,
      reason:
        "this browser does not expose navigator.gpu (WebGPU is off or unsupported; " +
        "try a recent Chrome/Edge, or enable WebGPU in the browser's settings/flags; " +
        "it also needs a secure context: https or localhost)",
    };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (err) {
    return { ok: false, reason: `navigator.gpu.requestAdapter() failed: ${err?.message ?? err}` };
  }
  if (!adapter) {
    return {
      ok: false,
      reason:
        "navigator.gpu.requestAdapter() returned null (no suitable GPU, or WebGPU is " +
        "blocked for this GPU/driver)",
    };
  }
  const info = adapter.info ?? {};
  return {
    ok: true,
    adapter: {
      vendor: info.vendor ?? "",
      architecture: info.architecture ?? "",
      description: info.description ?? "",
    },
  };
}

function resolveUrl(url, base) {
  return new URL(String(url), base).href;
}

function documentBase() {
  return typeof document !== "undefined" ? document.baseURI : self.location.href;
}

function spawnWorker(workerUrl) {
  const url = new URL(workerUrl);
  if (url.origin === self.location.origin) {
    return new Worker(url, { type: "module", name: "dpo-wgpu" });
  }
  // Module workers must be same-origin: start a tiny same-origin shim that imports the real one.
  const shim = new Blob([`import ${JSON.stringify(url.href)};`], { type: "text/javascript" });
  return new Worker(URL.createObjectURL(shim), { type: "module", name: "dpo-wgpu" });
}

export class DpoTrainer {
  /** @private Use DpoTrainer.create. */
  constructor(worker) {
    this._worker = worker;
    this._nextId = 1;
    this._pending = new Map();
    this._queue = Promise.resolve();
    this._dead = null;
    worker.addEventListener("message", (event) => this._onMessage(event.data));
    worker.addEventListener("error", (event) => {
      event.preventDefault?.();
      this._die(
        event.message
          ? `worker error: ${event.message}`
          : "the worker failed to start (could not load web/worker.js or the wasm glue?)",
      );
    });
    worker.addEventListener("messageerror", () => this._die("worker message could not be decoded"));
  }

  /**
   * Starts a worker, loads the wasm and creates the trainer (demo when no model/trainData).
   * @param {object} [options] trainer options (see the header) plus weights, baseUrl, jsUrl,
   *   wasmUrl, workerUrl
   * @returns {Promise<DpoTrainer>}
   */
  static async create(options = {}) {
    const { weights, baseUrl, jsUrl, wasmUrl, workerUrl, ...trainerOptions } = options;
    const gpu = await checkWebGPU();
    if (!gpu.ok) throw new WebGpuUnavailableError(gpu.reason);
    const docBase = documentBase();
    const base = baseUrl != null ? resolveUrl(baseUrl, docBase) : new URL("../", import.meta.url).href;
    const baseDir = base.endsWith("/") ? base : `${base}/`;
    const worker = spawnWorker(
      workerUrl != null ? resolveUrl(workerUrl, docBase) : new URL("./worker.js", import.meta.url).href,
    );
    const trainer = new DpoTrainer(worker);
    try {
      trainer._info = await trainer._call("init", {
        jsUrl: jsUrl != null ? resolveUrl(jsUrl, docBase) : resolveUrl("dpo-wgpu.js", baseDir),
        wasmUrl: wasmUrl != null ? resolveUrl(wasmUrl, docBase) : resolveUrl("dpo-wgpu_bg.wasm", baseDir),
        options: trainerOptions,
        weights: weights ?? null,
      });
    } catch (err) {
      trainer.terminate();
      throw err;
    }
    return trainer;
  }

  /**
   * Runs up to `steps` optimizer steps.
   * @param {{steps?: number, onStep?: (report: object) => (void|Promise<void>), signal?: AbortSignal}} [opts]
   * @returns {Promise<object[]>} the step reports (fewer than `steps` when aborted or the schedule ends)
   */
  async train({ steps, onStep, signal } = {}) {
    const info = await this.info();
    const left = Math.max(0, info.totalSteps - info.stepsDone);
    const n = steps == null ? left : Math.min(Math.max(0, Math.floor(steps)), left);
    const reports = [];
    for (let i = 0; i < n; i++) {
      if (signal?.aborted) break;
      const report = await this.step();
      reports.push(report);
      if (onStep) await onStep(report);
    }
    return reports;
  }

  /** One optimizer step. @returns {Promise<object>} the StepReport */
  step() {
    return this._call("step");
  }

  /** Held-out metrics (TRL names), or null without evaluation data. */
  evaluate() {
    return this._call("evaluate");
  }

  /** The current model as Hugging Face files. @returns {Promise<Record<string, Uint8Array>>} */
  exportModel() {
    return this._call("exportModel");
  }

  /** @returns {Promise<object>} device, family, demo, trainPairs, evalPairs, totalSteps, stepsDone, options */
  info() {
    return this._call("info");
  }

  /** Stops the worker (frees its GPU memory). Later calls reject. */
  terminate() {
    this._worker.terminate();
    this._die("the trainer was terminated");
  }

  _call(method, params) {
    // One call at a time: the wasm Trainer rejects overlapping calls as "busy".
    const run = () => {
      if (this._dead) return Promise.reject(new Error(this._dead));
      return new Promise((resolve, reject) => {
        const id = this._nextId++;
        this._pending.set(id, { resolve, reject });
        try {
          this._worker.postMessage({ id, method, params });
        } catch (err) {
          this._pending.delete(id);
          reject(err);
        }
      });
    };
    const result = this._queue.then(run, run);
    this._queue = result.catch(() => {});
    return result;
  }

  _onMessage(data) {
    if (data?.type === "fatal") {
      this._die(data.error);
      this._worker.terminate(); // the wasm instance is unusable after a crash
      return;
    }
    const entry = this._pending.get(data?.id);
    if (!entry) return;
    this._pending.delete(data.id);
    if (data.ok) entry.resolve(data.result);
    else entry.reject(new Error(data.error));
  }

  _die(reason) {
    if (!this._dead) this._dead = reason;
    for (const { reject } of this._pending.values()) reject(new Error(reason));
    this._pending.clear();
  }
}

export default DpoTrainer;
