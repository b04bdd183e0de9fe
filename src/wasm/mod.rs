//! The wasm-bindgen shell: the same runs and generator as the CLI, driven from JavaScript
//! (a Web Worker). It turns JS options into a `RunSpec` and hands back what the core returns.
//!
//! Methods return Promises. A call made while another is still running is rejected with
//! "busy" rather than interleaving two steps.

mod options;

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::backend::{SelectedDevice, init_wgpu_async};
use crate::error::Error;
use crate::io::bundle::ModelBundle;
use crate::io::hub_ref::{DEFAULT_ENDPOINT, HubRef};
use crate::io::model_dir;
use crate::io::peft::AdapterFiles;
use crate::model::config::Family;
use crate::model::config::ModelConfig;
use crate::model::lora::LoraSettings;
use crate::text::stream::generate_text;
use crate::train::checkpoint;
use crate::train::memory::{self, MemoryEstimate};
use crate::train::options::{OptionOverrides, Task, TrainOptions};
use crate::train::run::{DataSummary, DropReason, Run, RunSpec, Summary, planned_memory};
use options::{
    CreateOptions, DataInput, ExportOptions, GenerateOptions, ModelChoice, WeightBytes,
    files_from_js, option_name,
};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// What a model folder holds (`{ required, optional, weights, weightsIndex }`): the list
/// `web/model-source.js` fetches by, exported so a test can check the two agree.
#[wasm_bindgen(js_name = modelLayout)]
pub fn model_layout() -> Result<JsValue, JsValue> {
    to_js(&model_dir::layout())
}

/// The URL an `hf:` reference downloads from (as `web/model-source.js` resolves it), or an error.
#[wasm_bindgen(js_name = hubUrl)]
pub fn hub_url(spec: &str) -> Result<String, JsValue> {
    match HubRef::parse(spec) {
        Some(Ok(hub)) => Ok(hub.url(DEFAULT_ENDPOINT)),
        Some(Err(e)) => Err(js_error(e)),
        None => Err(js_error(format!("`{spec}` is not an hf: reference"))),
    }
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
    family: Family,
    task: Task,
    demo: bool,
    lora: Option<LoraSettings>,
    train_examples: usize,
    eval_examples: usize,
    total_steps: usize,
    steps_done: usize,
    options: TrainOptions,
    summary: SummaryJs,
}

/// What the page shows about the data and the model before training.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryJs {
    train: DataSummary,
    eval: Option<DataSummary>,
    drop_reason: DropReason,
    trainable_parameters: usize,
    parameters: usize,
    max_length_fitted: Option<usize>,
    memory: MemoryEstimate,
}

impl SummaryJs {
    fn of(s: &Summary) -> Self {
        Self {
            train: s.train.clone(),
            eval: s.eval.clone(),
            drop_reason: s.drop_reason,
            trainable_parameters: s.trainable_parameters,
            parameters: s.parameters,
            max_length_fitted: s.max_length_fitted,
            memory: s.memory,
        }
    }
}

/// A training run living in WebAssembly.
#[wasm_bindgen]
pub struct Trainer {
    /// `None` while an async call holds it.
    state: Rc<RefCell<Option<Run>>>,
    /// The WebGPU device the run lives on (a new round is built on it).
    device: SelectedDevice,
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// A core error in JavaScript's terms: settings named as the JS options that set them.
fn core_error(e: Error) -> JsValue {
    match e {
        Error::Setting { field, message } => {
            js_error(format!("{}: {message}", option_name(&field)))
        }
        other => js_error(other),
    }
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(js_error)
}

/// Bytes of a `Uint8Array`, or of every `Uint8Array` value of an object (files by name); 0 else.
fn js_byte_length(value: &JsValue) -> u64 {
    if let Some(bytes) = value.dyn_ref::<Uint8Array>() {
        return bytes.length() as u64;
    }
    match value.dyn_ref::<Object>() {
        Some(object) => Object::values(object)
            .iter()
            .filter_map(|v| v.dyn_into::<Uint8Array>().ok())
            .map(|bytes| bytes.length() as u64)
            .sum(),
        None => 0,
    }
}

/// The wasm heap's current size (it only grows).
fn heap_used() -> u64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as u64
}

