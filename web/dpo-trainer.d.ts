/**
 * TypeScript declarations for dpo-trainer.js — DPO (Direct Preference Optimization) and SFT
 * fine-tuning on WebGPU, in a Web Worker, plus text generation from the model being trained.
 *
 * The module spawns `worker.js` (next to it) as a module worker; the worker loads `dpo-wgpu.js` +
 * `dpo-wgpu_bg.wasm` (by default from the folder above the module: the package root, or the root
 * of trunk's `dist/`). Every call is queued and runs in the worker, one at a time.
 *
 * @example
 * import { DpoTrainer } from "dpo-wgpu";
 *
 * // No model and no trainData: the built-in demo (a tiny Llama + a word-level preference task).
 * const trainer = await DpoTrainer.create({ lr: 3e-3, maxSteps: 20 });
 * const reports = await trainer.train({ onStep: (r) => console.log(r.step, r.loss) });
 * const out = await trainer.generate("write a happy line about the park :", { maxNewTokens: 16 });
 * const files = await trainer.exportModel();   // { "config.json": Uint8Array, ... }
 * trainer.terminate();
 *
 * @module
 */

// ---------------------------------------------------------------------------------------------
// Inputs: models, data, settings

/**
 * The text files of a Hugging Face model folder, by option key. `config` and `tokenizer` are
 * required with safetensors weights; GGUF weights carry their own (texts given here override).
 */
export interface ModelTexts {
  /** `config.json`. */
  config: string;
  /** `tokenizer.json`. */
  tokenizer: string;
  /** `tokenizer_config.json` (special tokens, chat template). */
  tokenizerConfig?: string;
  /** `generation_config.json` (EOS tokens used by generate). */
  generationConfig?: string;
  /** `special_tokens_map.json`. */
  specialTokensMap?: string;
  /** `chat_template.jinja` (a chat template as its own file). */
  chatTemplate?: string;
}

/**
 * Texts that override the files a `modelUrl` download fetched, e.g. `{ chatTemplate }`: any
 * subset of {@link ModelTexts}.
 */
export type ModelTextOverrides = Partial<ModelTexts>;

/**
 * Model weights handed to the worker (copied): `model.safetensors` bytes, a whole `.gguf` file
 * (detected by its magic), or `{ "model-00001-of-00002.safetensors": bytes, ... }` for a sharded
 * safetensors checkpoint.
 */
export type WeightsInput =
  | Uint8Array
  | ArrayBuffer
  | { readonly [shardFileName: string]: Uint8Array | ArrayBuffer };

/** A chat message, as in TRL's conversational rows and Hugging Face chat templates. */
export interface ChatMessage {
  /** "system", "user", "assistant", or another role the model's chat template knows. */
  role: "system" | "user" | "assistant" | (string & {});
  content: string;
}

/**
 * One preference pair (TRL's preference format): plain texts, or all three fields as message
 * lists rendered with the model's chat template. Without `prompt` (implicit prompt) the prompt is
 * the common beginning of `chosen` and `rejected`, as TRL's `extract_prompt` does.
 */
export type PreferenceRow =
  | { prompt?: string; chosen: string; rejected: string }
  | { prompt?: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[] };

/**
 * One SFT row: `{ prompt, completion }` (loss on the completion only; texts or message lists),
 * `{ messages }` or `{ text }` (loss on every token).
 */
export type SftRow =
  | { prompt: string | ChatMessage[]; completion: string | ChatMessage[] }
  | { messages: ChatMessage[] }
  | { text: string };

/** A row of `trainData` / `evalData`: {@link PreferenceRow} for DPO, {@link SftRow} for SFT. */
export type TrainingRow = PreferenceRow | SftRow;

/** Training or evaluation data: JSONL text (one JSON object per line), or an array of rows. */
export type DataInput = string | readonly TrainingRow[];

/** What a run learns: DPO on preference pairs (default) or supervised fine-tuning. */
export type Task = "dpo" | "sft";

/** The optimizer (transformers' `adamw_torch`, or SGD with optional momentum). */
export type OptimizerName = "adamw" | "sgd";

/** The learning-rate schedule after warmup (transformers' names; default "linear"). */
export type LrScheduler = "constant" | "linear" | "cosine";

