//! Nothing lost: `kill -9` at random moments leaves the last checkpoint loadable and resuming
//! reaches the same weights bit for bit; Ctrl-C checkpoints and exits cleanly; a NaN loss skips
//! updates, then stops the run, and never replaces an earlier model.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dpo_wgpu::io::safetensors::{FileBytes, SafetensorsSource, TensorWriter};
use dpo_wgpu::model::weights::WeightSource;

const STEPS: usize = 12;

fn args(output: &Path, extra: &[&str]) -> Vec<String> {
    let fixtures = common::fixtures();
    let mut args: Vec<String> = [
        "train",
        "--backend",
        "cpu",
        "--model",
        fixtures.join("gpt2/policy").to_str().unwrap(),
        "--data",
        fixtures.join("data.jsonl").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
        "--weight-decay",
        "0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dpo-wgpu"));
    command
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir());
    command
}

fn run(args: &[String]) -> Output {
    command(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Start a run and wait until it has printed the line of step `step`.
fn start_until_step(args: &[String], step: usize) -> Child {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let wanted = format!("step {step:>4}/");
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(&wanted) => break,
            Some(_) => {}
            None => panic!("the run ended before step {step}"),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn partial(output: &Path) -> PathBuf {
    output.with_file_name(format!(
        "{}.partial",
        output.file_name().unwrap().to_str().unwrap()
    ))
}

fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step: usize = e
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, path)| path)
}

/// A small deterministic generator for the kill points (seeded from the clock, printed).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_same_weights() {
    let work = tempfile::tempdir().unwrap();
    let straight = work.path().join("straight");
    let steps = STEPS.to_string();
    let result = run(&args(&straight, &["--max-steps", &steps]));
    assert!(result.status.success(), "{}", text(&result.stderr));
    let want = std::fs::read(straight.join("model.safetensors")).unwrap();

    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill points from seed {seed}");
    for trial in 0..3 {
        let output = work.path().join(format!("killed-{trial}"));
        let save = ["--max-steps", &steps, "--save-every", "1"];
        let step = 1 + (next(&mut seed) % (STEPS as u64 - 2)) as usize;
        // Up to 3 ms: often inside the checkpoint write that follows the step.
        let delay = Duration::from_micros(next(&mut seed) % 3_000);
        let mut child = start_until_step(&args(&output, &save), step);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            !output.exists(),
            "a killed run must not touch --output ({trial})"
        );
        let resume = match latest_checkpoint(&partial(&output)) {
            Some(checkpoint) => {
                eprintln!(
                    "trial {trial}: killed {delay:?} after step {step}; resuming from {}",
                    checkpoint.display()
                );
                let mut extra = save.to_vec();
                let checkpoint = checkpoint.to_str().unwrap().to_string();
                extra.extend(["--resume-from", &checkpoint]);
                run(&args(&output, &extra))
            }
            None => {
                eprintln!("trial {trial}: killed before the first checkpoint; starting over");
                std::fs::remove_dir_all(partial(&output)).unwrap();
                run(&args(&output, &save))
            }
        };
        assert!(resume.status.success(), "{}", text(&resume.stderr));
        let got = std::fs::read(output.join("model.safetensors")).unwrap();
        assert!(
            got == want,
            "trial {trial}: the resumed run's weights differ from the uninterrupted run's"
        );
        assert!(
            !partial(&output).exists(),
            "the partial folder was moved into place"
        );
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let steps = "60";
    let straight = work.path().join("straight");
    let result = run(&args(&straight, &["--max-steps", steps]));
    assert!(result.status.success(), "{}", text(&result.stderr));

    let output = work.path().join("interrupted");
    let child = start_until_step(&args(&output, &["--max-steps", steps]), 3);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(130));
    let checkpoint = latest_checkpoint(&partial(&output)).expect("Ctrl-C left a checkpoint");
    assert!(checkpoint.join("trainer_state.json").is_file());
    assert!(
        !output.exists(),
        "an interrupted run must not touch --output"
    );

    let checkpoint = checkpoint.to_str().unwrap().to_string();
    let resumed = run(&args(
        &output,
        &["--max-steps", steps, "--resume-from", &checkpoint],
    ));
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        std::fs::read(output.join("model.safetensors")).unwrap()
            == std::fs::read(straight.join("model.safetensors")).unwrap(),
        "interrupted + resumed != uninterrupted"
    );
}

/// The GPT-2 fixture with one NaN in its (tied) embeddings: every loss is NaN.
fn model_with_a_nan(into: &Path) {
    let fixture = common::fixtures().join("gpt2/policy");
    std::fs::create_dir_all(into).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, into.join(path.file_name().unwrap())).unwrap();
    }
    let path = fixture.join("model.safetensors");
    let source = SafetensorsSource::new(
        "gpt2",
        vec![("gpt2".into(), FileBytes::map(&path).unwrap())],
    )
    .unwrap();
    let mut writer = TensorWriter::default();
    let names: Vec<String> = source.names().map(str::to_string).collect();
    for name in names {
        let mut tensor = source.read(&name).unwrap();
        if name.ends_with("wte.weight") {
            tensor.data[7] = f32::NAN;
        }
        writer.add(name, tensor);
    }
    std::fs::write(into.join("model.safetensors"), writer.to_bytes().unwrap()).unwrap();
}

#[test]
fn nan_losses_skip_updates_then_stop_without_touching_the_output() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("nan-model");
    model_with_a_nan(&model);
    let output = work.path().join("out");
    std::fs::create_dir_all(&output).unwrap();
    std::fs::write(output.join("model.safetensors"), b"an earlier good model").unwrap();
    let mut args = args(&output, &["--max-steps", "8"]);
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.to_str().unwrap().to_string();
    let result = run(&args);
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    for step in 1..=2 {
        assert!(
            stderr.contains(&format!("warning: step    {step}/8")) && stderr.contains("skipped"),
            "no warning for step {step}: {stderr}"
        );
    }
    assert!(
        stderr.contains("error: step 3:") && stderr.contains("in 3 steps in a row"),
        "{stderr}"
    );
    assert!(
        stderr.contains("learning rate"),
        "the likely cause: {stderr}"
    );
    assert!(
        !text(&result.stdout).contains("NaN"),
        "NaN printed as a result"
    );
    assert_eq!(
        std::fs::read(output.join("model.safetensors")).unwrap(),
        b"an earlier good model"
    );
    assert!(!partial(&output).exists());
}
