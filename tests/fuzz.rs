//! The fuzz targets of `src/fuzz.rs`, run briefly in every test run: each committed corpus
//! input (`fuzz/corpus/<target>/`), then random mutations of them for a few seconds per target
//! (`DPO_FUZZ_SECONDS`, default 3). A panic fails the test and saves the input that caused it.
//! Long fuzzing runs use AFL++ (`fuzz/README.md`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpo_wgpu::fuzz::TARGETS;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// xorshift64*: fixed seed, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// AFL-style havoc: flips, interesting values, inserts, deletes, copies within the input and
/// splices from another corpus entry.
fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    const INTERESTING: [u64; 9] = [
        0,
        1,
        0x7f,
        0xff,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0xffff_ffff,
        u64::MAX,
    ];
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            2 if len >= 8 => {
                let at = rng.below(len - 7);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.below(4)];
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            4 if len > 1 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                data.drain(at..at + n);
            }
            5 if len > 1 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(64));
                let chunk = data[from..from + n].to_vec();
                let to = rng.below(len);
                data.splice(to..to, chunk);
            }
            _ if !other.is_empty() => {
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    data
}

#[test]
fn fuzz_targets_survive_their_corpora_and_mutations() {
    let seconds: u64 = std::env::var("DPO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // Panics are expected to be caught here: keep their messages out of the log.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        let mut crashed = |data: &[u8], what: &str| {
            if catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
                let path = std::env::temp_dir().join(format!("dpo-wgpu-fuzz-{name}-crash"));
                std::fs::write(&path, data).unwrap();
                failures.push(format!(
                    "{name}: {what} panics (saved to {})",
                    path.display()
                ));
                true
            } else {
                false
            }
        };
        for (path, bytes) in &inputs {
            crashed(bytes, &path.display().to_string());
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let started = Instant::now();
        let mut runs = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            let (_, base) = &inputs[rng.below(inputs.len())];
            let (_, other) = &inputs[rng.below(inputs.len())];
            let data = mutate(base, other, &mut rng);
            runs += 1;
            if crashed(&data, &format!("mutation {runs}")) {
                break;
            }
        }
        eprintln!("{name}: {} corpus inputs, {runs} mutations", inputs.len());
    }
    std::panic::set_hook(quiet);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The GGUF seeds reach the deep paths: they parse and give a working tokenizer.
#[test]
fn gguf_seeds_are_valid_files() {
    use dpo_wgpu::io::gguf::model_texts_and_weights;
    use dpo_wgpu::io::safetensors::FileBytes;
    use dpo_wgpu::text::tokenizer::TextTokenizer;
    for (path, bytes) in corpus("gguf_tokenizer") {
        let (texts, _) = model_texts_and_weights("seed", FileBytes::Owned(bytes))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tokenizer = TextTokenizer::from_json(
            texts.tokenizer_json,
            texts.tokenizer_config_json,
            None,
            "seed",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ids = tokenizer.encode("ab a").unwrap();
        assert!(!ids.is_empty(), "{}", path.display());
    }
}