/** Which end of a sequence longer than `maxLength` is kept (TRL's `truncation_mode`). */
export type TruncationMode = "keep_start" | "keep_end";

/**
 * A preference loss that uses the reference model, as TRL's `loss_type` names it. Several may be
 * combined (with `lossWeights`).
 */
export type PreferenceLossType =
  | "sigmoid"
  | "hinge"
  | "ipo"
  | "exo_pair"
  | "nca_pair"
  | "robust"
  | "bco_pair"
  | "sppo_hard"
  | "aot"
  | "aot_unpaired"
  | "apo_zero"
  | "apo_down"
  | "discopop"
  | "sft"
  | "sigmoid_norm";

/**
 * A reference-free method, given alone: "simpo" (TRL's CPOTrainer with loss_type "simpo",
 * `simpoGamma`) or "orpo" (TRL's ORPOTrainer; `beta` is its λ). No reference model is used.
 */
export type ReferenceFreeLossType = "simpo" | "orpo";

/** Any loss name ({@link PreferenceLossType} or {@link ReferenceFreeLossType}). */
export type LossType = PreferenceLossType | ReferenceFreeLossType;

/** The f-divergence DPO's reward is derived from (f-DPO); "reverse_kl" is plain DPO. */
export type FDivergenceType = "reverse_kl" | "forward_kl" | "js_divergence" | "alpha_divergence";

/**
 * Training settings (TRL `DPOConfig` / `SFTConfig` meanings, camelCase names; `lr` is the
 * learning rate). All optional: unset ones keep TRL's defaults for the task (the demo has its own).
 */
export interface TrainSettings {
  /** "adamw" (default) or "sgd". */
  optimizer?: OptimizerName;
  /** AdamW β1 (default 0.9). */
  adamBeta1?: number;
  /** AdamW β2 (default 0.999). */
  adamBeta2?: number;
  /** AdamW ε (default 1e-8). */
  adamEpsilon?: number;
  /** SGD momentum (default 0: plain SGD). */
  sgdMomentum?: number;
  /** Nesterov momentum for SGD (default false). */
  sgdNesterov?: boolean;
  /** Peak learning rate (DPO default 1e-6, SFT 2e-5). */
  lr?: number;
  /** Learning-rate schedule after warmup (default "linear": decay to 0). */
  lrScheduler?: LrScheduler;
  /** Steps of linear warmup from 0 (default 0). */
  warmupSteps?: number;
  /** Examples per forward pass (default 8). */
  batchSize?: number;
  /** Forward passes per optimizer step (default 1). */
  gradientAccumulationSteps?: number;
  /** Passes over the training data (default 1); the run's length unless `maxSteps` is set. */
  epochs?: number;
  /** Optimizer steps of the run (overrides `epochs`). */
  maxSteps?: number;
  /** DPO's β (default 0.1); ORPO's λ. */
  beta?: number;
  /** Longest prompt + completion in tokens (default 1024, lowered to the model's limit; 0: none). */
  maxLength?: number;
  /** Seed of shuffling, splits and initialization (default 42). */
  seed?: number;
  /** Global gradient-norm clipping (default 1; 0 turns it off). */
  maxGradNorm?: number;
  /** Decoupled weight decay (default 0). */
  weightDecay?: number;
  /** Examples per evaluation batch (default 8; TRL averages metrics per batch). */
  evalBatchSize?: number;
  /** Which end of a too-long sequence is kept (default "keep_start"). */
  truncationMode?: TruncationMode;
  /** Share of `trainData` held out as evaluation data, in [0, 1) (default 0). */
  valSplit?: number;
  /** Fully fine-tune only the top K blocks, the final norm and the head (default: all). */
  trainableLayers?: number;
  /** Train with the model config's dropout (default false, as TRL). */
  dropout?: boolean;
  /** TR-DPO: periodically move the reference towards the policy (default false). */
  syncRefModel?: boolean;
  /** TR-DPO's α: reference ← α·policy + (1 − α)·reference (default 0.6). */
  refModelMixupAlpha?: number;
  /** TR-DPO: steps between reference syncs (default 512). */
  refModelSyncSteps?: number;
  /**
   * Losses (TRL `loss_type`, default ["sigmoid"]): one or more {@link PreferenceLossType}
   * (summed with `lossWeights`), or a reference-free method alone: ["simpo"] or ["orpo"].
   */
  loss?: readonly PreferenceLossType[] | readonly [ReferenceFreeLossType];
  /** Weights of the combined losses (same length as `loss`; default 1 each). */
  lossWeights?: readonly number[];
  /** ε of "robust", "exo_pair", "aot" and "aot_unpaired" (default 0). */
  labelSmoothing?: number;
  /** DiscoPOP's τ (default 0.05). */
  discopopTau?: number;
  /** f-DPO's divergence (default "reverse_kl"). */
  fDivergenceType?: FDivergenceType;
  /** α of "alpha_divergence" (default 1). */
  fAlphaDivergenceCoef?: number;
  /** LD-DPO: weight of tokens past the shorter completion (default: off). */
  ldAlpha?: number;
  /** WPO: weight each pair by its completions' probabilities (default false). */
  useWeighting?: boolean;
  /** SimPO's target reward margin γ (default 0.5). */
  simpoGamma?: number;
}

