//! Training data in TRL's formats, tokenized and collated exactly as TRL does.
//!
//! Preference rows (DPO): `{"prompt", "chosen", "rejected"}`, all plain text or all lists of
//! `{"role", "content"}` messages. SFT rows: `{"prompt", "completion"}` (text or messages),
//! `{"text"}`, or `{"messages"}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::{self, Message};
use crate::error::{Error, Location, Result};
use crate::model::ScoringBatch;
use crate::model::attention::PaddingMask;
use crate::tokenizer::TextTokenizer;

/// A field's value: plain text, or a conversation rendered with the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

impl From<String> for Content {
    fn from(s: String) -> Self {
        Content::Text(s)
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Text(s.to_string())
    }
}

/// One preference row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Content,
    pub chosen: Content,
    pub rejected: Content,
}

/// One SFT row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SftExample {
    /// Loss on the completion only (TRL's `completion_only_loss` default for this format).
    PromptCompletion {
        prompt: Content,
        completion: Content,
    },
    /// Loss on every token.
    Messages { messages: Vec<Message> },
    /// Loss on every token.
    Text { text: String },
}

/// Read JSONL rows with `parse`, naming `source`, the 1-based line and the field in errors.
/// Blank lines are skipped.
fn parse_lines<T>(
    text: &str,
    source: &str,
    parse: impl Fn(&Map<String, Value>, &dyn Fn(&str) -> Location) -> Result<T>,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str| {
            let l = Location::file(source).line(index + 1);
            if field.is_empty() { l } else { l.field(field) }
        };
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::input(at(""), format!("invalid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| Error::input(at(""), "expected a JSON object"))?;
        rows.push(parse(object, &at)?);
    }
    if rows.is_empty() {
        return Err(Error::input(Location::file(source), "no rows"));
    }
    Ok(rows)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn messages(value: &Value, field: &str, at: &dyn Fn(&str) -> Location) -> Result<Vec<Message>> {
    let list = value.as_array().expect("checked by the caller");
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let here = || at(&format!("{field}[{i}]"));
            let get = |key: &str| -> Result<String> {
                match m.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(Error::input(
                        here(),
                        format!("`{key}` must be a string, found {}", json_kind(other)),
                    )),
                    None => Err(Error::input(here(), format!("message has no `{key}`"))),
                }
            };
            Ok(Message {
                role: get("role")?,
                content: get("content")?,
            })
        })
        .collect()
}

fn content(
    object: &Map<String, Value>,
    field: &str,
    at: &dyn Fn(&str) -> Location,
) -> Result<Content> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(Content::Text(s.clone())),
        Some(v @ Value::Array(_)) => Ok(Content::Messages(messages(v, field, at)?)),
        Some(other) => Err(Error::input(
            at(field),
            format!(
                "expected a string or a list of messages, found {}",
                json_kind(other)
            ),
        )),
        None => Err(Error::input(at(field), "missing")),
    }
}

/// Parse preference JSONL; `source` names the file in errors.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<PreferencePair>> {
    parse_lines(text, source, |object, at| {
        let pair = PreferencePair {
            prompt: content(object, "prompt", at)?,
            chosen: content(object, "chosen", at)?,
            rejected: content(object, "rejected", at)?,
        };
        let chat = |c: &Content| matches!(c, Content::Messages(_));
        if chat(&pair.prompt) != chat(&pair.chosen) || chat(&pair.chosen) != chat(&pair.rejected) {
            return Err(Error::input(
                at(""),
                "prompt, chosen and rejected must all be text or all be message lists",
            ));
        }
        Ok(pair)
    })
}