#[wasm_bindgen]
impl Trainer {
    /// `Trainer.create(options, weights?, files?)` -> Promise<Trainer>. Initializes WebGPU,
    /// loads the model (or the demo), tokenizes the data. `files` (optional):
    /// `{ refWeights?, resumeFrom?, loraAdapter? }` — an explicit reference model's weights (its
    /// texts in `options.refModel`), checkpoint files to resume from, a PEFT adapter to start
    /// from (each `{ fileName: Uint8Array }`, `refWeights` also one `Uint8Array`).
    pub fn create(options: JsValue, weights: JsValue, files: JsValue) -> Promise {
        future_to_promise(async move {
            let field = |name: &str| -> Result<JsValue, JsValue> {
                if files.is_undefined() || files.is_null() {
                    Ok(JsValue::UNDEFINED)
                } else {
                    Reflect::get(&files, &name.into())
                }
            };
            // The files are copied into the wasm heap whole: refuse what it cannot hold first.
            memory::check_host_room(
                "the model's files",
                js_byte_length(&weights) + js_byte_length(&field("refWeights")?),
                heap_used(),
                memory::WASM32_HEAP,
            )
            .map_err(core_error)?;
            let weights = WeightBytes::from_js(&weights, "model").map_err(core_error)?;
            let ref_weights =
                WeightBytes::from_js(&field("refWeights")?, "ref_model").map_err(core_error)?;
            let resume = files_from_js(&field("resumeFrom")?, "resume_from").map_err(core_error)?;
            let adapter =
                files_from_js(&field("loraAdapter")?, "lora_adapter").map_err(core_error)?;
            let mut options: CreateOptions = if options.is_undefined() || options.is_null() {
                CreateOptions::default()
            } else {
                serde_wasm_bindgen::from_value(options).map_err(js_error)?
            };
            let task: Task = match &options.task {
                Some(task) => task.parse().map_err(core_error)?,
                None => Task::Dpo,
            };
            let selected = init_wgpu_async().await.map_err(js_error)?;
            // Texts and configs first: what cannot fit is refused before anything is on the
            // device.
            let reference = match ref_weights {
                Some(weights) => Some(weights.open(options.ref_model.take()).map_err(core_error)?),
                None => None,
            };
            let reference_config = match &reference {
                Some((texts, _)) => Some(
                    ModelConfig::from_json(&texts.config_json, &texts.label).map_err(core_error)?,
                ),
                None => None,
            };
            let model = match weights {
                Some(weights) => {
                    let (texts, source) = weights.open(options.model.take()).map_err(core_error)?;
                    let config = ModelConfig::from_json(&texts.config_json, &texts.label)
                        .map_err(core_error)?;
                    planned_memory(
                        task,
                        &config,
                        &options.settings,
                        options.lora().as_ref(),
                        reference_config.as_ref(),
                        &selected.device,
                    )
                    .and_then(|estimate| {
                        estimate.check(&options.memory_limits)?;
                        // Each tensor is decoded to f32 in the heap on its way to the GPU.
                        memory::check_host_room(
                            "decoding the largest tensor",
                            estimate.largest_buffer,
                            heap_used(),
                            memory::WASM32_HEAP,
                        )
                    })
                    .map_err(core_error)?;
                    Some(
                        ModelBundle::load(texts, source.as_ref(), &selected.device)
                            .map_err(core_error)?,
                    )
                }
                None => None,
            };
            let reference = match reference {
                Some((texts, source)) => Some(
                    ModelBundle::load(texts, source.as_ref(), &selected.device)
                        .map_err(core_error)?
                        .model,
                ),
                None => None,
            };
            let resume = match resume {
                Some(files) => {
                    Some(checkpoint::from_files("resumeFrom", files).map_err(core_error)?)
                }
                None => None,
            };
            let adapter = match adapter {
                Some(files) => Some(
                    AdapterFiles::from_files(
                        "loraAdapter",
                        crate::io::bundle::ExportedFiles { files },
                    )
                    .map_err(core_error)?,
                ),
                None => None,
            };
            let spec = RunSpec {
                model,
                model_label: "browser".into(),
                rows: options.train_data.take().map(|d| d.into_jsonl("trainData")),
                eval_rows: options.eval_data.take().map(|d| d.into_jsonl("evalData")),
                overrides: options.settings.clone(),
                lora: options.lora(),
                merge_lora: options.merge_lora,
                reference,
                resume,
                adapter,
                ..RunSpec::new(task)
            };
            let run = Run::new(spec, &selected).map_err(core_error)?;
            Ok(Trainer {
                state: Rc::new(RefCell::new(Some(run))),
                device: selected,
            }
            .into())
        })
    }

