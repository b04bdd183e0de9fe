// Type-checked (never run) use of the whole dpo-wgpu module API, against web/dpo-trainer.d.ts:
// every export, every method, every option group. `tsc -p tests/browser` checks it against the
// source tree; tests/browser/package.mjs checks it against the packed and installed package.
// The `@ts-expect-error` lines prove that wrong types are rejected (tsc fails if one of them
// stops being an error).

import DefaultTrainer, {
  DpoTrainer,
  WebGpuUnavailableError,
  checkWebGPU,
  resolveModelUrl,
  type CreateOptions,
  type DataSummary,
  type MemoryEstimate,
  type DownloadProgress,
  type EvalMetrics,
  type GenerateOptions,
  type GenerateResult,
  type Info,
  type Metrics,
  type ModelFiles,
  type ModelTexts,
  type PreferenceRow,
  type ReferenceFreeMetrics,
  type SampledPair,
  type SavedRunInfo,
  type SftRow,
  type StepReport,
  type TrainSettings,
  type WebGpuCheck,
} from "dpo-wgpu";

const same: typeof DpoTrainer = DefaultTrainer;

const fmt = (x: number): string => x.toFixed(4);

export async function wholeApi(element: HTMLElement): Promise<void> {
  // checkWebGPU / WebGpuUnavailableError
  const gpu: WebGpuCheck = await checkWebGPU();
  if (gpu.ok) {
    const vendor: string = gpu.adapter.vendor;
    element.append(vendor, gpu.adapter.architecture, gpu.adapter.description);
  } else {
    const reason: string = gpu.reason;
    element.append(reason);
  }
  const url: string = resolveModelUrl("hf:HuggingFaceTB/SmolLM2-135M-Instruct@main");
  const relative: string = resolveModelUrl("./models/tiny/", new URL("https://example.org/app/"));
  element.append(url, relative);

  // The demo, with location options and every training setting.
  let demo: DpoTrainer;
  try {
    demo = await same.create({
      baseUrl: "/dpo/",
      jsUrl: new URL("https://cdn.example.org/dpo-wgpu.js"),
      wasmUrl: "/dpo/dpo-wgpu_bg.wasm",
      workerUrl: "/dpo/web/worker.js",
      optimizer: "adamw",
      adamBeta1: 0.9,
      adamBeta2: 0.999,
      adamEpsilon: 1e-8,
      sgdMomentum: 0,
      sgdNesterov: false,
      lr: 3e-3,
      lrScheduler: "cosine",
      warmupSteps: 1,
      batchSize: 4,
      gradientAccumulationSteps: 2,
      epochs: 1,
      maxSteps: 20,
      beta: 0.1,
      maxLength: 128,
      seed: 42,
      maxGradNorm: 1,
      weightDecay: 0,
      evalBatchSize: 8,
      truncationMode: "keep_start",
      valSplit: 0.1,
      trainableLayers: 2,
      dropout: false,
      syncRefModel: true,
      refModelMixupAlpha: 0.6,
      refModelSyncSteps: 8,
      loss: ["sigmoid", "bco_pair", "sft"],
      lossWeights: [0.8, 0.2, 1],
      labelSmoothing: 0,
      discopopTau: 0.05,
      fDivergenceType: "js_divergence",
      fAlphaDivergenceCoef: 1,
      ldAlpha: 0.5,
      useWeighting: true,
      simpoGamma: 0.5,
    });
  } catch (err) {
    if (err instanceof WebGpuUnavailableError) {
      const name: "WebGpuUnavailableError" = err.name;
      element.append(name, err.reason, err.message);
      return;
    }
    throw err;
  }

  // train / step / pause / evaluate
  const controller = new AbortController();
  const reports: StepReport[] = await demo.train({
    steps: 5,
    signal: controller.signal,
    onStep: async (r) => {
      const accuracy: number | undefined = r["rewards/accuracies"];
      element.append(`${r.step}/${r.total_steps} epoch ${r.epoch} loss ${fmt(r.loss)}`);
      element.append(`${r.grad_norm} ${r.learning_rate} ${r.seconds} ${accuracy ?? "-"}`);
      if (r.skipped) element.append("skipped");
      if (r.step === 3) demo.pause();
    },
  });
  const one: StepReport = await demo.step();
  if (one["rewards/margins"] !== undefined) {
    // Narrowed to the preference metrics: every reward/logp/logit key is a number.
    const margins: number = one["rewards/margins"];
    const chosen: number = one["logps/chosen"] + one["logits/chosen"] + one["rewards/chosen"];
    const rejected: number = one["logps/rejected"] + one["logits/rejected"] + one["rewards/rejected"];
    element.append(fmt(margins + chosen + rejected));
  }
  const metrics: EvalMetrics | null = await demo.evaluate();
  if (metrics) describeMetrics(metrics, element);
  element.append(String(reports.length));

  // generate (streamed, abortable, from the policy or the reference)
  const stop = new AbortController();
  const generateOptions: GenerateOptions = {
    maxNewTokens: 16,
    temperature: 0.7,
    topK: 40,
    topP: 0.9,
    seed: 1,
    chat: true,
    system: "You are terse.",
    model: "reference",
    signal: stop.signal,
    onToken: (delta: string, tokenId: number) => {
      element.append(delta);
      if (tokenId === 0) stop.abort();
    },
  };
  const out: GenerateResult = await demo.generate("write a happy line about the park :", generateOptions);
  const ids: number[] = out.newTokens;
  element.append(out.text, `${out.promptTokens} ${ids.length} ${out.seconds} ${out.tokensPerSecond} ${out.aborted}`);
  await demo.generate("plain greedy", { model: "policy" });
  await demo.generate("defaults");

  // samplePair -> label -> addPairs (a new DPO round from the current model)
  const pair: SampledPair = await demo.samplePair("write a line about the river :", {
    temperature: 1,
    topK: 50,
    topP: 0.95,
    seed: 7,
    maxNewTokens: 12,
    chat: false,
    system: "",
  });
  const [first, second]: [string, string] = pair.answers;
  const rows: PreferenceRow[] = [{ prompt: pair.prompt, chosen: first, rejected: second }];
  const round: Info = await demo.addPairs(rows, { lr: 1e-3, maxSteps: 4, beta: 0.2, loss: ["ipo"] });
  await demo.addPairs('{"prompt": "a", "chosen": "b", "rejected": "c"}\n');
  describeInfo(round, element);

  // exportModel / checkpoint / OPFS
  const files: ModelFiles = await demo.exportModel();
  const merged: Record<string, Uint8Array> = await demo.exportModel({ merge: true });
  const config: Uint8Array | undefined = files["config.json"];
  element.append(String(config?.length ?? 0), Object.keys(merged).join(","));
  const checkpoint: Record<string, Uint8Array> = await demo.checkpoint();
  const saved: SavedRunInfo = await demo.saveToOpfs("my-run", { extra: { note: "after round 1" } });
  await demo.saveToOpfs("plain");
  element.append(`${saved.name} ${saved.step}/${saved.totalSteps} ${saved.savedAt} ${JSON.stringify(saved.extra)}`);
  demo.terminate();

  const runs: SavedRunInfo[] = await DpoTrainer.listSaved();
  const progress = (p: DownloadProgress): void => {
    const total: number | null = p.total;
    const from: string = p.url ?? "a local file";
    element.append(`${p.file} ${from} ${p.loaded}/${total ?? "?"}`);
  };
  const cancelLoad = new AbortController();
  const resumed: DpoTrainer = await DpoTrainer.resumeSaved(runs[0]?.name ?? "my-run", {
    onProgress: progress,
    signal: cancelLoad.signal,
    baseUrl: "/dpo/",
    jsUrl: "/dpo/dpo-wgpu.js",
    wasmUrl: "/dpo/dpo-wgpu_bg.wasm",
    workerUrl: "/dpo/web/worker.js",
  });
  await DpoTrainer.resumeSaved("plain");
  await DpoTrainer.deleteSaved("my-run");
  resumed.terminate();

  // A model from a URL, LoRA, an explicit reference, SFT rows, a checkpoint to resume from.
  const sftRows: SftRow[] = [
    { prompt: "Q: 2+2?", completion: " 4" },
    { prompt: [{ role: "user", content: "hi" }], completion: [{ role: "assistant", content: "hello" }] },
    { messages: [{ role: "system", content: "s" }, { role: "user", content: "u" }, { role: "tool", content: "t" }] },
    { text: "plain text" },
  ];
  const fromUrl = await DpoTrainer.create({
    modelUrl: "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
    model: { chatTemplate: "{{ messages }}" },
    onProgress: progress,
    refModelUrl: "https://example.org/models/ref.gguf",
    task: "sft",
    trainData: sftRows,
    evalData: '{"text": "held out"}\n',
    loraRank: 8,
    loraAlpha: 16,
    loraTargets: ["q_proj", "v_proj"],
    mergeLora: true,
    resumeFrom: checkpoint,
    signal: cancelLoad.signal,
  });
  fromUrl.terminate();

  // A model from disk (a file picker), starting from a PEFT adapter.
  const picker = document.createElement("input");
  picker.type = "file";
  picker.multiple = true;
  const fromDisk = await DpoTrainer.create({
    modelFiles: picker.files ?? [],
    loraAdapter: { "adapter_config.json": new Uint8Array(2), "adapter_model.safetensors": new Uint8Array(8) },
    loraRank: 8,
    onProgress: progress,
  });
  const dropped: File[] = [new File(["{}"], "config.json")];
  await DpoTrainer.create({ modelFiles: dropped });
  fromDisk.terminate();

  // The files yourself: texts + safetensors bytes (or shards, or GGUF bytes), and a reference.
  const texts: ModelTexts = {
    config: "{}",
    tokenizer: "{}",
    tokenizerConfig: "{}",
    generationConfig: "{}",
    specialTokensMap: "{}",
    chatTemplate: "",
  };
  const conversational: PreferenceRow = {
    prompt: [{ role: "user", content: "2+2?" }],
    chosen: [{ role: "assistant", content: "4" }],
    rejected: [{ role: "assistant", content: "5" }],
  };
  const options: CreateOptions = {
    model: texts,
    weights: new Uint8Array(8),
    refModel: texts,
    refWeights: { "model-00001-of-00002.safetensors": new Uint8Array(8), "model-00002-of-00002.safetensors": new ArrayBuffer(8) },
    trainData: [conversational, { chosen: "implicit prompt: yes", rejected: "implicit prompt: no" }],
    loss: ["orpo"],
    optimizer: "sgd",
    lrScheduler: "constant",
    truncationMode: "keep_end",
  };
  const fromBytes = await DpoTrainer.create(options);
  const settings: TrainSettings = { loss: ["simpo"], simpoGamma: 1 };
  await fromBytes.addPairs([conversational], settings);
  fromBytes.terminate();
  await DpoTrainer.create(); // the demo with every default
}