/// Parse SFT JSONL (`prompt`+`completion`, `messages` or `text` rows).
pub fn parse_sft_jsonl(text: &str, source: &str) -> Result<Vec<SftExample>> {
    parse_lines(text, source, |object, at| {
        if object.contains_key("prompt") || object.contains_key("completion") {
            let prompt = content(object, "prompt", at)?;
            let completion = content(object, "completion", at)?;
            if matches!(prompt, Content::Messages(_)) != matches!(completion, Content::Messages(_))
            {
                return Err(Error::input(
                    at(""),
                    "prompt and completion must both be text or both be message lists",
                ));
            }
            return Ok(SftExample::PromptCompletion { prompt, completion });
        }
        if let Some(value) = object.get("messages") {
            if !value.is_array() {
                return Err(Error::input(at("messages"), "expected a list of messages"));
            }
            return Ok(SftExample::Messages {
                messages: messages(value, "messages", at)?,
            });
        }
        match object.get("text") {
            Some(Value::String(s)) => Ok(SftExample::Text { text: s.clone() }),
            Some(other) => Err(Error::input(
                at("text"),
                format!("expected a string, found {}", json_kind(other)),
            )),
            None => Err(Error::input(
                at(""),
                "expected `prompt` + `completion`, `messages` or `text`",
            )),
        }
    })
}

/// A pair after TRL's tokenization: the completions start where the tokenized prompt and
/// prompt+completion diverge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// An SFT sequence: loss on `completion_ids` (all tokens when `prompt_ids` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedCompletion {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
}

