//! `dpo-wgpu`: the command-line shell over the library. It turns flags into a `RunSpec`, loads
//! what the flags name from disk or the Hub, and prints and writes what the core returns.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod args;
#[cfg(not(target_arch = "wasm32"))]
mod config;
#[cfg(not(target_arch = "wasm32"))]
mod output;
#[cfg(not(target_arch = "wasm32"))]
mod plot;
#[cfg(not(target_arch = "wasm32"))]
mod ranks;
#[cfg(not(target_arch = "wasm32"))]
mod ref_logps;
#[cfg(not(target_arch = "wasm32"))]
mod report;

/// Tensors are large, short-lived allocations: glibc's malloc hands each one back to the OS and
/// takes fresh zeroed pages for the next, and those page faults were a fifth of a small model's
/// training step. mimalloc keeps freed memory for reuse.
#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    tune_allocator();
    // The work runs on one of rayon's threads rather than beside them: a parallel operation
    // then runs part of itself on the calling thread instead of waking the pool and sleeping
    // until it finishes (on 2 cores, 17 000 context switches a step of W2 otherwise).
    match rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build() {
        Ok(pool) => pool.install(cli::main),
        Err(_) => cli::main(),
    }
}

/// mimalloc's defaults hand freed memory back to the OS a second after it is freed (a purge),
/// while each step frees and takes back hundreds of megabytes: the kernel zeroed those pages
/// again on every reuse (~10 % of a LoRA step on SmolLM2-135M). A training run reuses what it
/// frees within the next operations, so it never purges. Measured with bench/vs_trl.py: W2 step
/// −13 %, W1 −3 %; W2's peak RSS +3 % (memory freed in one size class stays with that class).
#[cfg(not(target_arch = "wasm32"))]
fn tune_allocator() {
    // SAFETY: an option setter, valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

/// `mi_option_purge_delay`'s position in mimalloc v3's `mi_option_t` (include/mimalloc.h), which
/// libmimalloc-sys does not name.
#[cfg(not(target_arch = "wasm32"))]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod allocator_tests {
    /// The option at [`super::PURGE_DELAY`] has the purge delay's default, 1000 (ms), where its
    /// neighbours have 1 and 0: a mimalloc that renumbered its options fails here.
    #[test]
    fn the_purge_delay_option_is_the_one_meant() {
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(get(super::PURGE_DELAY), 1000);
        assert_eq!(get(super::PURGE_DELAY - 1), 1);
        assert_eq!(get(super::PURGE_DELAY + 1), 0);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, Ordering};

    use burn::tensor::Device;
    use clap::Parser;
    use dpo_wgpu::backend::{self, BackendChoice, Gpu};
    use dpo_wgpu::error::{Error, Result};
    use dpo_wgpu::io::bundle::ModelBundle;
    use dpo_wgpu::io::native::files::{
        JsonLog, load_model, read_adapter, read_jsonl, write_dir_atomically, write_files_atomically,
    };
    use dpo_wgpu::io::native::resolve_model;
    use dpo_wgpu::text::stream::{Prompt, generate_text};
    use dpo_wgpu::train::checkpoint;
    use dpo_wgpu::train::options::{OptionOverrides, Task};
    use dpo_wgpu::train::run::{Event, Phase, Run, RunSpec, Schedule, check_settings};

    use crate::args::{Cli, Command, EvalArgs, GenerateArgs, RunArgs, TrainArgs, flag};
    use crate::config;
    use crate::output::Staging;
    use crate::plot;
    use crate::ranks::Ranks;
    use crate::ref_logps;
    use crate::report;

    /// Exit codes: bad input (a file's contents, a flag, a path), a failed run (also an internal
    /// error), and a run interrupted by Ctrl-C after saving a checkpoint.
    const BAD_INPUT: u8 = 2;
    const FAILED: u8 = 1;
    const INTERRUPTED: u8 = 130;

    /// Set by Ctrl-C: the run checkpoints after the step in progress and stops.
    static STOP: AtomicBool = AtomicBool::new(false);

    pub fn main() -> ExitCode {
        // Under mpirun, join the job first: every message below names this process's rank.
        let ranks = Ranks::start();
        let prefix = ranks.as_ref().map(Ranks::prefix).unwrap_or_default();
        // A panic is a bug: report it in one line, not as a crash dump, and exit as a failed run.
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "{prefix}internal error{place}: {message} (this is a bug in dpo-wgpu; please \
                 report it)"
            );
        }));
        let ranks = match ranks {
            Ok(ranks) => ranks,
            Err(e) => return report_error(&Ranks::alone(), e),
        };
        let cli = match config::expand(std::env::args_os().collect()) {
            Ok(args) => Cli::parse_from(args),
            Err(e) => return report_error(&ranks, e),
        };
        let result = std::panic::catch_unwind(|| match cli.command {
            Command::Train(args) => train(&ranks, &args.run, Task::Dpo, Some(&args)),
            Command::Sft(args) => train(&ranks, &args, Task::Sft, None),
            Command::Eval(args) => alone(&ranks, "eval")
                .and_then(|()| eval(args))
                .map(|()| ExitCode::SUCCESS),
            Command::Generate(args) => alone(&ranks, "generate")
                .and_then(|()| generate(args))
                .map(|()| ExitCode::SUCCESS),
        });
        match result {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => report_error(&ranks, e),
            Err(_) => ranks.exit(FAILED),
        }
    }

    /// Print an error (settings under their flag's name) and pick the exit code; in an MPI job
    /// the failure ends every rank.
    fn report_error(ranks: &Ranks, e: Error) -> ExitCode {
        match &e {
            Error::Setting { field, message } => {
                ranks.say(&format!("error: {}: {message}", flag(field)))
            }
            e => ranks.say(&format!("error: {e}")),
        }
        ranks.exit(if e.is_bad_input() { BAD_INPUT } else { FAILED })
    }

    /// `eval` and `generate` are one process's work.
    fn alone(ranks: &Ranks, command: &str) -> Result<()> {
        if ranks.size > 1 {
            return Err(Error::Invalid(format!(
                "`{command}` runs in one process: start it without mpirun"
            )));
        }
        Ok(())
    }

    fn device(choice: BackendChoice) -> Result<backend::SelectedDevice> {
        device_on(&Ranks::alone(), choice, None)
    }

    /// The device of this rank: discrete GPU `gpu`, or under mpirun the GPU of its rank on its
    /// host (the default adapter when there is no such GPU).
    fn device_on(
        ranks: &Ranks,
        choice: BackendChoice,
        gpu: Option<usize>,
    ) -> Result<backend::SelectedDevice> {
        let gpu = match gpu {
            Some(i) => Gpu::Discrete(i),
            None if ranks.size > 1 => Gpu::Spread(ranks.local_rank),
            None => Gpu::Default,
        };
        let selected = backend::select_on(choice, gpu)?;
        if let Some(reason) = &selected.fallback_reason {
            ranks.say(&format!(
                "notice: {reason}; falling back to the CPU backend"
            ));
        }
        ranks.say(&format!("device: {}", selected.description));
        Ok(selected)
    }

    /// A model by path or `hf:` reference.
    fn model(spec: &str, device: &Device) -> Result<ModelBundle> {
        Ok(model_at(spec, device)?.0)
    }

    /// A model and where its files are (a folder, or a .gguf file).
    fn model_at(spec: &str, device: &Device) -> Result<(ModelBundle, std::path::PathBuf)> {
        let path = resolve_model(spec, &mut report::hub_progress)?;
        Ok((load_model(&path, device)?, path))
    }

    /// `train` (DPO) and `sft`.
    fn train(
        ranks: &Ranks,
        args: &RunArgs,
        task: Task,
        dpo: Option<&TrainArgs>,
    ) -> Result<ExitCode> {
        if args.model.is_some() && args.output.is_none() {
            return Err(Error::setting("output", "required with --model"));
        }
        let overrides = args.overrides(dpo);
        let explicit_reference = dpo.is_some_and(|d| d.ref_model.is_some());
        check_settings(task, &overrides, args.lora().as_ref(), explicit_reference)?;
        let output = args.output.clone().unwrap_or_else(|| "runs/demo".into());
        // Rank 0 alone writes (and prints the run); the other ranks only compute.
        let writer = ranks.is_writer();
        let staging = match writer {
            true => Some(Staging::begin(&output, args.resume_from.as_deref())?),
            false => None,
        };
        let selected = device_on(ranks, args.backend, args.device_index)?;
        let device = &selected.device;
        // The files each model is made of: what precomputed reference log-probs are keyed by.
        let mut reference_files = Vec::new();
        let policy = match args.model.as_deref() {
            Some(m) => {
                let (bundle, path) = model_at(m, device)?;
                reference_files.push(path);
                Some(bundle)
            }
            None => None,
        };
        let explicit_reference = match dpo.and_then(|d| d.ref_model.as_deref()) {
            Some(m) => {
                let (bundle, path) = model_at(m, device)?;
                reference_files = vec![path];
                Some(bundle.model)
            }
            None => {
                reference_files.extend(args.lora_adapter.clone());
                None
            }
        };
        let spec = RunSpec {
            model: policy,
            model_label: args.model.clone().unwrap_or_default(),
            rows: args.data.as_deref().map(read_jsonl).transpose()?,
            eval_rows: args.eval_data.as_deref().map(read_jsonl).transpose()?,
            test_rows: args.test_data.as_deref().map(read_jsonl).transpose()?,
            overrides,
            lora: args.lora(),
            adapter: args.lora_adapter.as_deref().map(read_adapter).transpose()?,
            reference: explicit_reference,
            resume: args
                .resume_from
                .as_deref()
                .map(checkpoint::read_dir)
                .transpose()?,
            merge_lora: args.merge_lora,
            ..RunSpec::new(task)
        };
        let mut run = Run::new(spec, &selected)?;
        // Under mpirun every rank builds the same run, then they check that they agree.
        if let Some(group) = ranks.group() {
            pollster::block_on(run.trainer.join_group(group))?;
        }
        if writer {
            report::summary(
                &run.summary,
                run.trainer.options(),
                run.trainer.total_steps(),
            );
        }
        if writer && ranks.size > 1 {
            report::data_parallel(
                ranks.size,
                run.trainer.options(),
                run.trainer.all_reduce_values(),
            );
        }
        if run.trainer.options().precompute_ref_log_probs {
            let demo_seed = args.model.is_none().then(|| run.trainer.options().seed);
            ref_logps::precompute(
                ranks,
                &mut run.trainer,
                &output,
                &reference_files,
                demo_seed,
            )?;
        }
        let schedule = Schedule {
            eval_every: args.eval_every,
            save_every: args.save_every,
        };
        let Some(staging) = staging else {
            return follow(ranks, run, schedule);
        };
        let sub = if task == Task::Dpo { "train" } else { "sft" };
        let settings = config::effective(sub, run.trainer.options(), args.given_settings(dpo));
        std::fs::write(staging.dir().join("run.toml"), settings).map_err(|e| Error::Io {
            path: staging.dir().join("run.toml").display().to_string(),
            source: e,
        })?;
        let mut log = JsonLog::create(&staging.dir().join("metrics.jsonl"))?;
        let _ = ctrlc::set_handler(|| {
            // A second Ctrl-C does not wait for the checkpoint.
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(INTERRUPTED.into());
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
        let mut last_checkpoint = None;
        // In a job every rank stops after the same step: stopping is agreed on.
        let stop = || ranks.any(STOP.load(Ordering::SeqCst));
        let patience = run.trainer.options().early_stopping_patience.unwrap_or(0);
        let progress = report::Progress::new(
            run.trainer.total_steps(),
            run.trainer.steps_done(),
            args.log_every,
        );
        let outcome = pollster::block_on(run.train(schedule, stop, |event| match event {
            Event::Stepped(r) => {
                progress.step(&r);
                log.write(&r)
            }
            Event::Evaluated {
                phase,
                step,
                metrics,
            } => {
                let label = match phase {
                    Phase::Before => "before training",
                    Phase::During => "eval",
                    Phase::After => "after training",
                };
                progress.eval(label, step, &metrics);
                log.write(&metrics.eval_record(step))
            }
            Event::Tested {
                phase,
                step,
                metrics,
            } => {
                let label = match phase {
                    Phase::Before => "test, starting model",
                    _ => "test, trained model",
                };
                progress.eval(label, step, &metrics);
                log.write(&metrics.prefixed_record("test", step))
            }
            Event::NewBest { step, value } => {
                progress.note(format!("best so far: step {step} ({value:.4})"));
                Ok(())
            }
            Event::StoppedEarly { step, best_step } => {
                progress.note(format!(
                    "early stopping after step {step}: no improvement in {patience} \
                     evaluations; keeping the model of step {best_step}"
                ));
                Ok(())
            }
            Event::Checkpoint { step, files } => {
                let dir = staging.dir().join(format!("checkpoint-{step}"));
                write_dir_atomically(&dir, &files)?;
                progress.note(format!("saved checkpoint {}", dir.display()));
                last_checkpoint = Some(dir);
                Ok(())
            }
        }))?;
        progress.finish();
        // The curves, drawn from the whole metrics.jsonl (a resumed run's included).
        let metrics_path = staging.dir().join("metrics.jsonl");
        if let Err(e) = plot::write(&metrics_path, &staging.dir().join("metrics.svg")) {
            eprintln!("warning: no plot: {e}");
        }
        if outcome.interrupted {
            let dir = last_checkpoint.expect("an interrupted run saves a checkpoint");
            eprintln!(
                "stopped after step {}; continue with {} {} (and the same --output)",
                run.trainer.steps_done(),
                flag("resume_from"),
                dir.display()
            );
            return Ok(ExitCode::from(INTERRUPTED));
        }
        report::outcome(&outcome);
        write_files_atomically(staging.dir(), &pollster::block_on(run.model_files())?)?;
        staging.commit()?;
        let what = if run.export.writes_adapter() {
            "adapter"
        } else {
            "model"
        };
        eprintln!("saved {what} to {}", output.display());
        Ok(ExitCode::SUCCESS)
    }

    /// A rank other than 0 of an MPI job: the same run, computing its share of every batch and
    /// summing with the others, printing and writing nothing.
    fn follow(ranks: &Ranks, mut run: Run, schedule: Schedule) -> Result<ExitCode> {
        let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
        let stop = || ranks.any(STOP.load(Ordering::SeqCst));
        let outcome = pollster::block_on(run.train(schedule, stop, |_| Ok(())))?;
        Ok(match outcome.interrupted {
            true => ExitCode::from(INTERRUPTED),
            false => ExitCode::SUCCESS,
        })
    }

    /// DPO metrics of a model: a run whose evaluation set is the data, with no step taken.
    fn eval(args: EvalArgs) -> Result<()> {
        // `eval`'s --batch-size is the evaluation batch size.
        evaluate(args).map_err(|e| match e {
            Error::Setting { field, message } if field == "eval_batch_size" => Error::Setting {
                field: "batch_size".into(),
                message,
            },
            e => e,
        })
    }

    fn evaluate(args: EvalArgs) -> Result<()> {
        let mut overrides = OptionOverrides {
            beta: Some(args.beta),
            eval_batch_size: Some(args.batch_size),
            max_length: args.max_length,
            truncation_mode: args.truncation_mode,
            ..OptionOverrides::default()
        };
        args.loss.fill(&mut overrides);
        check_settings(Task::Dpo, &overrides, None, args.ref_model.is_some())?;
        let data = read_jsonl(&args.data)?;
        let selected = device(args.backend)?;
        let device = &selected.device;
        let spec = RunSpec {
            model: Some(model(&args.model, device)?),
            model_label: args.model.clone(),
            rows: Some(data.clone()),
            eval_rows: Some(data),
            overrides,
            adapter: args.lora_adapter.as_deref().map(read_adapter).transpose()?,
            reference: match &args.ref_model {
                Some(m) => Some(model(m, device)?.model),
                None => None,
            },
            ..RunSpec::new(Task::Dpo)
        };
        let mut run = Run::new(spec, &selected)?;
        if let Some(eval) = &run.summary.eval
            && eval.dropped > 0
        {
            eprintln!(
                "notice: dropped {} pairs whose prompt alone fills {}",
                eval.dropped,
                flag("max_length")
            );
        }
        let metrics = pollster::block_on(run.trainer.evaluate())?
            .ok_or_else(|| Error::setting("data", "no pairs left after tokenization"))?;
        if !metrics.loss().is_finite() {
            return Err(Error::Numeric {
                step: 0,
                message: format!(
                    "the evaluation loss is {}: the model's weights (or its reference's) hold \
                     NaN or infinite values",
                    metrics.loss()
                ),
            });
        }
        let json = serde_json::to_value(metrics).expect("metrics serialize");
        if args.json {
            println!("{json}");
        } else {
            for (k, v) in json.as_object().expect("metrics are an object") {
                println!("{k:<20} {v}");
            }
        }
        Ok(())
    }

    fn generate(args: GenerateArgs) -> Result<()> {
        args.sampling().validate()?;
        let selected = device(args.backend)?;
        let device = &selected.device;
        let mut bundle = model(&args.model, device)?;
        if let Some(dir) = &args.lora_adapter {
            bundle = bundle.with_adapter(&read_adapter(Path::new(dir))?, device)?;
        }
        let prompt = Prompt {
            text: args.prompt.clone(),
            chat: args.chat,
            system: args.system.clone(),
        };
        let mut stdout = std::io::stdout();
        let generated = pollster::block_on(generate_text(
            &bundle.model,
            &bundle.tokenizer,
            &prompt,
            &bundle.stop_tokens(),
            &args.sampling(),
            device,
            |delta, _| {
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
                true
            },
        ))?;
        println!("{}", generated.tail);
        eprintln!(
            "{} prompt tokens, {} new tokens in {:.2} s (first token after {:.2} s, then {:.1} tokens/s)",
            generated.prompt_tokens,
            generated.new_tokens.len(),
            generated.seconds,
            generated.first_token_seconds.unwrap_or(generated.seconds),
            generated.decode_tokens_per_second()
        );
        Ok(())
    }
}