/** LoRA: train low-rank adapters instead of every weight (the frozen base is the reference). */
export interface LoraOptions {
  /** Adapter rank; setting it turns LoRA on. */
  loraRank?: number;
  /** LoRA α (default 2 × rank). */
  loraAlpha?: number;
  /** Module names or suffixes (default ["q_proj", "v_proj"]; GPT-2 ["c_attn"]), or "all-linear". */
  loraTargets?: readonly string[];
  /** `exportModel()` returns the merged model instead of the PEFT adapter (default false). */
  mergeLora?: boolean;
}

/** One progress report while a model file downloads (or a local file is read). */
export interface DownloadProgress {
  /** The file's name, e.g. "model.safetensors". */
  file: string;
  /** The URL it comes from; null for a local file (`modelFiles`). */
  url: string | null;
  /** Bytes received so far. */
  loaded: number;
  /** Bytes in all, or null when the server sends no Content-Length (equals `loaded` at the end). */
  total: number | null;
}

/**
 * Where the module's files are. All optional; relative URLs resolve against the embedding
 * document.
 */
export interface LocationOptions {
  /** Folder holding dpo-wgpu.js and dpo-wgpu_bg.wasm (default: `new URL("../", import.meta.url)`). */
  baseUrl?: string | URL;
  /** The wasm-bindgen glue (default: baseUrl + "dpo-wgpu.js"). */
  jsUrl?: string | URL;
  /** The WebAssembly module (default: baseUrl + "dpo-wgpu_bg.wasm"). */
  wasmUrl?: string | URL;
  /**
   * The worker script (default: `new URL("./worker.js", import.meta.url)`); a worker on another
   * origin is started through a same-origin blob: shim (the host must allow CORS).
   */
  workerUrl?: string | URL;
}

/** The model (and reference model) sources of {@link DpoTrainer.create}. */
export interface ModelSourceOptions {
  /**
   * Where the worker downloads the model from (no copy on the page): a Hugging Face model folder
   * URL ("https://host/dir/" or relative), a URL ending in ".gguf", or
   * "hf:OWNER/NAME[@REVISION]" / "hf:OWNER/NAME/FILE.gguf[@REVISION]" (public Hub repositories).
   * The host must allow cross-origin GETs. Only one of `modelUrl`, `weights` and `modelFiles`.
   */
  modelUrl?: string;
  /**
   * The model from local files (a file picker's FileList or dropped Files): one `.gguf` file, or
   * the files of a Hugging Face model folder (config.json, tokenizer.json, ..., the weights or
   * their shards with model.safetensors.index.json), found by their names.
   */
  modelFiles?: ArrayLike<File> | Iterable<File>;
  /**
   * Called while model files download (`modelUrl`, `refModelUrl`) or are read (`modelFiles`): at
   * start, about every 100 ms, and at the end.
   */
  onProgress?: (progress: DownloadProgress) => void;
  /** Cancels loading: the worker ends and create rejects with a DOMException named "AbortError". */
  signal?: AbortSignal;
  /**
   * The model's texts: with safetensors `weights`, the full {@link ModelTexts}; with `modelUrl`,
   * texts that override the fetched ones (e.g. `{ chatTemplate }`).
   */
  model?: ModelTexts | ModelTextOverrides;
  /** The model's weights (copied to the worker). Not together with `modelUrl` or `modelFiles`. */
  weights?: WeightsInput;
  /**
   * An explicit DPO reference model, downloaded like `modelUrl` (default reference: a frozen copy
   * of the starting policy, or the frozen base with LoRA).
   */
  refModelUrl?: string;
  /** The reference model's weights, in the same forms as `weights` (not with `refModelUrl`). */
  refWeights?: WeightsInput;
  /**
   * The reference model's texts, as `model`: the full {@link ModelTexts} with safetensors
   * `refWeights`, or overrides of the texts `refModelUrl` fetched.
   */
  refModel?: ModelTexts | ModelTextOverrides;
  /**
   * A PEFT adapter to start from ({ "adapter_config.json": bytes, "adapter_model.safetensors":
   * bytes }, as a LoRA run's `exportModel()` gives it).
   */
  loraAdapter?: Record<string, Uint8Array>;
}