function describeMetrics(m: Metrics, element: HTMLElement): void {
  element.append(fmt(m.loss));
  // Readable without narrowing: undefined for the kinds that do not have the key.
  const accuracy: number | undefined = m["rewards/accuracies"];
  const tokenAccuracy: number | undefined = m.mean_token_accuracy;
  element.append(String(accuracy), String(tokenAccuracy), String(m.entropy));
  if (m.nll_loss !== undefined) {
    const refFree: ReferenceFreeMetrics = m; // only SimPO/ORPO metrics have nll_loss
    element.append(String(refFree.log_odds_ratio ?? 0), String(refFree.log_odds_chosen ?? 0));
  }
}

function describeInfo(info: Info, element: HTMLElement): void {
  const family: "gpt2" | "llama" | "qwen2" = info.family;
  const task: "dpo" | "sft" = info.task;
  element.append(info.device, family, task, String(info.demo));
  element.append(`${info.trainExamples} ${info.evalExamples} ${info.stepsDone}/${info.totalSteps}`);
  if (info.lora) element.append(`${info.lora.rank} ${info.lora.alpha} ${info.lora.targets.join(",")} ${info.lora.use_rslora}`);
  const o = info.options;
  const lossNames: string[] = o.losses.map((t) => `${t.loss}*${t.weight}`);
  element.append(`${o.optimizer} ${o.learning_rate} ${o.lr_schedule} ${o.batch_size} ${o.max_steps ?? "epochs"}`);
  element.append(lossNames.join("+"), String(o.max_length ?? "no limit"), o.truncation_mode, o.f_divergence_type);
  const train: DataSummary = info.summary.train;
  const held: DataSummary | null = info.summary.eval;
  element.append(`${train.source}: ${train.kept} kept, ${train.dropped} dropped (${info.summary.dropReason})`);
  element.append(`${held?.kept ?? 0} ${info.summary.trainableParameters}/${info.summary.parameters}`);
  const m: MemoryEstimate = info.summary.memory;
  const parts: number[] = [m.weights, m.reference, m.gradients, m.optimizer, m.activations];
  element.append(`${parts.join("+")}=${m.total} (${m.largestBuffer}; ${m.parameters}/${m.trainedParameters})`);
}

