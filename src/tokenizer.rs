//! The Hugging Face tokenizer (`tokenizer.json`) plus the special tokens training needs.

use serde_json::Value;

use crate::error::{Error, Location, Result};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokenizer.json` as loaded, written back unchanged on export.
    pub json: String,
    /// `tokenizer_config.json` if there was one, also written back unchanged.
    pub config_json: Option<String>,
    pub eos_token: String,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl TextTokenizer {
    /// `json`: `tokenizer.json`; `config_json`: `tokenizer_config.json` (optional);
    /// `eos_fallback`: `eos_token_id` from the model's `config.json`, used when the tokenizer
    /// config does not name an EOS token.
    pub fn from_json(
        json: String,
        config_json: Option<String>,
        eos_fallback: Option<u32>,
        source: &str,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| {
            Error::input(
                Location::file(source),
                format!("cannot load tokenizer: {e}"),
            )
        })?;
        let config: Option<Value> = match &config_json {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                Error::input(
                    Location::file(format!("{source} (tokenizer_config.json)")).line(e.line()),
                    format!("invalid JSON: {e}"),
                )
            })?),
            None => None,
        };
        // Special tokens are either a string or an AddedToken object with `content`.
        let special = |key: &str| -> Option<String> {
            let v = config.as_ref()?.get(key)?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let eos_token = match special("eos_token") {
            Some(t) => t,
            None => {
                let id = eos_fallback.ok_or_else(|| {
                    Error::input(
                        Location::file(source).field("eos_token"),
                        "no EOS token: set `eos_token` in tokenizer_config.json or \
                         `eos_token_id` in config.json",
                    )
                })?;
                inner.id_to_token(id).ok_or_else(|| {
                    Error::input(
                        Location::file(source).field("eos_token_id"),
                        format!("id {id} is not in the vocabulary"),
                    )
                })?
            }
        };
        let eos_id = inner.token_to_id(&eos_token).ok_or_else(|| {
            Error::input(
                Location::file(source).field("eos_token"),
                format!("`{eos_token}` is not in the vocabulary"),
            )
        })?;
        // TRL pads with the pad token, or EOS when there is none; padded positions are never
        // scored, so the choice cannot change a number.
        let pad_id = special("pad_token")
            .and_then(|t| inner.token_to_id(&t))
            .unwrap_or(eos_id);
        Ok(Self {
            inner,
            json,
            config_json,
            eos_token,
            eos_id,
            pad_id,
        })
    }

    /// Token ids as `tokenizer(text)` gives them in transformers (special tokens added by the
    /// post-processor, e.g. a BOS, included).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Invalid(format!("decoding: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