/** The data of {@link DpoTrainer.create}. */
export interface DataOptions {
  /** "dpo" (default) or "sft". */
  task?: Task;
  /** Training rows: JSONL text or an array (DPO {@link PreferenceRow}s, SFT {@link SftRow}s). */
  trainData?: DataInput;
  /** Evaluation rows, same forms (or use `valSplit`). */
  evalData?: DataInput;
}

/**
 * Options of {@link DpoTrainer.create}; all optional. With no model and no `trainData`: the
 * built-in demo (a tiny Llama and a word-level preference task).
 */
export interface CreateOptions
  extends ModelSourceOptions,
    DataOptions,
    TrainSettings,
    LoraOptions,
    LocationOptions {
  /**
   * Resume from a checkpoint: the files {@link DpoTrainer.checkpoint} returned (model or PEFT
   * adapter, optimizer.safetensors, trainer_state.json), with the same model and data options.
   */
  resumeFrom?: Record<string, Uint8Array>;
  /**
   * A run is refused before its weights reach the GPU when its largest buffer exceeds
   * `maxBuffer` (default: the adapter's maxStorageBufferBindingSize / maxBufferSize) or its
   * estimated total exceeds `budget`.
   */
  memoryLimits?: MemoryLimits;
}

/** Options of {@link DpoTrainer.train}. */
export interface TrainCallOptions {
  /** Steps to run (default and cap: the steps left in the schedule). */
  steps?: number;
  /** Awaited after each step with its report. */
  onStep?: (report: StepReport) => void | Promise<void>;
  /** An aborted signal stops between steps; `train()` then resolves with the reports so far. */
  signal?: AbortSignal;
}

/** Sampling settings shared by {@link DpoTrainer.generate} and {@link DpoTrainer.samplePair}. */
export interface SamplingOptions {
  /** Sampling temperature; 0 is greedy (generate's default). */
  temperature?: number;
  /** Sample only among the K most likely tokens. */
  topK?: number;
  /** Nucleus sampling: the smallest set of tokens with probability ≥ P. */
  topP?: number;
  /** Seed of the sampler (default 0): the same seed gives the same tokens. */
  seed?: number;
  /** Most new tokens (default 64; for GPT-2, prompt + maxNewTokens must fit n_positions). */
  maxNewTokens?: number;
  /** Wrap the prompt as a user message in the model's chat template. */
  chat?: boolean;
  /** A system message before the user message (with `chat`). */
  system?: string;
}

/** Options of {@link DpoTrainer.generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Which model generates: the trained "policy" (default) or the DPO "reference". */
  model?: "policy" | "reference";
  /**
   * Called once per new token, in order, as the worker produces it. `textDelta` may be "" while a
   * UTF-8 character is incomplete; the deltas concatenate to the result's `text` except when
   * byte-fallback tokens end as invalid UTF-8. Throwing rejects the call and stops generation.
   */
  onToken?: (textDelta: string, tokenId: number) => void;
  /** An aborted signal stops after the token in progress; the result then has `aborted: true`. */
  signal?: AbortSignal;
}

