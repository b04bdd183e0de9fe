//! Data-parallel training under `mpirun` (cargo feature `mpi`; CI builds with it): N ranks with a
//! global batch B end with the weights one process with batch B ends with, print the same
//! metrics, and a failed or killed rank ends the whole job quickly with its rank named.
//!
//! Why "within 1e-6" and not bitwise: each rank sums its share's gradient and the shares are
//! summed after, so float additions happen in another order than in one process's backward pass
//! (a gradient element moves by ~1e-10). SGD is linear in the gradient, so with it the weights
//! agree to ~1e-11 even at lr 0.5: those tests check the data-parallel arithmetic itself. Adam
//! divides each update by √v, so an element whose gradient is rounding noise in both runs (a
//! shared prompt token's embedding, whose chosen and rejected gradients cancel) takes a step of up
//! to lr in a direction the noise picks: with AdamW a few weights in 10⁵ end up to a few lr·1e-2
//! apart (one of 44k by 5.3e-6 at lr 1e-4 on the fixture; one of 46k by 1.1e-6 on the demo at
//! lr 1e-3), the rest within 1e-6.
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixtures;

const TOLERANCE: f32 = 1e-6;

/// `mpirun -n <ranks> dpo-wgpu <args>` (one process without mpirun when `ranks` is 0).
fn mpirun(ranks: usize) -> Command {
    let bin = env!("CARGO_BIN_EXE_dpo-wgpu");
    let mut command = if ranks == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        // Root in CI containers; two cores for three ranks.
        c.args(["--allow-run-as-root", "--oversubscribe", "-n"])
            .arg(ranks.to_string())
            .arg(bin);
        c
    };
    command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Train with `args` (plus `--output`, CPU backend unless `args` name one) on `ranks` ranks
/// (0: alone, no mpirun).
fn train(ranks: usize, dir: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("ranks-{ranks}"));
    let backend: &[&str] = match args.contains(&"--backend") {
        true => &[],
        false => &["--backend", "cpu"],
    };
    let result = mpirun(ranks)
        .args(args)
        .args(backend)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("mpirun runs (apt-get install openmpi-bin)");
    assert!(
        result.status.success(),
        "{ranks} ranks: {}\n{}",
        text(&result.stderr),
        text(&result.stdout)
    );
    out
}

fn tensors(file: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// Every weight's difference between two runs (same names, same sizes).
fn weight_differences(a: &Path, b: &Path, file: &str) -> Vec<f32> {
    let (a, b) = (tensors(&a.join(file)), tensors(&b.join(file)));
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    a.iter()
        .flat_map(|(name, x)| {
            let y = &b[name];
            assert_eq!(x.len(), y.len(), "{name}");
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn max_weight_difference(a: &Path, b: &Path, file: &str) -> f32 {
    weight_differences(a, b, file)
        .into_iter()
        .fold(0.0, f32::max)
}

/// Every weight within 1e-6 of one process's.
fn all_within_tolerance(diffs: &[f32]) -> std::result::Result<(), String> {
    let max = diffs.iter().copied().fold(0.0, f32::max);
    match max <= TOLERANCE {
        true => Ok(()),
        false => Err(format!("max |Δweight| {max:e}")),
    }
}

/// Every record of metrics.jsonl, timings left out.
fn metrics(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut record: serde_json::Map<_, _> = serde_json::from_str(line).unwrap();
            record.remove("seconds");
            record.remove("exchange_seconds");
            record
        })
        .collect()
}

/// The same records with the same names and numbers within 1e-5 (relative to max(1, |x|)).
fn assert_same_metrics(alone: &Path, group: &Path, what: &str) {
    let (a, b) = (metrics(alone), metrics(group));
    assert_eq!(a.len(), b.len(), "{what}: records");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{what}"
        );
        // While the policy is still the reference (LoRA's first step), every margin is rounding
        // noise (~1e-7) whose sign depends on how the rows were batched: the share of positive
        // margins is then not a number two runs can agree on.
        let noise = |r: &serde_json::Map<_, _>| r["rewards/margins"].as_f64().unwrap().abs() < 1e-5;
        for (key, v) in x {
            if key == "rewards/accuracies"
                && x.contains_key("rewards/margins")
                && noise(x)
                && noise(y)
            {
                continue;
            }
            let (p, q) = (v.as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-5 * p.abs().max(1.0),
                "{what}: {key} alone {p}, in a group {q}\n{x:?}\n{y:?}"
            );
        }
    }
}

/// Train alone and on 2 and 3 ranks; the weights (`file`) must pass `check` and the metrics
/// agree.
fn same_as_alone(
    args: &[&str],
    file: &str,
    what: &str,
    check: fn(&[f32]) -> std::result::Result<(), String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let alone = train(0, dir.path(), args);
    for ranks in [2, 3] {
        let group = train(ranks, dir.path(), args);
        let diffs = weight_differences(&alone, &group, file);
        let max = diffs.iter().copied().fold(0.0, f32::max);
        eprintln!("{what}, {ranks} ranks: max |Δweight| = {max:e}");
        if let Err(e) = check(&diffs) {
            panic!("{what}: {ranks} ranks against one process: {e}");
        }
        assert_same_metrics(&alone, &group, &format!("{what}, {ranks} ranks"));
    }
}

