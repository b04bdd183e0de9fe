//! The wasm-bindgen shell: the same trainer as the CLI, driven from JavaScript (a Web Worker).
//!
//! Methods return Promises. A call made while another is still running is rejected with
//! "busy" rather than interleaving two steps.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Object, Promise, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::backend::init_wgpu_async;
use crate::bundle::{ModelBundle, ModelTexts, export_files};
use crate::config::ModelConfig;
use crate::data::{PreferencePair, parse_jsonl, tokenize_pairs};
use crate::demo;
use crate::error::Error;
use crate::optim::{LrSchedule, OptimizerKind};
use crate::tokenizer::TextTokenizer;
use crate::train::{DpoTrainer, TrainOptions};
use crate::weights::{FileBytes, SafetensorsSource};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Options accepted by `Trainer.create`. Every field is optional: with no `model` and no
/// `trainData` the built-in demo is trained.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateOptions {
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json` texts; the weights come as the
    /// second argument of `create` (a Uint8Array of `model.safetensors`).
    model: Option<ModelFilesText>,
    /// JSONL text, or an array of `{prompt, chosen, rejected}` objects.
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
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelFilesText {
    config: String,
    tokenizer: String,
    tokenizer_config: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DataInput {
    Jsonl(String),
    Pairs(Vec<PreferencePair>),
}

impl DataInput {
    fn into_pairs(self, label: &str) -> Result<Vec<PreferencePair>, Error> {
        match self {
            DataInput::Jsonl(text) => parse_jsonl(&text, label),
            DataInput::Pairs(pairs) => Ok(pairs),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    device: String,
    family: &'static str,
    demo: bool,
    train_pairs: usize,
    eval_pairs: usize,
    total_steps: usize,
    steps_done: usize,
    options: TrainOptions,
}

struct State {
    trainer: DpoTrainer,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    device: String,
    demo: bool,
}

/// A DPO run living in WebAssembly.
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

#[wasm_bindgen]
impl Trainer {
    /// `Trainer.create(options, weights?)` -> Promise<Trainer>. Initializes WebGPU, loads the
    /// model (or the demo), tokenizes the data.
    pub fn create(options: JsValue, weights: Option<Uint8Array>) -> Promise {
        future_to_promise(async move {
            let options: CreateOptions = if options.is_undefined() || options.is_null() {
                CreateOptions::default()
            } else {
                serde_wasm_bindgen::from_value(options).map_err(js_error)?
            };
            let selected = init_wgpu_async().await.map_err(js_error)?;
            let device = selected.device;
            let demo = options.model.is_none() && options.train_data.is_none();
            let (bundle, train_rows, eval_rows, mut train_options) = if demo {
                let defaults = demo::train_options();
                let seed = options.seed.unwrap_or(defaults.seed);
                let (train_rows, eval_rows) =
                    demo::pairs(seed, demo::DEMO_PAIRS.0, demo::DEMO_PAIRS.1);
                let bundle = demo::model(seed, &device).map_err(js_error)?;
                (bundle, train_rows, eval_rows, defaults)
            } else {
                let files = options
                    .model
                    .ok_or_else(|| js_error("`model` is required with `trainData`"))?;
                let weights = weights
                    .ok_or_else(|| js_error("the model's safetensors bytes are required"))?;
                let source = SafetensorsSource::new(
                    "model.safetensors",
                    vec![(
                        "model.safetensors".to_string(),
                        FileBytes::Owned(weights.to_vec()),
                    )],
                )
                .map_err(js_error)?;
                let bundle = ModelBundle::load(
                    ModelTexts {
                        label: "model".into(),
                        config_json: files.config,
                        tokenizer_json: files.tokenizer,
                        tokenizer_config_json: files.tokenizer_config,
                        extra_files: Vec::new(),
                    },
                    &source,
                    &device,
                )
                .map_err(js_error)?;
                let train_rows = options
                    .train_data
                    .ok_or_else(|| js_error("`trainData` is required with `model`"))?
                    .into_pairs("trainData")
                    .map_err(js_error)?;
                let eval_rows = match options.eval_data {
                    Some(d) => d.into_pairs("evalData").map_err(js_error)?,
                    None => Vec::new(),
                };
                (bundle, train_rows, eval_rows, TrainOptions::default())
            };
            let o = &mut train_options;
            if let Some(v) = options.optimizer {
                o.optimizer = v.parse::<OptimizerKind>().map_err(js_error)?;
            }
            if let Some(v) = options.lr_scheduler {
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
            let train_set =
                tokenize_pairs(&train_rows, &bundle.tokenizer, o.max_length).map_err(js_error)?;
            let eval_set =
                tokenize_pairs(&eval_rows, &bundle.tokenizer, o.max_length).map_err(js_error)?;
            let trainer = DpoTrainer::new(
                bundle.model,
                None,
                train_set.rows,
                eval_set.rows,
                bundle.tokenizer.pad_id,
                train_options,
                &device,
            )
            .map_err(js_error)?;
            let state = State {
                trainer,
                config: bundle.config,
                tokenizer: bundle.tokenizer,
                device: selected.description,
                demo,
            };
            Ok(Trainer {
                state: Rc::new(RefCell::new(Some(state))),
            }
            .into())
        })
    }

    /// Take the state for the duration of an async call.
    fn take(&self) -> Result<State, JsValue> {
        self.state
            .borrow_mut()
            .take()
            .ok_or_else(|| js_error("busy: another call on this trainer is still running"))
    }

    /// Run `f` with the state, putting it back afterwards whatever happens.
    fn with_state<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(State) -> Fut + 'static,
        Fut: std::future::Future<Output = (State, Result<JsValue, JsValue>)> + 'static,
    {
        let cell = self.state.clone();
        let state = match self.take() {
            Ok(s) => s,
            Err(e) => return Promise::reject(&e),
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

    /// Metrics on the evaluation pairs -> Promise<metrics | null>.
    pub fn evaluate(&self) -> Promise {
        self.with_state(|mut s| async move {
            let result = match s.trainer.evaluate().await {
                Ok(m) => to_js(&m),
                Err(e) => Err(js_error(e)),
            };
            (s, result)
        })
    }

    /// The current model as Hugging Face files -> Promise<{ [fileName]: Uint8Array }>.
    #[wasm_bindgen(js_name = exportModel)]
    pub fn export_model(&self) -> Promise {
        self.with_state(|s| async move {
            let result = async {
                let files = export_files(&s.trainer.policy(), &s.config, &s.tokenizer, &[])
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

    /// `{device, family, demo, trainPairs, evalPairs, totalSteps, stepsDone, options}`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let state = self.state.borrow();
        let s = state
            .as_ref()
            .ok_or_else(|| js_error("busy: another call on this trainer is still running"))?;
        to_js(&Info {
            device: s.device.clone(),
            family: s.config.family(),
            demo: s.demo,
            train_pairs: s.trainer.train_pairs(),
            eval_pairs: s.trainer.eval_pairs(),
            total_steps: s.trainer.total_steps(),
            steps_done: s.trainer.steps_done(),
            options: s.trainer.options().clone(),
        })
    }
}