/**
 * Options of {@link DpoTrainer.samplePair}: `temperature` defaults to 1 (it must be above 0), the
 * two answers use seeds `seed` and `seed + 1` (default 0 and 1).
 */
export type SamplePairOptions = SamplingOptions;

/** Options of {@link DpoTrainer.exportModel}. */
export interface ExportOptions {
  /** With LoRA: export the merged model instead of the PEFT adapter (default: `mergeLora`). */
  merge?: boolean;
}

/** Options of {@link DpoTrainer.saveToOpfs}. */
export interface SaveOptions {
  /** Any JSON value kept with the run (e.g. UI state); returned in {@link SavedRunInfo}. */
  extra?: unknown;
}

/** Options of {@link DpoTrainer.resumeSaved}. */
export interface ResumeSavedOptions extends LocationOptions {
  /** Called while a model given by URL downloads again, as in {@link DpoTrainer.create}. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Cancels loading, as in {@link DpoTrainer.create}. */
  signal?: AbortSignal;
}

// ---------------------------------------------------------------------------------------------
// Results: metrics, reports, info

/**
 * TRL's DPO metrics (a step's batch, or an evaluation's mean). The keys of the other metric kinds
 * are declared `undefined` here so they can be read from a {@link Metrics} without narrowing.
 */
export interface DpoMetrics {
  /** The loss (summed over the configured losses, with their weights). */
  loss: number;
  /** β · (policy − reference) log-prob of the chosen completions, mean over pairs. */
  "rewards/chosen": number;
  /** β · (policy − reference) log-prob of the rejected completions. */
  "rewards/rejected": number;
  /** Share of pairs whose chosen reward exceeds the rejected one. */
  "rewards/accuracies": number;
  /** Mean of chosen − rejected rewards. */
  "rewards/margins": number;
  /** Summed token log-probs of the chosen completions under the policy. */
  "logps/chosen": number;
  /** Summed token log-probs of the rejected completions under the policy. */
  "logps/rejected": number;
  /** Mean logit over the chosen completions' tokens. */
  "logits/chosen": number;
  /** Mean logit over the rejected completions' tokens. */
  "logits/rejected": number;
  /** Share of chosen completion tokens that are the policy's argmax prediction. */
  mean_token_accuracy: number;
  /** Mean predictive entropy over all completion tokens. */
  entropy: number;
  nll_loss?: undefined;
  log_odds_ratio?: undefined;
  log_odds_chosen?: undefined;
}

/** TRL's CPO/ORPO metrics, for the reference-free methods "simpo" and "orpo". */
export interface ReferenceFreeMetrics {
  loss: number;
  /** β · mean token log-prob of the chosen completions. */
  "rewards/chosen": number;
  "rewards/rejected": number;
  "rewards/accuracies": number;
  "rewards/margins": number;
  /** Mean (not summed) token log-probs of the chosen completions. */
  "logps/chosen": number;
  "logps/rejected": number;
  "logits/chosen": number;
  "logits/rejected": number;
  /** NLL of the chosen rows (ORPO); 0 for SimPO. */
  nll_loss: number;
  /** ORPO only: mean log σ(log odds). */
  log_odds_ratio?: number;
  /** ORPO only: mean log odds of chosen over rejected. */
  log_odds_chosen?: number;
  mean_token_accuracy?: undefined;
  entropy?: undefined;
}

/** TRL's SFT metrics. */
export interface SftMetrics {
  /** Mean token NLL. */
  loss: number;
  /** Share of target tokens that are the model's argmax prediction. */
  mean_token_accuracy: number;
  /** Mean predictive entropy over target tokens. */
  entropy: number;
  "rewards/chosen"?: undefined;
  "rewards/rejected"?: undefined;
  "rewards/accuracies"?: undefined;
  "rewards/margins"?: undefined;
  "logps/chosen"?: undefined;
  "logps/rejected"?: undefined;
  "logits/chosen"?: undefined;
  "logits/rejected"?: undefined;
  nll_loss?: undefined;
  log_odds_ratio?: undefined;
  log_odds_chosen?: undefined;
}

