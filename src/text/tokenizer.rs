//! The Hugging Face tokenizer (`tokenizer.json`) plus the special tokens training needs.

use serde_json::Value;

use crate::error::{Error, Location, Result};

#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokenizer.json` as loaded, written back unchanged on export.
    pub json: String,
    /// `tokenizer_config.json` if there was one, also written back unchanged.
    pub config_json: Option<String>,
    pub eos_token: String,
    pub eos_id: u32,
    pub pad_id: u32,
    pub bos_token: Option<String>,
    /// Jinja chat template (`tokenizer_config.json` or `chat_template.jinja`), if the model has one.
    pub chat_template: Option<String>,
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
        // scored (only the CPO/ORPO `logits/*` metrics average over them).
        let pad_id = special("pad_token")
            .and_then(|t| inner.token_to_id(&t))
            .unwrap_or(eos_id);
        // A single template, or a list of named ones of which "default" is used.
        let chat_template = config.as_ref().and_then(|c| match c.get("chat_template")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list.iter().find_map(|t| {
                (t.get("name")?.as_str()? == "default")
                    .then(|| t.get("template")?.as_str().map(str::to_string))?
            }),
            _ => None,
        });
        Ok(Self {
            bos_token: special("bos_token"),
            inner,
            json,
            config_json,
            eos_token,
            eos_id,
            pad_id,
            chat_template,
        })
    }

    /// Token ids as `tokenizer(text)` gives them in transformers (special tokens added by the
    /// post-processor, e.g. a BOS, included).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`, with or without the post-processor's special tokens (chat templates
    /// already contain theirs, so transformers encodes rendered chats without adding any).
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Invalid(format!("tokenizing {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The BOS token's id, when the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    pub fn decode_skipping_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Invalid(format!("decoding: {e}")))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Invalid(format!("decoding: {e}")))
    }

    /// The largest id the tokenizer can produce (added tokens included), with its token.
    pub fn max_token(&self) -> Option<(u32, String)> {
        self.inner
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .map(|(token, id)| (id, token))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
