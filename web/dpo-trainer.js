/**
 * dpo-trainer.js — DPO (Direct Preference Optimization) and SFT fine-tuning on WebGPU, in a Web
 * Worker, plus text generation from the model being trained.
 *
 * An ES module; it imports only model-source.js (next to it). It spawns `worker.js` (next to this file) as a module
 * worker; the worker loads `dpo-wgpu.js` + `dpo-wgpu_bg.wasm` (by default from the folder above
 * this file, i.e. the root of trunk's `dist/`) and runs all training and generation off the main
 * thread.
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
 * const out = await trainer.generate("write a happy line about the park :", {
 *   maxNewTokens: 16,                                  // greedy unless temperature > 0
 *   onToken: (delta, tokenId) => outputElement.append(delta),
 * });
 * console.log(out.text, out.tokensPerSecond);
 * const files = await trainer.exportModel();           // { "config.json": Uint8Array, ... }
 * trainer.terminate();
 *
 * // A model from a URL: a Hugging Face folder, a Hub repository, or a GGUF file.
 * const t2 = await DpoTrainer.create({
 *   modelUrl: "hf:HuggingFaceTB/SmolLM2-135M-Instruct",   // or "https://host/dir/", ".../x.gguf"
 *   onProgress: ({ file, loaded, total }) => console.log(file, loaded, total),
 *   trainData: jsonlText,                                // or [{ prompt, chosen, rejected }, ...]
 *   evalData: evalJsonlText,
 *   loraRank: 8,                                         // optional: train LoRA adapters
 *   optimizer: "adamw", lr: 5e-6, lrScheduler: "linear", warmupSteps: 0, batchSize: 4,
 *   epochs: 1, maxSteps: 100, beta: 0.1, maxLength: 256, seed: 42, maxGradNorm: 1,
 *   weightDecay: 0, evalBatchSize: 8,
 * });
 *
 * // Or the files yourself: Hugging Face texts + safetensors bytes (or GGUF bytes alone).
 * const t3 = await DpoTrainer.create({
 *   model: { config: configJsonText, tokenizer: tokenizerJsonText, tokenizerConfig: tokCfgText },
 *   weights: safetensorsUint8Array,                      // copied to the worker
 *   task: "sft",
 *   trainData: [{ prompt: "Q: 2+2?", completion: " 4" }],  // or { messages: [...] }, { text }
 * });
 *
 * Where the files are (all optional; relative URLs resolve against the embedding document):
 *   baseUrl   folder holding dpo-wgpu.js and dpo-wgpu_bg.wasm (default: new URL("../", import.meta.url))
 *   jsUrl     the wasm-bindgen glue (default: baseUrl + "dpo-wgpu.js")
 *   wasmUrl   the module (default: baseUrl + "dpo-wgpu_bg.wasm")
 *   workerUrl the worker script (default: new URL("./worker.js", import.meta.url)); a worker on
 *             another origin is started through a same-origin blob: shim (needs CORS on that host)
 *
 * Options of DpoTrainer.create (all optional; with no model and no trainData: the demo)
 *   The model, one of:
 *   modelUrl    where to download the model from, inside the worker (no copy on the page):
 *               - "https://host/dir/" (or a relative URL) of a Hugging Face model folder:
 *                 config.json and tokenizer.json are required; tokenizer_config.json,
 *                 generation_config.json, special_tokens_map.json and chat_template.jinja are
 *                 used when present (MODEL_LAYOUT in model-source.js; a 404
 *                 means absent); the weights are model.safetensors, or when that is a 404 the
 *                 files listed in model.safetensors.index.json (shards download in parallel).
 *               - a URL ending in ".gguf": that one file (it carries config and tokenizer).
 *               - "hf:OWNER/NAME[@REVISION]" or "hf:OWNER/NAME/FILE.gguf[@REVISION]" (as the CLI
 *                 reads them; a PATH not ending in .gguf is a subfolder): the Hugging Face Hub,
 *                 https://huggingface.co/OWNER/NAME/resolve/REVISION/[PATH] (REVISION: main by
 *                 default). Only public, non-gated repositories work: no access token is sent.
 *               The host must allow cross-origin GETs (huggingface.co does). Texts given in
 *               `model` override the fetched ones (e.g. model.chatTemplate).
 *   onProgress  ({ file, url, loaded, total }) => void, while modelUrl files download: file is
 *               the file name, loaded and total are bytes (total null when the server gives no
 *               Content-Length); called at start, about every 100 ms, and at the end (loaded ==
 *               total)
 *   model       { config, tokenizer, tokenizerConfig?, generationConfig?, specialTokensMap?,
 *               chatTemplate? } texts,
 *               with safetensors `weights` (not needed with GGUF weights)
 *   weights     Uint8Array/ArrayBuffer: model.safetensors, or a whole .gguf file (detected by its
 *               magic); or { "model-00001-of-00002.safetensors": bytes, ... } for a sharded
 *               checkpoint; copied to the worker
 *   modelFiles  File[] / FileList (a file picker, drag-and-drop): one .gguf, or the files of a
 *               Hugging Face folder (sharded or not), read inside the worker (onProgress)
 *   signal      AbortSignal: cancels the load (downloads stop, the worker ends; rejects with an
 *               AbortError)
 *   An explicit DPO reference (default: the model the run starts from): refModelUrl, or
 *               refWeights with refModel texts, in the same forms as modelUrl / weights / model
 *   loraAdapter { "adapter_config.json": bytes, "adapter_model.safetensors": bytes }: start
 *               from a PEFT adapter (it keeps training; the base plus it is the reference)
 *   resumeFrom  checkpoint files from trainer.checkpoint(): continue that run (with the same
 *               model and data options) at its step, optimizer state and data order
 *   memoryLimits { maxBuffer?, budget? } bytes: the run's memory is estimated from the model's
 *               config and the settings before any weight reaches the GPU (info().summary.memory:
 *               weights, gradients, optimizer, activations, largestBuffer, total) and refused
 *               with a message when its largest buffer exceeds maxBuffer (default: the adapter's
 *               maxStorageBufferBindingSize / maxBufferSize) or its total exceeds budget
 *   The data and training:
 *   task        "dpo" (default) or "sft"
 *   trainData, evalData   JSONL text or an array of rows: DPO { prompt, chosen, rejected };
 *               SFT { prompt, completion }, { messages: [{ role, content }, ...] } or { text }
 *   optimizer ("adamw" | "sgd"), adamBeta1, adamBeta2, adamEpsilon, sgdMomentum, sgdNesterov,
 *   lr, lrScheduler ("constant" | "linear" | "cosine"), warmupSteps,
 *   batchSize, gradientAccumulationSteps, epochs, maxSteps, beta, maxLength, seed, maxGradNorm,
 *   weightDecay, evalBatchSize, truncationMode ("keep_start" | "keep_end"), valSplit (held-out
 *   share of trainData as evalData), trainableLayers, dropout, syncRefModel, refModelMixupAlpha,
 *   refModelSyncSteps (the CLI's early stopping, test report and precomputed reference file are
 *   not in the module yet)
 *   loss        array of TRL loss types (default ["sigmoid"]): "sigmoid", "hinge", "ipo", "exo_pair",
 *               "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
 *               "apo_down", "discopop", "sft", "sigmoid_norm"; lossWeights (same length, default 1
 *               each), labelSmoothing, discopopTau, fDivergenceType ("reverse_kl" | "forward_kl" |
 *               "js_divergence" | "alpha_divergence"), fAlphaDivergenceCoef, ldAlpha, useWeighting;
 *               or alone a reference-free method, "simpo" (simpoGamma, default 0.5) or "orpo"
 *               (beta is its λ): no reference model is used
 *   loraRank    train LoRA adapters of this rank instead of every weight (the frozen base is the
 *               DPO reference); loraAlpha (default 2 * rank), loraTargets (default ["q_proj",
 *               "v_proj"], GPT-2 ["c_attn"]); mergeLora: exportModel returns the merged model
 *               instead of the PEFT adapter
 *
 * API
 *   DpoTrainer.create(options) -> Promise<DpoTrainer>   rejects with a WebGpuUnavailableError when
 *                                                       navigator.gpu is missing or no adapter
 *                                                       exists, or with an Error naming the URL
 *                                                       when a modelUrl download fails
 *   trainer.train({ steps?, onStep?, signal? }) -> Promise<StepReport[]>
 *       runs up to `steps` steps (default and cap: the steps left in the schedule), awaiting
 *       onStep(report) after each; an aborted `signal` stops between steps and the promise resolves
 *       with the reports done so far
 *   trainer.step() -> Promise<StepReport>   one step: { step, total_steps, epoch, loss, grad_norm,
 *       learning_rate, seconds, tokens } and the task's TRL metrics: DPO "rewards/chosen",
 *       "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
 *       "logps/rejected", "logits/chosen", "logits/rejected"; SFT mean_token_accuracy, entropy
 *   trainer.evaluate() -> Promise<metrics | null>        (null without evaluation data)
 *   trainer.generate(prompt, { maxNewTokens?, temperature?, topK?, topP?, seed?, chat?, system?,
 *                              onToken?, signal? })
 *       -> Promise<{ text, promptTokens, newTokens, seconds, tokensPerSecond, aborted }>
 *       continues `prompt` with the current policy (KV cache; stops at one of the model's EOS
 *       tokens (generation_config.json or config.json, and the tokenizer's), or after
 *       maxNewTokens, default 64; for GPT-2, prompt + maxNewTokens must fit n_positions).
 *       temperature 0 (default) is greedy; otherwise sampling with optional topK / topP,
 *       reproducible by `seed` (default 0). chat: true wraps the prompt as a user message (after
 *       `system`, if given) in the model's chat template. newTokens are the
 *       new token ids (an EOS that stopped it included); text is their decoded text without
 *       special tokens. onToken(textDelta, tokenId) is called once per new token, in order, as
 *       the worker produces it (a delta may be "" while a UTF-8 character is incomplete); the
 *       deltas concatenate to `text`, except when byte-fallback tokens end as invalid UTF-8 (a
 *       trailing incomplete character, or a byte that invalidates one already streamed): `text`
 *       is always the full decode. An aborted `signal` asks the worker to stop after the token
 *       in progress; the promise then resolves with the tokens so far and aborted: true.
 *       generate(prompt, { model: "reference" }) continues it with the reference model instead
 *   trainer.samplePair(prompt, { temperature = 1, seed = 0, ... }) -> Promise<{ prompt,
 *       answers: [a, b] }>   two sampled answers (seeds seed and seed + 1) for a person to judge
 *   trainer.addPairs(rows, settings?) -> Promise<info>   a new round of DPO on rows from the
 *       current model, which becomes the round's reference; settings override the options
 *   trainer.pause()                          stops a running train() after the step in progress
 *   trainer.exportModel({ merge? }?) -> Promise<{ [fileName]: Uint8Array }>  config.json,
 *       model.safetensors, tokenizer.json, ...; with loraRank (and not merge / mergeLora)
 *       adapter_config.json, adapter_model.safetensors and the tokenizer files (a PEFT adapter)
 *   trainer.checkpoint() -> Promise<{ [fileName]: Uint8Array }>   the CLI's checkpoint-N/ files
 *   trainer.saveToOpfs(name, { extra }?) -> Promise<{ name, step, totalSteps, savedAt, extra }>
 *       keeps the run in this browser's Origin Private File System (web/opfs-store.js)
 *   DpoTrainer.resumeSaved(name, { onProgress, signal, ...urls }?) -> Promise<DpoTrainer>
 *   DpoTrainer.listSaved() -> Promise<[{ name, step, totalSteps, savedAt, extra }]>
 *   DpoTrainer.deleteSaved(name) -> Promise<void>
 *   trainer.info() -> Promise<{ device, family, task, demo, lora, trainExamples, evalExamples,
 *       totalSteps, stepsDone, options, summary }>   (lora: { rank, alpha, targets, ... } or
 *       null; summary: { train: { source, kept, dropped }, eval, dropReason,
 *       trainableParameters, parameters, maxLengthFitted, memory })
 *   trainer.terminate()                                  stops the worker; later calls reject
 *   checkWebGPU() -> Promise<{ ok: true, adapter } | { ok: false, reason }>
 *   resolveModelUrl(modelUrl, base?) -> string           the URL a modelUrl downloads from
 *
 * Calls are queued: one runs at a time in the worker. An exception thrown by onProgress or onToken
 * rejects the call it belongs to (generation stops). After a crash in the worker (a Rust panic)
 * every pending and later call rejects with the crash message.
 */