/**
 * Metrics under TRL's names: {@link DpoMetrics}, {@link ReferenceFreeMetrics} or
 * {@link SftMetrics}. Test a key (`m["rewards/accuracies"] !== undefined`) to narrow.
 */
export type Metrics = DpoMetrics | ReferenceFreeMetrics | SftMetrics;

/**
 * What {@link DpoTrainer.evaluate} returns: the task's metrics over the evaluation data
 * (un-prefixed keys; TRL logs them as `eval_<key>`), averaged as TRL's `evaluate()` does.
 */
export type EvalMetrics = Metrics;

/** The fields every step report has besides its metrics. */
export interface StepFields {
  /** This step's number (1-based). */
  step: number;
  /** Steps in the whole schedule. */
  total_steps: number;
  /** Epochs done (fractional). */
  epoch: number;
  /** Global gradient norm before clipping. */
  grad_norm: number;
  /** Learning rate used for this step. */
  learning_rate: number;
  /** Seconds the step took (timed in the worker). */
  seconds: number;
  /** Tokens the policy read in this step (both answers of each pair, padding excluded). */
  tokens: number;
  /** Present (true) when the loss or gradient was not finite and the update was skipped. */
  skipped?: true;
}

/** One optimizer step's report: {@link StepFields} plus the task's {@link Metrics}. */
export type StepReport = StepFields & Metrics;

/** What {@link DpoTrainer.generate} returns. */
export interface GenerateResult {
  /** The decoded new tokens, without special tokens. */
  text: string;
  /** Tokens in the (templated) prompt. */
  promptTokens: number;
  /** The new token ids (including an EOS that stopped generation). */
  newTokens: number[];
  /** Seconds generation took. */
  seconds: number;
  /** newTokens.length / seconds. */
  tokensPerSecond: number;
  /** True when `signal` stopped generation early. */
  aborted: boolean;
}

/** What {@link DpoTrainer.samplePair} returns: two sampled answers to label as chosen/rejected. */
export interface SampledPair {
  /** The prompt as given. */
  prompt: string;
  /** Two answers sampled from the current policy. */
  answers: [string, string];
}

/** The LoRA adapters of a run (PEFT's names). */
export interface LoraInfo {
  rank: number;
  alpha: number;
  /** Module names or suffixes the adapters are on. */
  targets: string[];
  /** Scale α/√rank instead of α/rank. */
  use_rslora: boolean;
}

/** One loss of a run and its weight in the sum. */
export interface LossTerm {
  loss: LossType;
  weight: number;
}

/**
 * The settings a run uses after defaults (snake_case, as the Rust `TrainOptions` and the CLI's
 * `run.toml` name them).
 */
export interface ResolvedTrainOptions {
  optimizer: OptimizerName;
  learning_rate: number;
  batch_size: number;
  gradient_accumulation_steps: number;
  epochs: number;
  max_steps: number | null;
  beta: number;
  max_length: number | null;
  truncation_mode: TruncationMode;
  seed: number;
  max_grad_norm: number;
  weight_decay: number;
  lr_schedule: LrScheduler;
  warmup_steps: number;
  eval_batch_size: number;
  shuffle: boolean;
  losses: LossTerm[];
  label_smoothing: number;
  discopop_tau: number;
  f_divergence_type: FDivergenceType;
  f_alpha_divergence_coef: number;
  ld_alpha: number | null;
  use_weighting: boolean;
  simpo_gamma: number;
  val_split: number;
  test_split: number;
  early_stopping_patience: number | null;
  metric_for_best_model: string;
  trainable_layers: number | null;
  adam_beta1: number;
  adam_beta2: number;
  adam_epsilon: number;
  sgd_momentum: number;
  sgd_nesterov: boolean;
  precompute_ref_log_probs: boolean;
  sync_ref_model: boolean;
  dropout: boolean;
  ref_model_mixup_alpha: number;
  ref_model_sync_steps: number;
}

/** Where a data set came from and how many of its rows were kept. */
export interface DataSummary {
  /** Where the rows came from, as messages name it (e.g. "trainData"). */
  source: string;
  /** Rows kept. */
  kept: number;
  /** Rows dropped (e.g. a prompt longer than maxLength). */
  dropped: number;
}