// Wrong types are rejected.
export async function rejected(trainer: DpoTrainer): Promise<void> {
  // @ts-expect-error lr is a number
  await DpoTrainer.create({ lr: "fast" });
  // @ts-expect-error "adam" is not an optimizer name (adamw or sgd)
  await DpoTrainer.create({ optimizer: "adam" });
  // @ts-expect-error "dpo" is not a loss name (TRL's loss_type: "sigmoid")
  await DpoTrainer.create({ loss: ["dpo"] });
  // @ts-expect-error a reference-free method is used alone
  await DpoTrainer.create({ loss: ["simpo", "sigmoid"] });
  // @ts-expect-error modelFiles are File objects, not names
  await DpoTrainer.create({ modelFiles: ["config.json"] });
  // @ts-expect-error no such option
  await DpoTrainer.create({ learningRate: 1e-3 });
  // @ts-expect-error generate's model is "policy" or "reference"
  await trainer.generate("x", { model: "ref" });
  // @ts-expect-error a preference row needs chosen and rejected
  await trainer.addPairs([{ prompt: "p", chosen: "c" }]);
  // @ts-expect-error SFT-only metrics have no reward keys
  const reward: number = ({ loss: 1, mean_token_accuracy: 1, entropy: 1 } as Metrics)["rewards/chosen"];
  // @ts-expect-error the constructor is private: use DpoTrainer.create
  new DpoTrainer();
  void reward;
}
