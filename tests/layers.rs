//! The layering rules of ARCHITECTURE.md, checked on the source text: each layer imports only
//! the layers below it, nothing below the shells prints, and the core's messages never name a
//! CLI flag.

use std::path::{Path, PathBuf};

/// Layers from the bottom up, and the crate paths each may not use.
const RULES: [(&str, &[&str]); 4] = [
    (
        "src/model",
        &["crate::text", "crate::io", "crate::train", "crate::wasm"],
    ),
    ("src/text", &["crate::io", "crate::train", "crate::wasm"]),
    ("src/io", &["crate::train", "crate::wasm"]),
    ("src/train", &["crate::wasm"]),
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `(file, line number, line)` of every non-comment line under `dir`.
fn code_lines(dir: &str) -> Vec<(PathBuf, usize, String)> {
    let mut out = Vec::new();
    for file in rust_files(&root().join(dir)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") {
                out.push((file.clone(), i + 1, line.to_string()));
            }
        }
    }
    out
}

#[test]
fn layers_import_only_the_layers_below() {
    let mut broken = Vec::new();
    for (dir, forbidden) in RULES {
        for (file, n, line) in code_lines(dir) {
            for path in forbidden {
                if line.contains(path) {
                    broken.push(format!("{}:{n}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
}

/// `--name` after a quote, a space or a backtick: a CLI flag in a message.
fn names_a_flag(line: &str) -> bool {
    line.match_indices("--").any(|(at, _)| {
        let before = line[..at].chars().last();
        let after = line[at + 2..].chars().next();
        matches!(before, Some('"' | ' ' | '`')) && after.is_some_and(|c| c.is_ascii_lowercase())
    })
}

#[test]
fn the_core_neither_prints_nor_names_flags() {
    let mut broken = Vec::new();
    for dir in [
        "src/model",
        "src/text",
        "src/io",
        "src/train",
        "src/backend.rs",
        "src/error.rs",
    ] {
        let lines = if dir.ends_with(".rs") {
            let text = std::fs::read_to_string(root().join(dir)).unwrap();
            text.lines()
                .enumerate()
                .map(|(i, l)| (PathBuf::from(dir), i + 1, l.to_string()))
                .collect()
        } else {
            code_lines(dir)
        };
        for (file, n, line) in lines {
            let prints = ["println!", "eprintln!", "print!(", "eprint!("]
                .iter()
                .any(|m| line.contains(m));
            let names_flag = line.contains('"') && names_a_flag(&line);
            if prints || names_flag {
                broken.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the core prints or names a flag:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_shells_never_import_each_other() {
    for (file, n, line) in code_lines("src/cli") {
        assert!(!line.contains("wasm::"), "{}:{n}: {line}", file.display());
    }
    for (file, n, line) in code_lines("src/wasm") {
        assert!(!line.contains("cli::"), "{}:{n}: {line}", file.display());
    }
}