/** What {@link DpoTrainer.info} (and create, addPairs) report about the run. */
export interface Info {
  /** The WebGPU adapter in use. */
  device: string;
  /** The model family. */
  family: "gpt2" | "llama" | "qwen2";
  task: Task;
  /** True for the built-in demo. */
  demo: boolean;
  /** The LoRA adapters, or null for full fine-tuning. */
  lora: LoraInfo | null;
  trainExamples: number;
  evalExamples: number;
  /** Steps in the schedule. */
  totalSteps: number;
  /** Steps done so far. */
  stepsDone: number;
  /** The settings in use (after defaults). */
  options: ResolvedTrainOptions;
  /** The data kept and dropped, and the model's size. */
  summary: {
    train: DataSummary;
    eval: DataSummary | null;
    /**
     * Why rows are dropped for this task: "prompt_fills_max_length" (DPO: the prompt alone fills
     * maxLength, as TRL drops it) or "no_completion_within_max_length" (SFT).
     */
    dropReason: string;
    /** Parameters the optimizer updates (the adapters with LoRA). */
    trainableParameters: number;
    /** Parameters of the model. */
    parameters: number;
    /** maxLength when it was lowered to the model's limit (GPT-2's positions), else null. */
    maxLengthFitted: number | null;
    /** What the run holds on the device, in bytes. */
    memory: MemoryEstimate;
  };
}

/**
 * A run's device memory in bytes: weights, the reference's own copy, gradients and optimizer
 * state exact; activations an upper estimate of one micro-batch's forward and backward pass.
 * The GPU's memory pools reserve whole pages on top (measured: up to 1.3× the total).
 */
export interface MemoryEstimate {
  weights: number;
  /** What the reference model holds apart from the policy (0 with LoRA). */
  reference: number;
  gradients: number;
  optimizer: number;
  activations: number;
  /** The biggest single buffer (WebGPU refuses one above maxStorageBufferBindingSize). */
  largestBuffer: number;
  total: number;
  parameters: number;
  trainedParameters: number;
}

/** Limits a run must fit, in bytes (see {@link CreateOptions.memoryLimits}). */
export interface MemoryLimits {
  /** The biggest buffer the device binds (default: the adapter's limits). */
  maxBuffer?: number;
  /** Bytes the whole run may use. */
  budget?: number;
}

/** A run saved in the origin private file system (OPFS) by {@link DpoTrainer.saveToOpfs}. */
export interface SavedRunInfo {
  name: string;
  /** Steps done when it was saved. */
  step: number;
  totalSteps: number;
  /** When it was saved (ISO 8601). */
  savedAt: string;
  /** The `extra` given to saveToOpfs (undefined when none). */
  extra: unknown;
}

/** Files by name, e.g. { "config.json": bytes, "model.safetensors": bytes }. */
export type ModelFiles = Record<string, Uint8Array>;

/** What {@link checkWebGPU} returns. */
export type WebGpuCheck =
  | { ok: true; adapter: { vendor: string; architecture: string; description: string } }
  | { ok: false; reason: string };

// ---------------------------------------------------------------------------------------------
// The API

/** Thrown by {@link DpoTrainer.create} when WebGPU cannot be used (see {@link checkWebGPU}). */
export class WebGpuUnavailableError extends Error {
  constructor(reason: string);
  name: "WebGpuUnavailableError";
  /** Why WebGPU is unavailable (the message without its prefix). */
  reason: string;
}

/** Checks for a usable WebGPU adapter on the calling thread. */
export function checkWebGPU(): Promise<WebGpuCheck>;

/**
 * The URL a `modelUrl` option downloads from: "hf:OWNER/NAME[/PATH][@REVISION]" becomes
 * https://huggingface.co/OWNER/NAME/resolve/REVISION/[PATH] (REVISION: main), a folder gets a
 * trailing "/", a relative URL resolves against `base` (default: the document's URL).
 * @throws TypeError for a malformed "hf:" reference.
 */
export function resolveModelUrl(modelUrl: string, base?: string | URL): string;

