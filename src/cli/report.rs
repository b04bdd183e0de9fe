//! What the CLI prints: one line per step, evaluations, the run's summary. Metrics go to stdout,
//! everything else to stderr.

use std::io::IsTerminal;

use dpo_wgpu::io::native::HubProgress;
use dpo_wgpu::train::metrics::{Metrics, StepReport};
use dpo_wgpu::train::options::TrainOptions;
use dpo_wgpu::train::run::{DataSummary, DropReason, Outcome, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::flag;

pub fn hub_progress(p: HubProgress) {
    match p {
        HubProgress::Started { reference, into } => {
            eprintln!("fetching {reference} into {}", into.display())
        }
        HubProgress::Bytes {
            file,
            done,
            total: Some(total),
        } => eprintln!("  {file}: {} / {} MB", done >> 20, total >> 20),
        HubProgress::Bytes { file, done, .. } => eprintln!("  {file}: {} MB", done >> 20),
    }
}

fn dropped(what: &str, data: &DataSummary, reason: DropReason) {
    if data.dropped == 0 {
        return;
    }
    let why = match reason {
        DropReason::PromptFillsMaxLength => {
            format!("pairs whose prompt alone fills {}", flag("max_length"))
        }
        DropReason::NoCompletionWithinMaxLength => format!(
            "rows with no completion token within {}",
            flag("max_length")
        ),
    };
    eprintln!(
        "notice: dropped {} {what} {why} ({})",
        data.dropped, data.source
    );
}

/// Before a run starts: what was built.
/// How a data-parallel job splits its batches, and what each step sends.
pub fn data_parallel(ranks: usize, options: &TrainOptions, values: usize) {
    eprintln!(
        "data parallel: {ranks} processes (MPI), each taking a share of every batch of {} \
         (balanced by tokens); {:.2} MiB summed over them per step (one all-reduce)",
        options.batch_size,
        values as f64 * 4.0 / (1024.0 * 1024.0)
    );
}

pub fn summary(s: &Summary, options: &TrainOptions, total_steps: usize) {
    if let Some(limit) = s.max_length_fitted {
        eprintln!(
            "notice: {} defaults to the model's {limit} positions",
            flag("max_length")
        );
    }
    if let Some(lora) = &s.lora {
        eprintln!(
            "LoRA rank {}, alpha {}, on {}: {} trainable parameters",
            lora.rank,
            lora.alpha,
            lora.targets.join(","),
            s.trainable_parameters
        );
    }
    if let Some(top) = options.trainable_layers {
        eprintln!(
            "training the top {top} blocks, the final norm and the head: {} trainable parameters",
            s.trainable_parameters
        );
    }
    if s.demo {
        eprintln!(
            "no --model/--data: training the built-in demo ({} training pairs, {} held-out pairs \
             on unseen subjects)",
            s.train.kept,
            s.eval.as_ref().map_or(0, |e| e.kept)
        );
    }
    dropped("training", &s.train, s.drop_reason);
    if let Some(eval) = &s.eval {
        dropped("eval", eval, s.drop_reason);
    }
    if let Some(test) = &s.test {
        dropped("test", test, s.drop_reason);
        eprintln!("test set: {} examples from {}", test.kept, test.source);
    }
    if let Some(eval) = s.eval.as_ref().filter(|_| !s.demo) {
        eprintln!("eval set: {} examples from {}", eval.kept, eval.source);
    }
    if let Some((from, step)) = &s.resumed {
        eprintln!("resumed from {from} at step {step}");
    }
    eprintln!(
        "{}: {} model, {} training examples, {} eval examples, {total_steps} steps of {}, lr {}{}",
        s.task,
        s.family,
        s.train.kept,
        s.eval.as_ref().map_or(0, |e| e.kept),
        options.batch_size * options.gradient_accumulation_steps,
        options.learning_rate,
        match s.task {
            dpo_wgpu::train::options::Task::Dpo => format!(", beta {}", options.beta),
            dpo_wgpu::train::options::Task::Sft => String::new(),
        },
    );
}

/// Where step and evaluation lines go: a progress bar with ETA and the latest metrics when
/// stderr is a terminal (lines print above it), plain lines otherwise (logs, pipes, CI).
pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
}

