//! `--precompute-ref-log-probs`: the reference model's log-probs of every example, computed once
//! before training and kept in `ref-logps/<model>-<data>.json` beside `--output`, named by a
//! hash of the reference model's files and one of the tokenized data and scoring settings. A
//! later run with the same reference and data reads the file instead of computing; either way
//! the reference model is released before the first step.

use std::path::{Path, PathBuf};

use dpo_wgpu::error::{Error, Location, Result};
use dpo_wgpu::io::bundle::ExportedFiles;
use dpo_wgpu::io::native::files::{hash_files, write_files_atomically};
use dpo_wgpu::train::trainer::Trainer;

use crate::ranks::Ranks;
use serde::{Deserialize, Serialize};
use web_time::Instant;

#[derive(Serialize, Deserialize)]
struct Saved {
    model: String,
    data: String,
    train: Vec<(f32, f32)>,
    eval: Vec<(f32, f32)>,
    test: Vec<(f32, f32)>,
}

/// Where the log-probs of `reference` (its files' hash) on the trainer's data live.
fn cache_file(output: &Path, model: &str, data: &str) -> PathBuf {
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    parent
        .unwrap_or(Path::new("."))
        .join("ref-logps")
        .join(format!("{}-{}.json", &model[..16], &data[..16]))
}

/// Fill the trainer's reference log-probs from the cache or by computing them (then saving
/// them), and release the reference model. `reference_files` are the files the reference is
/// made of (model folder or .gguf, plus a starting adapter); `None` for the built-in demo.
pub fn precompute(
    ranks: &Ranks,
    trainer: &mut Trainer,
    output: &Path,
    reference_files: &[PathBuf],
    demo_seed: Option<u64>,
) -> Result<()> {
    let Some(data) = trainer.reference_data_fingerprint() else {
        return Err(Error::setting(
            "precompute_ref_log_probs",
            "this run has no reference model (SFT, SimPO and ORPO are reference-free)",
        ));
    };
    let model = match demo_seed {
        Some(seed) => hash_files(&[], &format!("built-in demo, seed {seed}"))?,
        None => hash_files(reference_files, "")?,
    };
    let path = cache_file(output, &model, &data);
    let source = path.display().to_string();
    // In an MPI job the ranks compute together, so they read the file only if all of them can.
    let found = path.exists();
    let missing_somewhere = ranks.any(!found);
    if found && !missing_somewhere {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&source, e))?;
        let saved: Saved = serde_json::from_str(&text).map_err(|e| {
            Error::input(
                Location::file(&source).line(e.line()),
                format!("invalid JSON: {e}"),
            )
        })?;
        if saved.model != model || saved.data != data {
            return Err(Error::input(
                Location::file(&source),
                "holds log-probs of another model or data set (its hashes differ): delete it",
            ));
        }
        trainer.load_reference_logps([saved.train, saved.eval, saved.test])?;
        if ranks.is_writer() {
            eprintln!("reference log-probs: read from {source}");
        }
    } else {
        let started = Instant::now();
        pollster::block_on(trainer.precompute_reference_logps())?;
        let [train, eval, test] = trainer
            .reference_logps_table()
            .expect("every reference log-prob was just computed");
        let pairs = train.len() + eval.len() + test.len();
        let saved = Saved {
            model,
            data,
            train,
            eval,
            test,
        };
        if !ranks.is_writer() {
            return trainer.release_reference();
        }
        let bytes = serde_json::to_vec(&saved).expect("log-probs serialize");
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let dir = path.parent().expect("a folder");
        write_files_atomically(
            dir,
            &ExportedFiles {
                files: vec![(name, bytes)],
            },
        )?;
        eprintln!(
            "reference log-probs: {pairs} pairs in {:.1} s, saved to {source}",
            started.elapsed().as_secs_f64()
        );
    }
    trainer.release_reference()?;
    if ranks.is_writer() {
        eprintln!("reference model released: training holds only the policy");
    }
    Ok(())
}