/**
 * A training run in a Web Worker (WebAssembly + WebGPU). Create with {@link DpoTrainer.create}.
 * Calls are queued: one runs at a time in the worker. After a crash in the worker every pending
 * and later call rejects with the crash message.
 */
export class DpoTrainer {
  /** Use {@link DpoTrainer.create}. */
  private constructor();

  /**
   * Starts a worker, loads the wasm, the model (or the demo) and the data.
   * @throws WebGpuUnavailableError when navigator.gpu is missing or no adapter exists;
   *   TypeError when more than one of `modelUrl`, `weights` and `modelFiles` (or both
   *   `refModelUrl` and `refWeights`) are given; a DOMException "AbortError" when `signal`
   *   cancels; an Error naming the URL when a download fails, or the option at fault for an
   *   invalid setting.
   */
  static create(options?: CreateOptions): Promise<DpoTrainer>;

  /** The runs saved in this origin's private file system (OPFS), newest first. */
  static listSaved(): Promise<SavedRunInfo[]>;

  /**
   * A trainer resumed from the run saved under `name` by {@link DpoTrainer.saveToOpfs}, at the
   * step it was saved: same model, data, settings, optimizer state and data order (a model that
   * came from a URL is downloaded again).
   */
  static resumeSaved(name: string, options?: ResumeSavedOptions): Promise<DpoTrainer>;

  /** Deletes the run saved under `name` (no error when there is none). */
  static deleteSaved(name: string): Promise<void>;

  /**
   * Runs up to `steps` optimizer steps, awaiting `onStep` after each.
   * @returns the step reports (fewer when aborted, paused, or the schedule ends).
   */
  train(options?: TrainCallOptions): Promise<StepReport[]>;

  /** Stops a running {@link train} after the step in progress; `train()` again resumes. */
  pause(): void;

  /** One optimizer step. */
  step(): Promise<StepReport>;

  /** Metrics on the evaluation data (TRL names), or null without evaluation data. */
  evaluate(): Promise<EvalMetrics | null>;

  /**
   * Continues `prompt` with the current policy (or the reference), streaming tokens to
   * `onToken`. Stops at one of the model's EOS tokens or after `maxNewTokens` (default 64).
   */
  generate(prompt: string, options?: GenerateOptions): Promise<GenerateResult>;

  /**
   * Two answers to `prompt` sampled from the current model, for a person to pick the better one
   * (then {@link addPairs}).
   * @throws RangeError when `temperature` is not above 0.
   */
  samplePair(prompt: string, options?: SamplePairOptions): Promise<SampledPair>;

  /**
   * A new round of DPO on `rows` from the current model, which becomes the round's reference
   * (iterative DPO); `settings` override the run's options, and the schedule starts over at step
   * 0 (LoRA runs keep training their adapters). Resolves with the new round's info.
   */
  addPairs(rows: string | readonly PreferenceRow[], settings?: TrainSettings): Promise<Info>;

  /**
   * The current model as files: a Hugging Face model folder (config.json, model.safetensors,
   * tokenizer files), or with LoRA a PEFT adapter (adapter_config.json,
   * adapter_model.safetensors) and the tokenizer files; `{ merge }` chooses (default: the
   * `mergeLora` option).
   */
  exportModel(options?: ExportOptions): Promise<ModelFiles>;

  /**
   * Everything to resume the run where it is: the model or PEFT adapter, optimizer.safetensors and
   * trainer_state.json (the CLI's checkpoint-N/ folder).
   * `DpoTrainer.create({ ...sameOptions, resumeFrom: files })` continues from it.
   */
  checkpoint(): Promise<Record<string, Uint8Array>>;

  /**
   * Saves the run in this origin's private file system (OPFS) under `name` (1 to 64 letters,
   * digits, "-", "_" or "."; a TypeError otherwise): a checkpoint plus what rebuilds the run.
   * {@link DpoTrainer.resumeSaved} continues from it, also after a reload.
   */
  saveToOpfs(name: string, options?: SaveOptions): Promise<SavedRunInfo>;

  /** The run: device, model family, task, data sizes, steps, settings. */
  info(): Promise<Info>;

  /** Stops the worker (frees its GPU memory). Later calls reject. */
  terminate(): void;
}

export default DpoTrainer;
