//! `dpo-wgpu`: the command-line shell over the library. It turns flags into a `RunSpec`, loads
//! what the flags name from disk or the Hub, and prints and writes what the core returns.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod args;
#[cfg(not(target_arch = "wasm32"))]
mod report;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::Path;
    use std::process::ExitCode;

    use burn::tensor::Device;
    use clap::Parser;
    use dpo_wgpu::backend::{self, BackendChoice};
    use dpo_wgpu::error::{Error, Result};
    use dpo_wgpu::io::bundle::ModelBundle;
    use dpo_wgpu::io::native::files::{
        JsonLog, load_model, read_adapter, read_jsonl, write_files_atomically,
    };
    use dpo_wgpu::io::native::resolve_model;
    use dpo_wgpu::text::stream::{Prompt, generate_text};
    use dpo_wgpu::train::checkpoint;
    use dpo_wgpu::train::options::{OptionOverrides, Task};
    use dpo_wgpu::train::run::{Event, Phase, Run, RunSpec, Schedule};

    use crate::args::{Cli, Command, EvalArgs, GenerateArgs, RunArgs, TrainArgs, flag};
    use crate::report;

    pub fn main() -> ExitCode {
        let result = match Cli::parse().command {
            Command::Train(args) => train(&args.run, Task::Dpo, Some(&args)),
            Command::Sft(args) => train(&args, Task::Sft, None),
            Command::Eval(args) => eval(args),
            Command::Generate(args) => generate(args),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(Error::Setting { field, message }) => {
                eprintln!("error: {}: {message}", flag(&field));
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn device(choice: BackendChoice) -> Result<backend::SelectedDevice> {
        let selected = backend::select(choice)?;
        if let Some(reason) = &selected.fallback_reason {
            eprintln!("notice: {reason}; falling back to the CPU backend");
        }
        eprintln!("device: {}", selected.description);
        Ok(selected)
    }

    /// A model by path or `hf:` reference.
    fn model(spec: &str, device: &Device) -> Result<ModelBundle> {
        load_model(&resolve_model(spec, &mut report::hub_progress)?, device)
    }

    /// `train` (DPO) and `sft`.
    fn train(args: &RunArgs, task: Task, dpo: Option<&TrainArgs>) -> Result<()> {
        if args.model.is_some() && args.output.is_none() {
            return Err(Error::setting("output", "required with --model"));
        }
        let selected = device(args.backend)?;
        let device = &selected.device;
        let spec = RunSpec {
            model: args
                .model
                .as_deref()
                .map(|m| model(m, device))
                .transpose()?,
            model_label: args.model.clone().unwrap_or_default(),
            rows: args.data.as_deref().map(read_jsonl).transpose()?,
            eval_rows: args.eval_data.as_deref().map(read_jsonl).transpose()?,
            overrides: args.overrides(dpo.and_then(|d| d.beta)),
            lora: args.lora(),
            adapter: args.lora_adapter.as_deref().map(read_adapter).transpose()?,
            reference: match dpo.and_then(|d| d.ref_model.as_deref()) {
                Some(m) => Some(model(m, device)?.model),
                None => None,
            },
            resume: args
                .resume_from
                .as_deref()
                .map(checkpoint::read_dir)
                .transpose()?,
            merge_lora: args.merge_lora,
            ..RunSpec::new(task)
        };
        let mut run = Run::new(spec, &selected)?;
        report::summary(
            &run.summary,
            run.trainer.options(),
            run.trainer.total_steps(),
        );
        let output = args.output.clone().unwrap_or_else(|| "runs/demo".into());
        std::fs::create_dir_all(&output).map_err(|e| Error::io(output.display(), e))?;
        let mut log = JsonLog::create(&output.join("metrics.jsonl"))?;
        let schedule = Schedule {
            eval_every: args.eval_every,
            save_every: args.save_every,
        };
        let outcome = pollster::block_on(run.train(schedule, |event| match event {
            Event::Stepped(r) => {
                if r.step % args.log_every.max(1) == 0 || r.step == r.total_steps {
                    report::step(&r);
                }
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
                report::eval(label, step, &metrics);
                log.write(&metrics.eval_record(step))
            }
            Event::Checkpoint { step, files } => {
                let dir = output.join(format!("checkpoint-{step}"));
                write_files_atomically(&dir, &files)?;
                eprintln!("saved checkpoint {}", dir.display());
                Ok(())
            }
        }))?;
        report::outcome(&outcome);
        write_files_atomically(&output, &pollster::block_on(run.model_files())?)?;
        let what = if run.export.writes_adapter() {
            "adapter"
        } else {
            "model"
        };
        eprintln!("saved {what} to {}", output.display());
        Ok(())
    }

    /// DPO metrics of a model: a run whose evaluation set is the data, with no step taken.
    fn eval(args: EvalArgs) -> Result<()> {
        let selected = device(args.backend)?;
        let device = &selected.device;
        let data = read_jsonl(&args.data)?;
        let spec = RunSpec {
            model: Some(model(&args.model, device)?),
            model_label: args.model.clone(),
            rows: Some(data.clone()),
            eval_rows: Some(data),
            overrides: OptionOverrides {
                beta: Some(args.beta),
                eval_batch_size: Some(args.batch_size),
                max_length: args.max_length,
                ..OptionOverrides::default()
            },
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