fn fixture(path: &str) -> String {
    fixtures().join(path).to_str().unwrap().to_string()
}

/// `train` (or `sft`) on the tiny Llama fixture with `data`, then the flags in `flags`.
fn on_fixture(command: &'static str, data: &str, flags: &'static str) -> Vec<String> {
    let mut args = vec![
        command.to_string(),
        "--model".into(),
        fixture("llama/policy"),
    ];
    args.extend(["--data".into(), fixture(data)]);
    args.extend(flags.split_whitespace().map(String::from));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// SGD's update is the gradient times lr: a share weighted wrongly shows at once.
const SGD: &str = "--optimizer sgd --lr 0.5 --max-grad-norm 0";

#[test]
fn full_fine_tuning_matches_one_process() {
    // 8 pairs, half held out; 4 training pairs in batches of 2 accumulated twice (on 3 ranks one
    // share of each batch is empty), evaluated in batches of 3, for 3 epochs; DPO plus the SFT
    // term, whose token mean spans the whole batch.
    let args = on_fixture(
        "train",
        "data.jsonl",
        "--val-split 0.5 --batch-size 2 --gradient-accumulation-steps 2 --eval-batch-size 3 \
         --epochs 3 --eval-every 2 --loss sigmoid,sft",
    );
    let args = [strs(&args), SGD.split(' ').collect()].concat();
    same_as_alone(
        &args,
        "model.safetensors",
        "full fine-tuning, SGD, sigmoid + sft",
        all_within_tolerance,
    );
}

#[test]
fn ranks_on_wgpu_match_one_process() {
    // Each rank reads its gradients back from its GPU and uploads the sum (lavapipe in CI: the
    // ranks share the one adapter, as ranks without a discrete GPU of their own do).
    // No adapter here: skipped (CI sets DPO_REQUIRE_WGPU=1, which makes that a failure).
    if common::wgpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = on_fixture(
        "train",
        "data.jsonl",
        "--backend wgpu --batch-size 4 --max-steps 3",
    );
    let args = [strs(&args), SGD.split(' ').collect()].concat();
    let alone = train(0, dir.path(), &args);
    let group = train(2, dir.path(), &args);
    let diff = max_weight_difference(&alone, &group, "model.safetensors");
    eprintln!("wgpu, 2 ranks: max |Δweight| = {diff:e}");
    assert!(diff <= TOLERANCE, "wgpu: 2 ranks end {diff:e} away");
    assert_same_metrics(&alone, &group, "wgpu, 2 ranks");
}

#[test]
fn adamw_full_fine_tuning_matches_one_process_but_for_noise() {
    let args = on_fixture(
        "train",
        "data.jsonl",
        "--val-split 0.5 --lr 1e-4 --batch-size 2 --gradient-accumulation-steps 2 --epochs 3",
    );
    // See the top of this file: AdamW turns rounding noise into steps of up to lr.
    same_as_alone(
        &strs(&args),
        "model.safetensors",
        "full fine-tuning, AdamW",
        |diffs| {
            let off = diffs.iter().filter(|&&d| d > TOLERANCE).count();
            let max = diffs.iter().copied().fold(0.0, f32::max);
            let bound = 0.1 * 1e-4 * 3.0;
            match off * 10_000 <= diffs.len() && max <= bound {
                true => Ok(()),
                false => Err(format!(
                    "{off} of {} weights beyond 1e-6 (at most 1 in 10⁴), max {max:e} (at most \
                 {bound:e})",
                    diffs.len()
                )),
            }
        },
    );
}

#[test]
fn lora_matches_one_process() {
    let args = on_fixture(
        "train",
        "data.jsonl",
        "--lora-rank 4 --lr 1e-3 --batch-size 8 --max-steps 4",
    );
    same_as_alone(
        &strs(&args),
        "adapter_model.safetensors",
        "LoRA r4, AdamW",
        all_within_tolerance,
    );
}

#[test]
fn sft_matches_one_process() {
    // SFT's loss is a mean over the whole batch's tokens, whatever share a rank has.
    let args = on_fixture("sft", "sft.jsonl", "--batch-size 4 --max-steps 3");
    let args = [strs(&args), SGD.split(' ').collect()].concat();
    same_as_alone(&args, "model.safetensors", "SFT, SGD", all_within_tolerance);
}

#[test]
fn the_demo_trains_on_two_ranks_and_resumes_on_three() {
    let dir = tempfile::tempdir().unwrap();
    let alone = train(0, dir.path(), &["train", "--max-steps", "6"]);
    let first = train(
        2,
        dir.path(),
        &["train", "--max-steps", "6", "--save-every", "3"],
    );
    let checkpoint = first.join("checkpoint-3");
    let resumed = dir.path().join("resumed");
    let result = mpirun(3)
        .args(["train", "--backend", "cpu", "--resume-from"])
        .arg(&checkpoint)
        .arg("--output")
        .arg(&resumed)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", text(&result.stderr));
    let stderr = text(&result.stderr);
    // Rank 0 alone prints the run (steps on stdout).
    let stdout = text(&result.stdout);
    assert_eq!(stdout.matches("step    6/6").count(), 1, "{stdout}");
    assert!(stderr.contains("data parallel: 3 processes"), "{stderr}");
    let diff = max_weight_difference(&alone, &resumed, "model.safetensors");
    assert!(diff <= 1e-5, "resumed on 3 ranks: {diff:e} away");
    // Only rank 0 wrote: nothing else beside the runs.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ranks-0", "ranks-2", "resumed"]);
}

/// Wait for `child` to end, at most `limit`; kill it and fail if it does not.
fn wait_at_most(child: &mut std::process::Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// The process ids of the ranks writing to `output` whose rank is `rank`.
fn rank_pids(output: &Path, rank: usize) -> Vec<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read =
                |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            let cmdline = text(&read("cmdline"));
            cmdline.contains(output.to_str().unwrap())
                && !cmdline.starts_with("mpirun")
                && read("environ")
                    .split(|&b| b == 0)
                    .any(|var| var == want.as_bytes())
        })
        .collect()
}

