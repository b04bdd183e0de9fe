//! The wasm-bindgen shell: the same trainer and generator as the CLI, driven from JavaScript
//! (a Web Worker).
//!
//! Methods return Promises. A call made while another is still running is rejected with
//! "busy" rather than interleaving two steps.

use std::cell::RefCell;
use std::rc::Rc;

use burn::module::Module;
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::backend::init_wgpu_async;
use crate::bundle::{ModelBundle, ModelTexts};
use crate::chat::{self, Message};
use crate::checkpoint::{self, ModelFiles};
use crate::data::{
    PreferencePair, SftExample, parse_jsonl, parse_sft_jsonl, tokenize_pairs, tokenize_sft,
};
use crate::demo;
use crate::error::Error;
use crate::generate::{SamplingOptions, TextStream, generate};
use crate::gguf::gguf_model_texts_and_weights;
use crate::optim::{LrSchedule, OptimizerKind};
use crate::peft::{self, LoraSettings};
use crate::train::{Task, TrainOptions, Trainer as CoreTrainer};
use crate::weights::{FileBytes, SafetensorsSource};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Options accepted by `Trainer.create`. Every field is optional: with no model and no
/// `trainData` the built-in demo is trained.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateOptions {
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json` (and optionally
    /// `generation_config.json`, `chat_template.jinja`) texts for safetensors weights. Not needed
    /// for a GGUF file, which carries them.
    model: Option<ModelFilesText>,
    /// `dpo` (default) or `sft`.
    task: Option<String>,
    /// JSONL text, or an array of row objects.
    train_data: Option<DataInput>,
    eval_data: Option<DataInput>,
    optimizer: Option<String>,
    lr: Option<f64>,
    lr_scheduler: Option<String>,
    warmup_steps: Option<usize>,
    batch_size: Option<usize>,
    epochs: Option<usize>,
    max_steps: Option<usize>,
    beta: Option<f64>,
    max_length: Option<usize>,
    seed: Option<u64>,
    max_grad_norm: Option<f64>,
    weight_decay: Option<f64>,
    eval_batch_size: Option<usize>,
    /// Train LoRA adapters of this rank (the reference is the frozen base).
    lora_rank: Option<usize>,
    lora_alpha: Option<f64>,
    lora_targets: Option<Vec<String>>,
    /// Export the model with adapters folded in rather than the PEFT adapter.
    merge_lora: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelFilesText {
    config: String,
    tokenizer: String,
    tokenizer_config: Option<String>,
    generation_config: Option<String>,
    chat_template: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DataInput {
    Jsonl(String),
    Rows(Vec<serde_json::Value>),
}

impl DataInput {
    /// As JSONL text, so rows from JS get the same checks and messages as files.
    fn into_jsonl(self) -> String {
        match self {
            DataInput::Jsonl(text) => text,
            DataInput::Rows(rows) => rows
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn into_pairs(self, label: &str) -> Result<Vec<PreferencePair>, Error> {
        parse_jsonl(&self.into_jsonl(), label)
    }

    fn into_sft(self, label: &str) -> Result<Vec<SftExample>, Error> {
        parse_sft_jsonl(&self.into_jsonl(), label)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GenerateOptions {
    max_new_tokens: Option<usize>,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seed: Option<u64>,
    /// Wrap the prompt as a user message in the model's chat template.
    chat: bool,
    system: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResult {
    text: String,
    prompt_tokens: usize,
    new_tokens: Vec<u32>,
    seconds: f64,
    tokens_per_second: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    device: String,
    family: &'static str,
    task: &'static str,
    demo: bool,
    lora: Option<LoraSettings>,
    train_examples: usize,
    eval_examples: usize,
    /// Older name of `train_examples`.
    train_pairs: usize,
    eval_pairs: usize,
    total_steps: usize,
    steps_done: usize,
    options: TrainOptions,
}

struct State {
    trainer: CoreTrainer,
    bundle_meta: Meta,
    device: String,
    demo: bool,
}

/// What exports and generation need besides the trained model.
struct Meta {
    config: crate::config::ModelConfig,
    tokenizer: crate::tokenizer::TextTokenizer,
    extra_files: Vec<(String, String)>,
    stop_tokens: Vec<u32>,
    lora: Option<LoraSettings>,
    merge_lora: bool,
    task: &'static str,
}

/// A training run living in WebAssembly.
#[wasm_bindgen]
pub struct Trainer {
    /// `None` while an async call holds it.
    state: Rc<RefCell<Option<State>>>,
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(js_error)
}

/// Weight bytes handed over from JavaScript: one file (safetensors or GGUF), or safetensors shards
/// by file name (as `model.safetensors.index.json` lists them).
enum WeightBytes {
    Single(Vec<u8>),
    Shards(Vec<(String, Vec<u8>)>),
}

impl WeightBytes {
    /// `Uint8Array` | `{ [fileName]: Uint8Array }` | undefined/null.
    fn from_js(value: &JsValue) -> Result<Option<Self>, JsValue> {
        if value.is_undefined() || value.is_null() {
            return Ok(None);
        }
        if let Some(bytes) = value.dyn_ref::<Uint8Array>() {
            return Ok(Some(Self::Single(bytes.to_vec())));
        }
        let not_weights = || {
            js_error(
                "weights must be a Uint8Array (model.safetensors or a .gguf file) or an object \
                 mapping safetensors shard file names to Uint8Arrays",
            )
        };
        let object = value.dyn_ref::<Object>().ok_or_else(not_weights)?;
        let mut shards = Vec::new();
        for entry in Object::entries(object).iter() {
            let entry: js_sys::Array = entry.unchecked_into();
            let name = entry.get(0).as_string().ok_or_else(not_weights)?;
            let bytes = entry
                .get(1)
                .dyn_into::<Uint8Array>()
                .map_err(|_| js_error(format!("weights[{name:?}] is not a Uint8Array")))?;
            shards.push((name, bytes.to_vec()));
        }
        if shards.is_empty() {
            return Err(not_weights());
        }
        shards.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(Self::Shards(shards)))
    }
}

/// The model from `weights` (a GGUF file, or safetensors with `files`), or the demo.
fn load_model(
    files: Option<ModelFilesText>,
    weights: WeightBytes,
    device: &burn::tensor::Device,
) -> Result<ModelBundle, Error> {
    let shards = match weights {
        WeightBytes::Single(bytes) if bytes.starts_with(b"GGUF") => {
            let (texts, source) =
                gguf_model_texts_and_weights("model.gguf", FileBytes::Owned(bytes))?;
            return ModelBundle::load(texts, &source, device);
        }
        WeightBytes::Single(bytes) => vec![("model.safetensors".to_string(), bytes)],
        WeightBytes::Shards(shards) => shards,
    };
    let files = files.ok_or_else(|| {
        Error::Invalid(
            "`model` (config, tokenizer texts) is required with safetensors weights".into(),
        )
    })?;
    let label = match shards.as_slice() {
        [(name, _)] => name.clone(),
        _ => format!("{} safetensors shards", shards.len()),
    };
    let source = SafetensorsSource::new(
        &label,
        shards
            .into_iter()
            .map(|(name, bytes)| (name, FileBytes::Owned(bytes)))
            .collect(),
    )?;
    let mut extra_files = Vec::new();
    if let Some(text) = files.generation_config {
        extra_files.push(("generation_config.json".to_string(), text));
    }
    if let Some(text) = files.chat_template {
        extra_files.push(("chat_template.jinja".to_string(), text));
    }
    ModelBundle::load(
        ModelTexts {
            label: "model".into(),
            config_json: files.config,
            tokenizer_json: files.tokenizer,
            tokenizer_config_json: files.tokenizer_config,
            extra_files,
        },
        &source,
        device,
    )
}

#[wasm_bindgen]
impl Trainer {
    /// `Trainer.create(options, weights?)` -> Promise<Trainer>. Initializes WebGPU, loads the
    /// model (or the demo), tokenizes the data.
    pub fn create(options: JsValue, weights: JsValue) -> Promise {
        future_to_promise(async move {
            let weights = WeightBytes::from_js(&weights)?;
            let options: CreateOptions = if options.is_undefined() || options.is_null() {
                CreateOptions::default()
            } else {
                serde_wasm_bindgen::from_value(options).map_err(js_error)?
            };
            let sft = match options.task.as_deref() {
                None | Some("dpo") => false,
                Some("sft") => true,
                Some(other) => {
                    return Err(js_error(format!("unknown task `{other}` (dpo or sft)")));
                }
            };
            let selected = init_wgpu_async().await.map_err(js_error)?;
            let device = selected.device;
            let demo = weights.is_none() && options.train_data.is_none() && !sft;
            let (bundle, mut train_options) = if demo {
                let defaults = demo::train_options();
                let seed = options.seed.unwrap_or(defaults.seed);
                (demo::model(seed, &device).map_err(js_error)?, defaults)
            } else {
                let weights = weights.ok_or_else(|| {
                    js_error("the model's weights (safetensors or GGUF bytes) are required")
                })?;
                let bundle = load_model(options.model, weights, &device).map_err(js_error)?;
                let defaults = if sft {
                    TrainOptions::sft_defaults()
                } else {
                    TrainOptions::default()
                };
                (bundle, defaults)
            };
            let o = &mut train_options;
            if let Some(v) = &options.optimizer {
                o.optimizer = v.parse::<OptimizerKind>().map_err(js_error)?;
            }
            if let Some(v) = &options.lr_scheduler {
                o.lr_schedule = v.parse::<LrSchedule>().map_err(js_error)?;
            }
            o.learning_rate = options.lr.unwrap_or(o.learning_rate);
            o.warmup_steps = options.warmup_steps.unwrap_or(o.warmup_steps);
            o.batch_size = options.batch_size.unwrap_or(o.batch_size);
            o.beta = options.beta.unwrap_or(o.beta);
            o.seed = options.seed.unwrap_or(o.seed);
            o.max_grad_norm = options.max_grad_norm.unwrap_or(o.max_grad_norm);
            o.weight_decay = options.weight_decay.unwrap_or(o.weight_decay);
            o.eval_batch_size = options.eval_batch_size.unwrap_or(o.eval_batch_size);
            if let Some(epochs) = options.epochs {
                o.epochs = epochs;
                o.max_steps = None;
            }
            if options.max_steps.is_some() {
                o.max_steps = options.max_steps;
            }
            match options.max_length {
                Some(max_length) => o.max_length = (max_length > 0).then_some(max_length),
                None => {
                    o.fit_max_length(bundle.model.max_positions());
                }
            }

            let stop_tokens = bundle.stop_tokens();
            let ModelBundle {
                config,
                model,
                tokenizer,
                extra_files,
            } = bundle;
            let (policy, reference, lora) = match options.lora_rank {
                Some(rank) => {
                    let settings = LoraSettings::new(
                        rank,
                        options.lora_alpha,
                        options.lora_targets.clone(),
                        config.family(),
                    );
                    let reference = model.valid();
                    let policy = peft::attach(model, &settings, train_options.seed, &device)
                        .map_err(js_error)?;
                    (policy, Some(reference), Some(settings))
                }
                None => (model, None, None),
            };
            let task = if demo {
                let (train_rows, eval_rows) =
                    demo::pairs(train_options.seed, demo::DEMO_PAIRS.0, demo::DEMO_PAIRS.1);
                let train = tokenize_pairs(&train_rows, &tokenizer, train_options.max_length)
                    .map_err(js_error)?;
                let eval = tokenize_pairs(&eval_rows, &tokenizer, train_options.max_length)
                    .map_err(js_error)?;
                Task::Dpo {
                    train: train.rows,
                    eval: eval.rows,
                    reference,
                }
            } else {
                let train_data = options
                    .train_data
                    .ok_or_else(|| js_error("`trainData` is required with a model"))?;
                let max_length = train_options.max_length;
                if sft {
                    let train = tokenize_sft(
                        &train_data.into_sft("trainData").map_err(js_error)?,
                        &tokenizer,
                        max_length,
                    )
                    .map_err(js_error)?;
                    let eval = match options.eval_data {
                        Some(d) => {
                            tokenize_sft(
                                &d.into_sft("evalData").map_err(js_error)?,
                                &tokenizer,
                                max_length,
                            )
                            .map_err(js_error)?
                            .rows
                        }
                        None => Vec::new(),
                    };
                    Task::Sft {
                        train: train.rows,
                        eval,
                    }
                } else {
                    let train = tokenize_pairs(
                        &train_data.into_pairs("trainData").map_err(js_error)?,
                        &tokenizer,
                        max_length,
                    )
                    .map_err(js_error)?;
                    let eval = match options.eval_data {
                        Some(d) => {
                            tokenize_pairs(
                                &d.into_pairs("evalData").map_err(js_error)?,
                                &tokenizer,
                                max_length,
                            )
                            .map_err(js_error)?
                            .rows
                        }
                        None => Vec::new(),
                    };
                    Task::Dpo {
                        train: train.rows,
                        eval,
                        reference,
                    }
                }
            };
            let trainer =
                CoreTrainer::with_task(policy, task, tokenizer.pad_id, train_options, &device)
                    .map_err(js_error)?;
            let state = State {
                trainer,
                bundle_meta: Meta {
                    config,
                    tokenizer,
                    extra_files,
                    stop_tokens,
                    lora,
                    merge_lora: options.merge_lora,
                    task: if sft { "sft" } else { "dpo" },
                },
                device: selected.description,
                demo,
            };
            Ok(Trainer {
                state: Rc::new(RefCell::new(Some(state))),
            }
            .into())
        })
    }

    /// Run `f` with the state, putting it back afterwards whatever happens.
    fn with_state<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(State) -> Fut + 'static,
        Fut: std::future::Future<Output = (State, Result<JsValue, JsValue>)> + 'static,
    {
        let cell = self.state.clone();
        let taken = self.state.borrow_mut().take();
        let Some(state) = taken else {
            return Promise::reject(&js_error(
                "busy: another call on this trainer is still running",
            ));
        };
        future_to_promise(async move {
            let (state, result) = f(state).await;
            *cell.borrow_mut() = Some(state);
            result
        })
    }

    /// One optimizer step -> Promise<StepReport> (TRL metric names, plus step, grad_norm,
    /// learning_rate, seconds).
    pub fn step(&self) -> Promise {
        self.with_state(|mut s| async move {
            let result = match s.trainer.step().await {
                Ok(report) => to_js(&report),
                Err(e) => Err(js_error(e)),
            };
            (s, result)
        })
    }

    /// Metrics on the evaluation examples -> Promise<metrics | null>.
    pub fn evaluate(&self) -> Promise {
        self.with_state(|mut s| async move {
            let result = match s.trainer.evaluate().await {
                Ok(m) => to_js(&m),
                Err(e) => Err(js_error(e)),
            };
            (s, result)
        })
    }

    /// Generate from the current policy -> Promise<{text, promptTokens, newTokens, seconds,
    /// tokensPerSecond}>; `on_token(textDelta, tokenId)` is called as tokens come.
    pub fn generate(
        &self,
        prompt: String,
        options: JsValue,
        on_token: Option<Function>,
    ) -> Promise {
        self.with_state(move |s| async move {
            let result = async {
                let options: GenerateOptions = if options.is_undefined() || options.is_null() {
                    GenerateOptions::default()
                } else {
                    serde_wasm_bindgen::from_value(options).map_err(js_error)?
                };
                let tokenizer = &s.bundle_meta.tokenizer;
                let prompt_ids = if options.chat {
                    let mut messages = Vec::new();
                    if let Some(system) = &options.system {
                        messages.push(Message::new("system", system));
                    }
                    messages.push(Message::new("user", &prompt));
                    chat::encode(tokenizer, &messages, true).map_err(js_error)?
                } else {
                    tokenizer.encode(&prompt).map_err(js_error)?
                };
                let defaults = SamplingOptions::default();
                let sampling = SamplingOptions {
                    max_new_tokens: options.max_new_tokens.unwrap_or(defaults.max_new_tokens),
                    temperature: options.temperature.unwrap_or(defaults.temperature),
                    top_k: options.top_k,
                    top_p: options.top_p,
                    seed: options.seed.unwrap_or(defaults.seed),
                };
                let policy = s.trainer.policy();
                let device = policy
                    .devices()
                    .into_iter()
                    .next()
                    .expect("model has a device");
                let mut stream = TextStream::new(tokenizer);
                let started = web_time::Instant::now();
                // `onToken` returning `false` (or throwing) stops generation after that token.
                let mut keep_going = true;
                let new_tokens = generate(
                    &policy,
                    &prompt_ids,
                    &s.bundle_meta.stop_tokens,
                    &sampling,
                    &device,
                    |token| {
                        if let Ok(delta) = stream.push(token) {
                            if let Some(f) = &on_token {
                                let delta = JsValue::from_str(&delta);
                                match f.call2(&JsValue::NULL, &delta, &JsValue::from(token)) {
                                    Ok(v) if v.as_bool() == Some(false) => keep_going = false,
                                    Err(_) => keep_going = false,
                                    Ok(_) => {}
                                }
                            }
                        }
                        keep_going
                    },
                )
                .await
                .map_err(js_error)?;
                let seconds = started.elapsed().as_secs_f64();
                // The full decode, not the joined deltas (see `TextStream`).
                let text = tokenizer
                    .decode_skipping_special(&new_tokens)
                    .map_err(js_error)?;
                to_js(&GenerateResult {
                    text,
                    prompt_tokens: prompt_ids.len(),
                    tokens_per_second: new_tokens.len() as f64 / seconds.max(1e-9),
                    new_tokens,
                    seconds,
                })
            }
            .await;
            (s, result)
        })
    }

    /// The current model as files -> Promise<{ [fileName]: Uint8Array }>: a Hugging Face model
    /// directory, or with LoRA (unless `mergeLora`) a PEFT adapter plus tokenizer files.
    #[wasm_bindgen(js_name = exportModel)]
    pub fn export_model(&self) -> Promise {
        self.with_state(|s| async move {
            let result = async {
                let m = &s.bundle_meta;
                let how = ModelFiles {
                    config: &m.config,
                    tokenizer: &m.tokenizer,
                    extra_files: &m.extra_files,
                    lora: m.lora.as_ref(),
                    merge_lora: m.merge_lora,
                    base_model: "browser",
                };
                let files = checkpoint::model_files(&s.trainer.policy(), &how)
                    .await
                    .map_err(js_error)?;
                let out = Object::new();
                for (name, bytes) in files.files {
                    Reflect::set(&out, &name.into(), &Uint8Array::from(bytes.as_slice()))?;
                }
                Ok(out.into())
            }
            .await;
            (s, result)
        })
    }

    /// `{device, family, task, demo, lora, trainExamples, evalExamples, totalSteps, stepsDone,
    /// options}`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let state = self.state.borrow();
        let s = state
            .as_ref()
            .ok_or_else(|| js_error("busy: another call on this trainer is still running"))?;
        to_js(&Info {
            device: s.device.clone(),
            family: s.bundle_meta.config.family(),
            task: s.bundle_meta.task,
            demo: s.demo,
            lora: s.bundle_meta.lora.clone(),
            train_examples: s.trainer.train_len(),
            eval_examples: s.trainer.eval_len(),
            train_pairs: s.trainer.train_len(),
            eval_pairs: s.trainer.eval_len(),
            total_steps: s.trainer.total_steps(),
            steps_done: s.trainer.steps_done(),
            options: s.trainer.options().clone(),
        })
    }
}
