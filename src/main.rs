//! `dpo-wgpu`: the command-line shell over the library.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use burn::module::Module;
    use burn::tensor::Device;
    use clap::{Args, Parser, Subcommand};
    use dpo_wgpu::backend::{self, BackendChoice};
    use dpo_wgpu::bundle::ModelBundle;
    use dpo_wgpu::chat;
    use dpo_wgpu::checkpoint::{self, ModelFiles, OPTIMIZER_FILE, STATE_FILE};
    use dpo_wgpu::data::{parse_sft_jsonl, tokenize_pairs, tokenize_sft};
    use dpo_wgpu::demo;
    use dpo_wgpu::error::{Error, Result};
    use dpo_wgpu::files::{
        JsonLog, load_adapter_dir, load_model_dir, load_model_dir_with_ids, read_pairs, read_text,
        write_files_atomically,
    };
    use dpo_wgpu::generate::{SamplingOptions, TextStream};
    use dpo_wgpu::model::CausalLm;
    use dpo_wgpu::optim::{LrSchedule, OptimizerKind};
    use dpo_wgpu::peft::{self, LoraSettings};
    use dpo_wgpu::train::{Metrics, StepReport, Task, TrainOptions, Trainer};

    #[derive(Parser)]
    #[command(
        name = "dpo-wgpu",
        version,
        about = "Direct Preference Optimization on any GPU"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Fine-tune a model with DPO. With no --model and --data, trains the built-in demo.
        Train(TrainArgs),
        /// Supervised fine-tuning on prompt/completion, messages or text rows (before DPO).
        Sft(RunArgs),
        /// Print DPO metrics of a model on preference pairs.
        Eval(EvalArgs),
        /// Generate text, streaming tokens as they come.
        Generate(GenerateArgs),
    }

    #[derive(Args)]
    struct TrainArgs {
        #[command(flatten)]
        run: RunArgs,
        /// Reference model directory; default: the starting policy (base weights with LoRA).
        #[arg(long)]
        ref_model: Option<PathBuf>,
        #[arg(long)]
        beta: Option<f64>,
    }

    /// What `train` and `sft` share.
    #[derive(Args)]
    struct RunArgs {
        /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or .gguf.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Training rows, JSONL.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Held-out rows evaluated before, during (--eval-every) and after training.
        #[arg(long)]
        eval_data: Option<PathBuf>,
        /// Output directory: the model (or adapter), metrics.jsonl, checkpoint-N/ directories.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        optimizer: Option<OptimizerKind>,
        /// Learning rate (TRL's defaults: DPO 1e-6, SFT 2e-5; the demo uses 3e-3).
        #[arg(long)]
        lr: Option<f64>,
        #[arg(long)]
        lr_scheduler: Option<LrSchedule>,
        #[arg(long)]
        warmup_steps: Option<usize>,
        /// Examples per step.
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        max_steps: Option<usize>,
        /// Truncate prompt+completion to this many tokens (keep_start); 0 = no limit.
        #[arg(long)]
        max_length: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Global gradient-norm clipping; 0 = off.
        #[arg(long)]
        max_grad_norm: Option<f64>,
        #[arg(long)]
        weight_decay: Option<f64>,
        #[arg(long)]
        eval_batch_size: Option<usize>,
        /// Evaluate every N steps (0 = only before and after).
        #[arg(long, default_value_t = 0)]
        eval_every: usize,
        /// Write a resumable checkpoint-N/ every N steps (0 = only the final model).
        #[arg(long, default_value_t = 0)]
        save_every: usize,
        /// Print metrics every N steps.
        #[arg(long, default_value_t = 1)]
        log_every: usize,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Train LoRA adapters of this rank instead of every weight.
        #[arg(long)]
        lora_rank: Option<usize>,
        /// LoRA scaling numerator (default: 2 × rank).
        #[arg(long)]
        lora_alpha: Option<f64>,
        /// Comma-separated module names to adapt (default: q_proj,v_proj; GPT-2: c_attn).
        #[arg(long, value_delimiter = ',')]
        lora_targets: Option<Vec<String>>,
        /// Start from an existing PEFT adapter (its settings are kept).
        #[arg(long)]
        lora_adapter: Option<PathBuf>,
        /// Save a full model with the adapters folded in, instead of the adapter.
        #[arg(long)]
        merge_lora: bool,
        /// Continue from a checkpoint-N directory written by --save-every.
        #[arg(long)]
        resume_from: Option<PathBuf>,
    }

    #[derive(Args)]
    struct EvalArgs {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT adapter to apply to --model.
        #[arg(long)]
        lora_adapter: Option<PathBuf>,
        #[arg(long)]
        ref_model: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        beta: f64,
        /// Truncation limit (keep_start); default 1024 or the model's positions; 0 = no limit.
        #[arg(long)]
        max_length: Option<usize>,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Print one JSON object with TRL's metric names.
        #[arg(long)]
        json: bool,
    }

    #[derive(Args)]
    struct GenerateArgs {
        /// Hugging Face model directory (or a .gguf file).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT adapter to apply to --model.
        #[arg(long)]
        lora_adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// System message (with --chat).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Train(args) => run(&args.run, Some(&args)),
            Command::Sft(args) => run(&args, None),
            Command::Eval(args) => eval(args),
            Command::Generate(args) => generate(args),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn limit(max_length: usize) -> Option<usize> {
        (max_length > 0).then_some(max_length)
    }

    fn device(choice: BackendChoice) -> Result<Device> {
        let selected = backend::select(choice)?;
        eprintln!("device: {}", selected.description);
        Ok(selected.device)
    }

    /// A model directory, with an optional adapter on top.
    fn load_with_adapter(
        model: &Path,
        adapter: Option<&Path>,
        device: &Device,
    ) -> Result<ModelBundle> {
        let mut bundle = load_model_dir(model, device)?;
        if let Some(dir) = adapter {
            bundle.model = load_adapter_dir(bundle.model, dir, device)?.0;
        }
        Ok(bundle)
    }

    /// `train` (DPO; `dpo` is Some) and `sft`.
    fn run(args: &RunArgs, dpo: Option<&TrainArgs>) -> Result<()> {
        let task_name = if dpo.is_some() { "dpo" } else { "sft" };
        let device = device(args.backend)?;
        let resume = match &args.resume_from {
            Some(dir) => {
                let path = dir.join(STATE_FILE);
                Some((
                    dir.clone(),
                    checkpoint::parse_state(&read_text(&path)?, &path.display().to_string())?,
                ))
            }
            None => None,
        };
        if let Some((_, state)) = &resume
            && state.task != task_name
        {
            return Err(Error::Invalid(format!(
                "--resume-from holds a {} checkpoint, not {task_name}",
                state.task
            )));
        }

        // The demo: DPO with no model and no data.
        let demo_mode = dpo.is_some() && args.model.is_none() && args.data.is_none();
        let (bundle, mut options, output) = if demo_mode {
            let options = demo::train_options();
            let seed = args.seed.unwrap_or(options.seed);
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/demo"));
            (demo::model(seed, &device)?, options, output)
        } else {
            let (Some(model), Some(_)) = (&args.model, &args.data) else {
                return Err(Error::Invalid(if dpo.is_some() {
                    "give both --model and --data (or neither, for the built-in demo)".into()
                } else {
                    "sft needs --model and --data".into()
                }));
            };
            let output = args
                .output
                .clone()
                .ok_or_else(|| Error::Invalid("--output DIR is required with --model".into()))?;
            let defaults = if dpo.is_some() {
                TrainOptions::default()
            } else {
                TrainOptions::sft_defaults()
            };
            // Resuming a full fine-tune: weights come from the checkpoint, with their ids.
            let bundle = match &resume {
                Some((dir, state)) if state.lora.is_none() => {
                    load_model_dir_with_ids(dir, &state.param_ids, &device)?
                }
                Some((_, state)) => load_model_dir_with_ids(model, &state.param_ids, &device)?,
                None => load_model_dir(model, &device)?,
            };
            (bundle, defaults, output)
        };
        match &resume {
            Some((_, state)) => options = state.options.clone(),
            None => apply_overrides(&mut options, args, dpo.and_then(|d| d.beta)),
        }
        if args.max_length.is_none()
            && resume.is_none()
            && let Some(limit) = options.fit_max_length(bundle.model.max_positions())
        {
            eprintln!("notice: --max-length defaults to the model's {limit} positions");
        }

        // LoRA: fresh adapters, a given adapter, or the checkpoint's.
        let ModelBundle {
            config,
            model,
            tokenizer,
            extra_files,
        } = bundle;
        let mut reference = None;
        let (policy, lora) = if let Some((dir, state)) =
            resume.as_ref().filter(|(_, s)| s.lora.is_some())
        {
            if let Some(initial) = &args.lora_adapter {
                // The reference is the adapter the run started from, as in TRL.
                reference = Some(load_adapter_dir(model.clone(), initial, &device)?.0.valid());
            } else {
                reference = Some(model.valid());
            }
            let (policy, settings) = load_adapter_with_ids(model, dir, &state.param_ids, &device)?;
            (policy, Some(settings))
        } else if let Some(dir) = &args.lora_adapter {
            let (policy, settings) = load_adapter_dir(model, dir, &device)?;
            (policy, Some(settings))
        } else if let Some(rank) = args.lora_rank {
            let settings = LoraSettings::new(
                rank,
                args.lora_alpha,
                args.lora_targets.clone(),
                config.family(),
            );
            // The base weights, frozen, are the reference: one model in memory.
            reference = Some(model.valid());
            (
                peft::attach(model, &settings, options.seed, &device)?,
                Some(settings),
            )
        } else {
            if resume.is_some() && dpo.is_some() {
                // Full fine-tune resumed: the reference is the original starting model.
                let model_dir = args.model.as_ref().expect("checked above");
                reference = Some(load_model_dir(model_dir, &device)?.model);
            }
            (model, None)
        };
        if let Some(dir) = dpo.and_then(|d| d.ref_model.as_ref()) {
            reference = Some(load_model_dir(dir, &device)?.model);
        }
        if let Some(settings) = &lora {
            eprintln!(
                "LoRA rank {}, alpha {}, on {}: {} trainable parameters",
                settings.rank,
                settings.alpha,
                settings.targets.join(","),
                peft::adapter_params(&policy)
                    .iter()
                    .map(|p| match &p.tensor {
                        dpo_wgpu::model::ParamTensor::Matrix { tensor, .. } =>
                            tensor.dims().iter().product(),
                        dpo_wgpu::model::ParamTensor::Vector(t) => t.dims()[0],
                    })
                    .sum::<usize>()
            );
        }

        // Data.
        let (task, train_len, eval_len) = if demo_mode {
            let (train_rows, eval_rows) =
                demo::pairs(options.seed, demo::DEMO_PAIRS.0, demo::DEMO_PAIRS.1);
            eprintln!(
                "no --model/--data: training the built-in demo ({} training pairs, {} held-out pairs \
                 on unseen subjects)",
                train_rows.len(),
                eval_rows.len()
            );
            let train = tokenize_pairs(&train_rows, &tokenizer, options.max_length)?.rows;
            let eval = tokenize_pairs(&eval_rows, &tokenizer, options.max_length)?.rows;
            let (train_len, eval_len) = (train.len(), eval.len());
            (
                Task::Dpo {
                    train,
                    eval,
                    reference,
                },
                train_len,
                eval_len,
            )
        } else {
            let data = args.data.as_ref().expect("checked above");
            if dpo.is_some() {
                let train = tokenize_pairs(&read_pairs(data)?, &tokenizer, options.max_length)?;
                let eval = match &args.eval_data {
                    Some(path) => {
                        tokenize_pairs(&read_pairs(path)?, &tokenizer, options.max_length)?
                    }
                    None => tokenize_pairs(&[], &tokenizer, options.max_length)?,
                };
                for (name, dropped) in [("training", train.dropped), ("eval", eval.dropped)] {
                    if dropped > 0 {
                        eprintln!(
                            "notice: dropped {dropped} {name} pairs whose prompt alone fills --max-length"
                        );
                    }
                }
                let (train_len, eval_len) = (train.rows.len(), eval.rows.len());
                (
                    Task::Dpo {
                        train: train.rows,
                        eval: eval.rows,
                        reference,
                    },
                    train_len,
                    eval_len,
                )
            } else {
                let read_sft = |path: &Path| -> Result<_> {
                    let rows = parse_sft_jsonl(&read_text(path)?, &path.display().to_string())?;
                    let set = tokenize_sft(&rows, &tokenizer, options.max_length)?;
                    if set.dropped > 0 {
                        eprintln!(
                            "notice: dropped {} rows of {} with no completion token within --max-length",
                            set.dropped,
                            path.display()
                        );
                    }
                    Ok(set.rows)
                };
                let train = read_sft(data)?;
                let eval = match &args.eval_data {
                    Some(path) => read_sft(path)?,
                    None => Vec::new(),
                };
                let (train_len, eval_len) = (train.len(), eval.len());
                (Task::Sft { train, eval }, train_len, eval_len)
            }
        };

        let mut trainer =
            Trainer::with_task(policy, task, tokenizer.pad_id, options.clone(), &device)?;
        if let Some((dir, state)) = resume {
            let bytes = std::fs::read(dir.join(OPTIMIZER_FILE))
                .map_err(|e| Error::io(dir.join(OPTIMIZER_FILE).display(), e))?;
            trainer.resume(
                bytes,
                state.progress,
                &dir.join(OPTIMIZER_FILE).display().to_string(),
            )?;
            eprintln!(
                "resumed from {} at step {}",
                dir.display(),
                trainer.steps_done()
            );
        }
        eprintln!(
            "{task_name}: {} model, {train_len} training examples, {eval_len} eval examples, {} steps of {}, lr {}{}",
            config.family(),
            trainer.total_steps(),
            options.batch_size,
            options.learning_rate,
            if dpo.is_some() {
                format!(", beta {}", options.beta)
            } else {
                String::new()
            },
        );

        std::fs::create_dir_all(&output).map_err(|e| Error::io(output.display(), e))?;
        let base_model = args
            .model
            .as_ref()
            .map_or_else(|| "built-in demo".to_string(), |p| p.display().to_string());
        let files = ModelFiles {
            config: &config,
            tokenizer: &tokenizer,
            extra_files: &extra_files,
            lora: lora.as_ref(),
            merge_lora: args.merge_lora,
            base_model: &base_model,
        };
        let mut log = JsonLog::create(&output.join("metrics.jsonl"))?;

        pollster::block_on(async {
            let before = trainer.evaluate().await?;
            if let Some(m) = &before {
                print_eval("before training", trainer.steps_done(), m);
                log.write(&eval_record(trainer.steps_done(), m))?;
            }
            let mut seconds = Vec::new();
            while !trainer.is_done() {
                let report = trainer.step().await?;
                seconds.push(report.seconds);
                if report.step % args.log_every.max(1) == 0 || report.step == report.total_steps {
                    print_step(&report);
                }
                log.write(&report)?;
                if args.eval_every > 0
                    && report.step % args.eval_every == 0
                    && !trainer.is_done()
                    && let Some(m) = trainer.evaluate().await?
                {
                    print_eval("eval", report.step, &m);
                    log.write(&eval_record(report.step, &m))?;
                }
                if args.save_every > 0 && report.step % args.save_every == 0 && !trainer.is_done() {
                    let dir = output.join(format!("checkpoint-{}", report.step));
                    write_files_atomically(
                        &dir,
                        &checkpoint::checkpoint_files(&trainer, task_name, &files).await?,
                    )?;
                    eprintln!("saved checkpoint {}", dir.display());
                }
            }
            let after = trainer.evaluate().await?;
            if let Some(m) = &after {
                print_eval("after training", trainer.steps_done(), m);
                log.write(&eval_record(trainer.steps_done(), m))?;
            }
            // The first step includes shader compilation; leave it out of the typical time.
            let steady: Vec<f64> = seconds.iter().skip(1).copied().collect();
            if !steady.is_empty() {
                eprintln!(
                    "{:.3} s/step (mean of steps 2..{})",
                    steady.iter().sum::<f64>() / steady.len() as f64,
                    seconds.len()
                );
            }
            if let (Some(Metrics::Dpo(b)), Some(Metrics::Dpo(a))) = (before, after) {
                eprintln!(
                    "held-out reward accuracy {:.3} -> {:.3}, loss {:.4} -> {:.4}",
                    b.rewards_accuracies, a.rewards_accuracies, b.loss, a.loss
                );
            }
            write_files_atomically(
                &output,
                &checkpoint::model_files(&trainer.policy(), &files).await?,
            )?;
            let what = if lora.is_some() && !args.merge_lora {
                "adapter"
            } else {
                "model"
            };
            eprintln!("saved {what} to {}", output.display());
            Ok(())
        })
    }

    fn load_adapter_with_ids(
        model: CausalLm,
        dir: &Path,
        ids: &std::collections::HashMap<String, u64>,
        device: &Device,
    ) -> Result<(CausalLm, LoraSettings)> {
        let config = read_text(&dir.join("adapter_config.json"))?;
        let weights = dpo_wgpu::files::weights_file(&dir.join("adapter_model.safetensors"))?;
        let with_ids = dpo_wgpu::weights::WithParamIds {
            inner: &weights,
            ids,
        };
        peft::load(
            model,
            &config,
            &with_ids,
            &dir.display().to_string(),
            device,
        )
    }

    fn apply_overrides(o: &mut TrainOptions, a: &RunArgs, beta: Option<f64>) {
        macro_rules! set {
            ($field:ident, $arg:expr) => {
                if let Some(v) = $arg {
                    o.$field = v;
                }
            };
        }
        set!(optimizer, a.optimizer);
        set!(learning_rate, a.lr);
        set!(lr_schedule, a.lr_scheduler);
        set!(warmup_steps, a.warmup_steps);
        set!(batch_size, a.batch_size);
        set!(epochs, a.epochs);
        set!(beta, beta);
        set!(seed, a.seed);
        set!(max_grad_norm, a.max_grad_norm);
        set!(weight_decay, a.weight_decay);
        set!(eval_batch_size, a.eval_batch_size);
        if let Some(max_steps) = a.max_steps {
            o.max_steps = Some(max_steps);
        } else if a.epochs.is_some() {
            o.max_steps = None;
        }
        if let Some(max_length) = a.max_length {
            o.max_length = limit(max_length);
        }
    }

    fn eval_record(step: usize, m: &Metrics) -> serde_json::Value {
        let v = serde_json::to_value(m).expect("metrics serialize");
        let mut record = serde_json::Map::from_iter([("step".to_string(), step.into())]);
        for (k, v) in v.as_object().expect("object") {
            record.insert(format!("eval_{k}"), v.clone());
        }
        record.into()
    }

    fn print_step(r: &StepReport) {
        let head = format!("step {:>4}/{}", r.step, r.total_steps);
        let tail = format!(
            "grad {:.3} | lr {:.2e} | {:.3}s",
            r.grad_norm, r.learning_rate, r.seconds
        );
        match &r.metrics {
            Metrics::Dpo(m) => println!(
                "{head} | loss {:.4} | acc {:.3} | margin {:+.4} | chosen {:+.4} | rejected {:+.4} | {tail}",
                m.loss,
                m.rewards_accuracies,
                m.rewards_margins,
                m.rewards_chosen,
                m.rewards_rejected
            ),
            Metrics::Sft(m) => println!(
                "{head} | loss {:.4} | token acc {:.3} | entropy {:.3} | {tail}",
                m.loss, m.mean_token_accuracy, m.entropy
            ),
        }
    }

    fn print_eval(label: &str, step: usize, m: &Metrics) {
        match m {
            Metrics::Dpo(m) => println!(
                "{label} (step {step}) | eval loss {:.4} | reward accuracy {:.3} | margin {:+.4} | \
                 logps chosen {:.3} rejected {:.3}",
                m.loss, m.rewards_accuracies, m.rewards_margins, m.logps_chosen, m.logps_rejected
            ),
            Metrics::Sft(m) => println!(
                "{label} (step {step}) | eval loss {:.4} | token accuracy {:.3}",
                m.loss, m.mean_token_accuracy
            ),
        }
    }

    fn generate(args: GenerateArgs) -> Result<()> {
        let device = device(args.backend)?;
        let bundle = load_with_adapter(&args.model, args.lora_adapter.as_deref(), &device)?;
        let prompt_ids = if args.chat {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(chat::Message::new("system", system));
            }
            messages.push(chat::Message::new("user", &args.prompt));
            chat::encode(&bundle.tokenizer, &messages, true)?
        } else {
            bundle.tokenizer.encode(&args.prompt)?
        };
        let options = SamplingOptions {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        };
        let mut stream = TextStream::new(&bundle.tokenizer);
        let mut stdout = std::io::stdout();
        let started = std::time::Instant::now();
        let mut first_token = None;
        let new = pollster::block_on(dpo_wgpu::generate::generate(
            &bundle.model,
            &prompt_ids,
            &bundle.stop_tokens(),
            &options,
            &device,
            |token| {
                first_token.get_or_insert_with(|| started.elapsed());
                if let Ok(text) = stream.push(token) {
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                }
                true
            },
        ))?;
        if let Ok(rest) = stream.finish() {
            let _ = stdout.write_all(rest.as_bytes());
        }
        println!();
        let total = started.elapsed().as_secs_f64();
        let prefill = first_token.map_or(total, |d| d.as_secs_f64());
        eprintln!(
            "{} prompt tokens, {} new tokens in {:.2} s (first token after {:.2} s, then {:.1} tokens/s)",
            prompt_ids.len(),
            new.len(),
            total,
            prefill,
            new.len().saturating_sub(1) as f64 / (total - prefill).max(1e-9)
        );
        Ok(())
    }

    fn eval(args: EvalArgs) -> Result<()> {
        let device = device(args.backend)?;
        let bundle = load_with_adapter(&args.model, args.lora_adapter.as_deref(), &device)?;
        let reference = match &args.ref_model {
            Some(dir) => Some(load_model_dir(dir, &device)?.model),
            None => None,
        };
        let rows = read_pairs(&args.data)?;
        let mut options = TrainOptions {
            beta: args.beta,
            eval_batch_size: args.batch_size,
            ..TrainOptions::default()
        };
        match args.max_length {
            Some(max_length) => options.max_length = limit(max_length),
            None => {
                options.fit_max_length(bundle.model.max_positions());
            }
        }
        let set = tokenize_pairs(&rows, &bundle.tokenizer, options.max_length)?;
        if set.dropped > 0 {
            eprintln!(
                "notice: dropped {} pairs whose prompt alone fills --max-length",
                set.dropped
            );
        }
        if set.rows.is_empty() {
            return Err(Error::Invalid("no pairs left after tokenization".into()));
        }
        // An evaluation-only trainer: the pairs are its eval set; no step is taken.
        let pad_id = bundle.tokenizer.pad_id;
        let mut trainer = Trainer::new(
            bundle.model,
            reference,
            set.rows.clone(),
            set.rows,
            pad_id,
            options,
            &device,
        )?;
        let metrics = pollster::block_on(trainer.evaluate())?.expect("eval pairs present");
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&metrics).expect("metrics serialize")
            );
        } else {
            for (k, v) in serde_json::to_value(metrics)
                .expect("metrics serialize")
                .as_object()
                .expect("object")
            {
                println!("{k:<20} {v}");
            }
        }
        Ok(())
    }
}