    /// Run `f` with the run, putting it back afterwards whatever happens.
    fn with_run<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(Run) -> Fut + 'static,
        Fut: std::future::Future<Output = (Run, Result<JsValue, JsValue>)> + 'static,
    {
        let cell = self.state.clone();
        let taken = self.state.borrow_mut().take();
        let Some(run) = taken else {
            return Promise::reject(&js_error(
                "busy: another call on this trainer is still running",
            ));
        };
        future_to_promise(async move {
            let (run, result) = f(run).await;
            *cell.borrow_mut() = Some(run);
            result
        })
    }

    /// One optimizer step -> Promise<StepReport> (TRL metric names, plus step, grad_norm,
    /// learning_rate, seconds).
    pub fn step(&self) -> Promise {
        self.with_run(|mut run| async move {
            let result = run.trainer.step().await.map_err(core_error);
            (run, result.and_then(|report| to_js(&report)))
        })
    }

    /// Metrics on the evaluation examples -> Promise<metrics | null>.
    pub fn evaluate(&self) -> Promise {
        self.with_run(|mut run| async move {
            let result = run.trainer.evaluate().await.map_err(core_error);
            (run, result.and_then(|metrics| to_js(&metrics)))
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
        self.with_run(move |run| async move {
            let result = async {
                let options: GenerateOptions = if options.is_undefined() || options.is_null() {
                    GenerateOptions::default()
                } else {
                    serde_wasm_bindgen::from_value(options).map_err(js_error)?
                };
                let model = match options.model {
                    ModelChoice::Policy => run.trainer.policy(),
                    ModelChoice::Reference => {
                        run.trainer.reference_model().cloned().ok_or_else(|| {
                            js_error(
                                "model: this run has no reference model to generate from (SimPO \
                                 and ORPO are reference-free)",
                            )
                        })?
                    }
                };
                // `onToken` returning `false` (or throwing) stops generation after that token.
                let generated = generate_text(
                    &model,
                    &run.export.tokenizer,
                    &options.prompt(prompt),
                    &run.export.stop_tokens(),
                    &options.sampling(),
                    run.trainer.device(),
                    |delta, token| match &on_token {
                        Some(f) => {
                            let delta = JsValue::from_str(delta);
                            match f.call2(&JsValue::NULL, &delta, &JsValue::from(token)) {
                                Ok(v) => v.as_bool() != Some(false),
                                Err(_) => false,
                            }
                        }
                        None => true,
                    },
                )
                .await
                .map_err(core_error)?;
                to_js(&GenerateResult {
                    tokens_per_second: generated.new_tokens.len() as f64
                        / generated.seconds.max(1e-9),
                    text: generated.text,
                    prompt_tokens: generated.prompt_tokens,
                    new_tokens: generated.new_tokens,
                    seconds: generated.seconds,
                })
            }
            .await;
            (run, result)
        })
    }

    /// The current model as files -> Promise<{ [fileName]: Uint8Array }>: a Hugging Face model
    /// directory, or with LoRA a PEFT adapter plus tokenizer files; `{ merge }` chooses
    /// (default: the run's `mergeLora`).
    #[wasm_bindgen(js_name = exportModel)]
    pub fn export_model(&self, options: JsValue) -> Promise {
        self.with_run(|run| async move {
            let result = async {
                let options: ExportOptions = if options.is_undefined() || options.is_null() {
                    ExportOptions::default()
                } else {
                    serde_wasm_bindgen::from_value(options).map_err(js_error)?
                };
                let files = match options.merge {
                    Some(merge) => run.model_files_merged(merge).await,
                    None => run.model_files().await,
                }
                .map_err(core_error)?;
                files_to_js(files.files)
            }
            .await;
            (run, result)
        })
    }

    /// Everything to resume the run where it is -> Promise<{ [fileName]: Uint8Array }> (the
    /// CLI's `checkpoint-N/` folder: the model or adapter, `optimizer.safetensors`,
    /// `trainer_state.json`); `Trainer.create` takes them back as `resumeFrom`.
    pub fn checkpoint(&self) -> Promise {
        self.with_run(|run| async move {
            let result = async {
                let files = run.checkpoint_files().await.map_err(core_error)?;
                files_to_js(files.files)
            }
            .await;
            (run, result)
        })
    }

    /// `addPairs(rows, settings?)` -> Promise<info>: a new round of DPO on `rows` (JSONL text or
    /// row objects) from the current model, which becomes the round's reference; `settings`
    /// override this run's options (`maxSteps`, `lr`, ...). The schedule starts over.
    #[wasm_bindgen(js_name = addPairs)]
    pub fn add_pairs(&self, rows: JsValue, settings: JsValue) -> Promise {
        let device = self.device.clone();
        self.with_run(move |run| async move {
            let built = async {
                let rows: DataInput = serde_wasm_bindgen::from_value(rows).map_err(js_error)?;
                let overrides: OptionOverrides = if settings.is_undefined() || settings.is_null() {
                    OptionOverrides::default()
                } else {
                    serde_wasm_bindgen::from_value(settings).map_err(js_error)?
                };
                let spec = run
                    .next_round(rows.into_jsonl("pairs"), overrides)
                    .await
                    .map_err(core_error)?;
                Run::new(spec, &device).map_err(core_error)
            }
            .await;
            match built {
                Ok(round) => {
                    let info = info_of(&round);
                    drop(run); // the previous round's optimizer state and reference go
                    (round, info)
                }
                Err(e) => (run, Err(e)),
            }
        })
    }

    /// `{device, family, task, demo, lora, trainExamples, evalExamples, totalSteps, stepsDone,
    /// options}`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let state = self.state.borrow();
        let run = state
            .as_ref()
            .ok_or_else(|| js_error("busy: another call on this trainer is still running"))?;
        info_of(run)
    }
}

fn info_of(run: &Run) -> Result<JsValue, JsValue> {
    let s = &run.summary;
    to_js(&Info {
        device: s.device.clone(),
        family: s.family,
        task: s.task,
        demo: s.demo,
        lora: s.lora.clone(),
        train_examples: run.trainer.train_len(),
        eval_examples: run.trainer.eval_len(),
        total_steps: run.trainer.total_steps(),
        steps_done: run.trainer.steps_done(),
        options: run.trainer.options().clone(),
        summary: SummaryJs::of(s),
    })
}

/// Files as a JS object `{ [fileName]: Uint8Array }`.
fn files_to_js(files: Vec<(String, Vec<u8>)>) -> Result<JsValue, JsValue> {
    let out = Object::new();
    for (name, bytes) in files {
        Reflect::set(&out, &name.into(), &Uint8Array::from(bytes.as_slice()))?;
    }
    Ok(out.into())
}