#[test]
fn killing_a_rank_ends_the_job_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed");
    let mut job = mpirun(2)
        .args([
            "train",
            "--backend",
            "cpu",
            "--max-steps",
            "1000000",
            "--log-every",
            "100",
        ])
        .arg("--output")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Training has begun once rank 0 logs steps.
    let log = dir.path().join("killed.partial/metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "no steps");
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victims = rank_pids(&out, 1);
    assert_eq!(victims.len(), 1, "rank 1's process");
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victims[0].to_string()])
        .status()
        .unwrap();
    let result = wait_at_most(
        &mut job,
        Duration::from_secs(20),
        "job after a rank was killed",
    );
    let took = killed.elapsed();
    let stderr = text(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "ended {took:?} after the kill"
    );
    assert!(rank_pids(&out, 0).is_empty(), "rank 0 still runs");
    eprintln!("the job ended {took:?} after rank 1 was killed");
}

/// `mpirun -n 1 dpo-wgpu <common> <rank0> : -n 1 dpo-wgpu <common> <rank1>`: the two ranks are
/// given something different.
fn two_ranks_differing(common: &[&str], rank0: &[&str], rank1: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_dpo-wgpu");
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "1", bin])
        .args(common)
        .args(rank0)
        .args([":", "-n", "1", bin])
        .args(common)
        .args(rank1)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_at_most(
        &mut child,
        Duration::from_secs(60),
        "job with a failing rank",
    )
}

#[test]
fn bad_input_on_one_rank_stops_every_rank_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let common = [
        "train",
        "--backend",
        "cpu",
        "--max-steps",
        "3",
        "--output",
        out.to_str().unwrap(),
    ];
    let missing = dir.path().join("no-such-checkpoint");
    let result = two_ranks_differing(&common, &[], &["--resume-from", missing.to_str().unwrap()]);
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rank 1/2: error:"), "{stderr}");
    assert!(stderr.contains("no-such-checkpoint"), "{stderr}");

    // Another seed: the ranks would train on different data orders. (The aborted job above left
    // its partial folder behind, as a killed run does: another output.)
    let out = dir.path().join("out2");
    let common = [&common[..5], &["--output", out.to_str().unwrap()]].concat();
    let result = two_ranks_differing(&common, &[], &["--seed", "7"]);
    let stderr = text(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("rank 1 of 2 has other data, settings or checkpoint than rank 0"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing was written");

    // Another model of the same shapes and tokenizer (another revision on one host): the data
    // agree, the weights do not.
    let out = dir.path().join("out3");
    let data = fixtures().join("data.jsonl");
    let common = [
        "train",
        "--backend",
        "cpu",
        "--max-steps",
        "1",
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--model",
    ];
    let result = two_ranks_differing(
        &common,
        &[&fixture("llama/policy")],
        &[&fixture("llama/reference")],
    );
    let stderr = text(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("rank 1 of 2 has other model weights"),
        "{stderr}"
    );
}

#[test]
fn losses_that_couple_a_batch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let result = mpirun(2)
        .args(["train", "--backend", "cpu", "--loss", "aot", "--output"])
        .arg(dir.path().join("aot"))
        .output()
        .unwrap();
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--loss: aot cannot be split over 2 processes"),
        "{stderr}"
    );
}

#[test]
fn eval_and_generate_refuse_to_run_as_several_processes() {
    let result = mpirun(2)
        .args(["generate", "--prompt", "a", "--model"])
        .arg(fixtures().join("llama/policy"))
        .output()
        .unwrap();
    let stderr = text(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("runs in one process"), "{stderr}");
}
