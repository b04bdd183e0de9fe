//! `dpo-wgpu`: the command-line shell over the library.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use clap::{Args, Parser, Subcommand};
    use dpo_wgpu::backend::{self, BackendChoice};
    use dpo_wgpu::bundle::{ModelBundle, export_files};
    use dpo_wgpu::data::{PreferencePair, tokenize_pairs};
    use dpo_wgpu::demo;
    use dpo_wgpu::dpo::DpoMetrics;
    use dpo_wgpu::error::{Error, Result};
    use dpo_wgpu::files::{JsonLog, load_model_dir, read_pairs, write_files_atomically};
    use dpo_wgpu::optim::{LrSchedule, OptimizerKind};
    use dpo_wgpu::train::{DpoTrainer, StepReport, TrainOptions};

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
        /// Print DPO metrics of a model on preference pairs.
        Eval(EvalArgs),
    }

    #[derive(Args)]
    struct TrainArgs {
        /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Reference model directory; default: a frozen copy of --model.
        #[arg(long)]
        ref_model: Option<PathBuf>,
        /// Training pairs, JSONL with "prompt", "chosen", "rejected".
        #[arg(long)]
        data: Option<PathBuf>,
        /// Held-out pairs evaluated before, during (--eval-every) and after training.
        #[arg(long)]
        eval_data: Option<PathBuf>,
        /// Output directory: a Hugging Face model directory plus metrics.jsonl.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, default_value = "adamw")]
        optimizer: OptimizerKind,
        /// Learning rate (TRL's default 1e-6; the demo uses 3e-3).
        #[arg(long)]
        lr: Option<f64>,
        #[arg(long)]
        lr_scheduler: Option<LrSchedule>,
        #[arg(long)]
        warmup_steps: Option<usize>,
        /// Preference pairs per step.
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        max_steps: Option<usize>,
        #[arg(long)]
        beta: Option<f64>,
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
        /// Save the model every N steps (0 = only at the end).
        #[arg(long, default_value_t = 0)]
        save_every: usize,
        /// Print metrics every N steps.
        #[arg(long, default_value_t = 1)]
        log_every: usize,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    }

    #[derive(Args)]
    struct EvalArgs {
        #[arg(long)]
        model: PathBuf,
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

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Train(args) => train(args),
            Command::Eval(args) => eval(args),
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

    fn train(args: TrainArgs) -> Result<()> {
        let selected = backend::select(args.backend)?;
        let device = selected.device.clone();
        eprintln!("device: {}", selected.description);

        let demo_mode = args.model.is_none() && args.data.is_none();
        let (bundle, train_rows, eval_rows, mut options, output) = if demo_mode {
            let options = demo::train_options();
            let seed = args.seed.unwrap_or(options.seed);
            let (train_rows, eval_rows) = demo::pairs(seed, demo::DEMO_PAIRS.0, demo::DEMO_PAIRS.1);
            eprintln!(
                "no --model/--data: training the built-in demo ({} training pairs, {} held-out pairs \
             on unseen subjects)",
                train_rows.len(),
                eval_rows.len()
            );
            let output = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/demo"));
            (
                demo::model(seed, &device)?,
                train_rows,
                eval_rows,
                options,
                output,
            )
        } else {
            let (Some(model_dir), Some(data)) = (&args.model, &args.data) else {
                return Err(Error::Invalid(
                    "give both --model and --data (or neither, for the built-in demo)".into(),
                ));
            };
            let output = args
                .output
                .clone()
                .ok_or_else(|| Error::Invalid("--output DIR is required with --model".into()))?;
            let bundle = load_model_dir(model_dir, &device)?;
            let eval_rows = match &args.eval_data {
                Some(path) => read_pairs(path)?,
                None => Vec::new(),
            };
            (
                bundle,
                read_pairs(data)?,
                eval_rows,
                TrainOptions::default(),
                output,
            )
        };
        apply_overrides(&mut options, &args);
        if args.max_length.is_none() {
            if let Some(limit) = options.fit_max_length(bundle.model.max_positions()) {
                eprintln!("notice: --max-length defaults to the model's {limit} positions");
            }
        }

        let reference = match &args.ref_model {
            Some(dir) => Some(load_model_dir(dir, &device)?.model),
            None => None,
        };
        let (train_set, eval_set) =
            tokenize_both(&bundle, &train_rows, &eval_rows, options.max_length)?;
        let config = bundle.config.clone();
        let extra_files = bundle.extra_files.clone();
        let tokenizer = bundle.tokenizer;
        let mut trainer = DpoTrainer::new(
            bundle.model,
            reference,
            train_set,
            eval_set,
            tokenizer.pad_id,
            options.clone(),
            &device,
        )?;
        eprintln!(
            "{} model, {} training pairs, {} eval pairs, {} steps of {} pairs, lr {}, beta {}",
            config.family(),
            trainer.train_pairs(),
            trainer.eval_pairs(),
            trainer.total_steps(),
            options.batch_size,
            options.learning_rate,
            options.beta
        );

        std::fs::create_dir_all(&output).map_err(|e| Error::io(output.display(), e))?;
        std::fs::write(
            output.join("dpo_options.json"),
            serde_json::to_vec_pretty(&options).expect("options serialize"),
        )
        .map_err(|e| Error::io(output.display(), e))?;
        let mut log = JsonLog::create(&output.join("metrics.jsonl"))?;

        pollster::block_on(async {
            let before = trainer.evaluate().await?;
            if let Some(m) = &before {
                print_eval("before training", 0, m);
                log.write(&eval_record(0, m))?;
            }
            let mut seconds = Vec::new();
            while !trainer.is_done() {
                let report = trainer.step().await?;
                seconds.push(report.seconds);
                if report.step % args.log_every.max(1) == 0 || report.step == report.total_steps {
                    print_step(&report);
                }
                log.write(&report)?;
                if args.eval_every > 0 && report.step % args.eval_every == 0 && !trainer.is_done() {
                    if let Some(m) = trainer.evaluate().await? {
                        print_eval("eval", report.step, &m);
                        log.write(&eval_record(report.step, &m))?;
                    }
                }
                if args.save_every > 0 && report.step % args.save_every == 0 && !trainer.is_done() {
                    save(&output, &trainer, &config, &tokenizer, &extra_files).await?;
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
            if let (Some(b), Some(a)) = (before, after) {
                eprintln!(
                    "held-out reward accuracy {:.3} -> {:.3}, loss {:.4} -> {:.4}",
                    b.rewards_accuracies, a.rewards_accuracies, b.loss, a.loss
                );
            }
            save(&output, &trainer, &config, &tokenizer, &extra_files).await?;
            eprintln!("saved model to {}", output.display());
            Ok(())
        })
    }

    fn apply_overrides(o: &mut TrainOptions, a: &TrainArgs) {
        o.optimizer = a.optimizer;
        macro_rules! set {
            ($field:ident, $arg:expr) => {
                if let Some(v) = $arg {
                    o.$field = v;
                }
            };
        }
        set!(learning_rate, a.lr);
        set!(lr_schedule, a.lr_scheduler);
        set!(warmup_steps, a.warmup_steps);
        set!(batch_size, a.batch_size);
        set!(epochs, a.epochs);
        set!(beta, a.beta);
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

    fn tokenize_both(
        bundle: &ModelBundle,
        train_rows: &[PreferencePair],
        eval_rows: &[PreferencePair],
        max_length: Option<usize>,
    ) -> Result<(
        Vec<dpo_wgpu::data::TokenizedPair>,
        Vec<dpo_wgpu::data::TokenizedPair>,
    )> {
        let train = tokenize_pairs(train_rows, &bundle.tokenizer, max_length)?;
        let eval = tokenize_pairs(eval_rows, &bundle.tokenizer, max_length)?;
        for (name, set) in [("training", &train), ("eval", &eval)] {
            if set.dropped > 0 {
                eprintln!(
                    "notice: dropped {} {name} pairs whose prompt alone fills --max-length",
                    set.dropped
                );
            }
        }
        Ok((train.pairs, eval.pairs))
    }

    async fn save(
        output: &Path,
        trainer: &DpoTrainer,
        config: &dpo_wgpu::config::ModelConfig,
        tokenizer: &dpo_wgpu::tokenizer::TextTokenizer,
        extra_files: &[(String, String)],
    ) -> Result<()> {
        let files = export_files(&trainer.policy(), config, tokenizer, extra_files).await?;
        write_files_atomically(output, &files)
    }

    fn eval_record(step: usize, m: &DpoMetrics) -> serde_json::Value {
        let mut v = serde_json::to_value(m).expect("metrics serialize");
        let map = v.as_object_mut().expect("object");
        let prefixed: serde_json::Map<_, _> = map
            .iter()
            .map(|(k, v)| (format!("eval_{k}"), v.clone()))
            .collect();
        let mut record = serde_json::Map::from_iter([("step".to_string(), step.into())]);
        record.extend(prefixed);
        record.into()
    }

    fn print_step(r: &StepReport) {
        let m = &r.metrics;
        println!(
            "step {:>4}/{} | loss {:.4} | acc {:.3} | margin {:+.4} | chosen {:+.4} | rejected {:+.4} \
         | grad {:.3} | lr {:.2e} | {:.3}s",
            r.step,
            r.total_steps,
            m.loss,
            m.rewards_accuracies,
            m.rewards_margins,
            m.rewards_chosen,
            m.rewards_rejected,
            r.grad_norm,
            r.learning_rate,
            r.seconds
        );
    }

    fn print_eval(label: &str, step: usize, m: &DpoMetrics) {
        println!(
            "{label} (step {step}) | eval loss {:.4} | reward accuracy {:.3} | margin {:+.4} | \
         logps chosen {:.3} rejected {:.3}",
            m.loss, m.rewards_accuracies, m.rewards_margins, m.logps_chosen, m.logps_rejected
        );
    }

    fn eval(args: EvalArgs) -> Result<()> {
        let selected = backend::select(args.backend)?;
        let device = selected.device.clone();
        eprintln!("device: {}", selected.description);
        let bundle = load_model_dir(&args.model, &device)?;
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
        let pad_id = bundle.tokenizer.pad_id;
        // An evaluation-only trainer: the pairs are its eval set; no step is taken.
        let eval_pairs = set.pairs;
        if eval_pairs.is_empty() {
            return Err(Error::Invalid("no pairs left after tokenization".into()));
        }
        let mut trainer = DpoTrainer::new(
            bundle.model,
            reference,
            eval_pairs.clone(),
            eval_pairs,
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