impl Progress {
    pub fn new(total_steps: usize, done: usize, log_every: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_position(done as u64);
            bar.reset_eta();
            bar
        });
        Self {
            bar,
            log_every: log_every.max(1),
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    /// A finished step: the bar moves and shows its metrics; without a bar, a line every
    /// `log_every` steps (and for the last one). A skipped step always warns.
    pub fn step(&self, r: &StepReport) {
        if r.skipped {
            let warning = format!(
                "warning: step {:>4}/{}: loss {} and gradient norm {} are not both finite; the \
                 update was skipped",
                r.step,
                r.total_steps,
                r.metrics.loss(),
                r.grad_norm
            );
            self.note(warning);
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_message(short_metrics(&r.metrics));
            }
            None if r.step % self.log_every == 0 || r.step == r.total_steps => {
                self.line(step_line(r))
            }
            None => {}
        }
    }

    pub fn eval(&self, label: &str, step: usize, m: &Metrics) {
        match eval_line(label, step, m) {
            Ok(line) => self.line(line),
            Err(warning) => self.note(warning),
        }
    }

    /// A message for stderr (above the bar when there is one).
    pub fn note(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The metrics a progress bar shows.
fn short_metrics(m: &Metrics) -> String {
    match m.rewards() {
        Some((accuracy, margin)) => {
            format!("loss {:.4} acc {accuracy:.3} margin {margin:+.4}", m.loss())
        }
        None => format!("loss {:.4}", m.loss()),
    }
}

fn step_line(r: &StepReport) -> String {
    let head = format!("step {:>4}/{}", r.step, r.total_steps);
    let tail = format!(
        "grad {:.3} | lr {:.2e} | {:.3}s",
        r.grad_norm, r.learning_rate, r.seconds
    );
    match &r.metrics {
        Metrics::Dpo(m) => format!(
            "{head} | loss {:.4} | acc {:.3} | margin {:+.4} | chosen {:+.4} | rejected {:+.4} | {tail}",
            m.loss, m.rewards_accuracies, m.rewards_margins, m.rewards_chosen, m.rewards_rejected
        ),
        Metrics::ReferenceFree(m) => format!(
            "{head} | loss {:.4} | acc {:.3} | margin {:+.4} | chosen {:+.4} | rejected {:+.4} | \
             nll {:.4} | {tail}",
            m.loss,
            m.rewards_accuracies,
            m.rewards_margins,
            m.rewards_chosen,
            m.rewards_rejected,
            m.nll_loss
        ),
        Metrics::Sft(m) => format!(
            "{head} | loss {:.4} | token acc {:.3} | entropy {:.3} | {tail}",
            m.loss, m.mean_token_accuracy, m.entropy
        ),
    }
}

/// An evaluation's line, or the warning that its loss is not a number.
fn eval_line(label: &str, step: usize, m: &Metrics) -> std::result::Result<String, String> {
    if !m.loss().is_finite() {
        return Err(format!(
            "warning: {label} (step {step}): the evaluation loss is {}, not a finite number",
            m.loss()
        ));
    }
    Ok(match m {
        Metrics::Dpo(m) => format!(
            "{label} (step {step}) | eval loss {:.4} | reward accuracy {:.3} | margin {:+.4} | \
             logps chosen {:.3} rejected {:.3}",
            m.loss, m.rewards_accuracies, m.rewards_margins, m.logps_chosen, m.logps_rejected
        ),
        Metrics::ReferenceFree(m) => format!(
            "{label} (step {step}) | eval loss {:.4} | reward accuracy {:.3} | margin {:+.4} | \
             mean logps chosen {:.3} rejected {:.3}",
            m.loss, m.rewards_accuracies, m.rewards_margins, m.logps_chosen, m.logps_rejected
        ),
        Metrics::Sft(m) => format!(
            "{label} (step {step}) | eval loss {:.4} | token accuracy {:.3}",
            m.loss, m.mean_token_accuracy
        ),
    })
}

/// The test report: every metric of the starting and the kept model side by side.
fn test_report(before: &Metrics, after: &Metrics, best_step: Option<usize>) {
    let (b, a) = (
        serde_json::to_value(before).expect("metrics serialize"),
        serde_json::to_value(after).expect("metrics serialize"),
    );
    let kept = best_step.map_or("trained".to_string(), |s| format!("best (step {s})"));
    eprintln!("test set: {:<22} {:>12} {:>12}", "metric", "starting", kept);
    for (key, value) in b.as_object().expect("an object") {
        if let (Some(x), Some(y)) = (value.as_f64(), a.get(key).and_then(|v| v.as_f64())) {
            eprintln!("          {key:<22} {x:>12.4} {y:>12.4}");
        }
    }
}

/// After the last step.
pub fn outcome(o: &Outcome) {
    if let Some(step) = o.best_step {
        eprintln!("kept the best model: step {step}");
    }
    if let (Some(before), Some(after)) = (&o.test_before, &o.test_after) {
        test_report(before, after, o.best_step);
    }
    if let Some((mean, steps)) = o.steady_step_seconds() {
        eprintln!("{mean:.3} s/step (mean of steps 2..{})", steps + 1);
    }
    if let (Some(b), Some(a)) = (o.before, o.after)
        && let (Some((before, _)), Some((after, _))) = (b.rewards(), a.rewards())
    {
        eprintln!(
            "held-out reward accuracy {before:.3} -> {after:.3}, loss {:.4} -> {:.4}",
            b.loss(),
            a.loss()
        );
    }
}