import { resolveModelUrl as resolveFromSource } from "./model-source.js";
import { checkRunName, deleteRun, listRuns } from "./opfs-store.js";

function abortError() {
  return new DOMException("cancelled: the model was not loaded", "AbortError");
}

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

/**
 * The URL a `modelUrl` option downloads from: "hf:OWNER/NAME[/PATH][@REVISION]" becomes
 * https://huggingface.co/OWNER/NAME/resolve/REVISION/[PATH] (REVISION: main), a folder gets a
 * trailing "/", a relative URL resolves against `base` (default: the document's URL).
 * @param {string} modelUrl
 * @param {string} [base]
 * @returns {string}
 */
export function resolveModelUrl(modelUrl, base = documentBase()) {
  return resolveFromSource(modelUrl, base);
}

/** A copy of `obj` without its undefined and null properties (the wasm side reads them strictly). */
function defined(obj) {
  const out = {};
  for (const [key, value] of Object.entries(obj ?? {})) {
    if (value !== undefined && value !== null) out[key] = value;
  }
  return out;
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
   * @param {object} [options] trainer options (see the header) plus modelUrl, onProgress,
   *   weights, baseUrl, jsUrl, wasmUrl, workerUrl
   * @returns {Promise<DpoTrainer>}
   */
  static async create(options = {}) {
    const {
      weights, modelUrl, modelFiles, refWeights, refModelUrl, loraAdapter, resumeFrom,
      onProgress, signal, baseUrl, jsUrl, wasmUrl, workerUrl, ...trainerOptions
    } = options ?? {};
    const given = [modelUrl, weights, modelFiles].filter((x) => x != null).length;
    if (given > 1) throw new TypeError("pass one of modelUrl, weights and modelFiles, not several");
    if (refModelUrl != null && refWeights != null) {
      throw new TypeError("pass either refModelUrl or refWeights, not both");
    }
    const docBase = documentBase();
    const source = {
      options: defined(trainerOptions),
      modelUrl: modelUrl != null ? resolveModelUrl(modelUrl, docBase) : null,
      modelFiles: modelFiles != null ? Array.from(modelFiles) : null,
      weights: weights ?? null,
      refModelUrl: refModelUrl != null ? resolveModelUrl(refModelUrl, docBase) : null,
      refWeights: refWeights ?? null,
      loraAdapter: loraAdapter ?? null,
    };
    return DpoTrainer._start("init", { source, resumeFrom: resumeFrom ?? null }, {
      onProgress, signal, baseUrl, jsUrl, wasmUrl, workerUrl,
    });
  }

  /**
   * Resumes a run saved with `saveToOpfs(name)` (in this browser, for this site) at the step it
   * was saved: same model, data, settings, optimizer state and data order. A model that came
   * from a URL is downloaded again (`onProgress`); one from disk or bytes was saved with it.
   * @param {string} name
   * @param {object} [options] onProgress, signal, baseUrl, jsUrl, wasmUrl, workerUrl
   * @returns {Promise<DpoTrainer>}
   */
  static resumeSaved(name, options = {}) {
    return DpoTrainer._start("initSaved", { name: checkRunName(name) }, options ?? {});
  }

  /** The runs saved in this browser (OPFS), newest first: [{ name, step, totalSteps, savedAt, extra }]. */
  static listSaved() {
    return listRuns();
  }

  /** Deletes a saved run (no error when there is none). */
  static deleteSaved(name) {
    return deleteRun(name);
  }

  /** @private Spawns the worker and sends it `method` (init or initSaved). */
  static async _start(method, params, { onProgress, signal, baseUrl, jsUrl, wasmUrl, workerUrl }) {
    const docBase = documentBase();
    const gpu = await checkWebGPU();
    if (!gpu.ok) throw new WebGpuUnavailableError(gpu.reason);
    if (signal?.aborted) throw abortError();
    const base = baseUrl != null ? resolveUrl(baseUrl, docBase) : new URL("../", import.meta.url).href;
    const baseDir = base.endsWith("/") ? base : `${base}/`;
    const worker = spawnWorker(
      workerUrl != null ? resolveUrl(workerUrl, docBase) : new URL("./worker.js", import.meta.url).href,
    );
    const trainer = new DpoTrainer(worker);
    // Cancelling a load ends the worker: downloads stop, memory is freed.
    const cancel = () => trainer._die("cancelled: the model was not loaded");
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      trainer._info = await trainer._call(
        method,
        {
          jsUrl: jsUrl != null ? resolveUrl(jsUrl, docBase) : resolveUrl("dpo-wgpu.js", baseDir),
          wasmUrl: wasmUrl != null ? resolveUrl(wasmUrl, docBase) : resolveUrl("dpo-wgpu_bg.wasm", baseDir),
          ...params,
        },
        {
          onEvent: (m) => {
            if (m.type === "progress" && onProgress) {
              onProgress({ file: m.file, url: m.url, loaded: m.loaded, total: m.total });
            }
          },
        },
      );
    } catch (err) {
      trainer.terminate();
      throw signal?.aborted ? abortError() : err;
    } finally {
      signal?.removeEventListener("abort", cancel);
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
    const paused = (this._pause = new AbortController()).signal;
    try {
      for (let i = 0; i < n; i++) {
        if (signal?.aborted || paused.aborted) break;
        const report = await this.step();
        reports.push(report);
        if (onStep) await onStep(report);
      }
    } finally {
      if (this._pause?.signal === paused) this._pause = null;
    }
    return reports;
  }

  /** Stops a running `train()` after the step in progress (it resolves); `train()` resumes. */
  pause() {
    this._pause?.abort();
  }

  /** One optimizer step. @returns {Promise<object>} the StepReport */
  step() {
    return this._call("step");
  }

  /** Held-out metrics (TRL names), or null without evaluation data. */
  evaluate() {
    return this._call("evaluate");
  }

  /**
   * Continues `prompt` with the current policy, streaming tokens to `onToken`.
   * @param {string} prompt
   * @param {{maxNewTokens?: number, temperature?: number, topK?: number, topP?: number,
   *   seed?: number, chat?: boolean, system?: string,
   *   onToken?: (textDelta: string, tokenId: number) => void, signal?: AbortSignal}} [opts]
   * @returns {Promise<{text: string, promptTokens: number, newTokens: number[], seconds: number,
   *   tokensPerSecond: number, aborted: boolean}>}
   */
  async generate(prompt, { onToken, signal, ...options } = {}) {
    const result = await this._call(
      "generate",
      { prompt: String(prompt), options: defined(options) },
      {
        signal,
        onEvent: (m) => {
          if (m.type === "token" && onToken) onToken(m.delta, m.token);
        },
      },
    );
    return { ...result, aborted: Boolean(signal?.aborted) };
  }

  /**
   * Two answers to `prompt` sampled from the current model (for a person to pick the better
   * one): the same sampling settings, seeds `seed` and `seed + 1`.
   * @param {string} prompt
   * @param {{temperature?: number, topK?: number, topP?: number, seed?: number,
   *   maxNewTokens?: number, chat?: boolean, system?: string}} [opts] temperature defaults to 1
   * @returns {Promise<{prompt: string, answers: [string, string]}>}
   */
  async samplePair(prompt, { seed = 0, temperature = 1, ...options } = {}) {
    if (!(temperature > 0)) throw new RangeError("samplePair needs a temperature above 0 (two greedy answers are the same)");
    const answers = [];
    for (const s of [seed, seed + 1]) {
      answers.push((await this.generate(prompt, { ...options, temperature, seed: s })).text);
    }
    return { prompt: String(prompt), answers };
  }

  /**
   * A new round of DPO on `rows` (JSONL text or { prompt, chosen, rejected } objects) starting
   * from the current model, which becomes the round's reference (iterative DPO: answers sampled
   * from this model, judged by a person). `settings` override the run's options (maxSteps, lr,
   * beta, ...); the schedule starts over at step 0. LoRA runs keep training their adapters.
   * @returns {Promise<object>} the new info
   */
  addPairs(rows, settings = {}) {
    return this._call("addPairs", { rows, settings: defined(settings) });
  }

  /**
   * Everything to resume the run where it is: the model (or PEFT adapter), optimizer.safetensors and
   * trainer_state.json (the CLI's checkpoint-N/ folder). `DpoTrainer.create({ ...sameOptions,
   * resumeFrom: files })` continues from it. @returns {Promise<Record<string, Uint8Array>>}
   */
  checkpoint() {
    return this._call("checkpoint");
  }

  /**
   * Saves the run in this browser's Origin Private File System under `name` (a checkpoint plus
   * what rebuilds the run: options, data, the model's bytes or URL); `extra` is any JSON kept
   * with it. `DpoTrainer.resumeSaved(name)` continues from it, also after a reload.
   * @returns {Promise<{name: string, step: number, totalSteps: number, savedAt: string, extra: unknown}>}
   */
  saveToOpfs(name, { extra } = {}) {
    return this._call("saveToOpfs", { name: checkRunName(name), extra: extra ?? null });
  }

  /**
   * The current model as files: a Hugging Face model folder, or with loraRank a PEFT adapter;
   * `{ merge: true }` folds the adapters in (a full model), `{ merge: false }` gives the adapter
   * (default: the mergeLora option). @returns {Promise<Record<string, Uint8Array>>}
   */
  exportModel(options = {}) {
    return this._call("exportModel", { options: defined(options) });
  }

  /**
   * @returns {Promise<object>} device, family, task, demo, lora, trainExamples, evalExamples,
   *   totalSteps, stepsDone, options
   */
  info() {
    return this._call("info");
  }

  /** Stops the worker (frees its GPU memory). Later calls reject. */
  terminate() {
    this._worker.terminate();
    this._die("the trainer was terminated");
  }

  /**
   * Queues `method`. `onEvent(message)` receives the worker's progress/token messages for this
   * call; an exception it throws rejects the call (and cancels a generation). An aborted `signal`
   * sends the worker a cancel for this call.
   */
  _call(method, params, { onEvent, signal } = {}) {
    // One call at a time: the wasm Trainer rejects overlapping calls as "busy".
    const run = () => {
      if (this._dead) return Promise.reject(new Error(this._dead));
      return new Promise((resolve, reject) => {
        const id = this._nextId++;
        const cancel = () => {
          if (this._pending.has(id)) this._worker.postMessage({ type: "cancel", target: id });
        };
        const done = () => signal?.removeEventListener("abort", cancel);
        const entry = {
          resolve: (value) => {
            done();
            if (entry.callbackError) reject(entry.callbackError);
            else resolve(value);
          },
          reject: (err) => {
            done();
            reject(entry.callbackError ?? err);
          },
          onEvent: (message) => {
            if (!onEvent || entry.callbackError) return;
            try {
              onEvent(message);
            } catch (err) {
              entry.callbackError = err;
              cancel();
            }
          },
          callbackError: null,
        };
        this._pending.set(id, entry);
        try {
          this._worker.postMessage({ id, method, params });
        } catch (err) {
          this._pending.delete(id);
          reject(err);
          return;
        }
        if (signal) {
          if (signal.aborted) cancel();
          else signal.addEventListener("abort", cancel, { once: true });
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
    if (data.type === "progress" || data.type === "token") {
      entry.onEvent(data);
      return;
    }
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
