//! `--config run.toml`: a TOML file whose keys are the command's flags (`lr = 1e-5`,
//! `loss = ["sigmoid", "sft"]`, `use-weighting = true`, `model = "..."`). It is read before the
//! command line, so a flag given there wins. And the reverse: a run's effective settings written
//! as such a file (`run.toml` beside the model), which `--config` reads back.

use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;
use dpo_wgpu::error::{Error, Location, Result};
use dpo_wgpu::train::options::TrainOptions;
use toml::{Table, Value};

use crate::args::{Cli, flag};

/// The command line with every `--config FILE` replaced by the flags its file holds, placed
/// right after the subcommand so that the command line's own flags override them.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()).map(str::to_string) else {
        return Ok(args);
    };
    let mut rest = Vec::new();
    let mut files = Vec::new();
    let mut iter = args.iter().skip(2).cloned();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--config") => match iter.next() {
                Some(file) => files.push(file),
                None => return Err(Error::setting("config", "needs a file")),
            },
            Some(a) if a.starts_with("--config=") => files.push(a["--config=".len()..].into()),
            _ => rest.push(arg),
        }
    }
    if files.is_empty() {
        return Ok(args);
    }
    let mut out: Vec<OsString> = args[..2].to_vec();
    for file in files {
        out.extend(flags_of(Path::new(&file), &sub)?);
    }
    out.extend(rest);
    Ok(out)
}

/// The flags a config file stands for, checked against `sub`'s flags.
fn flags_of(path: &Path, sub: &str) -> Result<Vec<OsString>> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: source.clone(),
        source: e,
    })?;
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        Error::input(
            Location::file(&source),
            format!("invalid TOML: {}", e.message()),
        )
    })?;
    let command = Cli::command();
    let Some(command) = command.find_subcommand(sub) else {
        return Ok(Vec::new());
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let at = || Location::file(&source).field(key.as_str());
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                let mut known: Vec<&str> = command
                    .get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help")
                    .collect();
                known.sort();
                Error::input(
                    at(),
                    format!(
                        "`{sub}` has no setting `{key}` (it has: {})",
                        known.join(", ")
                    ),
                )
            })?;
        let takes_value = arg.get_action().takes_values();
        let text = match (&value, takes_value) {
            (Value::Boolean(true), false) => {
                flags.push(format!("--{name}").into());
                continue;
            }
            (Value::Boolean(false), false) => continue,
            (_, false) => {
                return Err(Error::input(at(), "is a switch: write true or false"));
            }
            (Value::String(s), true) => s.clone(),
            (Value::Integer(i), true) => i.to_string(),
            (Value::Float(f), true) => f.to_string(),
            (Value::Boolean(b), true) => b.to_string(),
            (Value::Array(items), true) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Integer(i) => Ok(i.to_string()),
                    Value::Float(f) => Ok(f.to_string()),
                    _ => Err(Error::input(at(), "list items must be strings or numbers")),
                })
                .collect::<Result<Vec<_>>>()?
                .join(","),
            (_, true) => {
                return Err(Error::input(at(), "must be a string, a number or a list"));
            }
        };
        flags.push(format!("--{name}={text}").into());
    }
    Ok(flags)
}

/// A run's effective settings as a config file for `sub`: every training option (defaults
/// included) under its flag's name, plus `given`, the flags that are not training options
/// (model, data, LoRA, schedule) as the user gave them.
pub fn effective(sub: &str, options: &TrainOptions, given: Table) -> String {
    let command = Cli::command();
    let command = command.find_subcommand(sub).expect("a known subcommand");
    let has = |name: &str| command.get_arguments().any(|a| a.get_long() == Some(name));
    let mut table = given;
    let json = serde_json::to_value(options).expect("options serialize");
    for (field, value) in json.as_object().expect("an object") {
        if field == "losses" {
            let terms = value.as_array().expect("a list");
            let names = terms
                .iter()
                .map(|t| Value::String(t["loss"].as_str().unwrap_or_default().into()));
            let weights = terms
                .iter()
                .map(|t| Value::Float(t["weight"].as_f64().unwrap_or(1.0)));
            if has("loss") {
                table.insert("loss".into(), Value::Array(names.collect()));
                table.insert("loss-weights".into(), Value::Array(weights.collect()));
            }
            continue;
        }
        let name = flag(field).trim_start_matches("--").to_string();
        if !has(&name) {
            continue;
        }
        let value = match value {
            serde_json::Value::Null if field == "max_length" => Value::Integer(0),
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(false) => continue,
            serde_json::Value::Bool(b) => Value::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            _ => continue,
        };
        table.insert(name, value);
    }
    format!(
        "# The effective settings of this run; `dpo-wgpu {sub} --config run.toml` reads them back\n\
         # (flags given on the command line override them).\n{}",
        toml::to_string(&table).expect("a TOML table serializes")
    )
}