/// Tokenized rows plus how many rows TRL's `keep_start` filter dropped.
#[derive(Debug, Clone)]
pub struct Tokenized<T> {
    pub rows: Vec<T>,
    /// Rows dropped because their prompt alone fills `max_length`.
    pub dropped: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn with_eos(text: &str, eos: &str) -> String {
    if text.ends_with(eos) {
        text.to_string()
    } else {
        format!("{text}{eos}")
    }
}

/// `(prompt ids, prompt+completion ids)` for each completion, as TRL tokenizes them: plain text
/// gets EOS appended and is tokenized with the post-processor's special tokens; conversations go
/// through the chat template (the prompt alone with the generation prompt).
fn tokenize_prompted(
    tokenizer: &TextTokenizer,
    prompt: &Content,
    completions: &[&Content],
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    match prompt {
        Content::Text(prompt) => {
            let full = completions
                .iter()
                .map(|c| match c {
                    Content::Text(c) => {
                        tokenizer.encode(&format!("{prompt}{}", with_eos(c, &tokenizer.eos_token)))
                    }
                    Content::Messages(_) => unreachable!("kinds checked when parsing"),
                })
                .collect::<Result<_>>()?;
            Ok((tokenizer.encode(prompt)?, full))
        }
        Content::Messages(prompt) => {
            let full = completions
                .iter()
                .map(|c| match c {
                    Content::Messages(c) => {
                        let conversation: Vec<Message> = prompt.iter().chain(c).cloned().collect();
                        chat::encode(tokenizer, &conversation, false)
                    }
                    Content::Text(_) => unreachable!("kinds checked when parsing"),
                })
                .collect::<Result<_>>()?;
            Ok((chat::encode(tokenizer, prompt, true)?, full))
        }
    }
}

/// Tokenize as TRL's `DPOTrainer._prepare_dataset` does: the prompt is cut to the common prefix of
/// it and both prompt+completions; with `max_length`, pairs whose prompt alone is at least
/// `max_length` tokens are dropped.
pub fn tokenize_pairs(
    pairs: &[PreferencePair],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<Tokenized<TokenizedPair>> {
    let mut rows = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for pair in pairs {
        let (prompt_ids, full) =
            tokenize_prompted(tokenizer, &pair.prompt, &[&pair.chosen, &pair.rejected])?;
        let (chosen, rejected) = (&full[0], &full[1]);
        let prompt_len =
            common_prefix(&prompt_ids, chosen).min(common_prefix(&prompt_ids, rejected));
        if max_length.is_some_and(|max| prompt_len >= max) {
            dropped += 1;
            continue;
        }
        rows.push(TokenizedPair {
            prompt_ids: prompt_ids[..prompt_len].to_vec(),
            chosen_ids: chosen[prompt_len..].to_vec(),
            rejected_ids: rejected[prompt_len..].to_vec(),
        });
    }
    Ok(Tokenized { rows, dropped })
}

/// Tokenize as TRL's `SFTTrainer`: prompt-completion rows score the completion (EOS appended to
/// plain text), `text` rows (EOS appended) and `messages` rows score every token. Sequences are
/// cut to `max_length` (keep_start) when collated, and rows left with no scored token are dropped.
pub fn tokenize_sft(
    examples: &[SftExample],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<Tokenized<TokenizedCompletion>> {
    let all: Vec<TokenizedCompletion> = examples
        .iter()
        .map(|example| {
            Ok(match example {
                SftExample::PromptCompletion { prompt, completion } => {
                    let (prompt_ids, mut full) =
                        tokenize_prompted(tokenizer, prompt, &[completion])?;
                    let full = full.remove(0);
                    let prompt_len = common_prefix(&prompt_ids, &full);
                    TokenizedCompletion {
                        prompt_ids: full[..prompt_len].to_vec(),
                        completion_ids: full[prompt_len..].to_vec(),
                    }
                }
                SftExample::Messages { messages } => TokenizedCompletion {
                    prompt_ids: Vec::new(),
                    completion_ids: chat::encode(tokenizer, messages, false)?,
                },
                SftExample::Text { text } => TokenizedCompletion {
                    prompt_ids: Vec::new(),
                    completion_ids: tokenizer.encode(&with_eos(text, &tokenizer.eos_token))?,
                },
            })
        })
        .collect::<Result<_>>()?;
    // A row scores tokens at positions max(1, prompt)..min(len, max_length).
    let scores_something = |r: &TokenizedCompletion| {
        let end = r.prompt_ids.len() + r.completion_ids.len();
        let end = max_length.map_or(end, |m| end.min(m));
        r.prompt_ids.len().max(1) < end
    };
    let before = all.len();
    let rows: Vec<TokenizedCompletion> = all.into_iter().filter(scores_something).collect();
    Ok(Tokenized {
        dropped: before - rows.len(),
        rows,
    })
}

/// Collate pairs as TRL's `DataCollatorForPreference`: rows are all chosen sequences then all
/// rejected ones (2B rows), each `prompt + completion` cut to `max_length` keeping the start, right
/// padded to the longest row.
pub fn collate_pairs(
    pairs: &[&TokenizedPair],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let sequences: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (p.prompt_ids.as_slice(), p.chosen_ids.as_slice()))
        .chain(
            pairs
                .iter()
                .map(|p| (p.prompt_ids.as_slice(), p.rejected_ids.as_slice())),
        )
        .collect();
    collate(&sequences, max_length, pad_id)
}

/// Collate SFT sequences.
pub fn collate_completions(
    rows: &[&TokenizedCompletion],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let sequences: Vec<(&[u32], &[u32])> = rows
        .iter()
        .map(|r| (r.prompt_ids.as_slice(), r.completion_ids.as_slice()))
        .collect();
    collate(&sequences, max_length, pad_id)
}

/// Collate `(prompt, completion)` rows into one right-padded batch whose scored positions are the
/// completion tokens (after `keep_start` truncation).
pub fn collate(
    sequences: &[(&[u32], &[u32])],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let lengths: Vec<usize> = sequences
        .iter()
        .map(|(p, c)| {
            let len = p.len() + c.len();
            max_length.map_or(len, |m| len.min(m))
        })
        .collect();
    let rows = sequences.len();
    let seq_len = lengths.iter().copied().max().unwrap_or(0).max(1);
    let mut input_ids = vec![pad_id as i32; rows * seq_len];
    let mut is_pad = vec![true; rows * seq_len];
    let mut scored = Vec::new();
    for (row, ((prompt, completion), &len)) in sequences.iter().zip(&lengths).enumerate() {
        for (pos, &id) in prompt.iter().chain(completion.iter()).take(len).enumerate() {
            input_ids[row * seq_len + pos] = id as i32;
            is_pad[row * seq_len + pos] = false;
        }
        // Token at `pos` (a completion token, pos >= 1) is predicted from position pos - 1.
        for pos in prompt.len().max(1)..len {
            scored.push((row, pos - 1));
        }
    }
    ScoringBatch {
        rows,
        seq_len,
        input_ids,
        padding: PaddingMask {
            batch: rows,
            seq_len,
            is_pad,
        },
        scored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let text = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":3,\"rejected\":\"c\"}\n";
        let err = parse_jsonl(text, "data.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("data.jsonl:3 (field `chosen`)"), "{err}");
        let err = parse_jsonl("{\"prompt\":\"a\",\"chosen\":\"b\"}", "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.jsonl:1 (field `rejected`): missing"),
            "{err}"
        );
        let err = parse_jsonl("not json", "d.jsonl").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: invalid JSON"), "{err}");
        let bad_message = "{\"prompt\":[{\"role\":\"user\"}],\"chosen\":[],\"rejected\":[]}";
        let err = parse_jsonl(bad_message, "c.jsonl").unwrap_err().to_string();
        assert!(
            err.contains("c.jsonl:1 (field `prompt[0]`): message has no `content`"),
            "{err}"
        );
        let mixed = "{\"prompt\":\"a\",\"chosen\":[],\"rejected\":\"c\"}";
        assert!(parse_jsonl(mixed, "m.jsonl").is_err());
    }

    #[test]
    fn sft_rows_of_every_format_parse() {
        let text = concat!(
            "{\"prompt\":\"a\",\"completion\":\"b\"}\n",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
            "{\"text\":\"plain\"}\n",
        );
        let rows = parse_sft_jsonl(text, "s.jsonl").unwrap();
        assert!(matches!(rows[0], SftExample::PromptCompletion { .. }));
        assert!(matches!(rows[1], SftExample::Messages { .. }));
        assert!(matches!(rows[2], SftExample::Text { .. }));
        let err = parse_sft_jsonl("{\"prompt\":\"a\"}", "s.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.jsonl:1 (field `completion`): missing"),
            "{err}"
        );
    }

    #[test]
    fn collation_matches_trl_docstring_example() {
        // The example in TRL's DataCollatorForPreference docstring.
        let a = TokenizedPair {
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5],
            rejected_ids: vec![6],
        };
        let b = TokenizedPair {
            prompt_ids: vec![7, 8],
            chosen_ids: vec![9],
            rejected_ids: vec![10, 11],
        };
        let batch = collate_pairs(&[&a, &b], None, 0);
        assert_eq!(
            batch.input_ids,
            vec![1, 2, 3, 4, 5, 7, 8, 9, 0, 0, 1, 2, 3, 6, 0, 7, 8, 10, 11, 0]
        );
        // completion_mask [[0,0,0,1,1],[0,0,1,0,0],[0,0,0,1,0],[0,0,1,1,0]] shifted by one.
        assert_eq!(
            batch.scored,
            vec![(0, 2), (0, 3), (1, 1), (2, 2), (3, 1), (3, 2)]
        );
        let pads: Vec<bool> = batch.padding.is_pad.clone();
        assert_eq!(pads.iter().filter(|&&p| p).count(), 4);
    }

    #[test]
    fn keep_start_truncation_cuts_completions() {
        let a = TokenizedPair {
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5, 6],
            rejected_ids: vec![7],
        };
        let batch = collate_pairs(&[&a], Some(4), 0);
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids, vec![1, 2, 3, 4, 1, 2, 3, 7]);
        assert_eq!(batch.scored, vec![(0, 2), (1, 2)]);
    }
}
