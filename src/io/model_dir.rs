//! What a Hugging Face model folder holds, in one place: the file names every source (a local
//! folder, the Hub, URLs fetched by the browser, exports) uses, the texts read from them, and the
//! shard list of a sharded checkpoint. `web/model-source.js` keeps the same list for the browser;
//! `layout()` is exported to JavaScript so a browser test checks that the two agree.

use serde::Serialize;

use crate::error::{Error, Location, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Small files besides config, weights and tokenizer that are read when present and carried
/// unchanged into exports.
pub const CARRIED_FILES: [&str; 3] = [
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Lists the shards of a sharded checkpoint (`weight_map`: tensor name -> shard file).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The file list, as the browser side needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layout {
    /// Text files a model folder must have.
    pub required: Vec<&'static str>,
    /// Text files used when present.
    pub optional: Vec<&'static str>,
    pub weights: &'static str,
    pub weights_index: &'static str,
}

pub fn layout() -> Layout {
    let mut optional = vec![TOKENIZER_CONFIG_FILE];
    optional.extend(CARRIED_FILES);
    Layout {
        required: vec![CONFIG_FILE, TOKENIZER_FILE],
        optional,
        weights: WEIGHTS_FILE,
        weights_index: WEIGHTS_INDEX_FILE,
    }
}

/// The text files of a model folder.
pub struct ModelTexts {
    /// Names the source in errors (a directory, a URL, "built-in demo").
    pub label: String,
    pub config_json: String,
    pub tokenizer_json: String,
    pub tokenizer_config_json: Option<String>,
    /// `(file name, contents)` of the `CARRIED_FILES` present in the source.
    pub extra_files: Vec<(String, String)>,
}

/// The shard files `model.safetensors.index.json` names, sorted and without repeats. Each must be
/// a plain file name: a hostile index cannot make a download or a read leave the folder.
/// `source` names the index in errors.
pub fn shard_names(index_json: &str, source: &str) -> Result<Vec<String>> {
    let json: serde_json::Value = serde_json::from_str(index_json).map_err(|e| {
        Error::input(
            Location::file(source).line(e.line()),
            format!("invalid JSON: {e}"),
        )
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::input(
                Location::file(source).field("weight_map"),
                "missing or not an object",
            )
        })?;
    let mut shards = Vec::new();
    for (tensor, file) in map {
        let name = file.as_str().ok_or_else(|| {
            Error::input(
                Location::file(source).field(format!("weight_map.{tensor}")),
                "not a string (a shard file name)",
            )
        })?;
        if !is_plain_file_name(name) {
            return Err(Error::input(
                Location::file(source).field(format!("weight_map.{tensor}")),
                format!(
                    "shard {name:?} is not a plain file name inside the model folder (no paths, \
                     no `..`)"
                ),
            ));
        }
        shards.push(name.to_string());
    }
    shards.sort_unstable();
    shards.dedup();
    Ok(shards)
}

/// A name that, joined to a folder (or a folder URL), stays inside it: no separators, no `..`,
/// not absolute, no drive letter, no control characters, not hidden.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | ':' | '%' | '?' | '#') || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_stay_inside_the_folder() {
        let index = |name: &str| serde_json::json!({ "weight_map": { "a": name } }).to_string();
        assert_eq!(
            shard_names(&index("model-00001-of-00002.safetensors"), "i").unwrap(),
            vec!["model-00001-of-00002.safetensors"]
        );
        for bad in [
            "../../../x.safetensors",
            "/etc/passwd",
            "sub/x.safetensors",
            "..",
            "",
            ".hidden",
            "C:\\x",
            "a%2F..%2Fb",
            "x\u{0}y",
        ] {
            let err = shard_names(&index(bad), "m/model.safetensors.index.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("m/model.safetensors.index.json") && err.contains("weight_map.a"),
                "{bad:?}: {err}"
            );
        }
    }
}
